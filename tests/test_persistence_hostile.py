"""Hostile files for EpisodicMemory.load / KeyValueMemory.load, and kill-during-save.

Every malformed file must be refused with a ValueError whose message names the path
(README: "saves are atomic and loads check everything"); nothing in a file is ever
unpickled or executed; a save killed at any moment leaves at the target path either the
old complete file or the new complete file.

Families: truncations at every prefix length (length field, header, data); single-bit
flips (every bit of the length field and of the array bytes of small files; in the JSON
header every bit of the format, version and config values and of a seeded 25% of the
other bytes); wrong version; wrong format kind; well-formed files (valid checksums) with
wrong shapes, dtypes, config values or array contents; headers claiming enormous sizes or
offsets beyond the file; pickle / torch / numpy files renamed (with a marker side effect
that must never happen); SIGKILL of a process saving in a loop (LARIMAR_KILL_TRIALS,
default 30); loads racing a process that saves in a loop. Counts are printed at the end
of the module (pytest -s).
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import signal
import struct
import subprocess
import sys
import textwrap
import time
from collections import Counter

import numpy as np
import pytest
from safetensors.numpy import save_file

import larimar_ext as lx
from larimar_ext import _persist

KINDS = {"EpisodicMemory": "larimar_ext.EpisodicMemory",
         "KeyValueMemory": "larimar_ext.KeyValueMemory"}
COUNTS: Counter = Counter()


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    yield
    total = sum(v for k, v in COUNTS.items() if k.startswith("tried:"))
    lines = [f"  {k}: {v}" for k, v in sorted(COUNTS.items())]
    print(f"\n[persistence-hostile] malformed files tried: {total}\n" + "\n".join(lines))


# ------------------------------------------------------------------------------ helpers
def refusal(cls, path):
    """None if ``cls.load(path)`` raised a ValueError naming the path, else what happened."""
    try:
        obj = cls.load(path)
    except ValueError as exc:
        if os.fspath(path) in str(exc):
            return None
        return f"ValueError not naming the path: {exc}"
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"
    return f"loaded: {obj!r}"


def check_refused(path, family, loaders=(lx.EpisodicMemory, lx.KeyValueMemory)):
    COUNTS[f"tried:{family}"] += 1
    problems = []
    for cls in loaders:
        why = refusal(cls, path)
        if why is None:
            COUNTS[f"refused:{family}"] += 1
        else:
            problems.append(f"{cls.__name__}.load: {why}")
    return problems


def digest(a):
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def write_file(path, arrays, kind, config, version="1", metadata=None, sign=True):
    """A well-formed safetensors file laid out like larimar_ext's, with valid checksums
    (of the arrays, and of the header where the format has one)."""
    config_json = json.dumps(config, sort_keys=True)
    digests = {k: digest(v) for k, v in arrays.items()} if sign else {}
    header_digest = getattr(_persist, "_header_digest", None)
    if sign and header_digest is not None:
        digests[_persist._CONFIG_DIGEST] = header_digest(kind, config_json)
    meta = {"format": kind, "version": version, "config": config_json,
            "sha256": json.dumps(digests, sort_keys=True)}
    if metadata is not None:
        meta = metadata(meta)
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path), metadata=meta)
    return path


def split(data):
    (n,) = struct.unpack("<Q", data[:8])
    return n, json.loads(data[8:8 + n]), data[8 + n:]


def join(header, body, pad=True):
    raw = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + body


# ------------------------------------------------------------------------ valid files
def episodic(dtype=np.float32, prior=True, K=3, C=2):
    rng = np.random.default_rng(5)
    p = rng.standard_normal((K, C)).astype(dtype) if prior else None
    m = lx.EpisodicMemory(K, C, prior=p, ridge=1e-3, dtype=dtype)
    W = rng.standard_normal((2, K)).astype(dtype)
    m.write(rng.standard_normal((2, C)).astype(dtype), W)
    return m


def kv(dtype=np.float32, metric="cosine", n=4):
    rng = np.random.default_rng(6)
    m = lx.KeyValueMemory(3, 2, metric=metric, dtype=dtype)
    if n:
        m.add(rng.standard_normal((n, 3)).astype(dtype), rng.standard_normal((n, 2)).astype(dtype))
    return m


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("valid")
    out = {}
    for name, obj in {"episodic_prior_f32": episodic(np.float32, True),
                      "episodic_noprior_f64": episodic(np.float64, False),
                      "kv_cosine_f32": kv(np.float32, "cosine"),
                      "kv_empty_f64": kv(np.float64, "l2", 0)}.items():
        path = d / f"{name}.safetensors"
        obj.save(str(path))
        out[name] = path.read_bytes()
    return out


def loader_of(name):
    return lx.EpisodicMemory if name.startswith("episodic") else lx.KeyValueMemory


def test_valid_files_load(files, tmp_path):
    for name, data in files.items():
        p = tmp_path / f"{name}.safetensors"
        p.write_bytes(data)
        loader_of(name).load(str(p))
        assert refusal(lx.KeyValueMemory if name.startswith("episodic") else lx.EpisodicMemory,
                       str(p)) is None  # the other kind is refused


def test_missing_path_and_directory(tmp_path):
    for p in (tmp_path / "nope.safetensors", tmp_path):
        assert check_refused(str(p), "not-a-file") == []


def test_unreadable_file_is_refused(tmp_path, monkeypatch):
    problems = []
    if os.path.isfile("/proc/self/mem"):  # Linux: a "regular file" whose read fails
        problems += [f"/proc/self/mem: {x}" for x in check_refused("/proc/self/mem", "unreadable")]
    p = tmp_path / "locked.safetensors"
    kv(np.float32).save(str(p))
    import builtins
    import io

    def denying(real):
        def opener(file, *a, **k):
            if isinstance(file, (str, os.PathLike)) and os.fspath(file) == str(p):
                raise PermissionError(13, "Permission denied", str(p))
            return real(file, *a, **k)
        return opener

    # what a user without read permission meets, whichever open the loader uses
    monkeypatch.setattr(builtins, "open", denying(builtins.open))
    monkeypatch.setattr(io, "open", denying(io.open))
    monkeypatch.setattr(os, "open", denying(os.open))
    problems += [f"permission denied: {x}" for x in check_refused(str(p), "unreadable")]
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------------- truncation
@pytest.mark.parametrize("name", ["episodic_prior_f32", "episodic_noprior_f64", "kv_cosine_f32",
                                  "kv_empty_f64"])
def test_every_truncation_is_refused(files, tmp_path, name):
    data = files[name]
    n = struct.unpack("<Q", data[:8])[0]
    classes = Counter()
    problems = []
    p = tmp_path / "t.safetensors"
    for length in range(len(data)):
        cls = ("empty" if length == 0 else "length-field" if length < 8 else
               "header" if length < 8 + n else "data")
        classes[cls] += 1
        p.write_bytes(data[:length])
        problems += [f"prefix {length} ({cls}): {x}"
                     for x in check_refused(str(p), f"truncated-{cls}")]
    assert classes["length-field"] == 7 and classes["header"] == n
    assert classes["data"] == len(data) - 8 - n
    assert not problems, "\n".join(problems[:20])


# -------------------------------------------------------------------------- bit flips
def flips(data, positions):
    for i in positions:
        for bit in range(8):
            b = bytearray(data)
            b[i] ^= 1 << bit
            yield i, bit, bytes(b)


def flip_outcomes(data, positions, tmp_path, family):
    """(loaded silently, refused without naming the path, other problems)"""
    p = tmp_path / "f.safetensors"
    loaded, no_path, other = [], [], []
    for i, bit, blob in flips(data, positions):
        p.write_bytes(blob)
        for x in check_refused(str(p), family):
            where = f"byte {i} bit {bit} ({data[i:i + 1]!r} -> {blob[i:i + 1]!r})"
            (loaded if ": loaded:" in x else no_path if "not naming the path" in x
             else other).append(f"{where}: {x}")
    return loaded, no_path, other


@pytest.mark.parametrize("name", ["episodic_prior_f32", "kv_cosine_f32", "kv_empty_f64"])
def test_bit_flips_in_data_and_length_field_are_refused(files, tmp_path, name):
    """Every single-bit flip of the array bytes (caught by the SHA-256) and of the 8-byte
    header-length field."""
    data = files[name]
    n = struct.unpack("<Q", data[:8])[0]
    problems = []
    for start, stop, fam in ((0, 8, "bitflip-length"), (8 + n, len(data), "bitflip-data")):
        loaded, no_path, other = flip_outcomes(data, range(start, stop), tmp_path, fam)
        problems += loaded + no_path + other
    assert not problems, "\n".join(problems[:20])


_HEADER_FLIPS = {}


def header_flip_outcomes(files, tmp_path, name):
    """Every bit of the metadata values (format, version, config: where a flip can still
    parse) and of 25% of the other header bytes (seeded), once per file."""
    if name not in _HEADER_FLIPS:
        data = files[name]
        n = struct.unpack("<Q", data[:8])[0]
        header = data[8:8 + n]
        exhaustive = set()
        for key in (b'"format":"', b'"version":"', b'"config":"'):
            start = header.index(key) + len(key)
            stop = start
            while header[stop:stop + 1] != b'"' or header[stop - 1:stop] == b"\\":
                stop += 1
            exhaustive.update(range(8 + start, 8 + stop))
        rest = sorted(set(range(8, 8 + n)) - exhaustive)
        sample = random.Random(2024).sample(rest, len(rest) // 4)
        COUNTS[f"header-bytes-flipped:{name}"] = len(exhaustive) + len(sample)
        _HEADER_FLIPS[name] = flip_outcomes(data, sorted(exhaustive) + sample, tmp_path,
                                            "bitflip-header")
    return _HEADER_FLIPS[name]


@pytest.mark.parametrize("name", ["episodic_prior_f32", "kv_cosine_f32"])
def test_header_bit_flips_never_crash(files, tmp_path, name):
    """Every single-bit flip of the JSON header: a ValueError (or, see the two tests below,
    a load); never another exception or a crash."""
    loaded, no_path, other = header_flip_outcomes(files, tmp_path, name)
    COUNTS[f"header-flips-loaded:{name}"] += len(loaded)
    COUNTS[f"header-flips-refused-without-path:{name}"] += len(no_path)
    assert not other, "\n".join(other[:20])


@pytest.mark.parametrize("name", ["episodic_prior_f32", "kv_cosine_f32"])
def test_header_bit_flips_never_load(files, tmp_path, name):
    """Finding P1 (fixed): the checksums covered the arrays only, so a one-bit flip in the
    episodic ridge digits of the config loaded silently as another memory (0.001 -> 0.003,
    0.009, 0.101, 8.001, ...). The header now has its own checksum."""
    loaded, _, _ = header_flip_outcomes(files, tmp_path, name)
    assert not loaded, f"{len(loaded)} header flips loaded:\n" + "\n".join(loaded[:20])


@pytest.mark.parametrize("name", ["episodic_prior_f32", "kv_cosine_f32"])
def test_header_bit_flips_refused_naming_path(files, tmp_path, name):
    """Finding P2 (fixed): refusals by the kernel's checks (ridge 0.000 after a flip, an
    unknown metric) raised its ValueError, which did not name the path."""
    _, no_path, _ = header_flip_outcomes(files, tmp_path, name)
    assert not no_path, f"{len(no_path)} header flips:\n" + "\n".join(no_path[:20])


# --------------------------------------------------------------- version / format kind
def test_wrong_version_and_kind(files, tmp_path):
    problems = []
    for name in ("episodic_prior_f32", "kv_cosine_f32"):
        n, header, body = split(files[name])
        meta = header["__metadata__"]
        variants = {f"version={v!r}": dict(meta, version=v) for v in ("2", "0", "1.0", " 1", "")}
        variants["no-version"] = {k: v for k, v in meta.items() if k != "version"}
        for fmt in ("larimar_ext.Other", "", "larimar_ext.episodicmemory",
                    KINDS["KeyValueMemory"] if name.startswith("episodic")
                    else KINDS["EpisodicMemory"]):
            variants[f"format={fmt!r}"] = dict(meta, format=fmt)
        variants["no-format"] = {k: v for k, v in meta.items() if k != "format"}
        variants["no-metadata"] = None
        for label, m in variants.items():
            h = dict(header)
            if m is None:
                del h["__metadata__"]
            else:
                h["__metadata__"] = m
            p = tmp_path / "v.safetensors"
            p.write_bytes(join(h, body))
            problems += [f"{name} {label}: {x}" for x in check_refused(str(p), "version-kind")]
        # the right file for the other loader
        p = tmp_path / "k.safetensors"
        p.write_bytes(files[name])
        other = lx.KeyValueMemory if name.startswith("episodic") else lx.EpisodicMemory
        problems += [f"{name} as other kind: {x}"
                     for x in check_refused(str(p), "version-kind", (other,))]
    assert not problems, "\n".join(problems)


# ------------------------------------------- well-formed files with wrong content (signed)
K, C = 3, 2
EPI_KIND, KV_KIND = KINDS["EpisodicMemory"], KINDS["KeyValueMemory"]


def epi_arrays(dtype=np.float64, prior=True):
    m = episodic(np.float32, prior=prior)
    return {k: v.astype(dtype) for k, v in m._core.state().items()}


EPI_CONFIG = {"memory_size": K, "code_size": C, "ridge": 1e-3, "dtype": "float32",
              "has_prior": True}


def kv_arrays(n=4, dtype=np.float32):
    m = kv(dtype, n=n)
    return {"keys": m.keys, "values": m.values, "counts": m._core.counts()}


KV_CONFIG = {"key_dim": 3, "value_dim": 2, "metric": "cosine", "dtype": "float32", "size": 4}


def _with(d, **kw):
    out = dict(d)
    for k, v in kw.items():
        if v is _DROP:
            out.pop(k, None)
        else:
            out[k] = v
    return out


_DROP = object()


def _nan_in(name, arrays, value=np.nan):
    a = dict(arrays)
    a[name] = a[name].copy()
    a[name].flat[0] = value
    return a


def _epi_cases():
    A = epi_arrays()
    cases = {
        "memory-shape": (_with(A, memory=np.zeros((K, C + 1))), EPI_CONFIG),
        "gram-shape": (_with(A, gram=np.zeros((K, K + 1))), EPI_CONFIG),
        "gram-transposed-shape": (_with(A, memory=A["memory"].reshape(C, K)), EPI_CONFIG),
        "precision-float32": (_with(A, precision=A["precision"].astype(np.float32)), EPI_CONFIG),
        "memory-int64": (_with(A, memory=A["memory"].astype(np.int64)), EPI_CONFIG),
        "rhs-missing": (_with(A, rhs=_DROP), EPI_CONFIG),
        "extra-array": (_with(A, extra=np.zeros(3)), EPI_CONFIG),
        "prior-missing": (_with(A, prior=_DROP), EPI_CONFIG),
        "prior-unexpected": (A, _with(EPI_CONFIG, has_prior=False)),
        "memory_size-mismatch": (A, _with(EPI_CONFIG, memory_size=K + 1)),
        "memory_size-0": (A, _with(EPI_CONFIG, memory_size=0)),
        "memory_size-neg": (A, _with(EPI_CONFIG, memory_size=-3)),
        "memory_size-str": (A, _with(EPI_CONFIG, memory_size="3")),
        "memory_size-float": (A, _with(EPI_CONFIG, memory_size=3.0)),
        "memory_size-bool": (A, _with(EPI_CONFIG, memory_size=True)),
        "memory_size-huge": (A, _with(EPI_CONFIG, memory_size=10**30)),
        "code_size-missing": (A, _with(EPI_CONFIG, code_size=_DROP)),
        "ridge-str": (A, _with(EPI_CONFIG, ridge="1e-3")),
        "ridge-int": (A, _with(EPI_CONFIG, ridge=1)),
        "dtype-float16": (A, _with(EPI_CONFIG, dtype="float16")),
        "dtype-int32": (A, _with(EPI_CONFIG, dtype="int32")),
        "has_prior-str": (A, _with(EPI_CONFIG, has_prior="true")),
        "config-list": (A, [1, 2]),
    }
    # refused by the kernel, whose ValueError names the array or field but not the file
    no_path = {
        "ridge-nan": (A, _with(EPI_CONFIG, ridge=float("nan"))),
        "ridge-inf": (A, _with(EPI_CONFIG, ridge=float("inf"))),
        "ridge-negative": (A, _with(EPI_CONFIG, ridge=-1.0)),
        "ridge-zero": (A, _with(EPI_CONFIG, ridge=0.0)),
        "memory-nan": (_nan_in("memory", A), EPI_CONFIG),
        "gram-inf": (_nan_in("gram", A, np.inf), EPI_CONFIG),
        "precision-nan": (_nan_in("precision", A), EPI_CONFIG),
        "prior-nan": (_nan_in("prior", A), EPI_CONFIG),
    }
    return cases, no_path


def _kv_cases():
    A = kv_arrays()
    dup = dict(A)
    dup["keys"] = A["keys"].copy()
    dup["keys"][1] = dup["keys"][0]
    cases = {
        "keys-shape": (_with(A, keys=np.zeros((4, 4), np.float32)), KV_CONFIG),
        "keys-float64": (_with(A, keys=A["keys"].astype(np.float64)), KV_CONFIG),
        "counts-int64": (_with(A, counts=A["counts"].astype(np.int64)), KV_CONFIG),
        "counts-shape": (_with(A, counts=np.ones(5)), KV_CONFIG),
        "values-missing": (_with(A, values=_DROP), KV_CONFIG),
        "extra-array": (_with(A, extra=np.zeros(1)), KV_CONFIG),
        "size-mismatch": (A, _with(KV_CONFIG, size=5)),
        "size-negative": (A, _with(KV_CONFIG, size=-1)),
        "key_dim-0": (A, _with(KV_CONFIG, key_dim=0)),
        "key_dim-str": (A, _with(KV_CONFIG, key_dim="3")),
        "dtype-mismatch": (A, _with(KV_CONFIG, dtype="float64")),
        "dtype-bogus": (A, _with(KV_CONFIG, dtype="complex64")),
        "metric-int": (A, _with(KV_CONFIG, metric=1)),
        "metric-missing": (A, _with(KV_CONFIG, metric=_DROP)),
        "config-str": (A, "cosine"),
    }
    no_path = {
        "metric-bogus": (A, _with(KV_CONFIG, metric="hamming")),
        "keys-nan": (_nan_in("keys", A), KV_CONFIG),
        "values-inf": (_nan_in("values", A, np.inf), KV_CONFIG),
        "counts-zero": (_nan_in("counts", A, 0.0), KV_CONFIG),
        "counts-negative": (_nan_in("counts", A, -2.0), KV_CONFIG),
        "counts-nan": (_nan_in("counts", A), KV_CONFIG),
        "duplicate-keys": (dup, KV_CONFIG),
    }
    return cases, no_path


def _run_cases(cases, kind, tmp_path, family):
    problems = []
    for label, (arrays, config) in cases.items():
        p = tmp_path / f"{label}.safetensors"
        write_file(p, arrays, kind, config)
        problems += [f"{label}: {x}" for x in check_refused(str(p), family)]
    return problems


def test_wrong_content_in_well_formed_files(tmp_path):
    """Valid safetensors, valid checksums, wrong shapes/dtypes/config: refused by the
    loaders' own checks."""
    problems = _run_cases(_epi_cases()[0], EPI_KIND, tmp_path, "wrong-content")
    problems += _run_cases(_kv_cases()[0], KV_KIND, tmp_path, "wrong-content")
    # damaged header fields
    A = epi_arrays()
    for label, fn in {"config-not-json": lambda m: dict(m, config="{memory_size: 3"),
                      "sha-not-json": lambda m: dict(m, sha256="[["),
                      "sha-list": lambda m: dict(m, sha256="[1, 2]"),
                      "sha-missing": lambda m: {k: v for k, v in m.items() if k != "sha256"},
                      "config-missing": lambda m: {k: v for k, v in m.items() if k != "config"},
                      "sha-wrong":
                          lambda m: dict(m, sha256=m["sha256"].replace("a", "b", 1))}.items():
        p = tmp_path / f"{label}.safetensors"
        write_file(p, A, EPI_KIND, EPI_CONFIG, metadata=fn)
        problems += [f"{label}: {x}" for x in check_refused(str(p), "wrong-content")]
    assert not problems, "\n".join(problems)


