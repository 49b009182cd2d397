"""im2col / col2im, written once, for every stride, padding, dilation and group count.

im2col turns the receptive field of every output position of every image into a column:

    cols[g, (c, p, q), (n, i, j)] = x_pad[n, g*Cg + c, i*SH + p*DH, j*SW + q*DW]

with shape (G, Cg*KH*KW, N*HO*WO): the batch is folded into the columns, so a convolution
is one large GEMM per group, ``w.reshape(G, Og, Cg*KH*KW) @ cols`` -> (G, Og, N*HO*WO),
which keeps both cores' BLAS threads busy even for small images. col2im is its adjoint: it
scatter-adds columns back to the (N, C, H, W) positions they were read from (overlapping
windows add up), which is exactly the data gradient of im2col.

Both take an optional block of output rows ``rows = (i0, i1)``: the columns of the output
positions (n, i, j) with i0 <= i < i1 only, (G, Cg*KH*KW, N*(i1-i0)*WO), so that a large
column matrix can be built and used block by block (``cnnlab.conv.gemm``).
"""
from __future__ import annotations

from ..backend import get_xp


def tap_slices(g, p: int, q: int, rows=None) -> tuple[slice, slice]:
    """Rows/columns of the padded input read by kernel tap (p, q) for all outputs (or for
    the output rows ``rows = (i0, i1)``)."""
    i0, i1 = rows or (0, g.ho)
    r0, c0 = p * g.dilation[0] + i0 * g.stride[0], q * g.dilation[1]
    return (slice(r0, r0 + g.stride[0] * (i1 - i0 - 1) + 1, g.stride[0]),
            slice(c0, c0 + g.stride[1] * (g.wo - 1) + 1, g.stride[1]))


def pad_input(x, g):
    """Zero-pad the spatial dims of x (N, C, H, W) by g.padding; no copy when there is none."""
    ph, pw = g.padding
    if ph == 0 and pw == 0:
        return x
    xp = get_xp(x)
    out = xp.zeros((x.shape[0], x.shape[1], x.shape[2] + 2 * ph, x.shape[3] + 2 * pw), dtype=x.dtype)
    out[:, :, ph:ph + x.shape[2], pw:pw + x.shape[3]] = x
    return out


def im2col(x, g, rows=None, xpad=None):
    """x (N, C, H, W) -> cols (G, Cg*KH*KW, N*R*WO), C-contiguous, for the output rows
    ``rows = (i0, i1)`` (default all: R = HO); ``xpad``: ``pad_input(x, g)`` if already made."""
    xp = get_xp(x)
    i0, i1 = rows or (0, g.ho)
    if xpad is None:
        xpad = pad_input(x, g)
    cols = xp.empty((g.c, g.kh, g.kw, g.n, i1 - i0, g.wo), dtype=x.dtype)
    xt = xpad.transpose(1, 0, 2, 3)  # (C, N, H, W) view: each tap copy writes contiguous rows
    for p in range(g.kh):
        for q in range(g.kw):
            rs, cs = tap_slices(g, p, q, (i0, i1))
            cols[:, p, q] = xt[:, :, rs, cs]
    return cols.reshape(g.groups, (g.c // g.groups) * g.kh * g.kw, g.n * (i1 - i0) * g.wo)


def col2im(cols, g):
    """cols (G, Cg*KH*KW, N*HO*WO) -> x (N, C, H, W), summing overlapping contributions."""
    dxpad = col2im_zeros(g, cols)
    col2im_add(cols, g, dxpad)
    return col2im_result(dxpad, g)


def col2im_zeros(g, like):
    """The zeroed (C, N, H + 2 PH, W + 2 PW) array col2im_add accumulates into."""
    ph, pw = g.padding
    return get_xp(like).zeros((g.c, g.n, g.h + 2 * ph, g.w + 2 * pw), dtype=like.dtype)


def col2im_add(cols, g, dxpad, rows=None):
    """dxpad += the scatter of cols (G, Cg*KH*KW, N*R*WO), the columns of ``rows``."""
    i0, i1 = rows or (0, g.ho)
    cols = cols.reshape(g.c, g.kh, g.kw, g.n, i1 - i0, g.wo)
    for p in range(g.kh):
        for q in range(g.kw):
            rs, cs = tap_slices(g, p, q, (i0, i1))
            dxpad[:, :, rs, cs] += cols[:, p, q]


def col2im_result(dxpad, g):
    """(C, N, H + 2 PH, W + 2 PW) -> the (N, C, H, W) view without the padding."""
    ph, pw = g.padding
    return dxpad[:, :, ph:ph + g.h, pw:pw + g.w].transpose(1, 0, 2, 3)
