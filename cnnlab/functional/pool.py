"""Max and average pooling over KHxKW windows (stride, zero/-inf padding), and global average.

x: (N, C, H, W) -> out: (N, C, HO, WO), HO = (H + 2*PH - KH) // SH + 1 (same for W).

max:  out[n,c,i,j] = max_{p,q} x_pad[n, c, i*SH + p, j*SW + q]   (padding never wins)
      backward sends dout to the window position that won (ties: the first in row-major order).
avg:  out = mean over the window; with ``count_include_pad`` (PyTorch's default) padded zeros
      count in the divisor, otherwise only real pixels do. backward spreads dout / divisor.
global average: (N, C, H, W) -> (N, C, 1, 1), the mean over H and W.
"""
from __future__ import annotations

from ..backend import get_xp
from ..conv.geometry import ConvGeometry, pair
from ..conv.im2col import pad_input, tap_slices
from ..errors import ShapeError


def _geometry(x, kernel_size, stride, padding) -> ConvGeometry:
    """Pooling windows are the taps of a depthwise convolution: reuse its geometry."""
    if x.ndim != 4:
        raise ShapeError(f"pooling expects input of shape (N, C, H, W), got {tuple(x.shape)}")
    kh, kw = pair(kernel_size, "kernel_size")
    sh, sw = pair(stride if stride is not None else (kh, kw), "stride")
    ph, pw = pair(padding, "padding")
    if ph > kh // 2 or pw > kw // 2:
        raise ShapeError(f"pool padding {padding} must be at most half the kernel {kernel_size}")
    n, c, h, w = x.shape
    g = ConvGeometry(n, c, h, w, c, kh, kw, (sh, sw), (ph, pw), (1, 1), c)
    if g.ho < 1 or g.wo < 1:
        raise ShapeError(f"pool kernel {kh}x{kw} does not fit input {h}x{w} (padding {padding})")
    return g


def _taps(g):
    return [(p, q) for p in range(g.kh) for q in range(g.kw)]


def max_pool_forward(x, kernel_size=2, stride=None, padding=0):
    xp = get_xp(x)
    g = _geometry(x, kernel_size, stride, padding)
    if any(g.padding):
        xpad = xp.full((g.n, g.c, g.h + 2 * g.padding[0], g.w + 2 * g.padding[1]), -xp.inf, x.dtype)
        xpad[:, :, g.padding[0]:g.padding[0] + g.h, g.padding[1]:g.padding[1] + g.w] = x
    else:
        xpad = x
    views = [xpad[(slice(None), slice(None)) + tap_slices(g, p, q)] for p, q in _taps(g)]
    out = views[0].copy()
    for v in views[1:]:
        xp.maximum(out, v, out=out)
    # the winning tap of each output: the first that equals the maximum (written last to
    # first, so the first one wins); uint8 while there are at most 256 taps
    arg = xp.zeros(out.shape, dtype=xp.uint8 if len(views) <= 256 else xp.int32)
    hit = xp.empty(out.shape, dtype=bool)
    for k in range(len(views) - 1, -1, -1):
        xp.equal(views[k], out, out=hit)
        xp.copyto(arg, k, where=hit)
    return out, (g, arg)


def max_pool_backward(dout, cache):
    g, arg = cache
    xp = get_xp(dout)
    ph, pw = g.padding
    dxpad = xp.zeros((g.n, g.c, g.h + 2 * ph, g.w + 2 * pw), dtype=dout.dtype)
    overlap = g.stride[0] < g.kh or g.stride[1] < g.kw
    for k, (p, q) in enumerate(_taps(g)):
        window = dxpad[(slice(None), slice(None)) + tap_slices(g, p, q)]
        if overlap:                               # windows share inputs: accumulate
            window += dout * (arg == k)
        else:                                     # each input in one window: write it once
            xp.multiply(dout, arg == k, out=window)
    return dxpad[:, :, ph:ph + g.h, pw:pw + g.w]


def _avg_divisor(x, g, count_include_pad):
    if count_include_pad or not any(g.padding):
        return g.kh * g.kw
    xp = get_xp(x)
    ones = pad_input(xp.ones((1, 1, g.h, g.w), dtype=x.dtype), g)
    cnt = xp.zeros((1, 1, g.ho, g.wo), dtype=x.dtype)
    for p, q in _taps(g):
        cnt += ones[(slice(None), slice(None)) + tap_slices(g, p, q)]
    return cnt


def avg_pool_forward(x, kernel_size=2, stride=None, padding=0, count_include_pad=True):
    g = _geometry(x, kernel_size, stride, padding)
    xpad = pad_input(x, g)
    out = get_xp(x).zeros((g.n, g.c, g.ho, g.wo), dtype=x.dtype)
    for p, q in _taps(g):
        out += xpad[(slice(None), slice(None)) + tap_slices(g, p, q)]
    div = _avg_divisor(x, g, count_include_pad)
    out /= div
    return out, (g, div)


def avg_pool_backward(dout, cache):
    g, div = cache
    xp = get_xp(dout)
    ph, pw = g.padding
    share = dout / div
    dxpad = xp.zeros((g.n, g.c, g.h + 2 * ph, g.w + 2 * pw), dtype=dout.dtype)
    for p, q in _taps(g):
        dxpad[(slice(None), slice(None)) + tap_slices(g, p, q)] += share
    return dxpad[:, :, ph:ph + g.h, pw:pw + g.w]


def global_avg_pool_forward(x):
    if x.ndim != 4:
        raise ShapeError(f"global average pool expects (N, C, H, W), got {tuple(x.shape)}")
    return x.mean(axis=(2, 3), keepdims=True), x.shape


def global_avg_pool_backward(dout, cache):
    n, c, h, w = cache
    xp = get_xp(dout)
    return xp.broadcast_to(dout / (h * w), cache).copy()
