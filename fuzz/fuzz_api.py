"""Coverage-guided fuzzing of the larimar_ext Python API (atheris; see fuzz/README.md).

Each input is decoded (``_fuzzlib.Reader``) into one call of a public op, or a short
sequence of calls on an EpisodicMemory / KeyValueMemory, with hostile arguments: arrays of
every rank, zero-size dimensions, wrong dtypes (int, bool, complex, float16, byte-swapped),
NaN/Inf/denormal/huge values, non-contiguous, negative-stride, read-only and misaligned
layouts, torch tensors (including views with the negative/conjugate bit, requires_grad,
non-contiguous, meta and sparse tensors), lists, scalars, None, strings; hostile scalars
(NaN, Inf, 0, negative, 2**31, 2**63, bools, numpy and torch scalars).

Accepted outcomes of a call: a result, or ValueError / TypeError / MemoryError. Anything
else is a finding, and so is:
  * a memory object whose state (every array of the state, length, a probe read) differs
    after a call that raised;
  * an input array modified by a call;
  * a result of the wrong kind (numpy in -> numpy out, CPU tensor in -> tensor out), dtype
    or shape.
Crashes, aborts and hangs (libFuzzer -timeout) are findings too.

Run (details in fuzz/README.md):
    python fuzz/fuzz_api.py -max_total_time=600 -timeout=30 -rss_limit_mb=6144 \
        -artifact_prefix=fuzz/crashes/api- /tmp/api-corpus fuzz/corpus/api
"""

from __future__ import annotations

import os
import re
import sys
import warnings

# the harness's own helpers, and the table of functional ops of the tests (op_cases.py)
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(os.path.dirname(HERE), "tests")]

import numpy as np  # noqa: E402

import op_cases  # noqa: E402
from _fuzzlib import (STATS, Finding, Reader, feedback, instrument_modules,  # noqa: E402
                      known_finding, main, same_state)
from op_cases import S  # noqa: E402

try:
    import torch  # noqa: E402
except ImportError:  # pragma: no cover
    torch = None

import larimar_ext as lx  # noqa: E402
from larimar_ext import _core  # noqa: E402

warnings.simplefilter("ignore")  # overflow warnings of numpy on hostile values

# Hostile sizes (memory_size=2**29, k=2**40, ...) must meet MemoryError, not this machine's
# RAM: 1 GiB per call is far above anything a valid input here needs.
if hasattr(lx, "set_memory_limit"):
    lx.set_memory_limit(1 << 30)
MAX_DIM = 1 << 16  # a memory built with larger dims (allowed) is not probed further

ACCEPTED = (ValueError, TypeError, MemoryError)

# Findings already reported, each pinned by a regression test in tests/test_fuzz.py
# (strict xfail until fixed). They are counted ("known:<id>" in the stats) but do not stop
# a run, so fuzzing goes on past them. LARIMAR_FUZZ_STRICT=1 turns them back into findings.
# Delete an entry once its bug is fixed (the strict xfail then fails and says so).
KNOWN_FINDINGS = [
    # (id, exception type, message regex); none open. Fixed so far (regression tests in
    # tests/test_fuzz.py): tensor-neg-conj-bit (A1, A2), tensor-meta (A3),
    # top_k-int64-overflow (A4), episodic-write-not-pd (A5).
]

# Cap on the elements of one generated array: keeps every exec well under a second.
MAX_ELEMS = 40_000

SMALL_DIMS = (1, 1, 1, 2, 2, 3, 3, 4, 5, 6, 7, 8, 9, 16, 17, 31, 64, 0)
HOSTILE_INTS = (0, -1, 1, 2, 3, -(2**31), 2**31 - 1, 2**31, 2**32, 2**62, 2**63 - 1, 2**63,
                -(2**63), 2**64, 10**30)
