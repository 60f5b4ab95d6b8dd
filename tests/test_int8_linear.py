"""Int8Linear: nn.Linear's forward in integer arithmetic. Its output is, bit for bit, the
float32 formula over the codes that a numpy reference computes (every row and weight row
quantised with its own scale, exact integer sums), on every dot path this CPU has; its
error against the float layer is the quantisation's; bad input is refused naming the
argument."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from larimar_ext import _core
from larimar_ext.int8_linear import Int8Linear, int8_linears

ISAS = _core.int8_isas()
LEVELS = np.float32(63)


@pytest.fixture(params=ISAS)
def isa(request):
    _core.set_int8_isa(request.param)
    yield request.param
    _core.set_int8_isa("auto")


def codes_of(rows: np.ndarray):
    """(codes, scales) of float32 rows, as the layer quantises inputs: scale max|x| / 63,
    codes round-half-even(x * (1 / scale))."""
    scale = (np.abs(rows).max(1) / LEVELS).astype(np.float32)
    inv = np.zeros_like(scale)
    np.divide(np.float32(1), scale, out=inv, where=scale > 0)
    return np.clip(np.rint(rows * inv[:, None]), -63, 63).astype(np.int64), scale


def weight_codes_of(w: np.ndarray):
    """As the layer quantises weights (once, in float64): scale max|w| / 63 rounded to
    float32, codes round-half-even(w / scale)."""
    scale = (np.abs(w).max(1).astype(np.float64) / 63).astype(np.float32)
    safe = np.where(scale > 0, scale, 1).astype(np.float64)
    return np.clip(np.rint(w / safe[:, None]), -63, 63).astype(np.int64), scale


def reference(w, b, x):
    wc, ws = weight_codes_of(w)
    xc, xs = codes_of(x)
    y = (xc @ wc.T).astype(np.float32) * (xs[:, None] * ws[None, :])
    return y + b if b is not None else y


SHAPES = [(1, 1, 1), (5, 7, 3), (3, 384, 384), (50, 384, 1536), (37, 1536, 384), (200, 33, 17),
          (64, 4, 4000)]


@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_the_output_is_the_formula_over_the_codes(rng, isa, m, k, n, bias):
    w = rng.standard_normal((n, k)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32) if bias else None
    x = (rng.standard_normal((m, k)) * rng.uniform(1e-3, 1e3, (m, 1))).astype(np.float32)
    layer = _core.Int8LinearF32(w, b)
    np.testing.assert_array_equal(layer.forward(x), reference(w, b, x))
    codes, scales = layer.weight_codes()
    wc, ws = weight_codes_of(w)
    np.testing.assert_array_equal(codes, wc)
    np.testing.assert_array_equal(scales, ws)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), m=st.integers(1, 80), k=st.integers(1, 90),
       n=st.integers(1, 70), spread=st.sampled_from([0.0, 3.0, 6.0]))
def test_the_formula_holds_on_rows_of_any_size_and_scale(seed, m, k, n, spread):
    rng = np.random.default_rng(seed)
    # few distinct values make exact halves (round half to even) and ties common
    w = (rng.integers(-4, 5, (n, k)) * 10.0 ** rng.uniform(-spread, spread, (n, 1)))
    x = (rng.integers(-4, 5, (m, k)) * 10.0 ** rng.uniform(-spread, spread, (m, 1)))
    w, x = w.astype(np.float32), x.astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    out = [None] * len(ISAS)
    try:
        for i, name in enumerate(ISAS):
            _core.set_int8_isa(name)
            out[i] = _core.Int8LinearF32(w, b).forward(x)
    finally:
        _core.set_int8_isa("auto")
    for y in out:
        np.testing.assert_array_equal(y, reference(w, b, x))


@pytest.mark.parametrize("m,k,n", [(1, 576, 1536), (2, 1536, 576), (3, 64, 5000), (300, 40, 90),
                                   (256, 384, 384)])
def test_the_output_does_not_depend_on_the_threads(rng, m, k, n):
    # few input rows split the output rows over the threads instead (a decode step)
    import larimar_ext
    w = rng.standard_normal((n, k)).astype(np.float32)
    x = rng.standard_normal((m, k)).astype(np.float32)
    layer, before = _core.Int8LinearF32(w, None), larimar_ext.get_num_threads()
    try:
        outs = []
        for threads in (1, 2, 3, 7):
            larimar_ext.set_num_threads(threads)
            outs.append(layer.forward(x))
    finally:
        larimar_ext.set_num_threads(before)
    for y in outs:
        np.testing.assert_array_equal(y, reference(w, None, x))


def test_zero_rows_give_the_bias_and_empty_inputs_an_empty_result(rng):
    w = rng.standard_normal((9, 20)).astype(np.float32)
    w[3] = 0
    b = rng.standard_normal(9).astype(np.float32)
    layer = _core.Int8LinearF32(w, b)
    x = rng.standard_normal((4, 20)).astype(np.float32)
    x[1] = 0
    y = layer.forward(x)
    np.testing.assert_array_equal(y[1], b)
    np.testing.assert_array_equal(y[:, 3], np.broadcast_to(b[3], (4,)))
    assert layer.forward(np.zeros((0, 20), np.float32)).shape == (0, 9)


def test_its_error_is_the_quantisation_s(rng):
    """Against the float layer: within the bound of the codes' rounding, |x| |dw| + |dx| |w|
    + |dx| |dw| with |dw_t| <= s/2 and |dx_t| <= r/2, and far closer on average."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(384, 1536)
    x = torch.randn(300, 384)
    with torch.no_grad():
        exact = lin(x).numpy()
    got = Int8Linear.from_linear(lin)(x).numpy()
    w = lin.weight.detach().numpy()
    s = np.abs(w).max(1) / 63
    r = np.abs(x.numpy()).max(1) / 63
    k = w.shape[1]
    bound = (np.sqrt(k) * (np.linalg.norm(x.numpy(), axis=1)[:, None] * s[None, :] / 2
                           + r[:, None] * np.linalg.norm(w, axis=1)[None, :] / 2)
             + k * r[:, None] * s[None, :] / 4)
    assert np.all(np.abs(got - exact) <= bound * 1.001)
    assert np.abs(got - exact).mean() < 0.02 * np.abs(exact).mean()


