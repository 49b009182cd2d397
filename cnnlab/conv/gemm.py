"""im2col + GEMM: the general algorithm (any stride, padding, dilation, groups).

With the batch folded into the GEMM (see im2col.py), per group g:

    forward          Y_g  = W_g @ cols_g                (Og, N*HO*WO)
    backward_data    dx   = col2im(W_g^T @ dY_g)
    backward_weight  dW_g = dY_g @ cols_g^T

where dY_g is dy rearranged to (Og, N*HO*WO). Memory: the column matrix holds every input
pixel KH*KW/(SH*SW) times, the "big memory overhead" of this method (``workspace_bytes``).
A column matrix over COLS_BYTES is built and used in blocks (``blocks``: groups of whole
images, or rows of one image; each block's GEMM still has thousands of columns, plenty for
BLAS; dW sums over the blocks), so a 64-channel layer at 512x341 needs 64 MB of columns,
not 400.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..backend import get_xp
from .algorithm import ConvAlgorithm, register
from .im2col import col2im_add, col2im_result, col2im_zeros, im2col, pad_input

COLS_BYTES = 64 << 20


def blocks(g, itemsize: int) -> list[tuple[int, int, int, int]]:
    """Pieces (n0, n1, i0, i1) of the output (images n0..n1-1, rows i0..i1-1) whose columns
    take at most COLS_BYTES: all of it, else groups of whole images, else rows of one image."""
    per_row = g.c * g.kh * g.kw * g.wo * itemsize
    per_image = per_row * g.ho
    if per_image * g.n <= COLS_BYTES:
        return [(0, g.n, 0, g.ho)]
    if per_image <= COLS_BYTES:
        k = COLS_BYTES // per_image
        return [(n, min(g.n, n + k), 0, g.ho) for n in range(0, g.n, k)]
    step = max(1, COLS_BYTES // per_row)
    return [(n, n + 1, i, min(g.ho, i + step)) for n in range(g.n) for i in range(0, g.ho, step)]


def _piece(g, block):
    """(geometry of images n0..n1-1, output rows (i0, i1)) of a block."""
    n0, n1, i0, i1 = block
    return replace(g, n=n1 - n0), (i0, i1)


def _dy_rows(dy, g, rows):
    """dy (N, O, HO, WO) rows i0..i1-1 -> (G, Og, N*R*WO) (a view where the layout allows)."""
    return dy[:, :, rows[0]:rows[1]].transpose(1, 0, 2, 3).reshape(g.groups, g.o // g.groups, -1)


def _from_gemm(y2, g):
    """(G, Og, N*HO*WO) -> (N, O, HO, WO), contiguous."""
    xp = get_xp(y2)
    return xp.ascontiguousarray(y2.reshape(g.o, g.n, g.ho, g.wo).transpose(1, 0, 2, 3))


class Im2colGemm(ConvAlgorithm):
    name = "im2col"

    def forward(self, x, w, g, prepared=None):
        xp = get_xp(x, w)
        wmat = w.reshape(g.groups, g.o // g.groups, -1)             # (G, Og, K)
        parts = blocks(g, np.dtype(x.dtype).itemsize)
        if len(parts) == 1:
            return _from_gemm(xp.matmul(wmat, im2col(x, g)), g)     # (G, K, N*L) columns
        xpad = pad_input(x, g)
        y = xp.empty(g.y_shape, dtype=xp.result_type(x, w))
        for n0, n1, i0, i1 in parts:
            gb, rows = _piece(g, (n0, n1, i0, i1))
            yb = xp.matmul(wmat, im2col(x[n0:n1], gb, rows, xpad[n0:n1]))  # (G, Og, n*R*WO)
            y[n0:n1, :, i0:i1] = yb.reshape(g.o, n1 - n0, i1 - i0, g.wo).transpose(1, 0, 2, 3)
        return y

    def backward_data(self, dy, w, g, prepared=None):
        xp = get_xp(dy, w)
        wt = w.reshape(g.groups, g.o // g.groups, -1).transpose(0, 2, 1)   # (G, K, Og)
        dxpad = None
        for n0, n1, i0, i1 in blocks(g, np.dtype(xp.result_type(dy, w)).itemsize):
            gb, rows = _piece(g, (n0, n1, i0, i1))
            dcols = xp.matmul(wt, _dy_rows(dy[n0:n1], gb, rows))    # (G, K, n*R*WO)
            if dxpad is None:
                dxpad = col2im_zeros(g, dcols)
            col2im_add(dcols, gb, dxpad[:, n0:n1], rows)
        return col2im_result(dxpad, g)

    def backward_weight(self, dy, x, g):
        xp = get_xp(dy, x)
        parts = blocks(g, np.dtype(x.dtype).itemsize)
        xpad = pad_input(x, g) if len(parts) > 1 else None
        dw = None
        for n0, n1, i0, i1 in parts:
            gb, rows = _piece(g, (n0, n1, i0, i1))
            cols = im2col(x[n0:n1], gb, rows, None if xpad is None else xpad[n0:n1])
            part = xp.matmul(_dy_rows(dy[n0:n1], gb, rows), cols.transpose(0, 2, 1))  # (G, Og, K)
            if dw is None:
                dw = part
            else:
                dw += part
        return dw.reshape(g.w_shape)

    def workspace_bytes(self, g, pass_, itemsize):
        n0, n1, i0, i1 = blocks(g, itemsize)[0]
        cols = (n1 - n0) * g.c * g.kh * g.kw * (i1 - i0) * g.wo * itemsize
        pad = g.n * g.c * (g.h + 2 * g.padding[0]) * (g.w + 2 * g.padding[1]) * itemsize
        out = g.n * g.o * g.ho * g.wo * itemsize  # the GEMM result before the NCHW transpose
        return cols + out + (pad if any(g.padding) else 0)


register(Im2colGemm())
