"""PreparedPinv: a prior's R^+ factored once (issue: memory at scale), the same answers as
the per-call ops, and the boundary's checks."""
import numpy as np
import pytest

import larimar_ext as lx
from references import (DTYPES, DTYPE_IDS, assert_rel, f64, randn, rank_deficient, raises_arg,
                        tol, well_conditioned)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("K,C,rank", [(96, 128, None), (96, 128, 20), (40, 30, None),
                                      (8, 5, 3)])
def test_prepared_pinv_answers_as_the_per_call_ops(rng, dtype, K, C, rank):
    """Full row rank (the Cholesky route), rank-deficient and tall R (the rank-revealing
    one): address, project and matrix are pinv_address's, pinv_read's and numpy's."""
    R = (well_conditioned(rng, K, C) if rank is None
         else rank_deficient(rng, K, C, rank)).astype(dtype)
    Z = randn(rng, 7, C, dtype=dtype)
    P = lx.PreparedPinv(R)
    assert P.shape == (K, C) and P.rank == (rank or min(K, C))
    assert_rel(P.address(Z), lx.pinv_address(Z, R), tol(dtype, 1e-5, 1e-10))
    assert_rel(P.project(Z), lx.pinv_read(Z, R), tol(dtype, 1e-5, 1e-10))
    ref = np.linalg.pinv(f64(R), rcond=max(K, C) * np.finfo(dtype).eps)
    assert_rel(P.matrix(), ref, tol(dtype, 1e-4, 1e-9))
    assert P.matrix().dtype == dtype and P.matrix().shape == (C, K)


def test_prepared_pinv_takes_and_returns_tensors():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    R = torch.from_numpy(well_conditioned(rng, 70, 90).astype(np.float32))
    Z = torch.rand(3, 90)
    P = lx.PreparedPinv(R)
    W = P.address(Z)
    assert isinstance(W, torch.Tensor) and W.shape == (3, 70)
    assert isinstance(P.matrix(), torch.Tensor)
    assert np.allclose(P.address(Z.numpy()), W.numpy())  # numpy in, numpy out


def test_prepared_pinv_refuses_bad_input_by_name():
    rng = np.random.default_rng(2)
    R = well_conditioned(rng, 6, 9).astype(np.float32)
    bad = R.copy()
    bad[2, 3] = np.nan
    with raises_arg(ValueError, "R"):
        lx.PreparedPinv(bad)
    with raises_arg(ValueError, "R"):
        lx.PreparedPinv(R[0])
    with raises_arg(ValueError, "rcond"):
        lx.PreparedPinv(R, rcond=-1.0)
    P = lx.PreparedPinv(R)
    with raises_arg(ValueError, "Z"):
        P.address(np.ones((2, 8), np.float32))
    with raises_arg(ValueError, "Z"):
        P.project(np.full((2, 9), np.inf, np.float32))
    with raises_arg(TypeError, "Z"):
        P.address(np.ones((2, 9), np.float64))
    with raises_arg(ValueError, "Z"):  # empty input, as EpisodicMemory.address
        P.address(np.ones((0, 9), np.float32))
    assert P.address(np.ones((1, 9), np.float32)).shape == (1, 6)
