"""im2col + GEMM: the general algorithm (any stride, padding, dilation, groups).

With the batch folded into the GEMM (see im2col.py), per group g:

    forward          Y_g  = W_g @ cols_g                (Og, N*HO*WO)
    backward_data    dx   = col2im(W_g^T @ dY_g)
    backward_weight  dW_g = dY_g @ cols_g^T

where dY_g is dy rearranged to (Og, N*HO*WO). Memory: the column matrix holds every input
pixel KH*KW/(SH*SW) times, the "big memory overhead" of this method (``workspace_bytes``).
"""
from __future__ import annotations

from ..backend import get_xp
from .algorithm import ConvAlgorithm, register
from .im2col import col2im, im2col


def _to_gemm(y, g):
    """(N, O, HO, WO) -> (G, Og, N*HO*WO)."""
    xp = get_xp(y)
    return xp.ascontiguousarray(y.transpose(1, 0, 2, 3)).reshape(g.groups, g.o // g.groups, -1)


def _from_gemm(y2, g):
    """(G, Og, N*HO*WO) -> (N, O, HO, WO), contiguous."""
    xp = get_xp(y2)
    return xp.ascontiguousarray(y2.reshape(g.o, g.n, g.ho, g.wo).transpose(1, 0, 2, 3))


class Im2colGemm(ConvAlgorithm):
    name = "im2col"

    def forward(self, x, w, g):
        xp = get_xp(x, w)
        cols = im2col(x, g)                                         # (G, K, N*L)
        wmat = w.reshape(g.groups, g.o // g.groups, -1)             # (G, Og, K)
        return _from_gemm(xp.matmul(wmat, cols), g)

    def backward_data(self, dy, w, g):
        xp = get_xp(dy, w)
        wmat = w.reshape(g.groups, g.o // g.groups, -1)
        dcols = xp.matmul(wmat.transpose(0, 2, 1), _to_gemm(dy, g))  # (G, K, N*L)
        return col2im(dcols, g)

    def backward_weight(self, dy, x, g):
        xp = get_xp(dy, x)
        cols = im2col(x, g)
        dw = xp.matmul(_to_gemm(dy, g), cols.transpose(0, 2, 1))   # (G, Og, K)
        return dw.reshape(g.w_shape)

    def workspace_bytes(self, g, pass_, itemsize):
        cols = g.n * g.c * g.kh * g.kw * g.ho * g.wo * itemsize
        pad = g.n * g.c * (g.h + 2 * g.padding[0]) * (g.w + 2 * g.padding[1]) * itemsize
        out = g.n * g.o * g.ho * g.wo * itemsize  # the GEMM result before the NCHW transpose
        return cols + out + (pad if any(g.padding) else 0)


register(Im2colGemm())
