"""The README's ratio targets as a pytest-benchmark suite: run on demand, not in CI.

    pytest benchmarks --benchmark-only                    # run, assert every target
    pytest benchmarks --benchmark-only --benchmark-save=NAME
    pytest benchmarks --benchmark-only --benchmark-compare  # against the last saved run

Each test times larimar-ext's side with the ``benchmark`` fixture (what --benchmark-save
keeps and --benchmark-compare compares) and its baseline in the same run with
``larimar_ext.throughput.time_calls``, records the ratio in ``extra_info`` and asserts the
target on it. The workloads and baselines are the standalone scripts' (bench_episode.py,
bench_topk.py, bench_sequential.py: one home for each), which keep writing the detailed
tables of RESULTS.md. Both cores; a busy machine makes the ratios unreliable.
"""
from __future__ import annotations

import numpy as np
import pytest

import larimar_ext as lx
from larimar_ext.throughput import time_calls

torch = pytest.importorskip("torch")

import bench_episode as episode  # noqa: E402  (benchmarks/ is on sys.path under pytest)
import bench_topk as topk  # noqa: E402

ROUNDS = 5


def _record(benchmark, baseline: float, name: str) -> float:
    ratio = baseline / benchmark.stats.stats.median
    benchmark.extra_info.update({"baseline": name, "baseline_median_s": baseline,
                                 "ratio": ratio})
    return ratio


@pytest.fixture(scope="module")
def episode_data():
    rng = np.random.default_rng(0)
    B, N, K, C = 32, 16, 512, 768
    M0 = episode.make_prior(K, C, rng)
    Z = rng.standard_normal((B, N, C)).astype(np.float32)
    M0p = episode.ours_prior_pinv(lx, M0)
    return Z, M0p, torch.from_numpy(Z), torch.from_numpy(M0p)


@pytest.mark.benchmark(group="episode B=32 N=16 K=512 C=768")
@pytest.mark.parametrize("baseline, target", [("torch.linalg.pinv", 10.0),
                                              ("IBM Ben-Israel-Cohen, 15 steps", 100.0)])
def test_episode_write_read(benchmark, episode_data, baseline, target):
    """README: write + read >= 10x exact torch.linalg.pinv, >= 100x the IBM iteration."""
    Z, M0p, Zt, M0pt = episode_data
    benchmark.pedantic(episode.method_ours_fused, (lx, Z, M0p), rounds=ROUNDS,
                       warmup_rounds=1)
    method = episode.method_tpinv if baseline.startswith("torch") else episode.method_bic
    base = time_calls(lambda: method(Zt, M0pt), 1, 3).median
    assert _record(benchmark, base, baseline) >= target


@pytest.fixture(scope="module")
def million_keys():
    keys = np.concatenate([topk.gen_chunk(i, 1_000_000) for i in range(topk.n_chunks(1_000_000))])
    mem = lx.KeyValueMemory(topk.DIM, 1, metric="ip")
    mem.add(keys, np.zeros((len(keys), 1), np.float32))
    return keys, mem


@pytest.mark.benchmark(group="top-1, 1M x 384")
def test_search_one_query_beats_faiss(benchmark, million_keys):
    """README: exact top-1 of one query >= 2x faiss IndexFlatIP."""
    faiss = pytest.importorskip("faiss")
    keys, mem = million_keys
    q = topk.gen_queries(1, 1)
    index = faiss.IndexFlatIP(topk.DIM)
    index.add(keys)
    benchmark.pedantic(mem.search, (q, 1), rounds=ROUNDS, warmup_rounds=1)
    base = time_calls(lambda: index.search(q, 1), 1, ROUNDS).median
    assert _record(benchmark, base, "faiss IndexFlatIP") >= 2.0


@pytest.mark.benchmark(group="top-1, 1M x 384")
def test_search_256_queries_runs_at_the_bare_gemm(benchmark, million_keys):
    """README: 256 queries within 1.1x the bare GEMM over the same keys (numpy, blocked)."""
    keys, mem = million_keys
    Q = topk.gen_queries(256, 2)
    benchmark.pedantic(mem.search, (Q, 1), rounds=3, warmup_rounds=1)
    gemm = topk.NumpyBlocked(keys, 256)
    base = time_calls(lambda: gemm.bare_gemm(Q), 1, 3).median
    assert _record(benchmark, base, "numpy blocked GEMM alone") >= 1 / 1.1


@pytest.mark.benchmark(group="sequential K=1000 C=768")
def test_sequential_rows_beat_a_numpy_resolve(benchmark):
    """README: 1,000 single-row writes >= 20x numpy re-solving after each row (the numpy
    side timed on 20 rows of the same stream and scaled to 1,000)."""
    rng = np.random.default_rng(0)
    K, C, rows = 1000, 768, 1000
    W = (rng.standard_normal((rows, K)) / np.sqrt(K)).astype(np.float32)
    Z = rng.standard_normal((rows, C)).astype(np.float32)

    def ours():
        mem = lx.EpisodicMemory(K, C, ridge=1e-6)
        for i in range(rows):
            mem.update(Z[i:i + 1], W[i:i + 1])

    benchmark.pedantic(ours, rounds=3, warmup_rounds=0)
    G = W.T @ W
    B = W.T @ Z
    eye = (1e-6 * np.eye(K)).astype(np.float32)
    per_row = time_calls(lambda: np.linalg.solve(G + eye, B), 1, 20).median
    assert _record(benchmark, per_row * rows, "numpy solve per row (scaled)") >= 20.0
