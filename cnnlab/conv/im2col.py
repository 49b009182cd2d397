"""im2col / col2im, written once, for every stride, padding, dilation and group count.

im2col turns the receptive field of every output position of every image into a column:

    cols[g, (c, p, q), (n, i, j)] = x_pad[n, g*Cg + c, i*SH + p*DH, j*SW + q*DW]

with shape (G, Cg*KH*KW, N*HO*WO): the batch is folded into the columns, so a convolution
is one large GEMM per group, ``w.reshape(G, Og, Cg*KH*KW) @ cols`` -> (G, Og, N*HO*WO),
which keeps both cores' BLAS threads busy even for small images. col2im is its adjoint: it
scatter-adds columns back to the (N, C, H, W) positions they were read from (overlapping
windows add up), which is exactly the data gradient of im2col.
"""
from __future__ import annotations

from ..backend import get_xp


def tap_slices(g, p: int, q: int) -> tuple[slice, slice]:
    """Rows/columns of the padded input read by kernel tap (p, q) for all outputs."""
    r0, c0 = p * g.dilation[0], q * g.dilation[1]
    return (slice(r0, r0 + g.stride[0] * (g.ho - 1) + 1, g.stride[0]),
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


def im2col(x, g):
    """x (N, C, H, W) -> cols (G, Cg*KH*KW, N*HO*WO), C-contiguous."""
    xp = get_xp(x)
    xpad = pad_input(x, g)
    cols = xp.empty((g.c, g.kh, g.kw, g.n, g.ho, g.wo), dtype=x.dtype)
    xt = xpad.transpose(1, 0, 2, 3)  # (C, N, H, W) view: each tap copy writes contiguous rows
    for p in range(g.kh):
        for q in range(g.kw):
            rs, cs = tap_slices(g, p, q)
            cols[:, p, q] = xt[:, :, rs, cs]
    return cols.reshape(g.groups, (g.c // g.groups) * g.kh * g.kw, g.n * g.ho * g.wo)


def col2im(cols, g):
    """cols (G, Cg*KH*KW, N*HO*WO) -> x (N, C, H, W), summing overlapping contributions."""
    xp = get_xp(cols)
    ph, pw = g.padding
    cols = cols.reshape(g.c, g.kh, g.kw, g.n, g.ho, g.wo)
    dxpad = xp.zeros((g.c, g.n, g.h + 2 * ph, g.w + 2 * pw), dtype=cols.dtype)
    for p in range(g.kh):
        for q in range(g.kw):
            rs, cs = tap_slices(g, p, q)
            dxpad[:, :, rs, cs] += cols[:, p, q]
    return dxpad[:, :, ph:ph + g.h, pw:pw + g.w].transpose(1, 0, 2, 3)
