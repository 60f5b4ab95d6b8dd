"""larimar_ext.__version__, info(), set_num_threads / get_num_threads."""
import numpy as np
import pytest

import larimar_ext as lx
from references import assert_rel, names_arg, randn, well_conditioned

INFO_KEYS = {"version", "blas_vendor", "blas_version", "blas_threads", "openmp_threads", "simd"}


def test_version():
    assert isinstance(lx.__version__, str) and lx.__version__
    assert lx.__version__[0].isdigit()


def test_info_keys_and_types():
    info = lx.info()
    assert isinstance(info, dict)
    assert INFO_KEYS <= set(info), f"missing {INFO_KEYS - set(info)}"
    assert info["version"] == lx.__version__
    for key in ("blas_vendor", "blas_version", "simd"):
        assert isinstance(info[key], str), (key, info[key])
    assert info["blas_vendor"]
    for key in ("blas_threads", "openmp_threads"):
        assert isinstance(info[key], (int, np.integer)) and info[key] >= 1, (key, info[key])


def test_info_is_a_fresh_dict():
    a = lx.info()
    a["version"] = "tampered"
    assert lx.info()["version"] == lx.__version__


@pytest.mark.parametrize("n", [1, 2])
def test_set_num_threads_round_trip(restore_threads, n):
    lx.set_num_threads(n)
    assert lx.get_num_threads() == n
    assert isinstance(lx.get_num_threads(), int)


def test_thread_count_does_not_change_results(restore_threads, rng):
    W = well_conditioned(rng, 300, 64)
    Z = randn(rng, 300, 32)
    Q, keys = randn(rng, 7, 32), randn(rng, 500, 32)
    out = {}
    for n in (1, 2):
        lx.set_num_threads(n)
        out[n] = (lx.lstsq_write(W, Z), lx.topk(Q, keys, 10, metric="l2"))
    assert_rel(out[1][0], out[2][0], 1e-12)
    assert np.array_equal(out[1][1][0], out[2][1][0])


@pytest.mark.parametrize("bad", [0, -1, -8])
def test_set_num_threads_rejects_non_positive(restore_threads, bad):
    with pytest.raises(ValueError) as ei:
        lx.set_num_threads(bad)
    assert lx.get_num_threads() == restore_threads
    msg = str(ei.value)
    assert names_arg(msg, "n", "num_threads", "threads", str(bad)), msg


@pytest.mark.parametrize("bad", [1.5, "2", None])
def test_set_num_threads_rejects_non_integers(restore_threads, bad):
    with pytest.raises((TypeError, ValueError)):
        lx.set_num_threads(bad)
    assert lx.get_num_threads() == restore_threads


def test_demo_runs_and_says_what_it_times(capsys):
    """``larimar-ext demo`` checks its own results (exit 0) and names the path its write +
    read figure times, the first call apart from the warm median."""
    from larimar_ext.cli import main
    assert main(["demo", "--keys", "2000"]) == 0
    out = capsys.readouterr().out
    assert "first call" in out and "median of the next 5" in out
    assert "benchmarks/bench_episode.py" in out and "not part of write + read" in out
