"""Elementwise nonlinearities. x: any shape -> out: same shape.

    relu(x)        = max(x, 0)                 d/dx = [x > 0]
    leaky_relu(x)  = x if x > 0 else a*x       d/dx = 1 or a
    sigmoid(x)     = 1 / (1 + exp(-x))         d/dx = s (1 - s)
    tanh(x)                                    d/dx = 1 - t^2
"""
from __future__ import annotations

from ..backend import get_xp
from ..conv.threads import by_channels


def _blocks(fn, a):
    """fn(index) for channel blocks a[:, c0:c1] of large numpy arrays (``by_channels``), else
    fn(...) once over the whole of ``a`` (any number of dimensions)."""
    if a.ndim >= 2:
        by_channels(lambda c0, c1: fn((slice(None), slice(c0, c1))), a)
    else:
        fn(...)


def relu_forward(x):
    """max(x, 0) and the mask x > 0 (the cache)."""
    xp = get_xp(x)
    x = xp.asarray(x)
    out, mask = xp.empty_like(x), xp.empty(x.shape, dtype=bool)

    def block(sl):
        xp.greater(x[sl], 0, out=mask[sl])
        xp.maximum(x[sl], 0, out=out[sl])
    _blocks(block, x)
    return out, mask


def relu_backward(dout, cache):
    xp = get_xp(dout)
    dout = xp.asarray(dout)
    dx = xp.empty(dout.shape, dtype=xp.result_type(dout, cache))

    def block(sl):
        xp.multiply(dout[sl], cache[sl], out=dx[sl])
    _blocks(block, dout)
    return dx


def leaky_relu_forward(x, negative_slope=0.01):
    mask = x > 0
    xp = get_xp(x)
    out = xp.where(mask, x, x * negative_slope)
    return out, (mask, negative_slope)


def leaky_relu_backward(dout, cache):
    mask, slope = cache
    xp = get_xp(dout)
    return xp.where(mask, dout, dout * slope)


def sigmoid_forward(x):
    xp = get_xp(x)
    # Split by sign so exp never overflows.
    e = xp.exp(-xp.abs(x))
    out = xp.where(x >= 0, 1 / (1 + e), e / (1 + e))
    return out, out


def sigmoid_backward(dout, cache):
    s = cache
    return dout * s * (1 - s)


def tanh_forward(x):
    out = get_xp(x).tanh(x)
    return out, out


def tanh_backward(dout, cache):
    return dout * (1 - cache * cache)