def test_wrong_content_refused_naming_path(tmp_path):
    """Finding P2 (fixed): NaN/Inf arrays, duplicate keys, non-positive counts, an unknown
    metric or an invalid ridge in a well-formed file were refused with the kernel's
    ValueError ('precision: contains NaN or Inf', 'metric: ...'), not naming the path."""
    problems = _run_cases(_epi_cases()[1], EPI_KIND, tmp_path, "wrong-content-kernel")
    problems += _run_cases(_kv_cases()[1], KV_KIND, tmp_path, "wrong-content-kernel")
    assert not problems, "\n".join(problems)


def test_wrong_content_refused_with_value_error(tmp_path):
    """The same files as above: refused with a ValueError at least (no other exception,
    no load)."""
    bad = []
    for cases, kind in ((_epi_cases()[1], EPI_KIND), (_kv_cases()[1], KV_KIND)):
        for label, (arrays, config) in cases.items():
            p = tmp_path / f"{label}.safetensors"
            write_file(p, arrays, kind, config)
            for cls in (lx.EpisodicMemory, lx.KeyValueMemory):
                why = refusal(cls, str(p))
                if why is not None and "not naming the path" not in why:
                    bad.append(f"{label} {cls.__name__}: {why}")
    assert not bad, "\n".join(bad)