SPECIAL_F = {
    np.float64: (np.nan, np.inf, -np.inf, 5e-324, 2.2250738585072014e-308, 1e-300, 1e300,
                 1.7976931348623157e308, -1.7976931348623157e308, -0.0, 1e154, 1e-160),
    np.float32: (np.nan, np.inf, -np.inf, 1e-45, 1.1754944e-38, 1e-30, 1e30, 3.4028235e38,
                 -3.4028235e38, -0.0, 1e19, 1e-20),
}
BAD_DTYPES = (np.int32, np.int64, np.bool_, np.complex64, np.complex128, np.float16,
              np.uint8, np.int8, np.dtype(">f8"), np.dtype(">f4"), np.longdouble, object)


# ------------------------------------------------------------------------ value makers
class Gen:
    """Arguments drawn from the input bytes, around the symbolic shape of each argument."""

    def __init__(self, r: Reader) -> None:
        self.r = r
        self.dtype = r.choice((np.float32, np.float64))
        self.torch = torch is not None and r.chance(40)  # whole call with tensors
        self.dims = {s: r.choice(SMALL_DIMS) for s in ("B", "N", "K", "C", "k", "n", "d", "v")}
        self.hostility = r.int(0, 3)  # 0: mostly valid ... 3: mostly broken
        self.originals = []  # (argument, copy) to check inputs are not modified
        self.tame = True  # every float value so far is 0 or 1e-6 <= |x| <= 1e6

    def p(self, base: int) -> bool:
        """A hostile choice, more often at higher hostility."""
        return self.r.chance(base * (1 + self.hostility))

    # ---------------------------------------------------------------- shapes and values
    def shape(self, sym: str) -> tuple:
        shp = [self.dims[s] if s in self.dims else int(s) for s in sym]
        if self.p(6):
            op = self.r.int(0, 3)
            if op == 0 and shp:
                del shp[self.r.int(0, len(shp) - 1)]
            elif op == 1:
                shp.insert(self.r.int(0, len(shp)), self.r.choice(SMALL_DIMS))
            elif op == 2 and shp:
                shp[self.r.int(0, len(shp) - 1)] = self.r.choice(SMALL_DIMS)
            else:
                shp = [self.r.choice((1, 2, 3))] * self.r.int(0, 5)
        size = int(np.prod(shp)) if shp else 1
        while size > MAX_ELEMS:
            i = int(np.argmax(shp))
            shp[i] = max(1, shp[i] // 4)
            size = int(np.prod(shp))
        return tuple(shp)

    def _observe(self, a: np.ndarray) -> None:
        """Tracks whether every float value of the input is tame (0 or 1e-6..1e6)."""
        if a.dtype.kind == "f" and a.size:
            m = np.abs(a[a != 0]).astype(np.float64)
            if m.size and not (np.all(np.isfinite(m)) and m.max() <= 1e6 and m.min() >= 1e-6):
                self.tame = False

    def values(self, shape: tuple, dtype) -> np.ndarray:
        r = self.r
        n = int(np.prod(shape)) if shape else 1
        mode = r.int(0, 9)
        seed = r.u32()
        g = np.random.default_rng(seed)
        if mode <= 3:
            a = g.standard_normal(n)
        elif mode == 4:
            a = np.zeros(n)
        elif mode == 5:
            a = np.ones(n)
        elif mode == 6:  # integers, many ties and repeated rows
            a = g.integers(-2, 3, n).astype(np.float64)
        elif mode == 7:  # raw bytes reinterpreted: any bit pattern (NaN payloads, denormals)
            item = np.dtype(dtype).itemsize
            raw = r.bytes(min(n * item, 256))
            a = np.frombuffer((raw * (n * item // max(len(raw), 1) + 1))[:n * item] or
                              b"\0" * (n * item), dtype=dtype).astype(np.float64)
        elif mode == 8:  # huge scale: products overflow
            a = g.standard_normal(n) * (1e150 if dtype == np.float64 else 1e18)
            if r.chance(80):
                a *= 1e150 if dtype == np.float64 else 1e18
        else:  # tiny scale: denormal products
            a = g.standard_normal(n) * (1e-160 if dtype == np.float64 else 1e-20)
        with np.errstate(all="ignore"):
            a = a.astype(dtype)
        if n and self.p(25):
            specials = SPECIAL_F[np.float64 if dtype not in SPECIAL_F else dtype]
            for _ in range(r.int(1, 3)):
                a[r.int(0, n - 1) if n <= 256 else r.u32() % n] = r.choice(specials)
        if len(shape) >= 2 and shape[0] > 1 and r.chance(20):  # duplicate rows
            a = a.reshape(shape)
            a[1:] = a[0]
        self._observe(a)
        return a.reshape(shape)

    def layout(self, a: np.ndarray) -> np.ndarray:
        """Same values, hostile memory layout."""
        r = self.r
        if not self.p(20) or a.ndim == 0:
            return a
        op = r.int(0, 7)
        if op == 5 and a.ndim == 2:  # ndarray subclass
            return np.asmatrix(a)
        if op == 6:  # masked array (the mask is not part of the API: data is what counts)
            return np.ma.masked_array(a, mask=np.zeros(a.shape, bool))
        if op == 7:  # zero-stride read-only broadcast of one row
            return np.broadcast_to(a[:1], a.shape) if a.shape[0] > 0 else a
        if op == 0:  # Fortran order
            return np.asfortranarray(a)
        if op == 1:  # strided view of a larger buffer
            big = np.zeros(a.shape[:-1] + (a.shape[-1] * 2,), a.dtype)
            big[..., ::2] = a
            return big[..., ::2]
        if op == 2:  # negative strides
            return np.flip(np.flip(a, 0).copy(), 0)
        if op == 3:  # read-only
            b = a.copy()
            b.flags.writeable = False
            return b
        # misaligned: the data starts one byte into a buffer
        buf = np.zeros(a.nbytes + 1, np.uint8)
        b = buf[1:].view(a.dtype).reshape(a.shape) if a.dtype.kind != "O" else a
        b[...] = a
        return b

    def array(self, sym: str, dtype=None):
        """An argument meant to be a float array of symbolic shape ``sym``."""
        r = self.r
        dtype = dtype or self.dtype
        shape = self.shape(sym)
        if self.p(5):  # a different float dtype than the rest of the call
            dtype = np.float64 if dtype == np.float32 else np.float32
        bad = self.p(4)
        vals = self.values(shape, dtype if dtype in (np.float32, np.float64) else np.float64)
        if bad:
            bd = r.choice(BAD_DTYPES)
            with np.errstate(all="ignore"):
                try:
                    vals = vals.astype(bd)
                except (ValueError, TypeError, OverflowError):
                    vals = vals.astype(np.int64, casting="unsafe")
        vals = self.layout(vals)
        kind = r.int(0, 31)
        if kind == 0 and self.hostility:
            return self.other()
        if kind == 1 and self.hostility:  # nested lists
            return vals.tolist()
        if self.torch or (torch is not None and kind == 2):
            return self.tensor(vals)
        self.originals.append((vals, vals.copy()))
        return vals

    def tensor(self, a: np.ndarray):
        r = self.r
        try:
            # torch itself crashes on misaligned buffers (clone of a from_numpy view):
            # the misaligned layout is fuzzed through numpy arguments only.
            t = torch.from_numpy(np.ascontiguousarray(a) if a.flags.aligned else a.copy())
        except (TypeError, ValueError):  # dtypes torch lacks, byte-swapped arrays
            t = torch.zeros(a.shape, dtype=torch.float32)
        op = r.int(0, 15) if self.hostility else 15
        if op == 0 and t.dtype in (torch.float32, torch.float64):
            t = t.to(torch.bfloat16)
        elif op == 1 and t.ndim >= 2:  # non-contiguous view
            t = t.transpose(-1, -2).contiguous().transpose(-1, -2)
        elif op == 2 and t.is_floating_point():
            t = t.clone().requires_grad_(True)
        elif op == 3 and t.is_floating_point():  # negative-bit view (real part of conj)
            c = (torch.complex(t, torch.zeros_like(t))
                 if t.dtype in (torch.float32, torch.float64) else None)
            if c is not None:
                t = c.conj().imag
        elif op == 4 and t.dtype in (torch.float32, torch.float64):  # conjugate-bit complex
            t = torch.complex(t, t).conj()
        elif op == 5:
            t = torch.empty(t.shape, dtype=t.dtype, device="meta")
        elif op == 6 and t.ndim >= 1:
            try:
                t = t.to_sparse()
            except (RuntimeError, TypeError):
                pass
        elif op == 7 and t.ndim >= 1:  # zero-stride (expanded) view
            t = t[..., :1].expand(t.shape) if t.shape[-1] > 0 else t
        self.originals.append((t, t.detach().clone()
                               if t.device.type == "cpu" and not t.is_sparse else None))
        return t

    def other(self):
        return self.r.choice((None, "W", 3, 2.5, True, b"\x00", object(), [[1.0, 2.0], [3.0]],
                              [], {"a": 1}, np.float64(1.0), range(3), [[np.nan]]))

    def indices(self, sym: str, bound: int):
        r = self.r
        shape = self.shape(sym)
        n = int(np.prod(shape)) if shape else 1
        g = np.random.default_rng(r.u32())
        a = g.integers(0, max(bound, 1), n) if n else np.zeros(0, np.int64)
        if n and self.p(20):
            a[r.int(0, n - 1) if n < 256 else 0] = r.choice((-1, bound, bound + 1, 2**62, -(2**63),
                                                             2**31, -bound))
        dt = r.choice((np.int64, np.int64, np.int32, np.uint8, np.int16, np.uint64))
        if self.p(5):
            dt = r.choice((np.float64, np.float32, np.bool_, np.complex64))
        with np.errstate(all="ignore"):
            a = a.astype(dt).reshape(shape)
        a = self.layout(a)
        if self.torch or (torch is not None and r.chance(10)):
            try:
                return self.tensor(a)
            except TypeError:
                return a
        self.originals.append((a, a.copy()))
        return a

    def scalar(self, kind: str, good):
        """A scalar argument: usually ``good``, else hostile."""
        r = self.r
        if not self.p(25):
            return good
        pool = [0, -1, 1, 0.0, -0.0, -1.5, np.nan, np.inf, -np.inf, 1e-300, 5e-324, 1e300,
                True, False, None, "1", 1 + 0j, np.float32(np.nan), np.float64(1e-3),
                np.int64(2), np.int8(-1), np.uint64(2**64 - 1), [1.0]]
        if kind == "int":
            pool += list(HOSTILE_INTS) + [np.int32(0), 1.0]
        if torch is not None:
            pool += [torch.tensor(0.5), torch.tensor([1.0, 2.0]), torch.tensor(3),
                     torch.tensor(float("nan"))]
        v = r.choice(pool)
        if isinstance(v, (float, np.floating)) and v != 0 and not (1e-6 <= abs(v) <= 1e6):
            self.tame = False
        return v


# ------------------------------------------------------------------------- checkers
def _check_inputs_unchanged(g: Gen, op: str) -> None:
    for arg, copy in g.originals:
        if copy is None:
            continue
        if isinstance(arg, np.ndarray) and arg.dtype.kind == "O":
            same = arg.shape == copy.shape and all(x is y for x, y in zip(arg.flat, copy.flat))
        elif isinstance(arg, np.ndarray):
            same = arg.shape == copy.shape and np.array_equal(arg, copy,
                                                              equal_nan=arg.dtype.kind in "fc")
        else:
            x = arg.detach()
            same = x.shape == copy.shape and (bool(torch.equal(x, copy)) or bool(
                torch.equal(torch.nan_to_num(x.resolve_neg().resolve_conj()),
                            torch.nan_to_num(copy.resolve_neg().resolve_conj()))))
        if not same:
            raise Finding(f"{op}: an input argument was modified by the call")


def _kind_of(args) -> str:
    """'torch' when any argument is a tensor (results must be tensors), else 'numpy'."""
    def walk(x):
        if torch is not None and isinstance(x, torch.Tensor):
            return True
        if isinstance(x, (tuple, list)):
            return any(walk(y) for y in x)
        return False
    return "torch" if any(walk(a) for a in args) else "numpy"


def _check_result(op: str, res, kind: str, dtype, shape=None) -> None:
    def one(x, want_dtype, want_shape):
        if kind == "torch":
            if not isinstance(x, torch.Tensor):
                raise Finding(f"{op}: tensor arguments gave a {type(x).__name__} result")
            x = x.detach().cpu().numpy()
        elif not isinstance(x, np.ndarray):
            raise Finding(f"{op}: numpy arguments gave a {type(x).__name__} result")
        if want_dtype is not None and x.dtype != np.dtype(want_dtype):
            raise Finding(f"{op}: result dtype {x.dtype}, expected {np.dtype(want_dtype)}")
        if want_shape is not None and x.shape != tuple(want_shape):
            raise Finding(f"{op}: result shape {x.shape}, expected {tuple(want_shape)}")
        if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
            g = _CURRENT[0]
            tame = g is not None and g.tame
            STATS.note(f"{op}: non-finite values in a result from finite inputs"
                       + (" (all inputs tame: 1e-6 <= |x| <= 1e6 or 0)" if tame else ""))
            if tame and os.environ.get("LARIMAR_FUZZ_NONFINITE") == "1":
                raise Finding(f"{op}: non-finite result from tame finite inputs")

    if isinstance(res, tuple):
        for x, (dt, shp) in zip(res, shape or [(None, None)] * len(res)):
            one(x, dt, shp)
    else:
        one(res, dtype, shape)


def _np(x):
    if torch is not None and isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _float_dtype(*args):
    """The float dtype all float arrays share, as the call should see it (None if unclear)."""
    for a in args:
        if torch is not None and isinstance(a, torch.Tensor):
            return {torch.float32: np.float32, torch.float64: np.float64}.get(a.dtype)
        if isinstance(a, np.ndarray):
            return a.dtype.type if a.dtype in (np.float32, np.float64) else None
    return None


def call(op: str, fn, *args, expect=None, **kwargs):
    """Runs fn; classifies the outcome. ``expect(res)`` checks a result."""
    try:
        res = fn(*args, **kwargs)
    except ACCEPTED as exc:
        STATS.outcome(op, type(exc).__name__)
        feedback(f"{op}:{type(exc).__name__}:"
                 + " ".join(re.sub(r"[-\d.e+]+", "#", str(exc)).split()[:6]))
        return exc
    except Exception as exc:  # noqa: BLE001
        STATS.outcome(op, type(exc).__name__)
        if known_finding(exc, KNOWN_FINDINGS):
            return exc
        raise Finding(f"{op} raised {type(exc).__name__}: {exc}") from exc
    STATS.outcome(op, "ok")
    feedback(f"{op}:ok:{_kind_of(args)}:{_float_dtype(*args)}")
    if expect is not None:
        expect(res)
    return res


# ------------------------------------------------------------------------ functional ops
def _check_layout(op: str, res, kind: str, dtype, layout) -> None:
    """res against the table's expected results (op_cases.Res, or a tuple of them)."""
    if not isinstance(layout, op_cases.Res):  # a tuple of results (Res is a tuple too)
        if not isinstance(res, tuple) or len(res) != len(layout):
            raise Finding(f"{op}: expected a tuple of {len(layout)} results, got "
                          f"{type(res).__name__}")
        for r, item in zip(res, layout):
            _check_layout(op, r, kind, dtype, item)
    elif layout.kind == "dict":
        if not isinstance(res, dict):
            raise Finding(f"{op}: expected a dict result, got {type(res).__name__}")
    else:
        _check_result(op, res, kind, dtype if layout.kind == "f" else np.int64, layout.shape)


def _dtype_sources(case, a: dict):
    """The float arguments in order; of a sparse address (indices, weights), the weights."""
    for name in case.floats:
        v = a[name]
        if isinstance(v, tuple):
            v = v[1] if len(v) > 1 else None
        yield v


def _functional_op(case):
    """The harness op of one entry of the table (tests/op_cases.py): draw the arguments,
    call, and check a result against the entry's expected results."""
    def op(g: Gen) -> None:
        a = case.fuzz(g)
        kind = _kind_of([a[n] for n in case.arrays])
        dtype = _float_dtype(*_dtype_sources(case, a))
        call(case.name, case.fn, **a,
             expect=lambda res: _check_layout(case.name, res, kind, dtype, case.out(a)))
    op.__name__ = op.__qualname__ = f"op_{case.name}"
    return op


# --------------------------------------------------------------------- stateful memories
def _episodic_state(mem):
    st = {k: v.copy() for k, v in mem._core.state().items()}
    st["memory_prop"] = _np(mem.memory).copy()
    return st


def _kv_state(mem):
    return {"len": len(mem), "keys": _np(mem.keys).copy(), "values": _np(mem.values).copy(),
            "counts": mem._core.counts().copy(), "metric": mem.metric}


def _probe(fn):
    try:
        return ("ok", _np(fn()).copy())
    except ACCEPTED as exc:
        return (type(exc).__name__, None)


def _same_probe(a, b) -> bool:
    if a[0] != b[0]:
        return False
    return a[1] is None or (a[1].shape == b[1].shape and np.array_equal(a[1], b[1], equal_nan=True))


def op_episodic(g: Gen) -> None:
    r, d = g.r, g.dims
    K, C = max(d["K"], 1), max(d["C"], 1)
    dt = g.dtype
    prior = None
    if r.chance(170):
        prior = np.random.default_rng(r.u32()).standard_normal((K, C)).astype(dt)
    ridge = r.choice((1e-6, 1e-3, 1.0))
    if g.p(4):  # hostile constructor
        args = (g.scalar("int", K), g.scalar("int", C))
        kw = dict(prior=g.array("KC") if r.chance(128) else prior,
                  ridge=g.scalar("float", ridge), dtype=r.choice((None, dt, np.float16, "float64",
                                                                  np.int32, "x")))
        mem = call("EpisodicMemory()", lx.EpisodicMemory, *args, **kw)
        if isinstance(mem, BaseException) or max(mem.memory_size, mem.code_size) > MAX_DIM:
            return
    else:
        mem = lx.EpisodicMemory(K, C, prior=prior, ridge=ridge, dtype=dt)
    g.dims["K"], g.dims["C"] = mem.memory_size, mem.code_size
    g.dtype = mem.dtype.type
    probe_z = np.random.default_rng(7).standard_normal((2, mem.code_size)).astype(mem.dtype)
    for _ in range(r.int(1, 5)):
        before = _episodic_state(mem)
        before_read = _probe(lambda: mem.read(probe_z))
        which = r.int(0, 4)
        d = g.dims
        Kd = mem.memory_size
        if which == 0:
            Z = g.array("NC")
            W = g.array("NK") if (prior is None or r.chance(128)) else None
            res = call("Episodic.write", mem.write, Z, W)
        elif which == 1:
            Z, W = g.array("NC"), g.array("NK")
            alpha = g.scalar("float", r.choice((1.0, -1.0, 0.5, 2.0)))
            res = call("Episodic.update", mem.update, Z, W, alpha)
        elif which == 2:
            Z = g.array("NC")
            res = call("Episodic.address", mem.address, Z,
                       expect=lambda x: _check_result("Episodic.address", x, _kind_of((Z,)),
                                                      mem.dtype, (S(Z)[0], Kd)))
        elif which == 3:
            Z = g.array("NC")
            res = call("Episodic.read", mem.read, Z,
                       expect=lambda x: _check_result("Episodic.read", x, _kind_of((Z,)),
                                                      mem.dtype, (S(Z)[0], mem.code_size)))
        else:
            res = call("Episodic.memory", lambda: mem.memory,
                       expect=lambda x: _check_result("Episodic.memory", x, "numpy", mem.dtype,
                                                      (Kd, mem.code_size)))
        if isinstance(res, BaseException):
            if not same_state(before, _episodic_state(mem)):
                raise Finding(f"EpisodicMemory state changed by a call that raised "
                              f"{type(res).__name__}: {res}")
            if not _same_probe(before_read, _probe(lambda: mem.read(probe_z))):
                raise Finding(f"EpisodicMemory reads differently after a call that raised "
                              f"{type(res).__name__}: {res}")
        _check_inputs_unchanged(g, "EpisodicMemory")


def op_kv(g: Gen) -> None:
    r, d = g.r, g.dims
    dk, dv = max(d["d"], 1), max(d["v"], 1)
    metric = r.choice(("cosine", "ip", "l2"))
    if g.p(4):
        mem = call("KeyValueMemory()", lx.KeyValueMemory, g.scalar("int", dk),
                   g.scalar("int", dv), metric=r.choice((metric, "L2", "", None, 1)),
                   dtype=r.choice((g.dtype, np.float16, np.int64, "float32", np.complex64)))
        if isinstance(mem, BaseException) or max(mem.key_dim, mem.value_dim) > MAX_DIM:
            return
    else:
        mem = lx.KeyValueMemory(dk, dv, metric=metric, dtype=g.dtype)
    g.dims["d"], g.dims["v"] = mem.key_dim, mem.value_dim
    g.dtype = mem.dtype.type
    if r.chance(200):  # some valid content first
        n0 = r.int(1, 40)
        rng = np.random.default_rng(r.u32())
        keys = rng.standard_normal((n0, mem.key_dim)).astype(mem.dtype)
        if r.chance(60):
            keys[n0 // 2:] = keys[0]
        mem.add(keys, rng.standard_normal((n0, mem.value_dim)).astype(mem.dtype))
    probe_q = np.random.default_rng(11).standard_normal((2, mem.key_dim)).astype(mem.dtype)
    for _ in range(r.int(1, 5)):
        before = _kv_state(mem)
        before_read = _probe(lambda: mem.search(probe_q, 1))
        which = r.int(0, 3)
        d = g.dims
        k = g.scalar("int", r.choice((1, 2, d["k"], len(mem))))
        if which == 0:
            keys, values = g.array("nd"), g.array("nv")
            res = call("KV.add", mem.add, keys, values,
                       expect=lambda x: _check_result("KV.add", x, _kind_of((keys, values)),
                                                      np.int64, (S(keys)[0],)))
        elif which == 1:
            Q = g.array("nd")
            res = call("KV.search", mem.search, Q, k,
                       expect=lambda x: _check_result(
                           "KV.search", x, _kind_of((Q,)), None,
                           [(np.int64, (S(Q)[0], k)), (mem.dtype, (S(Q)[0], k))]))
        elif which == 2:
            Q = g.array("nd")
            alpha = None if r.chance(100) else g.scalar("float", r.choice((1.0, 1e-3)))
            res = call("KV.read", mem.read, Q, k=k, alpha=alpha,
                       expect=lambda x: _check_result("KV.read", x, _kind_of((Q,)), mem.dtype,
                                                      (S(Q)[0], mem.value_dim)))
        else:
            Q, values = g.array("nd"), g.array("nv")
            alpha = g.scalar("float", r.choice((1.0, 1e-3, 10.0)))
            res = call("KV.write", mem.write, Q, values, k, alpha)
        if isinstance(res, BaseException):
            if not same_state(before, _kv_state(mem)):
                raise Finding(f"KeyValueMemory state changed by a call that raised "
                              f"{type(res).__name__}: {res}")
            if not _same_probe(before_read, _probe(lambda: mem.search(probe_q, 1))):
                raise Finding(f"KeyValueMemory searches differently after a call that raised "
                              f"{type(res).__name__}: {res}")
        _check_inputs_unchanged(g, "KeyValueMemory")


def _hints(g: Gen, nq: int, n: int, k: int):
    """Hint ids for a key view's search: mostly (nq, h) valid ids, sometimes hostile."""
    r = g.r
    rng = np.random.default_rng(r.u32())
    k = min(max(int(k), 1), 8)   # k may be hostile (huge): the hints stay small
    h = int(r.choice((1, k, k + 2)))
    if g.p(8):
        hostile = (np.full((nq, h), n), np.full((nq, h), -1), np.zeros((nq + 1, h)),
                   np.zeros(nq), np.zeros((nq, 0), np.int64), [[0]] * nq, "0",
                   np.zeros((nq, h), np.float32))
        return hostile[r.int(0, len(hostile) - 1)]
    return rng.integers(0, max(n, 1), (nq, h))


def op_key_view(g: Gen) -> None:
    """KeyView (the snap's search over keys it does not own): int8 codes, hints and the
    projected screen must give the float view's ids and score bits, or refuse."""
    r = g.r
    view_type = _core.KeyViewF32 if g.dtype == np.float32 else _core.KeyViewF64
    metric = r.choice(("cosine", "ip", "l2"))
    if r.chance(24):  # large and low-rank: the projected screen's case (>= 4,096 x 48)
        rng = np.random.default_rng(r.u32())
        n, d = r.int(4096, 6000), r.int(48, 80)
        keys = (rng.standard_normal((n, 8)) @ rng.standard_normal((8, d))
                + 0.05 * rng.standard_normal((n, d))).astype(g.dtype)
        if r.chance(128):
            keys[: n // 8] = keys[0]
    else:
        keys = g.array("nd")
    view = call("KeyView()", view_type, keys, metric, r.choice(("int8", "none")),
                projected_screen=r.chance(200))
    if isinstance(view, BaseException):
        return
    plain = view_type(keys, metric)
    n, d = len(view), view.key_dim
    for _ in range(r.int(1, 4)):
        near = r.chance(100) and isinstance(keys, np.ndarray) and n >= 8
        Q = (keys[np.random.default_rng(r.u32()).integers(0, n, r.int(1, 40))] * 1.01
             if near else g.array("nd"))
        k = g.scalar("int", r.choice((1, 2, g.dims["k"], n)))
        shape = getattr(Q, "shape", None)   # hostile Q may be a ragged list: no shape
        nq = int(shape[0]) if shape is not None and len(shape) else 1
        hints = _hints(g, nq, n, k if isinstance(k, int) else 1) if r.chance(200) else None
        res = call("KeyView.search", view.search, Q, k, hints)
        if isinstance(res, BaseException):
            continue
        want = call("KeyView.search (float)", plain.search, Q, k)
        if isinstance(want, BaseException):
            raise Finding(f"KeyView: the int8/hinted search answered where the float view "
                          f"raised {type(want).__name__}: {want}")
        if not (np.array_equal(res[0], want[0])
                and np.array_equal(np.asarray(res[1]).view(np.uint8),
                                   np.asarray(want[1]).view(np.uint8))):
            raise Finding(f"KeyView ({view.key_codes}, hints={hints is not None}, projected="
                          f"{view.projected_dims}) differs from the float view's search")
    _check_inputs_unchanged(g, "KeyView")


# Memory objects first, then the functional ops in the table's order: an input's first byte
# picks one, so a new op (appended to op_cases.CASES, or here after them) leaves every saved
# input (first byte below the number of ops, fuzz/README.md) meaning the same calls.
OPS = ((op_episodic, op_kv) + tuple(_functional_op(case) for case in op_cases.CASES)
       + (op_key_view,))


_CURRENT = [None]  # the Gen of the input being run (for notes on its results)


def TestOneInput(data: bytes) -> None:
    STATS.tick()
    r = Reader(data)
    op = OPS[r.int(0, len(OPS) - 1)]
    g = Gen(r)
    _CURRENT[0] = g
    # Kernel threads from the input length (no byte of the stream: saved inputs keep their
    # meaning): 1 = serial paths, 3 = more threads than cores.
    threads = (2, 1, 3)[len(data) % 3]
    if lx.get_num_threads() != threads:
        lx.set_num_threads(threads)
    op(g)
    _check_inputs_unchanged(g, op.__name__[3:])


def _instrument() -> None:
    n = instrument_modules(["larimar_ext", "__main__", "_fuzzlib", "op_cases"])
    print(f"INFO: instrumented {n} Python functions (larimar_ext, this harness and the op "
          f"table's argument draws)", flush=True)


if __name__ == "__main__":
    main(TestOneInput, _instrument)
