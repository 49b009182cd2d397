"""Direct convolution: the definition, one kernel tap at a time. The reference for tests.

    y[n, o, i, j] = sum_{c, p, q} x_pad[n, c, i*SH + p*DH, j*SW + q*DW] * w[o, c, p, q]

Each tap (p, q) is one einsum over channels; workspace: the padded input and one tap's
slice and product (``workspace_bytes``).
"""
from __future__ import annotations

from ..backend import get_xp
from .algorithm import ConvAlgorithm, register
from .im2col import pad_input, tap_slices


def _split(g):
    return g.groups, g.o // g.groups, g.c // g.groups


class Direct(ConvAlgorithm):
    name = "direct"

    def forward(self, x, w, g, prepared=None):
        xp = get_xp(x, w)
        G, og, cg = _split(g)
        xpad = pad_input(x, g)
        y = xp.zeros((g.n, G, og, g.ho, g.wo), dtype=x.dtype)
        for p in range(g.kh):
            for q in range(g.kw):
                rs, cs = tap_slices(g, p, q)
                xs = xpad[:, :, rs, cs].reshape(g.n, G, cg, g.ho, g.wo)
                y += xp.einsum("ngchw,goc->ngohw", xs, w[:, :, p, q].reshape(G, og, cg))
        return y.reshape(g.y_shape)

    def backward_data(self, dy, w, g, prepared=None):
        xp = get_xp(dy, w)
        G, og, cg = _split(g)
        ph, pw = g.padding
        dyg = dy.reshape(g.n, G, og, g.ho, g.wo)
        dxpad = xp.zeros((g.n, g.c, g.h + 2 * ph, g.w + 2 * pw), dtype=dy.dtype)
        for p in range(g.kh):
            for q in range(g.kw):
                rs, cs = tap_slices(g, p, q)
                contrib = xp.einsum("ngohw,goc->ngchw", dyg, w[:, :, p, q].reshape(G, og, cg))
                dxpad[:, :, rs, cs] += contrib.reshape(g.n, g.c, g.ho, g.wo)
        return dxpad[:, :, ph:ph + g.h, pw:pw + g.w]

    def backward_weight(self, dy, x, g):
        xp = get_xp(dy, x)
        G, og, cg = _split(g)
        xpad = pad_input(x, g)
        dyg = dy.reshape(g.n, G, og, g.ho, g.wo)
        dw = xp.empty(g.w_shape, dtype=dy.dtype)
        for p in range(g.kh):
            for q in range(g.kw):
                rs, cs = tap_slices(g, p, q)
                xs = xpad[:, :, rs, cs].reshape(g.n, G, cg, g.ho, g.wo)
                dw[:, :, p, q] = xp.einsum("ngohw,ngchw->goc", dyg, xs).reshape(g.o, cg)
        return dw

    def workspace_bytes(self, g, pass_, itemsize):
        """The padded input (the data gradient: the padded dx its result is a view of), one
        tap's input slice (N, C, HO, WO) and, for the forward, einsum's output-sized product."""
        pad = g.n * g.c * (g.h + 2 * g.padding[0]) * (g.w + 2 * g.padding[1])
        tap = g.n * g.c * g.ho * g.wo
        if pass_ == "backward_data":
            return (pad + 2 * tap) * itemsize
        product = g.n * g.o * g.ho * g.wo if pass_ == "forward" else 0
        return ((pad if any(g.padding) else 0) + tap + product) * itemsize


register(Direct())
