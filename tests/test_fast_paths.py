"""The fast paths of the element-wise ops (2x2 pools, ReLU, batch norm): the same results as
the general code, with ties, odd sizes, and on one thread or several (channel blocks on the
convolution pool). Gradients and PyTorch parity are the shared harness's (test_ops.py)."""
import numpy as np
import pytest

from cnnlab import functional as F
from cnnlab.conv import threads
from cnnlab.functional import pool


@pytest.fixture(params=[1, 2, 3], ids=lambda n: f"{n} threads")
def num_threads(request):
    old = threads.get_num_threads()
    threads.set_num_threads(request.param)
    yield request.param
    threads.set_num_threads(old)


def _big(rng, shape, dtype=np.float32):
    """Small integers: many exact ties; above PARALLEL_MIN_ELEMENTS, so split by channels."""
    x = rng.integers(-2, 3, shape).astype(dtype)
    assert x.size >= threads.PARALLEL_MIN_ELEMENTS
    return x


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("shape", [(4, 16, 64, 64), (3, 11, 65, 67)], ids=str)
def test_2x2_pools_match_the_general_path(kind, shape, num_threads, monkeypatch):
    rng = np.random.default_rng(0)
    x = _big(rng, shape)
    fwd, bwd = ((F.max_pool_forward, F.max_pool_backward) if kind == "max"
                else (F.avg_pool_forward, F.avg_pool_backward))
    out, cache = fwd(x, 2, 2, 0)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    dx = bwd(dout, cache)
    monkeypatch.setattr(pool, "_is_2x2", lambda g: False)
    out0, cache0 = fwd(x, 2, 2, 0)
    dx0 = bwd(dout, cache0)
    assert np.array_equal(out, out0)
    assert np.array_equal(dx, dx0)                 # ties: the first in row-major order wins
    if kind == "max":
        assert (np.count_nonzero(dx) == np.count_nonzero(dout))


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")    # pool threads: no errstate
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_2x2_pools_match_the_general_path_on_nan_and_inf(kind, num_threads, monkeypatch):
    rng = np.random.default_rng(4)
    x = _big(rng, (4, 16, 64, 63))
    flat = x.reshape(-1)
    flat[rng.choice(flat.size, 400, replace=False)] = np.nan
    flat[rng.choice(flat.size, 400, replace=False)] = np.inf
    flat[rng.choice(flat.size, 400, replace=False)] = -np.inf
    fwd, bwd = ((F.max_pool_forward, F.max_pool_backward) if kind == "max"
                else (F.avg_pool_forward, F.avg_pool_backward))
    with np.errstate(invalid="ignore"):
        out, cache = fwd(x, 2, 2, 0)
        dout = rng.standard_normal(out.shape).astype(np.float32)
        dout.reshape(-1)[rng.choice(dout.size, 50, replace=False)] = np.inf
        dx = bwd(dout, cache)
        monkeypatch.setattr(pool, "_is_2x2", lambda g: False)
        out0, cache0 = fwd(x, 2, 2, 0)
        dx0 = bwd(dout, cache0)
    assert np.isnan(out).any() and np.isinf(dx).any()
    assert np.array_equal(out, out0, equal_nan=True)
    assert np.array_equal(dx, dx0, equal_nan=True)