# ----------------------------------------------------------------- enormous claims
def test_enormous_sizes_and_offsets_are_refused(files, tmp_path):
    data = files["episodic_prior_f32"]
    n, header, body = split(data)
    blobs = {}
    for v in (2**64 - 1, 2**63, 2**32, 10**9, len(data), len(data) - 7, n + 1, 0, 1):
        blobs[f"length-field={v}"] = struct.pack("<Q", v) + data[8:]
    blobs["length-field-only-huge"] = struct.pack("<Q", 2**64 - 1)

    def edit(fn):
        h = json.loads(json.dumps(header))
        fn(h)
        return join(h, body)

    def set_(name, key, value):
        return lambda h: h[name].__setitem__(key, value)

    blobs["offsets-beyond-file"] = edit(set_("memory", "data_offsets", [72, 10**12]))
    blobs["offsets-far-beyond"] = edit(set_("memory", "data_offsets", [10**18, 10**18 + 48]))
    blobs["offsets-2^64"] = edit(set_("memory", "data_offsets", [0, 2**64 - 1]))
    blobs["offsets-reversed"] = edit(set_("memory", "data_offsets", [120, 72]))
    blobs["offsets-negative"] = edit(set_("memory", "data_offsets", [-48, 0]))
    blobs["offsets-overlap"] = edit(set_("memory", "data_offsets", [0, 48]))
    blobs["shape-huge"] = edit(set_("memory", "shape", [2**32, 2**32]))
    blobs["shape-overflow"] = edit(set_("memory", "shape", [2**40, 2**40, 2**40]))
    blobs["shape-2^64"] = edit(set_("memory", "shape", [2**64 - 1, 1]))
    blobs["shape-negative"] = edit(set_("memory", "shape", [-3, -2]))
    blobs["shape-zero"] = edit(set_("memory", "shape", [0, 2]))
    blobs["dtype-unknown"] = edit(set_("memory", "dtype", "F128"))
    blobs["body-appended"] = data + b"\0" * 64
    blobs["header-not-utf8"] = data[:8] + b"\xff" * n + body
    blobs["header-not-object"] = join([1, 2, 3], body)
    problems = []
    p = tmp_path / "e.safetensors"
    for label, blob in blobs.items():
        p.write_bytes(blob)
        t = time.perf_counter()
        problems += [f"{label}: {x}" for x in check_refused(str(p), "enormous")]
        dt = time.perf_counter() - t
        if dt > 2.0:
            problems.append(f"{label}: took {dt:.1f} s to refuse")
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------- exotic dtypes
def _one_tensor_file(dtype, shape, nbytes, metadata=None):
    header = {"memory": {"dtype": dtype, "shape": list(shape), "data_offsets": [0, nbytes]}}
    if metadata is not None:
        header["__metadata__"] = metadata
    return join(header, b"\0" * nbytes)


