"""Writes the seed corpora of the fuzz harnesses (committed under fuzz/corpus/).

    python fuzz/make_corpus.py            # (re)writes fuzz/corpus/load/ and fuzz/corpus/api/

fuzz/corpus/load/: small valid files of each kind saved by larimar_ext itself (episodic
memories float32/float64, with and without prior, fresh and written; key-value memories of
each metric and dtype, empty and not, with a repeated key), each also as a copy prefixed
with ``RSGN`` (fuzz_load.py's re-sign mode: it recomputes the checksums after mutation so
the mutated arrays and config reach the checks past the checksum).
fuzz/corpus/api/: a few inputs of fuzz_api.py, one per op, decoded to mostly valid calls.
Fixed seeds: the same files on every run on one machine (the written memories go through
BLAS, whose last bits may differ between CPUs).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import larimar_ext as lx  # noqa: E402

RESIGN_MAGIC = b"RSGN"


def episodic_files(rng):
    out = {}
    for dtype in (np.float32, np.float64):
        name = np.dtype(dtype).name
        K, C = 3, 2
        prior = rng.standard_normal((K, C)).astype(dtype)
        fresh = lx.EpisodicMemory(K, C, ridge=1e-3, dtype=dtype)
        out[f"episodic_{name}_fresh"] = fresh
        m = lx.EpisodicMemory(K, C, prior=prior, ridge=1e-3, dtype=dtype)
        Z = rng.standard_normal((2, C)).astype(dtype)
        m.write(Z)
        m.update(Z[:1], m.address(Z[:1]), alpha=0.5)
        out[f"episodic_{name}_prior_written"] = m
        n = lx.EpisodicMemory(2, 3, ridge=1e-2, dtype=dtype)
        n.write(rng.standard_normal((3, 3)).astype(dtype),
                rng.standard_normal((3, 2)).astype(dtype))
        out[f"episodic_{name}_noprior_written"] = n
    return out


def kv_files(rng):
    out = {}
    for dtype in (np.float32, np.float64):
        for metric in ("cosine", "ip", "l2"):
            kv = lx.KeyValueMemory(3, 2, metric=metric, dtype=dtype)
            keys = rng.standard_normal((4, 3)).astype(dtype)
            keys[3] = keys[0]  # a repeated key: its slot holds a mean, count 2
            kv.add(keys, rng.standard_normal((4, 2)).astype(dtype))
            out[f"kv_{np.dtype(dtype).name}_{metric}"] = kv
    out["kv_float32_empty"] = lx.KeyValueMemory(2, 1)
    return out


def write_load_corpus(directory: str) -> list:
    rng = np.random.default_rng(20240611)
    if os.path.isdir(directory):
        shutil.rmtree(directory)
    os.makedirs(directory)
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, obj in {**episodic_files(rng), **kv_files(rng)}.items():
            path = os.path.join(tmp, name + ".safetensors")
            obj.save(path)
            with open(path, "rb") as f:
                data = f.read()
            for fname, blob in ((name + ".safetensors", data),
                                (name + ".resign.bin", RESIGN_MAGIC + data)):
                with open(os.path.join(directory, fname), "wb") as f:
                    f.write(blob)
                written.append(fname)
    return written


def write_api_corpus(directory: str) -> list:
    """One short input per op of fuzz_api.py: op byte, then zero bytes (valid defaults)."""
    import fuzz_api

    if os.path.isdir(directory):
        shutil.rmtree(directory)
    os.makedirs(directory)
    written = []
    rng = np.random.default_rng(7)
    for i, op in enumerate(fuzz_api.OPS):
        for variant in range(2):
            body = bytes([i]) + bytes(rng.integers(0, 256, 24 * variant, dtype=np.uint8))
            fname = f"{op.__name__}_{variant}.bin"
            with open(os.path.join(directory, fname), "wb") as f:
                f.write(body)
            written.append(fname)
    return written


if __name__ == "__main__":
    load = write_load_corpus(os.path.join(HERE, "corpus", "load"))
    api = write_api_corpus(os.path.join(HERE, "corpus", "api"))
    print(f"wrote {len(load)} load seeds and {len(api)} api seeds under {HERE}/corpus")
