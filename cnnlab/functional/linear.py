"""Fully connected layer and flatten.

linear: x (N, D), w (K, D), b (K,) -> out (N, K) = x @ w.T + b
    dx = dout @ w,  dw = dout.T @ x,  db = sum_n dout
flatten: x (N, d1, d2, ...) -> (N, d1*d2*...)
"""
from __future__ import annotations

from ..errors import ShapeError


def linear_forward(x, w, b=None):
    if x.ndim != 2 or x.shape[1] != w.shape[1]:
        raise ShapeError(
            f"linear layer expects input (N, {w.shape[1]}), got {tuple(x.shape)}; "
            "flatten convolutional features first, or fix in_features"
        )
    if b is not None and tuple(b.shape) != (w.shape[0],):
        raise ShapeError(f"linear bias must have shape ({w.shape[0]},) for weight "
                         f"{tuple(w.shape)}, got {tuple(b.shape)}")
    out = x @ w.T
    if b is not None:
        out += b
    return out, (x, w, b is not None)


def linear_backward(dout, cache, need_dx=True, need_dw=True):
    """Return (dx, dw, db); gradients not needed are None."""
    x, w, has_bias = cache
    dx = dout @ w if need_dx else None
    dw = dout.T @ x if need_dw else None
    db = dout.sum(axis=0) if (need_dw and has_bias) else None
    return dx, dw, db


def flatten_forward(x):
    return x.reshape(x.shape[0], -1), x.shape


def flatten_backward(dout, cache):
    return dout.reshape(cache)