@pytest.mark.parametrize("dtype", ["BF16", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F8_E4M3FNUZ",
                                   "F8_E5M2FNUZ", "F4"])
def test_exotic_dtypes_are_refused(tmp_path, dtype):
    """Finding P4 (fixed; fuzz/crashes/load-f4-dtype-attributeerror-*): a tensor of dtype
    BF16, F8_* or F4 (any bfloat16 file written by safetensors.torch, say) made both loaders
    raise AttributeError ("module 'numpy' has no attribute 'float8_e4m3fn'") or TypeError
    ("data type 'bfloat16' not understood") from safetensors.numpy."""
    p = tmp_path / "x.safetensors"
    meta = {"format": EPI_KIND, "version": "1"}
    problems = []
    for shape, nbytes in (((0,), 0), ((4,), 4)):
        if dtype == "F4" and nbytes:
            continue  # F4 packs two values per byte; the empty tensor shows the bug
        p.write_bytes(_one_tensor_file(dtype, shape, nbytes, meta))
        problems += [f"{dtype}{list(shape)}: {x}" for x in check_refused(str(p), "exotic-dtype")]
    assert not problems, "\n".join(problems)


def test_other_safetensors_dtypes_are_refused(tmp_path):
    p = tmp_path / "x.safetensors"
    problems = []
    for dtype in ("F16", "F32", "F64", "C64", "I8", "I16", "I32", "I64", "U8", "U16", "U32",
                  "U64", "BOOL", "F6_E2M3", "F6_E3M2", "X"):
        p.write_bytes(_one_tensor_file(dtype, (0,), 0, {"format": KV_KIND, "version": "1"}))
        problems += [f"{dtype}: {x}" for x in check_refused(str(p), "exotic-dtype")]
    assert not problems, "\n".join(problems)


