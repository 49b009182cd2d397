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


def test_relu_matches_its_definition(num_threads):
    rng = np.random.default_rng(1)
    x = _big(rng, (8, 24, 30, 30))
    out, mask = F.relu_forward(x)
    assert np.array_equal(out, x * (x > 0)) and np.array_equal(mask, x > 0)
    dout = rng.standard_normal(x.shape).astype(np.float32)
    assert np.array_equal(F.relu_backward(dout, mask), dout * (x > 0))


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(16, 40, 15, 15), (4096, 40)], ids=str)
def test_batchnorm_does_not_depend_on_the_thread_count(shape, training, num_threads):
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

    got = run()
    old = threads.get_num_threads()
    threads.set_num_threads(1)
    try:
        want = run()
    finally:
        threads.set_num_threads(old)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and np.array_equal(a, b)
