"""Command line: ``larimar-ext info`` and ``larimar-ext demo``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Optional, Sequence

import numpy as np

from . import EpisodicMemory, KeyValueMemory, info, lstsq_write, pinv_address, read


def _demo(args: argparse.Namespace) -> int:
    rng = np.random.default_rng(args.seed)
    print("larimar-ext", json.dumps(info(), indent=2))

    # 1. Larimar episode: addresses from a prior, least-squares write, read back.
    b, n, k, c = 32, 16, 512, 768
    prior = (rng.standard_normal((k, c)) / np.sqrt(c)).astype(np.float32)
    z = rng.standard_normal((b, n, c)).astype(np.float32)
    t0 = time.perf_counter()
    prior_pinv = pinv_address(np.eye(c, dtype=np.float32), prior)  # (C, K), once per prior
    t1 = time.perf_counter()
    w = (z.reshape(-1, c) @ prior_pinv).reshape(b, n, k)
    m = lstsq_write(w, z)
    z_read = read(pinv_address(z, m), m)
    t2 = time.perf_counter()
    err = np.linalg.norm(z_read - z) / np.linalg.norm(z)
    print(f"\nepisodes: B={b} N={n} K={k} C={c}: prior pinv {1e3 * (t1 - t0):.1f} ms, "
          f"write+read {1e3 * (t2 - t1):.1f} ms, reconstruction rel. error {err:.2e}")

    # 2. Sequential write and forget keep the batch least-squares answer.
    mem = EpisodicMemory(k, c, prior=prior)
    mem.write(z[0])
    mem.update(z[1, :4], (z[1, :4] @ prior_pinv), alpha=1.0)
    mem.update(z[1, :4], (z[1, :4] @ prior_pinv), alpha=-1.0)
    again = EpisodicMemory(k, c, prior=prior)
    again.write(z[0])
    drift = np.linalg.norm(mem.memory - again.memory) / np.linalg.norm(again.memory)
    print(f"write 4 rows then forget them: memory differs from never writing them by {drift:.1e}")

    # 3. Fixed-key memory: exact search and one-hot reads.
    kv = KeyValueMemory(384, 384, metric="cosine")
    keys = rng.standard_normal((args.keys, 384)).astype(np.float32)
    values = rng.standard_normal((args.keys, 384)).astype(np.float32)
    t0 = time.perf_counter()
    kv.add(keys, values)
    t1 = time.perf_counter()
    probe = rng.integers(0, args.keys, 64)
    got = kv.read(keys[probe] + 0.01 * rng.standard_normal((64, 384)).astype(np.float32))
    t2 = time.perf_counter()
    exact = bool(np.array_equal(got, values[probe]))
    print(f"key-value memory: {len(kv)} keys ({kv.nbytes / 2**20:.0f} MiB) added in "
          f"{t1 - t0:.2f} s; 64 noisy queries read back their values exactly: {exact} "
          f"({1e3 * (t2 - t1):.1f} ms)")
    return 0 if err < 1e-3 and drift < 1e-4 and exact else 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="larimar-ext", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="print version, BLAS and threading")
    demo = sub.add_parser("demo", help="run the memory ops end to end on random data")
    demo.add_argument("--keys", type=int, default=100_000)
    demo.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "info":
        print(json.dumps(info(), indent=2))
        return 0
    return _demo(args)


if __name__ == "__main__":
    sys.exit(main())