# ------------------------------------------------------ pickle / torch files, renamed
class _Marker:
    """Unpickling this creates the directory ``path`` (the side effect that must not occur)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_pickle_and_torch_files_are_refused_never_executed(tmp_path):
    marker = str(tmp_path / "MARKER-unpickled")
    payload = {"memory": _Marker(marker), "keys": [1.0, 2.0]}
    # the marker works: unpickling does create it
    sanity = str(tmp_path / "sanity")
    pickle.loads(pickle.dumps(_Marker(sanity)))
    assert os.path.isdir(sanity)

    blobs = {}
    for proto in (0, 2, 4, 5):
        blobs[f"pickle-p{proto}"] = pickle.dumps(payload, protocol=proto)
    arr = np.empty(1, dtype=object)
    arr[0] = _Marker(marker)
    npy = tmp_path / "obj.npy"
    np.save(npy, arr, allow_pickle=True)
    blobs["npy-object"] = npy.read_bytes()
    npz = tmp_path / "obj.npz"
    np.savez(npz, memory=arr)
    blobs["npz-object"] = npz.read_bytes()
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a test dependency
        torch = None
    if torch is not None:
        pt = tmp_path / "m.pt"
        torch.save(payload, pt)
        blobs["torch-pickle"] = pt.read_bytes()
        pt2 = tmp_path / "t.pt"
        torch.save({"memory": torch.zeros(3, 2, dtype=torch.float64)}, pt2)
        blobs["torch-tensors"] = pt2.read_bytes()
        pt3 = tmp_path / "old.pt"
        torch.save(payload, pt3, _use_new_zipfile_serialization=False)
        blobs["torch-legacy"] = pt3.read_bytes()
    problems = []
    for label, blob in blobs.items():
        for suffix in (".safetensors", ".pt", ".pkl", ""):
            p = tmp_path / f"{label}{suffix}"
            p.write_bytes(blob)
            problems += [f"{label}{suffix}: {x}" for x in check_refused(str(p), "pickle-renamed")]
            assert not os.path.exists(marker), f"{label}{suffix}: the file was unpickled"
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------- kill during save
# Three distinct KeyValueMemory states: O (the old file), A and B (the new ones); about
# 3 MB per file, so a save (checksums, write, fsync, rename) takes tens of milliseconds.
_STATES = textwrap.dedent("""
    def kill_states(np, lx, rows=1500, dim=256):
        out = []
        for seed in range(3):
            rng = np.random.default_rng(100 + seed)
            m = lx.KeyValueMemory(dim, dim, metric="ip")
            m.add(rng.standard_normal((rows, dim)).astype(np.float32),
                  np.full((rows, dim), seed, np.float32))
            out.append(m)
        return out
