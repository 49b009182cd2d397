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

Threads (numpy, several threads, see :mod:`cnnlab.conv.threads`): the work runs on the
worker pool with single-threaded BLAS, never on BLAS's own threads (whose busy-waiting
after each call would take a core from the next pool region). The forward and the weight
gradient cut the output into at least one block per thread (``blocks(g, itemsize,
parts)``, each within COLS_BYTES / parts, so the blocks in flight together stay within
COLS_BYTES), each building its own columns and running its own GEMM; the weight gradient
sums the blocks' dW in block order. On small output maps (at most SMALL_MAP positions,
groups 1: conv4/conv5 at 224 px) the forward and the weight gradient cut the input channels
instead (``_split_channels``): each thread builds its channels' columns and multiplies them
by its slice of W (forward: partial outputs, added; weight gradient: disjoint columns of dW).
The data gradient splits each block's input channels (the rows of W^T and of the column
matrix) so that every thread scatters into its own channels of dx.
"""
from __future__ import annotations

import contextlib
from dataclasses import replace

import numpy as np

from ..backend import get_xp
from .algorithm import ConvAlgorithm, register
from .im2col import col2im_add, col2im_result, col2im_zeros, im2col, pad_input
from .threads import even_blocks, parallel_map, pool_region, pool_threads

COLS_BYTES = 64 << 20
SMALL_MAP = 4096  # output positions (N*HO*WO) up to which the pool splits input channels
# The forward there always adds SPLIT_BLOCKS partial outputs, whatever the thread count, so
# that its results do not depend on it (bit for bit, like every other forward): on one
# thread the blocks run one after the other, and more than SPLIT_BLOCKS threads leave the
# others idle in that pass.
SPLIT_BLOCKS = 2


def _split_channels(g, itemsize: int) -> bool:
    """Forward and weight gradient of a small output map (conv5 at 14x14, batch 1): cut the
    input channels, each block building its own columns and running its GEMM on them (the
    forward adds the blocks' partial outputs; the weight gradient's blocks are disjoint
    columns of dW), instead of one GEMM per block of a few hundred output columns (and, for
    dW, one whole (O, K) product per thread to add up)."""
    cols = g.c * g.kh * g.kw * g.n * g.ho * g.wo * itemsize
    return (g.groups == 1 and g.n * g.ho * g.wo <= SMALL_MAP
            and g.c >= 16 * SPLIT_BLOCKS and cols <= COLS_BYTES)


def _channel_columns(x, xpad, g, c0: int, c1: int):
    """im2col's column rows (C1-C0)*KH*KW for input channels c0..c1-1 (groups == 1):
    (rows, N*HO*WO); ``xpad``: ``pad_input(x, g)``."""
    return im2col(x[:, c0:c1], replace(g, c=c1 - c0, groups=1), xpad=xpad[:, c0:c1])[0]


def blocks(g, itemsize: int, parts: int = 1) -> list[tuple[int, int, int, int]]:
    """Pieces (n0, n1, i0, i1) of the output (images n0..n1-1, rows i0..i1-1) whose columns
    take at most COLS_BYTES / parts: all of it, else groups of whole images, else rows of
    one image; with ``parts`` > 1 (threads), at least ``parts`` pieces where the output has
    that many rows, of equal size."""
    budget = max(1, COLS_BYTES // parts)
    per_row = g.c * g.kh * g.kw * g.wo * itemsize
    per_image = per_row * g.ho
    if parts == 1:
        if per_image * g.n <= budget:
            return [(0, g.n, 0, g.ho)]
        if per_image <= budget:
            k = budget // per_image
            return [(n, min(g.n, n + k), 0, g.ho) for n in range(0, g.n, k)]
        step = max(1, budget // per_row)
        return [(n, n + 1, i, min(g.ho, i + step)) for n in range(g.n) for i in range(0, g.ho, step)]
    if g.n >= parts and per_image <= budget:        # whole images, parts or more pieces
        k = max(1, min(budget // per_image, -(-g.n // parts)))
        return [(n0, n1, 0, g.ho) for n0, n1 in even_blocks(g.n, -(-g.n // k))]
    step = max(1, budget // per_row)                # rows: parts pieces per image or more
    k = max(-(-g.ho // step), -(-parts // g.n))
    return [(n, n + 1, i0, i1) for n in range(g.n) for i0, i1 in even_blocks(g.ho, k)]



def _region(xp):
    """``pool_region()`` for numpy; nothing for other array modules (their GEMMs do not run
    on BLAS threads, and the pool's lock would only serialise them)."""
    return pool_region() if xp is np else contextlib.nullcontext()


def _threads(xp) -> int:
    """Threads to cut the work for: the pool's (numpy only), else 1."""
    return pool_threads() if xp is np else 1


def _piece(g, block):
    """(geometry of images n0..n1-1, output rows (i0, i1)) of a block."""
    n0, n1, i0, i1 = block
    return replace(g, n=n1 - n0), (i0, i1)


def _channel_blocks(g, parts: int) -> list[tuple[int, int]]:
    """Input channels [c0, c1) cut into ``parts`` blocks, further cut at group boundaries."""
    cg = g.c // g.groups
    cuts = sorted({c for c0, c1 in even_blocks(g.c, parts) for c in (c0, c1)}
                  | set(range(0, g.c + 1, cg)))
    return list(zip(cuts[:-1], cuts[1:]))


def _dy_rows(dy, g, rows):
    """dy (N, O, HO, WO) rows i0..i1-1 -> (G, Og, N*R*WO) (a view where the layout allows)."""
    return dy[:, :, rows[0]:rows[1]].transpose(1, 0, 2, 3).reshape(g.groups, g.o // g.groups, -1)


def _from_gemm(y2, g):
    """(G, Og, N*HO*WO) -> (N, O, HO, WO), contiguous."""
    xp = get_xp(y2)
    return xp.ascontiguousarray(y2.reshape(g.o, g.n, g.ho, g.wo).transpose(1, 0, 2, 3))


class Im2colGemm(ConvAlgorithm):
    name = "im2col"

    saves_input = True      # forward(..., save=) keeps the column matrices for backward_weight
    saved_name = "columns"

    def forward(self, x, w, g, prepared=None, save=None):
        """``save``: a dict that receives the column matrices this forward built (KH*KW times
        the input, see ``saved_bytes``), for ``backward_weight(..., saved=save)``."""
        xp = get_xp(x, w)
        wmat = w.reshape(g.groups, g.o // g.groups, -1)             # (G, Og, K)
        nthreads, itemsize = _threads(xp), np.dtype(x.dtype).itemsize
        if xp is np and _split_channels(g, itemsize):
            return self._forward_split_channels(x, wmat[0], g, save)
        parts = blocks(g, itemsize, nthreads)
        kept = [None] * len(parts)
        if save is not None:
            save["input_tiles"] = (self.name, g, ("blocks", tuple(parts)), kept)
        if len(parts) == 1:
            with _region(xp):                                     # BLAS: one thread (if a pool)
                kept[0] = im2col(x, g)                              # (G, K, N*L) columns
                return _from_gemm(xp.matmul(wmat, kept[0]), g)
        xpad = pad_input(x, g)
        y = xp.empty(g.y_shape, dtype=xp.result_type(x, w))

        def piece(i):
            n0, n1, i0, i1 = block = parts[i]
            gb, rows = _piece(g, block)
            cols = im2col(x[n0:n1], gb, rows, xpad[n0:n1])             # (G, K, n*R*WO)
            if save is not None:        # kept for the weight gradient; else freed right away
                kept[i] = cols
            if n1 - n0 == 1:                                            # straight into y
                xp.matmul(wmat, cols, out=y[n0].reshape(g.groups, g.o // g.groups, -1)
                          [:, :, i0 * g.wo:i1 * g.wo])
                return
            yb = xp.matmul(wmat, cols)                                  # (G, Og, n*R*WO)
            y[n0:n1, :, i0:i1] = yb.reshape(g.o, n1 - n0, i1 - i0, g.wo).transpose(1, 0, 2, 3)

        with _region(xp):
            parallel_map(piece, range(len(parts)))
        if save is None:
            kept.clear()
        return y

    def _forward_split_channels(self, x, wmat, g, save=None):
        xp = get_xp(x, wmat)
        kk = g.kh * g.kw
        chans = even_blocks(g.c, SPLIT_BLOCKS)
        kept = [None] * len(chans)
        if save is not None:
            save["input_tiles"] = (self.name, g, ("channels", tuple(chans)), kept)

        def partial(i):
            c0, c1 = chans[i]
            cols = _channel_columns(x, xpad, g, c0, c1)
            if save is not None:
                kept[i] = cols
            return xp.matmul(wmat[:, c0 * kk:c1 * kk], cols)

        with _region(xp):
            xpad = pad_input(x, g)
            y2 = parallel_map(partial, range(len(chans)))
        out = y2[0]
        for part in y2[1:]:
            out += part                                             # (O, N*HO*WO), in order
        if g.n == 1:
            return out.reshape(g.y_shape)
        return xp.ascontiguousarray(out.reshape(g.o, g.n, g.ho, g.wo).transpose(1, 0, 2, 3))

    def saved_bytes(self, g, itemsize) -> int:
        """Memory ``forward(..., save=)`` keeps: the whole column matrix."""
        return g.c * g.kh * g.kw * g.n * g.ho * g.wo * itemsize

    def _saved_columns(self, saved, g):
        """(layout, column blocks) a ``forward(..., save=)`` of this geometry kept, or None."""
        entry = (saved or {}).get("input_tiles")
        if entry is None or entry[0] != self.name or entry[1] != g:
            return None
        return entry[2], entry[3]

    def backward_data(self, dy, w, g, prepared=None):
        xp = get_xp(dy, w)
        wt = w.reshape(g.groups, g.o // g.groups, -1).transpose(0, 2, 1)   # (G, K, Og)
        dtype = xp.result_type(dy, w)
        nthreads = _threads(xp)
        dxpad = None
        for n0, n1, i0, i1 in blocks(g, np.dtype(dtype).itemsize):
            gb, rows = _piece(g, (n0, n1, i0, i1))
            dyg = _dy_rows(dy[n0:n1], gb, rows)                      # (G, Og, n*R*WO)
            if nthreads == 1:
                with _region(xp):
                    dcols = xp.matmul(wt, dyg)                       # (G, K, n*R*WO)
                if dxpad is None:
                    dxpad = col2im_zeros(g, dcols)
                col2im_add(dcols, gb, dxpad[:, n0:n1], rows)
                continue
            if dxpad is None:
                dxpad = xp.zeros((g.c, g.n, g.h + 2 * g.padding[0], g.w + 2 * g.padding[1]),
                                 dtype=dtype)
            dyg = xp.ascontiguousarray(dyg)

            def channels(block, gb=gb, rows=rows, dyg=dyg, n0=n0, n1=n1):
                c0, c1 = block                                       # within one group
                gi, cg, kk = c0 * g.groups // g.c, g.c // g.groups, g.kh * g.kw
                k0, k1 = (c0 - gi * cg) * kk, (c1 - gi * cg) * kk
                dcols = xp.matmul(wt[gi, k0:k1], dyg[gi])            # (cb*KH*KW, n*R*WO)
                col2im_add(dcols, replace(gb, c=c1 - c0, o=1, groups=1),
                           dxpad[c0:c1, n0:n1], rows)

            with _region(xp):
                parallel_map(channels, _channel_blocks(g, nthreads))
        return col2im_result(dxpad, g)

    def backward_weight(self, dy, x, g, saved=None):
        """``saved``: the dict a ``forward(..., save=)`` of this x filled; its column matrices
        are used (channel blocks: as the forward cut them, at any thread count; blocks of
        images or rows: where the forward cut them as this pass does; otherwise built here)."""
        xp = get_xp(dy, x)
        nthreads, itemsize = _threads(xp), np.dtype(x.dtype).itemsize
        layout, kept = self._saved_columns(saved, g) or (None, None)
        if layout is not None and layout[0] == "channels" \
                or nthreads > 1 and _split_channels(g, itemsize):
            kk = g.kh * g.kw                     # disjoint columns of dW per channel block
            # the forward's channel blocks when it kept them (any cut gives the same dW)
            if layout is None or layout[0] != "channels":
                layout, kept = ("channels", tuple(even_blocks(g.c, nthreads))), None
            chans = layout[1]
            dw = xp.empty((g.o, g.c * kk), dtype=xp.result_type(dy, x))
            dy2 = dy.reshape(g.o, -1) if g.n == 1 else \
                xp.ascontiguousarray(dy.transpose(1, 0, 2, 3)).reshape(g.o, -1)

            def columns(i):
                c0, c1 = chans[i]
                cols = kept[i] if kept is not None else _channel_columns(x, xpad, g, c0, c1)
                xp.matmul(dy2, cols.T, out=dw[:, c0 * kk:c1 * kk])

            with _region(xp):
                xpad = pad_input(x, g) if kept is None else None
                parallel_map(columns, range(len(chans)))
            return dw.reshape(g.w_shape)
        parts = blocks(g, itemsize, nthreads)
        if layout != ("blocks", tuple(parts)):   # cut otherwise by the forward: build here
            kept = None
        xpad = pad_input(x, g) if len(parts) > 1 and kept is None else None

        def piece(i):
            n0, n1, i0, i1 = block = parts[i]
            gb, rows = _piece(g, block)
            cols = kept[i] if kept is not None else \
                im2col(x[n0:n1], gb, rows, None if xpad is None else xpad[n0:n1])
            return xp.matmul(_dy_rows(dy[n0:n1], gb, rows), cols.transpose(0, 2, 1))  # (G, Og, K)

        dw = None
        with _region(xp):     # rounds of one block per thread: at most that many partial
            for r0 in range(0, len(parts), nthreads):     # dW at once, added in block order
                for part in parallel_map(piece, range(r0, min(len(parts), r0 + nthreads))):
                    if dw is None:
                        dw = part
                    else:
                        dw += part
        return dw.reshape(g.w_shape)

    def workspace_bytes(self, g, pass_, itemsize):
        """Peak extra bytes: one block's columns (the blocks in flight together stay within
        COLS_BYTES) and the padded input; forward: the GEMM result before its NCHW transpose;
        data gradient: the padded (C, N, H, W) dx it scatters into, a second block's columns
        while the first is freed, and dy's rows; weight gradient: dy's rows and a partial dW
        per thread."""
        n0, n1, i0, i1 = blocks(g, itemsize)[0]
        cols = (n1 - n0) * g.c * g.kh * g.kw * (i1 - i0) * g.wo * itemsize
        pad = g.n * g.c * (g.h + 2 * g.padding[0]) * (g.w + 2 * g.padding[1]) * itemsize
        out = g.n * g.o * g.ho * g.wo * itemsize
        if pass_ == "backward_data":
            return 2 * cols + pad + out
        if pass_ == "backward_weight":      # a round's partial dW per thread, and their sum
            threads = pool_threads()
            if threads > 1 and _split_channels(g, itemsize):
                partials = 0                # channel blocks write their own columns of dW
            else:
                partials = min(threads, len(blocks(g, itemsize, threads))) + 1
            dw = partials * g.o * (g.c // g.groups) * g.kh * g.kw * itemsize
            return cols + out + dw + (pad if any(g.padding) else 0)
        return cols + out + (pad if any(g.padding) else 0)


register(Im2colGemm())
