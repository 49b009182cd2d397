"""im2col + GEMM: the general algorithm (any stride, padding, dilation, groups).

    forward          y  = W @ cols(x)                 W: (G, Og, Cg*KH*KW)
    backward_data    dx = col2im(W^T @ dy)
    backward_weight  dW = sum_n dy[n] @ cols(x)[n]^T

Memory: the column matrix holds every input pixel KH*KW/(SH*SW) times, the
"big memory overhead" of this method (reported by ``workspace_bytes``).
"""
from __future__ import annotations

from ..backend import get_xp
from .algorithm import ConvAlgorithm, register
from .im2col import col2im, im2col


class Im2colGemm(ConvAlgorithm):
    name = "im2col"

    def forward(self, x, w, g):
        xp = get_xp(x, w)
        cols = im2col(x, g)                                         # (N, G, K, L)
        wmat = w.reshape(g.groups, g.o // g.groups, -1)             # (G, Og, K)
        y = xp.matmul(wmat, cols)                                   # (N, G, Og, L)
        return y.reshape(g.y_shape)

    def backward_data(self, dy, w, g):
        xp = get_xp(dy, w)
        wmat = w.reshape(g.groups, g.o // g.groups, -1)
        dyg = dy.reshape(g.n, g.groups, g.o // g.groups, g.ho * g.wo)
        dcols = xp.matmul(wmat.transpose(0, 2, 1), dyg)            # (N, G, K, L)
        return col2im(dcols, g)

    def backward_weight(self, dy, x, g):
        xp = get_xp(dy, x)
        cols = im2col(x, g)                                         # (N, G, K, L)
        og = g.o // g.groups
        dyg = dy.reshape(g.n, g.groups, og, g.ho * g.wo)
        dw = xp.empty((g.groups, og, cols.shape[2]), dtype=dy.dtype)
        for gi in range(g.groups):
            dw[gi] = xp.tensordot(dyg[:, gi], cols[:, gi], axes=([0, 2], [0, 2]))
        return dw.reshape(g.w_shape)

    def workspace_bytes(self, g, pass_, itemsize):
        cols = g.n * g.c * g.kh * g.kw * g.ho * g.wo * itemsize
        pad = g.n * g.c * (g.h + 2 * g.padding[0]) * (g.w + 2 * g.padding[1]) * itemsize
        return cols + (pad if any(g.padding) else 0)


register(Im2colGemm())