def test_relu_matches_its_definition(num_threads):
    rng = np.random.default_rng(1)
    x = _big(rng, (8, 24, 30, 30))
    out, mask = F.relu_forward(x)
    assert np.array_equal(out, x * (x > 0)) and np.array_equal(mask, x > 0)
    dout = rng.standard_normal(x.shape).astype(np.float32)
    assert np.array_equal(F.relu_backward(dout, mask), dout * (x > 0))


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(16, 40, 15, 15), (4096, 40)], ids=str)
def test_batchnorm_does_not_depend_on_the_thread_count(shape, training):
    rng = np.random.default_rng(2)
    x = (rng.standard_normal(shape) * 3 + 1).astype(np.float32)
    assert x.size >= threads.PARALLEL_MIN_ELEMENTS
    c = shape[1]
    gamma, beta = rng.standard_normal(c).astype(np.float32), rng.standard_normal(c).astype(np.float32)
    rm, rv = rng.standard_normal(c).astype(np.float32), rng.random(c).astype(np.float32) + 0.5
    dout = rng.standard_normal(shape).astype(np.float32)

    def run():
        out, cache = F.batchnorm_forward(x, gamma, beta, rm, rv, training=training)
        return (out,) + F.batchnorm_backward(dout, cache) + F.batchnorm_running_update(rm, rv, cache)

    old = threads.get_num_threads()
    try:
        threads.set_num_threads(1)
        want = run()
        for n in (2, 3):                    # channel blocks on the pool against one block
            threads.set_num_threads(n)
            for a, b in zip(run(), want):
                assert a.dtype == b.dtype and np.array_equal(a, b)
    finally:
        threads.set_num_threads(old)


def _batchnorm_by_the_formulas(x, gamma, beta, rm, rv, training, dout, eps=1e-5):
    """The module docstring's formulas on whole arrays, in numpy's own dtype promotion."""
    shape = (1, -1) if x.ndim == 2 else (1, -1, 1, 1)

    def csum(a):
        return a.sum(axis=0) if a.ndim == 2 else a.reshape(a.shape[0], a.shape[1], -1).sum(2).sum(0)
    m = x.size // x.shape[1]
    if training:
        mu = csum(x) / x.dtype.type(m)
        xhat = x - mu.reshape(shape)
        var = csum(xhat * xhat) / x.dtype.type(m)
    else:
        mu, var = rm, rv
        xhat = x - mu.reshape(shape)
    inv = 1.0 / np.sqrt(var + eps)
    xhat *= inv.reshape(shape).astype(xhat.dtype, copy=False)
    out = xhat * gamma.reshape(shape)
    out += beta.reshape(shape)
    dgamma, dbeta = csum(dout * xhat), csum(dout)
    scale = (gamma * inv).reshape(shape)
    if training:
        dx = xhat * (-dgamma / m).reshape(shape)
        dx += dout
        dx -= (dbeta / m).reshape(shape)
        dx *= scale
    else:
        dx = dout * scale
    return out, dx, dgamma, dbeta


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtypes", [("f4", "f4", "f4", "f4"), ("f4", "f8", "f8", "f4"),
                                    ("f4", "f4", "f8", "f8"), ("f8", "f4", "f4", "f4")],
                         ids=lambda d: "x{} params{} stats{} dout{}".format(*d))
def test_batchnorm_keeps_the_formulas_dtypes_and_values(dtypes, training, num_threads):
    """Channel blocks compute what the whole-array formulas do, dtypes included (a float32
    input with float64 running statistics normalises in float64 in eval mode)."""
    rng = np.random.default_rng(5)
    tx, tp, ts, td = dtypes
    x = (rng.standard_normal((16, 40, 15, 15)) * 3 + 1).astype(tx)
    gamma, beta = (rng.standard_normal(40).astype(tp) for _ in range(2))
    rm, rv = rng.standard_normal(40).astype(ts), (rng.random(40) + 0.5).astype(ts)
    dout = rng.standard_normal(x.shape).astype(td)
    out, cache = F.batchnorm_forward(x, gamma, beta, rm, rv, training=training)
    dx, dgamma, dbeta = F.batchnorm_backward(dout, cache)
    want = _batchnorm_by_the_formulas(x.copy(), gamma, beta, rm, rv, training, dout)
    for got, ref in zip((out, dx, dgamma, dbeta), want):
        assert got.dtype == ref.dtype
        tol = 1e-12 if got.dtype == np.float64 else 1e-5
        assert np.allclose(got, ref, rtol=tol, atol=tol * np.abs(ref).max())