def test_the_module_takes_tensors_of_any_leading_shape_and_keeps_their_device(rng):
    lin = torch.nn.Linear(16, 8)
    layer = Int8Linear.from_linear(lin)
    assert (layer.in_features, layer.out_features) == (16, 8)
    assert layer.nbytes == 16 * 16 + 8 * (4 + 4 + 4)    # one tile of codes, scale/offset/bias
    x = torch.randn(2, 3, 16)
    y = layer(x)
    assert isinstance(y, torch.Tensor) and y.shape == (2, 3, 8) and y.dtype == torch.float32
    np.testing.assert_array_equal(y.reshape(6, 8).numpy(),
                                  layer(x.reshape(6, 16)).numpy())
    assert isinstance(layer(x.numpy()[0]), np.ndarray)
    assert "in_features=16, out_features=8, bias=True" in repr(layer)
    no_bias = Int8Linear.from_linear(torch.nn.Linear(16, 8, bias=False))
    assert "bias=False" in repr(no_bias)


def test_int8_linears_replaces_every_linear_of_a_module():
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(),
                              torch.nn.Sequential(torch.nn.LayerNorm(16), torch.nn.Linear(16, 4)))
    x = torch.randn(5, 8)
    with torch.no_grad():
        exact = net(x)
    int8_linears(net)
    assert [type(m).__name__ for m in net.modules()].count("Int8Linear") == 2
    assert not any(isinstance(m, torch.nn.Linear) for m in net.modules())
    with torch.no_grad():
        got = net(x)
    assert torch.allclose(got, exact, atol=0.05 * exact.abs().max().item())
    assert isinstance(int8_linears(torch.nn.Linear(3, 2)), Int8Linear)


@pytest.mark.parametrize("make,error,match", [
    (lambda: _core.Int8LinearF32(np.ones(4, np.float32), None), ValueError,
     "weight: expected a 2-D"),
    (lambda: _core.Int8LinearF32(np.ones((3, 4), np.float32), np.ones(2, np.float32)),
     ValueError, "bias: expected one value per output row"),
    (lambda: _core.Int8LinearF32(np.ones((3, 4), np.float32), np.ones((3, 1), np.float32)),
     ValueError, "bias: expected a 1-D"),
    (lambda: _core.Int8LinearF32(np.full((3, 4), np.nan, np.float32), None), ValueError,
     "weight: .*finite"),
    (lambda: _core.Int8LinearF32(np.ones((3, 4), np.float32), np.array([1, np.inf, 0], np.float32)),
     ValueError, "bias: .*finite"),
    (lambda: _core.Int8LinearF32(np.ones((0, 4), np.float32), None), ValueError, "weight"),
    (lambda: Int8Linear(torch.ones(3, 4, dtype=torch.float64)), TypeError,
     "weight: expected float32"),
    (lambda: Int8Linear.from_linear(torch.nn.Conv1d(2, 2, 1)), TypeError,
     "linear: expected an nn.Linear"),
])
def test_bad_weights_are_refused_naming_the_argument(make, error, match):
    with pytest.raises(error, match=match):
        make()


@pytest.mark.parametrize("x,error,match", [
    (torch.ones(2, 5), ValueError, "x: expected in_features columns"),
    (torch.ones(2, 4, dtype=torch.float64), TypeError, "x: expected float32"),
    (torch.tensor([[1.0, float("nan"), 0, 0]]), ValueError, "x: expected finite values"),
    (torch.tensor([[1.0, 0, float("-inf"), 0]]), ValueError, "x: expected finite values"),
    (torch.ones(2, 4, requires_grad=True), ValueError, "x: requires grad"),
    ("text", ValueError, "x: expected a float32 array"),
    (torch.tensor(1.0), ValueError, "x: expected a float32 array"),
])
def test_bad_inputs_are_refused_naming_the_argument(x, error, match):
    layer = Int8Linear(torch.ones(3, 4))
    with pytest.raises(error, match=match):
        layer(x)
    ones = np.ones((1, 4), np.float32)                  # the layer is unchanged
    np.testing.assert_array_equal(layer(torch.ones(1, 4)).numpy(),
                                  reference(np.ones((3, 4), np.float32), None, ones))