""")
_CHILD = _STATES + textwrap.dedent("""
    import sys
    sys.modules["torch"] = None  # not needed here; keeps the start-up short
    import numpy as np
    import larimar_ext as lx
    target = sys.argv[1]
    states = kill_states(np, lx)
    print("ready", flush=True)
    i = 0
    while True:
        states[1 + i % 2].save(target)  # alternately A and B over the old file O
        i += 1
""")


def kill_states():
    scope = {}
    exec(_STATES, scope)  # noqa: S102 - the same fixed source the child runs
    return scope["kill_states"](np, lx)


def test_kill_during_save_leaves_old_or_new_file(tmp_path):
    trials = int(os.environ.get("LARIMAR_KILL_TRIALS", "30"))
    states = kill_states()
    refs = [(np.asarray(s.keys), np.asarray(s.values)) for s in states]
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    rnd = random.Random(int(os.environ.get("LARIMAR_KILL_SEED", "12345")))
    outcome = Counter()
    lost = []
    leftovers = 0
    for trial in range(trials):
        d = tmp_path / f"trial{trial}"
        d.mkdir()
        target = d / "memory.safetensors"
        states[0].save(str(target))
        child = subprocess.Popen([sys.executable, str(script), str(target)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(d))
        line = child.stdout.readline()
        assert line.strip() == b"ready", child.stderr.read().decode()[-2000:]
        time.sleep(rnd.uniform(0.0, 0.3))
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        child.stdout.close()
        child.stderr.close()
        names = sorted(os.listdir(d))
        leftovers += sum(1 for x in names if x != "memory.safetensors")
        if "memory.safetensors" not in names:
            lost.append(f"trial {trial}: no file at the target path ({names})")
            continue
        try:
            got = lx.KeyValueMemory.load(str(target))
        except ValueError as exc:
            lost.append(f"trial {trial}: target does not load: {exc}")
            continue
        keys, values = np.asarray(got.keys), np.asarray(got.values)
        which = [i for i, (k, v) in enumerate(refs)
                 if k.shape == keys.shape and np.array_equal(k, keys) and np.array_equal(v, values)]
        if not which:
            lost.append(f"trial {trial}: target loads but equals none of the saved states")
        else:
            outcome["OAB"[which[0]]] += 1
    COUNTS["kill-trials"] += trials
    COUNTS["kill-files-lost"] += len(lost)
    COUNTS["kill-temp-files-left"] += leftovers
    for k, v in outcome.items():
        COUNTS[f"kill-target-was-{k}"] += v
    print(f"\n[kill-during-save] trials {trials}, files lost {len(lost)}, target held "
          f"O/A/B {outcome['O']}/{outcome['A']}/{outcome['B']}, temp files left by killed "
          f"saves {leftovers}")
    assert not lost, "\n".join(lost)
    assert outcome["A"] + outcome["B"] > 0, "no kill landed after a completed save"


def test_load_during_concurrent_saves(tmp_path):
    """A reader loading the target while another process saves over it in a loop: an
    atomic save means every load sees one complete file (O, A or B), never an error."""
    seconds = float(os.environ.get("LARIMAR_CONCURRENT_SECONDS", "3"))
    states = kill_states()
    refs = [(np.asarray(s.keys), np.asarray(s.values)) for s in states]
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    target = tmp_path / "memory.safetensors"
    states[0].save(str(target))
    child = subprocess.Popen([sys.executable, str(script), str(target)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(tmp_path))
    try:
        assert child.stdout.readline().strip() == b"ready", child.stderr.read().decode()[-2000:]
        seen, errors = Counter(), []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                got = lx.KeyValueMemory.load(str(target))
            except ValueError as exc:
                errors.append(str(exc))
                continue
            keys, values = np.asarray(got.keys), np.asarray(got.values)
            which = [i for i, (k, v) in enumerate(refs)
                     if np.array_equal(k, keys) and np.array_equal(v, values)]
            seen["OAB"[which[0]] if which else "none"] += 1
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        child.stdout.close()
        child.stderr.close()
    loads = sum(seen.values()) + len(errors)
    COUNTS["concurrent-loads"] += loads
    COUNTS["concurrent-load-errors"] += len(errors)
    print(f"\n[load-during-saves] loads {loads}: O/A/B {seen['O']}/{seen['A']}/{seen['B']}, "
          f"equal to none {seen['none']}, refused {len(errors)}")
    assert seen["none"] == 0, "a load returned a state that was never saved"
    assert not errors, f"{len(errors)} of {loads} loads refused a file being replaced " \
                       f"atomically (finding P3), e.g. {errors[0]}"


def test_save_landing_between_the_loaders_reads(tmp_path, monkeypatch):
    """Finding P3 (fixed): the loader opened the path twice (safe_open for the metadata,
    load_file for the arrays), so an atomic save landing in between paired the old header
    with the new arrays: a false "array 'keys' fails its checksum (corrupted)" in about 2%
    of loads racing a save loop. Deterministic form of the race: another complete file
    replaces the target (as an atomic save does) right after the loader has started
    reading it."""
    old, new = kv(np.float32, "cosine", 4), kv(np.float32, "cosine", 5)
    target, other = tmp_path / "m.safetensors", tmp_path / "other.safetensors"
    old.save(str(target))
    new.save(str(other))
    real_open = open
    state = {"armed": True}

    def replace_once():
        if state["armed"] and other.exists():
            state["armed"] = False
            os.replace(other, target)

    # The replace lands after the first read of the target has begun, whatever API reads.
    import builtins
    from safetensors import safe_open as real_safe_open

    class RacingSafeOpen:
        def __init__(self, *a, **k):
            self._f = real_safe_open(*a, **k)

        def __enter__(self):
            self._f.__enter__()
            return self

        def __exit__(self, *exc):
            out = self._f.__exit__(*exc)
            replace_once()
            return out

        def __getattr__(self, name):
            return getattr(self._f, name)

    def racing_open(file, *a, **k):
        f = real_open(file, *a, **k)
        if os.fspath(file) == str(target) if isinstance(file, (str, os.PathLike)) else False:
            replace_once()
        return f

    monkeypatch.setattr("safetensors.safe_open", RacingSafeOpen)
    monkeypatch.setattr(builtins, "open", racing_open)
    got = lx.KeyValueMemory.load(str(target))
    assert not state["armed"], "the race was not triggered"
    assert len(got) in (len(old), len(new))
