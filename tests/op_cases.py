"""The table of functional ops: one ``OpCase`` per public op of larimar_ext/ops.py.

Each entry says how to build valid inputs, the float64 reference, the expected results
(dtype kind and shape), the parametrized and hypothesis cases, the bad-input cases and how
the fuzz harness draws arguments. It drives:

* tests/test_ops.py: every op against its reference, inputs untouched, per-episode
  agreement of batched calls, and a hypothesis property test per variant;
* tests/test_bad_input.py: every bad-input case raises the expected error naming the
  argument, and leaves every array as it was;
* fuzz/fuzz_api.py: one fuzzed op per entry, its results checked against ``out``.

A new op is one entry here (plus its kernel function and binding: docs/ADDING_AN_OP.md).

Conventions. ``build(rng, dtype, **params)`` returns the keyword arguments of a valid
call; keys starting with "_" are context for the reference and the bad cases (the
candidates' geometry, say), never passed to the op. ``out(a)`` gives the expected results
from the arguments as the call saw them (``Res`` or a tuple of them), so the fuzz harness
can check hostile calls that succeeded. ``fuzz(g)`` draws the arguments from the harness's
``Gen`` (fuzz/fuzz_api.py) in a fixed order: saved fuzz inputs keep their meaning only as
long as that order does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple, Union

import numpy as np

import larimar_ext as lx
from references import (assert_ndarray, assert_rel, assert_topk_valid, distinct_rows, randn,
                        ref_gaussian, ref_lstsq, ref_onehot, ref_pinv_address, ref_pinv_read,
                        ref_read, ref_gaussian_read_scored, ref_sparse_lstsq, ref_sqdist, ref_topk,
                        scored_candidates, soft_problem, to_numpy, tol, well_conditioned)

VE, TE = ValueError, TypeError
EITHER = (ValueError, TypeError)
# dtypes no op accepts for a float argument (each is a TypeError naming it)
BAD_DTYPES = (np.int32, np.float16, np.int64, np.bool_, np.complex128)
METRICS = ("ip", "cosine", "l2")

Args = Dict[str, Any]


class Res(NamedTuple):
    """One expected result: kind "f" (the call's float dtype), "i" (int64) or "dict"."""
    kind: str
    shape: Tuple[int, ...] = ()


Layout = Union[Res, Tuple[Res, ...]]


@dataclass(frozen=True)
class Bad:
    """A bad call: the valid arguments changed by ``args``; raises ``exc`` naming one of
    ``names``."""
    id: str
    args: Callable[[Args], Args]
    exc: Any
    names: Tuple[str, ...]


@dataclass(frozen=True)
class OpCase:
    name: str                                    # the public op: larimar_ext.<name>
    build: Callable[..., Args]                   # (rng, dtype, **params) -> valid arguments
    reference: Callable[[Args, Any], Any]        # (arguments, dtype) -> the float64 result
    out: Callable[[Args], Layout]                # arguments -> expected results
    params: Tuple[Args, ...]                     # parametrized reference cases
    strategies: Tuple[Tuple[str, Callable[[Any], Any]], ...]  # (variant, st -> params strategy)
    arrays: Tuple[str, ...]                      # array arguments (numpy or torch in, same out)
    example: Args                                # params of the bad-input tests' valid call
    bad: Tuple[Bad, ...]
    fuzz: Callable[[Any], Args]                  # Gen -> arguments, in the harness's read order
    int_arrays: Tuple[str, ...] = ()             # the index arrays among ``arrays``
    tol: Callable[[Any, Args], float] = lambda dtype, a: tol(dtype)
    check: Optional[Callable[..., None]] = None  # (got, ref, a, dtype, bound); default assert_rel

    @property
    def fn(self) -> Callable[..., Any]:
        return getattr(lx, self.name)

    @property
    def floats(self) -> Tuple[str, ...]:
        """The float array arguments, in order: the first that is an array gives the dtype."""
        return tuple(n for n in self.arrays if n not in self.int_arrays)

    def call(self, a: Args) -> Any:
        return self.fn(**{k: v for k, v in a.items() if not k.startswith("_")})

    def verify(self, got: Any, a: Args, dtype: Any) -> None:
        """The result of a valid call against the float64 reference."""
        ref, bound = self.reference(a, dtype), self.tol(dtype, a)
        if self.check is None:
            assert_rel(got, ref, bound)
        else:
            self.check(got, ref, a, dtype, bound)


def S(x: Any) -> Tuple[int, ...]:
    """The shape of an argument as the call saw it (array, tensor or nested list)."""
    shape = getattr(x, "shape", None)
    return tuple(shape) if shape is not None else np.shape(x)


def assert_layout(got: Any, layout: Layout, dtype: Any, what: str = "result") -> None:
    """got has the kinds, dtypes and shapes of ``layout`` (numpy in, numpy out)."""
    if not isinstance(layout, Res):  # a tuple of results (Res is a tuple too)
        assert isinstance(got, tuple) and len(got) == len(layout), f"{what}: {type(got)}"
        for i, (g, item) in enumerate(zip(got, layout)):
            assert_layout(g, item, dtype, f"{what}[{i}]")
    elif layout.kind == "dict":
        assert isinstance(got, dict), f"{what}: expected a dict, got {type(got)}"
    else:
        assert_ndarray(got, np.int64 if layout.kind == "i" else dtype, layout.shape, what)


def bad(cid: str, exc: Any, *names: str, **changes: Any) -> Bad:
    """A Bad whose call replaces the arguments in ``changes``; a callable change is given the
    valid arguments (``W=lambda a: a["W"][:, 0]``), anything else is used as is."""
    def args(a: Args) -> Args:
        return {**a, **{k: (v(a) if callable(v) else v) for k, v in changes.items()}}
    return Bad(cid, args, exc, names)


def poke(a: Any, val: Any = np.nan, where: int = -1) -> np.ndarray:
    """Copy of ``a`` with one element (the last by default) replaced by ``val``."""
    b = np.array(a, copy=True)
    b.flat[where] = val
    return b


def two(x: np.ndarray) -> np.ndarray:
    return np.stack([x, x])


def three(x: np.ndarray) -> np.ndarray:
    return np.stack([x, x, x])


def cast(name: str, dtype: Any) -> Callable[[Args], np.ndarray]:
    return lambda a: a[name].astype(dtype)


def shape_ids(params: Args) -> str:
    return "-".join(f"{k}{v}" for k, v in params.items())


def batched(B: int, make: Callable[[], np.ndarray]) -> np.ndarray:
    """make() itself (B = 0), or B of them stacked (a batch of B episodes)."""
    return np.stack([make() for _ in range(B)]) if B else make()


# ================================================================= lstsq_write(W, Z, ridge, rcond)
def build_lstsq(rng, dtype, N, K, C, ridge=0.0, B=0, cond=4.0) -> Args:
    W = batched(B, lambda: well_conditioned(rng, N, K, cond=cond, dtype=dtype))
    return dict(W=W, Z=randn(rng, *W.shape[:-1], C, dtype=dtype), ridge=ridge)


def fuzz_lstsq(g) -> Args:
    b = g.r.chance(60)
    W, Z = g.array("BNK" if b else "NK"), g.array("BNC" if b else "NC")
    ridge, rcond = g.scalar("float", g.r.choice((0.0, 1e-3))), g.scalar("float", None)
    return dict(W=W, Z=Z, ridge=ridge, rcond=rcond)


# (N, K, C): N<K, N=K, N>K, and the degenerate K=1, C=1, N=1 cases
LSTSQ_SHAPES = [(3, 7, 2), (6, 6, 3), (12, 5, 4), (1, 1, 1), (1, 5, 3), (9, 1, 3), (7, 4, 1),
                (40, 16, 8)]  # the last: bigger than one SIMD block
LSTSQ = OpCase(
    name="lstsq_write", build=build_lstsq,
    reference=lambda a, dt: ref_lstsq(a["W"], a["Z"], a["ridge"], dtype=dt),
    out=lambda a: Res("f", S(a["W"])[:-2] + (S(a["W"])[-1], S(a["Z"])[-1])),
    params=tuple(dict(N=n, K=k, C=c, ridge=r) for r in (0.0, 1e-3, 0.5, 10.0)
                 for n, k, c in LSTSQ_SHAPES)
    + tuple(dict(N=n, K=k, C=c, ridge=r, B=b) for r in (0.0, 0.3) for b in (1, 3)
            for n, k, c in [(3, 7, 2), (6, 6, 3), (12, 5, 4), (5, 1, 1)]),
    strategies=(("", lambda st: st.fixed_dictionaries(dict(
        N=st.integers(1, 14), K=st.integers(1, 10), C=st.integers(1, 6),
        ridge=st.sampled_from([0.0, 0.0, 1e-2, 1.0]), cond=st.just(5.0)))),),
    arrays=("W", "Z"), example=dict(N=6, K=4, C=3), fuzz=fuzz_lstsq,
    bad=(
        bad("lstsq-W-1d", VE, "W", W=lambda a: a["W"][:, 0]),
        bad("lstsq-W-4d", VE, "W", "Z", W=lambda a: a["W"][None, None],
            Z=lambda a: a["Z"][None, None]),
        bad("lstsq-Z-1d", VE, "Z", Z=lambda a: a["Z"][:, 0]),
        bad("lstsq-N-mismatch", VE, "W", "Z", Z=lambda a: a["Z"][:5]),
        bad("lstsq-rank-mix", VE, "W", "Z", W=lambda a: two(a["W"])),
        bad("lstsq-B-mismatch", VE, "W", "Z", W=lambda a: two(a["W"]), Z=lambda a: three(a["Z"])),
        bad("lstsq-W-nan", VE, "W", W=lambda a: poke(a["W"])),
        bad("lstsq-W-inf", VE, "W", W=lambda a: poke(a["W"], np.inf, 0)),
        bad("lstsq-Z-inf", VE, "Z", Z=lambda a: poke(a["Z"], -np.inf)),
        bad("lstsq-W3-nan", VE, "W", W=lambda a: poke(two(a["W"])), Z=lambda a: two(a["Z"])),
        bad("lstsq-empty-N", VE, "W", "Z", W=lambda a: a["W"][:0], Z=lambda a: a["Z"][:0]),
        bad("lstsq-empty-K", VE, "W", W=lambda a: a["W"][:, :0]),
        bad("lstsq-empty-C", VE, "Z", Z=lambda a: a["Z"][:, :0]),
        bad("lstsq-empty-B", VE, "W", "Z", W=lambda a: two(a["W"])[:0],
            Z=lambda a: two(a["Z"])[:0]),
        *(bad(f"lstsq-ridge-{v}", VE, "ridge", ridge=v) for v in (-1e-3, np.nan, np.inf, -np.inf)),
        *(bad(f"lstsq-rcond-{v}", VE, "rcond", rcond=v) for v in (-1.0, np.nan)),
        *(b for dt in BAD_DTYPES for b in (
            bad(f"lstsq-W-{np.dtype(dt).name}", TE, "W", W=cast("W", dt)),
            bad(f"lstsq-both-{np.dtype(dt).name}", TE, "W", "Z", W=cast("W", dt), Z=cast("Z", dt)),
            bad(f"lstsq-Z-{np.dtype(dt).name}", TE, "Z", Z=cast("Z", dt)))),
        bad("lstsq-mixed-dtypes", EITHER, "W", "Z", W=cast("W", np.float32)),
    ))


# ============================================ pinv_address(Z, R, rcond), pinv_read(Zq, M, rcond)
def build_through_pinv(z_name: str, r_name: str):
    def build(rng, dtype, N, K, C, B=0, cond=4.0) -> Args:
        Z = randn(rng, *((B,) if B else ()), N, C, dtype=dtype)
        R = batched(B, lambda: well_conditioned(rng, K, C, cond=cond, dtype=dtype))
        return {z_name: Z, r_name: R}
    return build


def fuzz_through_pinv(z_name: str, r_name: str):
    def draw(g) -> Args:
        b = g.r.chance(60)
        Z, R = g.array("BNC" if b else "NC"), g.array("BKC" if b else "KC")
        return {z_name: Z, r_name: R, "rcond": g.scalar("float", None)}
    return draw


def pinv_bad(prefix: str, z: str, r: str) -> Tuple[Bad, ...]:
    return (
        bad(f"{prefix}-{z}-1d", VE, z, **{z: lambda a: a[z][0]}),
        bad(f"{prefix}-{r}-1d", VE, r, **{r: lambda a: a[r][0]}),
        bad(f"{prefix}-C-mismatch", VE, z, r, **{r: lambda a: a[r][:, :2]}),
        bad(f"{prefix}-rank-mix", VE, z, r, **{z: lambda a: two(a[z])}),
        bad(f"{prefix}-{r}-nan", VE, r, **{r: lambda a: poke(a[r])}),
        bad(f"{prefix}-{z}-inf", VE, z, **{z: lambda a: poke(a[z], np.inf)}),
        bad(f"{prefix}-{r}-empty", VE, r, **{r: lambda a: a[r][:0]}),
        bad(f"{prefix}-{z}-empty", VE, z, **{z: lambda a: a[z][:0]}),
        bad(f"{prefix}-rcond-nan", VE, "rcond", rcond=np.nan),
        bad(f"{prefix}-{r}-int32", TE, r, **{r: cast(r, np.int32)}),
        bad(f"{prefix}-{z}-float16", TE, z, r, **{z: cast(z, np.float16), r: cast(r, np.float16)}),
        bad(f"{prefix}-mixed-dtypes", EITHER, z, r, **{r: cast(r, np.float32)}),
    )


# (N, K, C): K < C, K = C, K > C (R then has rank C < K), N = 1, K = 1, C = 1
PINV_SHAPES = [(5, 3, 6), (4, 5, 5), (6, 8, 4), (1, 4, 4), (3, 1, 5), (4, 3, 1)]
PINV_PARAMS = tuple(dict(N=n, K=k, C=c) for n, k, c in PINV_SHAPES) + tuple(
    dict(N=5, K=4, C=6, B=b) for b in (1, 3))
PINV_STRATEGY = (("", lambda st: st.fixed_dictionaries(dict(
    N=st.integers(1, 6), K=st.integers(1, 8), C=st.integers(1, 8), cond=st.just(5.0)))),)

PINV_ADDRESS = OpCase(
    name="pinv_address", build=build_through_pinv("Z", "R"),
    reference=lambda a, dt: ref_pinv_address(a["Z"], a["R"], dtype=dt),
    out=lambda a: Res("f", S(a["Z"])[:-1] + (S(a["R"])[-2],)),
    params=PINV_PARAMS, strategies=PINV_STRATEGY, arrays=("Z", "R"),
    example=dict(N=6, K=4, C=3), fuzz=fuzz_through_pinv("Z", "R"), bad=pinv_bad("pinv", "Z", "R"))

PINV_READ = OpCase(
    name="pinv_read", build=build_through_pinv("Zq", "M"),
    reference=lambda a, dt: ref_pinv_read(a["Zq"], a["M"], dtype=dt),
    out=lambda a: Res("f", S(a["Zq"])),
    params=PINV_PARAMS, strategies=PINV_STRATEGY, arrays=("Zq", "M"),
    example=dict(N=6, K=4, C=3), fuzz=fuzz_through_pinv("Zq", "M"),
    bad=pinv_bad("pinv_read", "Zq", "M"))


# =========================================================== gaussian_address(Z, R, alpha, top_k)
def gauss_tol(dtype, alpha) -> float:
    """Small alpha amplifies distance rounding by 1/(2 alpha): documented looser bound."""
    if alpha >= 0.1:
        return tol(dtype, 1e-4, 1e-9)
    return tol(dtype, 2e-3, 1e-8)


def build_gaussian(rng, dtype, N, K, C, alpha=1.0, top_k=None, kfrac=None) -> Args:
    if kfrac is not None:
        top_k = max(1, int(round(kfrac * K)))
    return dict(Z=randn(rng, N, C, dtype=dtype), R=distinct_rows(rng, K, C, dtype=dtype),
                alpha=alpha, top_k=top_k)


def assert_topk_address(idx, w, Z, R, alpha, k, dtype, bound) -> None:
    """(idx, w) is the k-nearest-keys Gaussian address of Z (robust to near-tie swaps)."""
    idx, w = to_numpy(idx), to_numpy(w)
    d2 = ref_sqdist(Z, R)
    ref_idx, _ = ref_gaussian(Z, R, alpha, top_k=k)
    for row in idx:
        assert len(set(row.tolist())) == k
    # the same distances as the true k nearest, in ascending order
    got_d2 = np.take_along_axis(d2, idx, axis=1)
    np.testing.assert_allclose(got_d2, np.take_along_axis(d2, ref_idx, axis=1), rtol=1e-5,
                               atol=1e-6)
    assert np.all(np.diff(got_d2, axis=1) >= -1e-5 * got_d2[:, 1:].clip(1.0)), got_d2
    # weights: exp(-d^2/(2 alpha s^2)) over the returned keys, renormalised
    s2 = d2.min(axis=1, keepdims=True)
    logits = -got_d2 / (2 * alpha * s2)
    ref_w = np.exp(logits - logits.max(axis=1, keepdims=True))
    ref_w /= ref_w.sum(axis=1, keepdims=True)
    assert_rel(w, ref_w, bound, "weights")
    np.testing.assert_allclose(w.sum(axis=1, dtype=np.float64), 1.0, atol=tol(dtype, 1e-5, 1e-12))


def check_gaussian(got, ref, a, dtype, bound) -> None:
    if a["top_k"] is not None:
        assert_topk_address(*got, a["Z"], a["R"], a["alpha"], a["top_k"], dtype, bound)
        return
    W = to_numpy(got)
    assert np.all(W >= 0)
    np.testing.assert_allclose(W.sum(axis=1, dtype=np.float64), 1.0, atol=tol(dtype, 1e-5, 1e-12))
    assert_rel(W, ref, bound)


def fuzz_gaussian(g) -> Args:
    Z, R = g.array("NC"), g.array("KC")
    alpha = g.scalar("float", g.r.choice((1.0, 0.1, 1e-3, 10.0)))
    top_k = g.scalar("int", g.r.choice((None, 1, g.dims["k"])))
    return dict(Z=Z, R=R, alpha=alpha, top_k=top_k)


def gaussian_out(a: Args) -> Layout:
    n = (S(a["Z"])[0],)
    if a["top_k"] is None:
        return Res("f", n + (S(a["R"])[0],))
    return Res("i", n + (a["top_k"],)), Res("f", n + (a["top_k"],))


GAUSS_DIMS = dict(N=lambda st: st.integers(1, 6), K=lambda st: st.integers(1, 10),
                  C=lambda st: st.integers(1, 6),
                  alpha=lambda st: st.sampled_from([1e-3, 0.1, 1.0, 10.0]))
GAUSSIAN = OpCase(
    name="gaussian_address", build=build_gaussian,
    reference=lambda a, dt: ref_gaussian(a["Z"], a["R"], a["alpha"], a["top_k"]),
    out=gaussian_out, check=check_gaussian,
    tol=lambda dt, a: gauss_tol(dt, a["alpha"]),
    params=tuple(dict(N=5, K=7, C=3, alpha=al, top_k=tk) for al in (1e-3, 1.0)
                 for tk in (None, 1, 3, 7)),
    strategies=(
        ("dense", lambda st: st.fixed_dictionaries({k: v(st) for k, v in GAUSS_DIMS.items()})),
        ("top_k", lambda st: st.fixed_dictionaries(
            {**{k: v(st) for k, v in GAUSS_DIMS.items()}, "kfrac": st.floats(0.0, 1.0)})),
    ),
    arrays=("Z", "R"), example=dict(N=6, K=4, C=3), fuzz=fuzz_gaussian,
    bad=(
        *(bad(f"gauss-alpha-{v}", VE, "alpha", alpha=v) for v in (0.0, -0.5, np.nan, np.inf)),
        *(bad(f"gauss-top_k-{v}", VE, "top_k", top_k=v) for v in (0, -1, 5)),  # K = 4
        bad("gauss-top_k-float", EITHER, "top_k", top_k=1.5),
        bad("gauss-C-mismatch", VE, "Z", "R", Z=lambda a: a["Z"][:, :2]),
        bad("gauss-Z-nan", VE, "Z", Z=lambda a: poke(a["Z"])),
        bad("gauss-R-inf", VE, "R", R=lambda a: poke(a["R"], np.inf), top_k=2),
        bad("gauss-R-empty", VE, "R", R=lambda a: a["R"][:0]),
        bad("gauss-Z-1d", VE, "Z", Z=lambda a: a["Z"][0]),
        bad("gauss-R-int32", TE, "R", R=cast("R", np.int32)),
        bad("gauss-mixed", EITHER, "Z", "R", Z=cast("Z", np.float32)),
    ))


# ====================================================================== onehot_address(Z, R)
def check_onehot(got, ref, a, dtype, bound) -> None:
    """The nearest distance (robust to near ties), weight 1."""
    idx, w = to_numpy(got[0]), to_numpy(got[1])
    assert np.array_equal(w, np.ones(w.shape, dtype))
    d2 = ref_sqdist(a["Z"], a["R"])
    got_d2 = np.take_along_axis(d2, idx, axis=1)[:, 0]
    np.testing.assert_allclose(got_d2, d2.min(axis=1), rtol=1e-5, atol=1e-6)


ONEHOT = OpCase(
    name="onehot_address",
    build=lambda rng, dtype, N, K, C: dict(Z=randn(rng, N, C, dtype=dtype),
                                           R=distinct_rows(rng, K, C, dtype=dtype)),
    reference=lambda a, dt: ref_onehot(a["Z"], a["R"]),
    out=lambda a: (Res("i", (S(a["Z"])[0], 1)), Res("f", (S(a["Z"])[0], 1))),
    check=check_onehot,
    params=(dict(N=6, K=9, C=4), dict(N=1, K=1, C=1), dict(N=8, K=3, C=6)),
    strategies=(("", lambda st: st.fixed_dictionaries(dict(
        N=st.integers(1, 8), K=st.integers(1, 10), C=st.integers(1, 6)))),),
    arrays=("Z", "R"), example=dict(N=6, K=4, C=3),
    fuzz=lambda g: dict(Z=g.array("NC"), R=g.array("KC")),
    bad=(
        bad("onehot-C-mismatch", VE, "Z", "R", R=lambda a: a["R"][:, :2]),
        bad("onehot-R-nan", VE, "R", R=lambda a: poke(a["R"])),
        bad("onehot-Z-inf", VE, "Z", Z=lambda a: poke(a["Z"], np.inf)),
        bad("onehot-R-empty", VE, "R", R=lambda a: a["R"][:0]),
        bad("onehot-Z-empty", VE, "Z", Z=lambda a: a["Z"][:0]),
        bad("onehot-Z-float16", TE, "Z", Z=cast("Z", np.float16)),
    ))


# ===================================================================================== read(W, M)
def build_read(rng, dtype, N, K, C, B=0, k=0) -> Args:
    """Dense W (N, K) (batched: B episodes), or with k > 0 the sparse address of k distinct
    slots per row, (indices, weights)."""
    if k:
        idx = np.stack([rng.choice(K, size=k, replace=False) for _ in range(N)]).astype(np.int64)
        return dict(W=(idx, rng.random((N, k)).astype(dtype)), M=randn(rng, K, C, dtype=dtype))
    lead = (B,) if B else ()
    return dict(W=randn(rng, *lead, N, K, dtype=dtype), M=randn(rng, *lead, K, C, dtype=dtype))


def check_read(got, ref, a, dtype, bound) -> None:
    assert_rel(got, ref, bound)
    if isinstance(a["W"], tuple):  # identical to the dense read of the densified address
        idx, w = a["W"]
        Wd = np.zeros((idx.shape[0], a["M"].shape[0]), dtype)
        np.put_along_axis(Wd, idx, w, axis=1)
        assert_rel(got, lx.read(Wd, a["M"]), tol(dtype, 1e-6, 1e-14))


def fuzz_read(g) -> Args:
    d = g.dims
    if g.r.chance(100):  # sparse address
        W = (g.indices("Nk", d["K"]), g.array("Nk"))
        if g.p(3):
            W = W + (W[1],) if g.r.chance(128) else W[:1]
        return dict(W=W, M=g.array("KC"))
    b = g.r.chance(60)
    W, M = g.array("BNK" if b else "NK"), g.array("BKC" if b else "KC")
    return dict(W=W, M=M)


def read_out(a: Args) -> Layout:
    W, M = a["W"], a["M"]
    if isinstance(W, tuple):
        return Res("f", (S(W[0])[0], S(M)[-1]))
    return Res("f", S(W)[:-1] + (S(M)[-1],))


# a sparse address into the K = 4 slots of the bad-input example (a repeated slot in row 2)
_IDX = np.array([[0, 1], [2, 3], [1, 1], [3, 0], [2, 0], [0, 3]], np.int64)
_WTS = np.random.default_rng(20240601).random((6, 2))
READ_SHAPES = [(4, 7, 3), (6, 6, 6), (9, 3, 5), (1, 1, 1), (5, 1, 4), (3, 5, 1), (33, 17, 9)]
READ = OpCase(
    name="read", build=build_read,
    reference=lambda a, dt: ref_read(a["W"], a["M"]),
    out=read_out, check=check_read, tol=lambda dt, a: tol(dt, 1e-5, 1e-12),
    params=tuple(dict(N=n, K=k, C=c) for n, k, c in READ_SHAPES)
    + tuple(dict(N=n, K=k, C=c, B=b) for b in (1, 4)
            for n, k, c in [(3, 6, 2), (5, 5, 5), (7, 2, 3), (2, 1, 1)])
    + tuple(dict(N=n, K=kk, C=c, k=k) for n, kk, c, k in [(5, 9, 3, 2), (4, 3, 6, 3), (1, 1, 1, 1),
                                                         (6, 4, 1, 1), (3, 20, 7, 5)]),
    strategies=(("dense", lambda st: st.fixed_dictionaries(dict(
        N=st.integers(1, 8), K=st.integers(1, 9), C=st.integers(1, 6), B=st.integers(0, 3)))),),
    arrays=("W", "M"), example=dict(N=6, K=4, C=3), fuzz=fuzz_read,
    bad=(
        bad("read-K-mismatch", VE, "W", "M", M=lambda a: a["M"][:3]),
        bad("read-W-1d", VE, "W", W=lambda a: a["W"][0]),
        bad("read-M-1d", VE, "M", M=lambda a: a["M"][:, 0]),
        bad("read-rank-mix", VE, "W", "M", W=lambda a: two(a["W"])),
        bad("read-B-mismatch", VE, "W", "M", W=lambda a: two(a["W"]), M=lambda a: three(a["M"])),
        bad("read-M-nan", VE, "M", M=lambda a: poke(a["M"])),
        bad("read-W-inf", VE, "W", W=lambda a: poke(a["W"], np.inf)),
        bad("read-W-empty", VE, "W", W=lambda a: a["W"][:0]),
        bad("read-M-int32", TE, "M", M=cast("M", np.int32)),
        bad("read-W-float16", TE, "W", "M", W=cast("W", np.float16), M=cast("M", np.float16)),
        bad("read-mixed", EITHER, "W", "M", W=cast("W", np.float32)),
        bad("read-idx-too-big", VE, "indices", "W", W=(poke(_IDX, 4), _WTS)),
        bad("read-idx-negative", VE, "indices", "W", W=(poke(_IDX, -1, 0), _WTS)),
        bad("read-idx-float", TE, "indices", "W", W=(_IDX.astype(np.float64), _WTS)),
        bad("read-weights-shape", VE, "weights", "indices", "W", W=(_IDX, _WTS[:, :1])),
        bad("read-weights-nan", VE, "weights", "W", W=(_IDX, poke(_WTS))),
        bad("read-weights-int", TE, "weights", "W", W=(_IDX, _IDX)),
        bad("read-tuple-len", EITHER, "W", W=(_IDX, _WTS, _WTS)),
    ))


# =============================== gaussian_read_scored(scores, values, metric, alpha, Q, key_sq)
def build_gread(rng, dtype, metric, alpha, nq=6, k=5, d=7, c=4) -> Args:
    Q, keys, scores, values = scored_candidates(rng, metric, dtype, nq, k, d, c)
    key_sq = (keys.astype(np.float64) ** 2).sum(-1).astype(dtype)
    ip = metric == "ip"
    return dict(scores=scores, values=values, metric=metric, alpha=alpha,
                Q=Q if ip else None, key_sq=key_sq if ip else None,
                _Q=Q, _keys=keys, _key_sq=key_sq)


def check_gread(got, ref, a, dtype, bound) -> None:
    what = f"{a['metric']} alpha={a['alpha']}"
    assert_rel(got[1:], ref[1:], bound, what)
    # row 0 holds the query itself among its candidates: its value, up to the rounding
    # of its distance (cosine: 2 - 2 cos of a unit vector with itself is an ulp or so)
    assert_rel(got[0], a["values"][0, 2], bound, f"{what} exact match")


def fuzz_gread(g) -> Args:
    scores, values = g.array("nk"), g.array("nkv")
    metric = g.r.choice(METRICS) if not g.p(8) else g.r.choice(("IP", "dot", "", None, 3))
    alpha = g.scalar("float", g.r.choice((1.0, 0.05, 1e-3)))
    # Q and key_sq as the metric wants them (only "ip" uses them), the other way when hostile
    ip = metric == "ip"
    Q = g.array("nd") if ip != g.p(20) else None
    key_sq = g.array("nk") if ip != g.p(20) else None
    return dict(scores=scores, values=values, metric=metric, alpha=alpha, Q=Q, key_sq=key_sq)


GREAD = OpCase(
    name="gaussian_read_scored", build=build_gread,
    reference=lambda a, dt: ref_gaussian_read_scored(a["_Q"], a["_keys"], a["values"], a["alpha"]),
    out=lambda a: Res("f", (S(a["scores"])[0], S(a["values"])[-1])), check=check_gread,
    params=tuple(dict(metric=m, alpha=al) for m in METRICS for al in (0.05, 1.0)),
    strategies=(), arrays=("scores", "values", "Q", "key_sq"),
    example=dict(metric="l2", alpha=0.5, nq=2, k=5, d=3, c=3), fuzz=fuzz_gread,
    bad=(
        bad("gread-metric", VE, "metric", metric="dot"),
        bad("gread-metric-type", TE, "metric", metric=2),
        bad("gread-scores-1d", VE, "scores", scores=lambda a: a["scores"][0]),
        bad("gread-values-2d", VE, "values", values=lambda a: a["values"][:, :, 0]),
        bad("gread-values-k", VE, "values", values=lambda a: a["values"][:, :4]),
        bad("gread-values-rows", VE, "values", values=lambda a: a["values"][:1]),
        bad("gread-scores-nan", VE, "scores", scores=lambda a: poke(a["scores"])),
        bad("gread-values-inf", VE, "values", values=lambda a: poke(a["values"], np.inf)),
        bad("gread-l2-positive", VE, "scores", scores=lambda a: -a["scores"]),
        bad("gread-empty", VE, "scores", scores=lambda a: a["scores"][:0],
            values=lambda a: a["values"][:0]),
        *(bad(f"gread-alpha-{v}", VE, "alpha", alpha=v) for v in (0.0, -1.0, np.nan, np.inf)),
        bad("gread-alpha-str", TE, "alpha", alpha="0.5"),
        bad("gread-ip-no-Q", VE, "Q", metric="ip", key_sq=lambda a: a["_key_sq"]),
        bad("gread-ip-no-key_sq", VE, "key_sq", metric="ip", Q=lambda a: a["_Q"]),
        bad("gread-ip-Q-rows", VE, "Q", metric="ip", Q=np.ones((3, 3)),
            key_sq=lambda a: a["_key_sq"]),
        bad("gread-ip-Q-nan", VE, "Q", metric="ip", Q=lambda a: poke(a["_Q"]),
            key_sq=lambda a: a["_key_sq"]),
        bad("gread-ip-key_sq-shape", VE, "key_sq", metric="ip", Q=lambda a: a["_Q"],
            key_sq=lambda a: a["_key_sq"][:, :4]),
        bad("gread-ip-key_sq-negative", VE, "key_sq", metric="ip", Q=lambda a: a["_Q"],
            key_sq=lambda a: -a["_key_sq"]),
        bad("gread-cosine-Q", VE, "Q", metric="cosine", Q=lambda a: a["_Q"]),
        bad("gread-l2-key_sq", VE, "key_sq", key_sq=lambda a: a["_key_sq"]),
        bad("gread-scores-int32", TE, "scores", scores=cast("scores", np.int32)),
        bad("gread-mixed", EITHER, "scores", "values", values=cast("values", np.float32)),
    ))


# ================================================================== topk(Q, keys, k, metric)
def build_topk(rng, dtype, nq, K, d, k=None, metric="ip", kfrac=None) -> Args:
    if kfrac is not None:
        k = max(1, int(round(kfrac * K)))
    return dict(Q=randn(rng, nq, d, dtype=dtype), keys=randn(rng, K, d, dtype=dtype), k=k,
                metric=metric)


def fuzz_topk(g) -> Args:
    Q, keys = g.array("nd"), g.array("Kd")
    k = g.scalar("int", g.r.choice((1, g.dims["k"], g.dims["K"])))
    metric = g.r.choice(METRICS) if not g.p(8) else \
        g.r.choice(("IP", "dot", "", None, 3, "cosine\0", "l2 "))
    return dict(Q=Q, keys=keys, k=k, metric=metric)


TOPK = OpCase(
    name="topk", build=build_topk,
    reference=lambda a, dt: ref_topk(a["Q"], a["keys"], a["k"], a["metric"]),
    out=lambda a: (Res("i", (S(a["Q"])[0], a["k"])), Res("f", (S(a["Q"])[0], a["k"]))),
    # near ties make the exact reference order unstable: check validity and ordering
    check=lambda got, ref, a, dt, bound: assert_topk_valid(*got, a["Q"], a["keys"], a["k"],
                                                           a["metric"], atol=bound),
    tol=lambda dt, a: tol(dt, 1e-5, 1e-12),
    params=tuple(dict(nq=nq, K=K, d=d, k=k, metric=m) for m in METRICS
                 for nq, K, d, k in [(1, 1, 1, 1), (1, 5, 1, 2), (4, 1, 3, 1), (2, 300, 16, 7)]),
    strategies=(("", lambda st: st.fixed_dictionaries(dict(
        nq=st.integers(1, 6), K=st.integers(1, 40), d=st.integers(1, 8),
        metric=st.sampled_from(METRICS), kfrac=st.floats(0.0, 1.0)))),),
    arrays=("Q", "keys"), example=dict(nq=2, K=5, d=3, k=2), fuzz=fuzz_topk,
    bad=(
        *(bad(f"topk-k-{v}", VE, "k", k=v) for v in (0, -2, 6)),  # 5 keys
        bad("topk-metric", VE, "metric", metric="dot"),
        bad("topk-d-mismatch", VE, "Q", "keys", Q=lambda a: a["Q"][:, :2]),
        bad("topk-Q-nan", VE, "Q", Q=lambda a: poke(a["Q"])),
        bad("topk-keys-inf", VE, "keys", keys=lambda a: poke(a["keys"], np.inf), metric="l2"),
        bad("topk-keys-empty", VE, "keys", "k", keys=lambda a: a["keys"][:0], k=1),
        bad("topk-Q-empty", VE, "Q", Q=lambda a: a["Q"][:0], k=1),
        bad("topk-Q-1d", VE, "Q", Q=lambda a: a["Q"][0], k=1),
        bad("topk-keys-int32", TE, "keys", keys=cast("keys", np.int32), k=1),
        bad("topk-Q-float16", TE, "Q", "keys", Q=cast("Q", np.float16),
            keys=cast("keys", np.float16), k=1),
        bad("topk-mixed", EITHER, "Q", "keys", Q=cast("Q", np.float32), k=1),
    ))


# ============================= sparse_lstsq_write(indices, weights, Z, memory_size, ridge, prior)
def build_sparse(rng, dtype, K, T=None, k=1, soft=0, C=3, ridge=0.0, with_prior=False,
                 tfrac=None) -> Args:
    """soft_problem's address of T of the K slots (k per row, soft extra rows)."""
    k = min(k, K)
    if tfrac is not None:
        T = k + int(round(tfrac * (K - k)))
    idx, w, Z, _ = soft_problem(rng, K, T, k, soft, C, dtype)
    prior = randn(rng, K, C, dtype=dtype) if with_prior else None
    return dict(indices=idx, weights=w, Z=Z, memory_size=K, ridge=ridge, prior=prior)


def check_sparse(got, ref, a, dtype, bound) -> None:
    assert_rel(got, ref, bound)
    K, C = got.shape
    untouched = np.setdiff1d(np.arange(K), a["indices"])
    expect = np.zeros((len(untouched), C), dtype) if a["prior"] is None else a["prior"][untouched]
    assert np.array_equal(got[untouched], expect), "untouched slots must keep the prior"


def fuzz_sparse(g) -> Args:
    K = g.dims["K"]
    idx, w, Z = g.indices("Nk", K), g.array("Nk"), g.array("NC")
    memory_size = g.scalar("int", K)
    ridge = g.scalar("float", g.r.choice((0.0, 1e-3, 1.0)))
    prior = g.array("KC") if g.r.chance(80) else None
    tol_ = g.scalar("float", 1e-10)
    max_iter = g.scalar("int", g.r.choice((None, 1, 5, 100)))
    return dict(indices=idx, weights=w, Z=Z, memory_size=memory_size, ridge=ridge, prior=prior,
                tol=tol_, max_iter=max_iter, return_info=g.r.chance(40))


def sparse_out(a: Args) -> Layout:
    m = Res("f", (a["memory_size"], S(a["Z"])[1]))
    return (m, Res("dict")) if a.get("return_info") else m


SPARSE = OpCase(
    name="sparse_lstsq_write", build=build_sparse,
    reference=lambda a, dt: ref_sparse_lstsq(a["indices"], a["weights"], a["Z"], a["memory_size"],
                                             a["ridge"], a["prior"]),
    out=sparse_out, check=check_sparse,
    # the kernel may use conjugate gradients (docs/DESIGN.md section 2.8): 1e-8 in float64
    tol=lambda dt, a: tol(dt, 1e-4, 1e-8),
    # overlapping soft rows couple slots: all slots touched, some slots, a larger memory
    params=tuple(dict(K=K, T=T, k=k, soft=s, C=6, ridge=r) for r in (0.0, 1e-2)
                 for K, T, k, s in [(8, 8, 2, 0), (8, 8, 3, 10), (40, 5, 2, 4), (200, 60, 3, 30)]),
    strategies=(("", lambda st: st.fixed_dictionaries(dict(
        K=st.integers(1, 30), k=st.integers(1, 3), tfrac=st.floats(0.0, 1.0),
        soft=st.integers(0, 12), C=st.integers(1, 5), ridge=st.sampled_from([0.0, 0.0, 1e-3, 0.5]),
        with_prior=st.booleans()))),),
    arrays=("indices", "weights", "Z", "prior"), int_arrays=("indices",),
    example=dict(K=4, T=4, k=2, soft=2, C=3), fuzz=fuzz_sparse,
    bad=(
        *(bad(f"sparse-memory_size-{v}", VE, "memory_size", "indices", memory_size=v)
          for v in (0, -3)),
        bad("sparse-idx-out-of-range", VE, "indices", "memory_size", memory_size=3),  # 4 touched
        bad("sparse-idx-negative", VE, "indices", indices=lambda a: poke(a["indices"], -1, 0)),
        bad("sparse-idx-float", TE, "indices", indices=cast("indices", np.float64)),
        bad("sparse-weights-shape", VE, "weights", "indices", weights=lambda a: a["weights"][:5]),
        bad("sparse-Z-rows", VE, "Z", Z=lambda a: a["Z"][:5]),
        bad("sparse-weights-nan", VE, "weights", weights=lambda a: poke(a["weights"])),
        bad("sparse-Z-inf", VE, "Z", Z=lambda a: poke(a["Z"], np.inf)),
        bad("sparse-empty", VE, "indices", "weights", "Z", indices=lambda a: a["indices"][:0],
            weights=lambda a: a["weights"][:0], Z=lambda a: a["Z"][:0]),
        *(bad(f"sparse-ridge-{v}", VE, "ridge", ridge=v) for v in (-0.1, np.nan, np.inf)),
        bad("sparse-prior-shape", VE, "prior", prior=np.ones((5, 3))),
        bad("sparse-prior-nan", VE, "prior", prior=poke(np.ones((4, 3)))),
        bad("sparse-weights-int32", TE, "weights", weights=cast("weights", np.int32)),
        bad("sparse-Z-float16", TE, "weights", "Z", weights=cast("weights", np.float16),
            Z=cast("Z", np.float16)),
        bad("sparse-mixed", EITHER, "weights", "Z", weights=cast("weights", np.float32)),
    ))


# The fuzz harness picks an op by its index (after its two memory objects): a new op goes at
# the end, so that the saved fuzz inputs (op byte below the number of ops) keep their calls.
CASES: Tuple[OpCase, ...] = (LSTSQ, PINV_ADDRESS, PINV_READ, GAUSSIAN, ONEHOT, READ, TOPK, SPARSE,
                             GREAD)
