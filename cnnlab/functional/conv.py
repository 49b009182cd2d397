"""2-D convolution as a forward/backward pair; the algorithm is chosen in :mod:`cnnlab.conv`.

x: (N, C, H, W), w: (O, C/groups, KH, KW), b: (O,) or None -> y: (N, O, HO, WO)

    y = conv(x, w) + b[None, :, None, None]
    dx = conv_transpose(dy, w)        (the data gradient)
    dw = corr(x, dy)                  (the weight gradient)
    db = sum over n, i, j of dy

``algo`` is "auto" (measured per shape), or a registered name: "direct",
"im2col", "fft", "winograd2", "winograd4".
"""
from __future__ import annotations

from ..conv import ConvGeometry, select


def conv2d_forward(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, algo="auto"):
    """Return (y, cache); see the module docstring for shapes."""
    g = ConvGeometry.of(x.shape, w.shape, stride, padding, dilation, groups)
    y = select(g, "forward", algo, x.dtype).forward(x, w, g)
    if b is not None:
        y += b.reshape(1, -1, 1, 1)
    return y, (x, w, b is not None, g, algo)


def conv2d_backward(dout, cache, need_dx=True, need_dw=True):
    """dout (N, O, HO, WO) -> (dx, dw, db); a gradient not needed is returned as None.

    ``need_dx=False`` skips the data gradient (first layer), ``need_dw=False`` skips the weight
    and bias gradients (frozen layers, neural style).
    """
    x, w, has_bias, g, algo = cache
    dx = select(g, "backward_data", algo, dout.dtype).backward_data(dout, w, g) if need_dx else None
    dw = db = None
    if need_dw:
        dw = select(g, "backward_weight", algo, dout.dtype).backward_weight(dout, x, g)
        if has_bias:
            db = dout.sum(axis=(0, 2, 3))
    return dx, dw, db
