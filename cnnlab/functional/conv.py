"""2-D convolution as a forward/backward pair; the algorithm is chosen in :mod:`cnnlab.conv`.

x: (N, C, H, W), w: (O, C/groups, KH, KW), b: (O,) or None -> y: (N, O, HO, WO)

    y = conv(x, w) + b[None, :, None, None]     (computed in compute_dtype(x, w))
    dx = conv_transpose(dy, w)        (the data gradient)
    dw = corr(x, dy)                  (the weight gradient)
    db = sum over n, i, j of dy

``algo`` is "auto" (measured per shape), or a registered name: "direct",
"im2col", "fft", "winograd2", "winograd4".

A training step (``for_backward=True``): the gradients will follow with the same w, so the
three passes' algorithms are chosen together, timed as whole steps
(``cnnlab.conv.select_step``, :mod:`cnnlab.conv.step`), and, where that is faster, the
forward keeps what the backward would otherwise compute again: the
transformed weight (Winograd's U = G w G^T, (alpha^2, O, C/groups): 4x the weight for
F(4x4), 1.8x for F(2x2)) for the data gradient, and the transformed input (Winograd's tiles
V, (alpha^2, C, tiles): 2.25x the input for F(4x4), 4x for F(2x2); im2col's column
matrices, KH*KW times the input) for the weight gradient. Both live in the cache until the
backward.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_xp
from ..conv import ConvGeometry, select, select_step
from ..conv.step import step_backward, step_forward
from ..errors import ShapeError


def compute_dtype(*arrays):
    """The dtype every convolution algorithm computes in for these operands: numpy's
    promotion of their dtypes (uint8 images with float32 weights: float32), float64 where
    they are all integers or booleans. Complex operands are an error."""
    dt = np.result_type(*(a.dtype for a in arrays if a is not None))
    if dt.kind == "c":
        raise ShapeError(f"conv2d works on real numbers, got {dt} operands")
    if dt.kind not in "f":
        dt = np.dtype(np.float64)
    return dt


def _as(a, dt):
    return a if a is None or a.dtype == dt else a.astype(dt)


def conv2d_forward(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, algo="auto",
                   for_backward=False, need_dx=True, need_dw=True, reuse=None):
    """Return (y, cache); see the module docstring for shapes.

    ``for_backward``: the gradients (``conv2d_backward``) will follow with this same w
    (training; ``need_dx=False``: without the data gradient, e.g. a first layer;
    ``need_dw=False``: without the weight gradient, e.g. neural style's image); the cache
    may then hold the forward's transforms until then. ``reuse``: ``shared_prepared(cache)``
    of an earlier step of this layer, whose memory this step may overwrite (saves
    re-allocating U; the earlier cache must be done with)."""
    g = ConvGeometry.of(x.shape, w.shape, stride, padding, dilation, groups)
    if b is not None and tuple(b.shape) != (g.o,):
        raise ShapeError(f"conv2d bias must have shape ({g.o},) for weight {tuple(w.shape)}, "
                         f"got {tuple(b.shape)}")
    dt = compute_dtype(x, w)
    x, w = _as(x, dt), _as(w, dt)
    state = None
    if g.n == 0:                        # an empty batch: nothing for an algorithm to do
        y = get_xp(x).zeros(g.y_shape, dtype=dt)
    elif for_backward:
        plan = select_step(g, algo, x.dtype, need_dx=need_dx, need_dw=need_dw,
                           xp=get_xp(x, w))
        y, state = step_forward(plan, x, w, g, reuse=reuse)
    else:
        y = select(g, "forward", algo, x.dtype, xp=get_xp(x, w)).forward(x, w, g)
    if b is not None:
        y += b.reshape(1, -1, 1, 1)
    return y, (x, w, b is not None, g, algo, state)


def shared_prepared(cache):
    """The transformed weight a ``for_backward`` forward kept for its data gradient (or None)."""
    step = cache[5]
    return None if step is None else step.u


def conv2d_backward(dout, cache, need_dx=True, need_dw=True):
    """dout (N, O, HO, WO) -> (dx, dw, db); a gradient not needed is returned as None.
    All three are in the forward's compute dtype (``compute_dtype`` of its x and w; ``dout``
    is converted to it).

    ``need_dx=False`` skips the data gradient (first layer), ``need_dw=False`` skips the weight
    and bias gradients (frozen layers, neural style).
    """
    x, w, has_bias, g, algo, state = cache
    dx = dw = db = None
    dt = x.dtype                        # the forward's (compute_dtype): gradients in it too
    dout = _as(dout, dt)
    if g.n == 0:
        xp = get_xp(dout)
        return (xp.zeros(g.x_shape, dt) if need_dx else None,
                xp.zeros(g.w_shape, dt) if need_dw else None,
                xp.zeros(g.o, dt) if need_dw and has_bias else None)
    if state is not None:               # a for_backward forward: its plan and what it kept
        dx, dw = step_backward(state, dout, x, w, g, need_dx, need_dw)
    xp = get_xp(dout, x)
    if need_dx and dx is None:
        dx = select(g, "backward_data", algo, dout.dtype, xp=xp).backward_data(dout, w, g)
    if need_dw and dw is None:
        dw = select(g, "backward_weight", algo, dout.dtype, xp=xp).backward_weight(dout, x, g)
    if need_dw and has_bias:
        db = dout.sum(axis=(0, 2, 3))
    return dx, dw, db
