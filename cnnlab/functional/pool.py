"""Max and average pooling over KHxKW windows (stride, zero/-inf padding), and global average.

x: (N, C, H, W) -> out: (N, C, HO, WO), HO = (H + 2*PH - KH) // SH + 1 (same for W).

max:  out[n,c,i,j] = max_{p,q} x_pad[n, c, i*SH + p, j*SW + q]   (padding is -inf: it never
      beats a finite value; a window of -inf inputs may give its gradient to a padded tap)
      backward sends dout to the window position that won (ties: the first in row-major order).
avg:  out = mean over the window; with ``count_include_pad`` (PyTorch's default) padded zeros
      count in the divisor, otherwise only real pixels do. backward spreads dout / divisor.
global average: (N, C, H, W) -> (N, C, 1, 1), the mean over H and W.

2x2 windows with stride 2 and no padding (VGG's pools, nearly every pool in practice) take a
faster path with the same results, bit for bit, NaN and infinities included: max compares the
two columns of each row, then the two rows (so ties still go to the first in row-major order;
a window holding a NaN outputs NaN and sends its gradient to its first pixel, as the general
path does, where PyTorch sends it to the NaN), and keeps three boolean maps of the output's
size instead of a tap index; both pools run on the convolution worker pool by
channel blocks (``cnnlab.conv.threads.by_channels``).
"""
from __future__ import annotations

from ..backend import get_xp
from ..conv.geometry import ConvGeometry, pair
from ..conv.im2col import pad_input, tap_slices
from ..conv.threads import by_channels
from ..errors import ShapeError


def pool_params(kernel_size, stride=None, padding=0):
    """((KH, KW), (SH, SW), (PH, PW)) of a pooling window, checked: kernel and stride >= 1
    (stride None: the kernel size), padding at most half the kernel."""
    kh, kw = pair(kernel_size, "kernel_size")
    sh, sw = pair(stride if stride is not None else (kh, kw), "stride")
    ph, pw = pair(padding, "padding")
    if min(kh, kw, sh, sw) < 1:
        raise ShapeError(f"pooling needs kernel_size and stride >= 1, got kernel_size="
                         f"{kernel_size!r}, stride={stride!r}")
    if ph > kh // 2 or pw > kw // 2:
        raise ShapeError(f"pool padding {padding} must be at most half the kernel {kernel_size}")
    return (kh, kw), (sh, sw), (ph, pw)


def _geometry(x, kernel_size, stride, padding) -> ConvGeometry:
    """Pooling windows are the taps of a depthwise convolution: reuse its geometry."""
    if x.ndim != 4:
        raise ShapeError(f"pooling expects input of shape (N, C, H, W), got {tuple(x.shape)}")
    (kh, kw), (sh, sw), (ph, pw) = pool_params(kernel_size, stride, padding)
    n, c, h, w = x.shape
    g = ConvGeometry(n, c, h, w, c, kh, kw, (sh, sw), (ph, pw), (1, 1), c)
    if g.ho < 1 or g.wo < 1:
        raise ShapeError(f"pool kernel {kh}x{kw} does not fit input {h}x{w} (padding {padding})")
    return g


def _taps(g):
    return [(p, q) for p in range(g.kh) for q in range(g.kw)]


def _is_2x2(g) -> bool:
    return (g.kh, g.kw, g.stride, g.padding) == (2, 2, (2, 2), (0, 0))


def _quarters(a, h, w):
    """The four taps of 2x2/2 windows over ``a``'s first 2h x 2w pixels: (top-left,
    top-right, bottom-left, bottom-right) strided views of shape (N, C, h, w)."""
    return [a[:, :, p:2 * h:2, q:2 * w:2] for p in (0, 1) for q in (0, 1)]


def _max_pool_2x2_forward(x, g):
    """out = max of each 2x2 window; cache: (right, lower), booleans of out's shape with
    right[r] = the right pixel of row r won that row (r = 0 top, 1 bottom) and lower = the
    bottom row won; strict comparisons, so ties go to the first in row-major order."""
    xp = get_xp(x)
    out = xp.empty((g.n, g.c, g.ho, g.wo), dtype=x.dtype)
    right = xp.empty((2,) + out.shape, dtype=bool)
    lower = xp.empty(out.shape, dtype=bool)

    def block(c0, c1):
        t0, t1, b0, b1 = _quarters(x[:, c0:c1], g.ho, g.wo)
        xp.greater(t1, t0, out=right[0, :, c0:c1])
        top = xp.maximum(t0, t1)
        xp.greater(b1, b0, out=right[1, :, c0:c1])
        bottom = xp.maximum(b0, b1)
        xp.greater(bottom, top, out=lower[:, c0:c1])
        xp.maximum(top, bottom, out=out[:, c0:c1])
        nan = xp.isnan(out[:, c0:c1])
        if nan.any():           # as the general path: a NaN window's gradient goes to its first pixel
            lower[:, c0:c1][nan] = False
            right[0, :, c0:c1][nan] = False
    by_channels(block, x)
    return out, (g, (right, lower))


def _max_pool_2x2_backward(dout, g, right, lower):
    xp = get_xp(dout)
    exact = (g.h, g.w) == (2 * g.ho, 2 * g.wo)
    dx = (xp.empty if exact else xp.zeros)((g.n, g.c, g.h, g.w), dtype=dout.dtype)

    def block(c0, c1):
        d = dout[:, c0:c1]
        taps = _quarters(dx[:, c0:c1], g.ho, g.wo)
        low = lower[:, c0:c1]
        rows = (xp.multiply(d, ~low), xp.multiply(d, low))     # each row's share of dout
        for r in (0, 1):         # products by masks, as the general path (inf * 0 is NaN there too)
            rt = right[r, :, c0:c1]
            xp.multiply(rows[r], rt, out=taps[2 * r + 1])
            xp.multiply(rows[r], ~rt, out=taps[2 * r])
    by_channels(block, dx)
    return dx


def max_pool_forward(x, kernel_size=2, stride=None, padding=0):
    xp = get_xp(x)
    g = _geometry(x, kernel_size, stride, padding)
    if _is_2x2(g):
        return _max_pool_2x2_forward(x, g)
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
        xp.copyto(arg, arg.dtype.type(k), where=hit)
    return out, (g, arg)


def max_pool_backward(dout, cache):
    g, arg = cache
    if isinstance(arg, tuple):
        return _max_pool_2x2_backward(dout, g, *arg)
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
    if _is_2x2(g):
        xp = get_xp(x)
        out = xp.empty((g.n, g.c, g.ho, g.wo), dtype=x.dtype)

        def block(c0, c1):
            t0, t1, b0, b1 = _quarters(x[:, c0:c1], g.ho, g.wo)
            o = out[:, c0:c1]
            xp.add(t0, t1, out=o)
            o += b0
            o += b1
            o /= 4
        by_channels(block, x)
        return out, (g, 4)
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
    if _is_2x2(g):
        exact = (g.h, g.w) == (2 * g.ho, 2 * g.wo)
        dx = (xp.empty if exact else xp.zeros)((g.n, g.c, g.h, g.w), dtype=dout.dtype)

        def block(c0, c1):
            share = dout[:, c0:c1] / 4
            for tap in _quarters(dx[:, c0:c1], g.ho, g.wo):
                tap[...] = share
        by_channels(block, dx)
        return dx
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
