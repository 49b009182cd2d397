"""Winograd minimal filtering F(m x m, 3 x 3): ``winograd2`` (m=2) and ``winograd4`` (m=4).

For 3x3, stride-1, dilation-1 convolutions (any padding, any H, W, groups).
The output is cut into m x m tiles; each reads an alpha x alpha input tile
(alpha = m + 2) and, per tile,

    Y = A^T [ sum_c (G w[o,c] G^T) * (B^T d[c] B) ] A          (* elementwise)

so the alpha^2 products of the transformed domain are alpha^2 independent GEMMs

    M[xi] (O, tiles) = U[xi] (O, C) @ V[xi] (C, tiles),   xi = 0 .. alpha^2 - 1,

with U = G w G^T (alpha^2, O, C) and V = B^T d B (alpha^2, C, tiles). Direct
convolution spends 9 m^2 multiply-adds per tile and (o, c) pair; this spends
alpha^2: 16/36 (F2, 2.25x fewer) or 36/144 (F4, 4x fewer).

Matrices (A^T: m x alpha, G: alpha x 3, B^T: alpha x alpha) come from the
Cook-Toom construction below, exactly in rational arithmetic, on the points
0, +-1 (F2) and 0, 1, -1, 1/2, -2 (F4), plus infinity. For F4 these points give
about 2.5x smaller worst-case float32 error than Lavin & Gray's 0, +-1, +-2
(docs/convolution.md); on those points the construction gives Lavin & Gray's
matrices up to row signs.

Passes:
    forward          tiles of x, U from w
    backward_data    the same Winograd convolution of dy with the 180-degree
                     rotated, transposed kernel (C, O, 3, 3) and padding 2 - P
                     (negative padding crops), run with the "reversed" matrices
                     (``cook_toom_reversed``: G' = G J, J the column reversal), so
                     that its transformed kernel G' (J w J) G'^T is the forward's
                     U itself, used through a transposed view (alpha^2, C, O)
    backward_weight  the adjoint of the forward in the transformed domain:
                     dU[xi] = sum_tiles (A dy_tile A^T)[xi] (O, tiles) @ V[xi]^T,
                     dw = G^T dU G (alpha^2 GEMMs with K = tiles)

Prepared weights (``prepare``): U per group, computed once for a frozen weight
and shared by the forward and the data gradient, at any image size.

The work is cut into chunks of tile rows (see ``_Plan``): for small U each chunk
runs transform -> GEMMs -> inverse transform while its tiles are in cache
("fused"); for large U (deep layers) all tiles are transformed first, the
alpha^2 GEMMs are split across threads by xi, then the inverse transforms run
("phased"). Either way the pieces run on the worker pool of
:mod:`cnnlab.conv.threads` with single-threaded BLAS; with too few chunks,
channels are split instead. Transforms are small dense matmuls over the alpha
axis (two per transform, BLAS), never Python loops over tiles.
"""
from __future__ import annotations

import threading
from fractions import Fraction
from functools import lru_cache
from math import lcm, prod

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..backend import get_xp
from .algorithm import ConvAlgorithm, register
from .threads import even_blocks, get_num_threads, parallel_map, pool_region

R = 3  # kernel size handled here

POINTS = {
    2: (0, 1, -1),
    4: (0, 1, -1, Fraction(1, 2), -2),
}

# Chunk sizing (tiles per chunk), measured on a 2-core Xeon with 2 MiB L2 per core:
# a chunk's transformed tiles should stay in L2 (few tiles) while its alpha^2 GEMMs
# want many columns; the best balance grows with the channel counts:
# about TILES_PER_64 tiles when C + O = 128, clamped to [MIN_TILES, MAX_TILES].
TILES_PER_64 = 56
MIN_TILES = 48
MAX_TILES = 128
# On large maps with few channels (VGG's conv1_2, conv2_x at 224x224) bigger chunks are
# faster (longer GEMM rows, fewer per-chunk calls): at least about WIDE_TILES_X_CH / (C + O)
# tiles, up to WIDE_MAX_TILES (conv1_2 64->64: 448 tiles; 128->128: 224). That target is
# below the one above from C + O = 256 on, so deeper layers are unchanged.
WIDE_TILES_X_CH = 448 * 128
WIDE_MAX_TILES = 512
# The fused schedule re-reads U (alpha^2 O C floats) for every chunk: worth it up to about
# FUSED_U_BYTES (a 256x256 F4 layer); the weight gradient also accumulates a dU of that
# size per chunk, so it fuses only while dU stays in L2 (FUSED_DU_BYTES).
FUSED_U_BYTES = 12 << 20
FUSED_DU_BYTES = 4 << 20
# Phased schedule: transform chunks of about PHASED_FLOATS transformed floats.
PHASED_FLOATS = 1 << 18
PHASED_MIN_TILES = 8
# Phased transforms cut channels, every job taking all tiles, up to this many floats of V
# (or M, Z) per job (``_Plan.channel_jobs``, ``_Plan.phase_jobs``).
PHASE_JOB_FLOATS = 1 << 20


# --------------------------------------------------------------------------- matrices

def _inverse(rows):
    """Exact inverse of a square matrix of Fractions (Gauss-Jordan)."""
    n = len(rows)
    a = [list(r) + [Fraction(int(i == j)) for j in range(n)] for i, r in enumerate(rows)]
    for col in range(n):
        piv = next(i for i in range(col, n) if a[i][col] != 0)
        a[col], a[piv] = a[piv], a[col]
        p = a[col][col]
        a[col] = [v / p for v in a[col]]
        for i in range(n):
            if i != col and a[i][col] != 0:
                f = a[i][col]
                a[i] = [u - f * v for u, v in zip(a[i], a[col])]
    return [r[n:] for r in a]


def _as_float(rows) -> np.ndarray:
    return np.array([[float(v) for v in row] for row in rows])


def cook_toom(m: int, r: int, points) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Matrices (A^T, G, B^T) of F(m, r) on ``points`` (m + r - 2 finite points) and infinity.

    Built exactly: with V the (alpha x alpha) evaluation matrix of degree < alpha
    polynomials at the points (the last row, infinity, takes the leading
    coefficient), B^T = V^-T, A^T[i, j] = a_j^i, G[j, k] = a_j^k; then each row
    j of B^T is scaled to integers and row j of G by the inverse factor.
    The 1-D identity  y = A^T [(G g) * (B^T d)]  computes y_i = sum_k g_k d_{i+k}.
    """
    return tuple(_as_float(a) for a in _cook_toom_exact(m, r, points))


def cook_toom_reversed(m: int, r: int, points) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Matrices (A'^T, G', B'^T) of F(m, r) with G' = G J exactly, for (A^T, G, B^T) =
    ``cook_toom(m, r, points)`` and J the reversal of the r kernel taps.

    Then G' (J g) = G g: with these matrices the transformed *reversed* kernel is the
    forward's transformed kernel, so the data gradient (a convolution with the rotated
    kernel) reuses the forward's U. Row j of G J is a_j^2 (1, 1/a_j, 1/a_j^2) (scaled):
    the row of the reciprocal point 1/a_j, with 0 and infinity swapped. So these are the
    Cook-Toom matrices of the reciprocal points, with rows in the forward's order and each
    row of B'^T divided by the factor that turns the Cook-Toom row of G into G J's.
    The reciprocal of 0, 1, -1, 1/2, -2 is 0, 1, -1, 2, -1/2: minus the forward's points,
    so the same float accuracy (docs/convolution.md).
    """
    at, g, _ = _cook_toom_exact(m, r, points)
    alpha = m + r - 1
    pts = [Fraction(p) for p in points] + [None]                      # None: infinity
    recip = [None if p == 0 else Fraction(0) if p is None else 1 / p for p in pts]
    finite = [q for q in recip if q is not None]
    at2, g2, bt2 = _cook_toom_exact(m, r, finite)                     # infinity row last
    order = [finite.index(q) if q is not None else alpha - 1 for q in recip]
    g_rev, bt_rev = [], []
    for j in range(alpha):
        want, row = g[j][::-1], g2[order[j]]
        k = next(k for k in range(r) if row[k] != 0)
        scale = want[k] / row[k]
        if [scale * v for v in row] != want:                          # pragma: no cover
            raise ValueError(f"F({m},{r}) on {points!r} has no reversed form")
        g_rev.append(want)
        bt_rev.append([v / scale for v in bt2[order[j]]])
    at_rev = [[at2[i][order[j]] for j in range(alpha)] for i in range(m)]
    return _as_float(at_rev), _as_float(g_rev), _as_float(bt_rev)


def _cook_toom_exact(m, r, points):
    """``cook_toom`` in Fractions (lists of rows)."""
    alpha = m + r - 1
    pts = [Fraction(p) for p in points]
    if len(pts) != alpha - 1 or len(set(pts)) != len(pts):
        raise ValueError(f"F({m},{r}) needs {alpha - 1} distinct finite points, got {points!r}")
    inf_row = [Fraction(int(l == alpha - 1)) for l in range(alpha)]
    vinv = _inverse([[p ** l for l in range(alpha)] for p in pts] + [inf_row])
    bt = [[vinv[l][j] for l in range(alpha)] for j in range(alpha)]
    at = [[pts[j] ** i if j < alpha - 1 else Fraction(int(i == m - 1)) for j in range(alpha)]
          for i in range(m)]
    g = [[pts[j] ** k if j < alpha - 1 else Fraction(int(k == r - 1)) for k in range(r)]
         for j in range(alpha)]
    for j in range(alpha):
        s = lcm(*(v.denominator for v in bt[j]))
        bt[j] = [v * s for v in bt[j]]
        g[j] = [v / s for v in g[j]]
    return at, g, bt


@lru_cache(maxsize=None)
def matrices(m: int, dtype: str, reversed_: bool = False
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(A^T, A, B^T, G (x) G) for F(m, 3) in ``dtype``; G (x) G is (alpha^2, 9).
    ``reversed_``: the data gradient's matrices (``cook_toom_reversed``)."""
    at, g, bt = (cook_toom_reversed if reversed_ else cook_toom)(m, R, POINTS[m])
    dt = np.dtype(dtype)
    kg = np.kron(g, g)
    return (at.astype(dt), np.ascontiguousarray(at.T).astype(dt), bt.astype(dt), kg.astype(dt))


# --------------------------------------------------------------------------- planning


class _Plan:
    """Tiling of one Winograd convolution and how the work is cut up.

    Computes y[n, o, i, j] = sum_{c,p,q} w[o,c,p,q] x[n, c, i + p - pt, j + q - pl]
    for 0 <= i < ho, 0 <= j < wo (x is zero outside its h x w).
    A chunk is (n0, nb, ti0, nr): images n0..n0+nb-1, tile rows ti0..ti0+nr-1; its tiles
    are columns off .. off + tiles - 1 of V and M, ordered (n, tile row, tile column).

    Two schedules:
    fused   (U small, many tiles: early layers) each chunk does transform -> alpha^2
            GEMMs -> inverse transform while its tiles are in cache; chunks run in parallel.
    phased  (U large: deep layers) V for all tiles, then the alpha^2 GEMMs split by xi
            across threads (each U[xi] is read once, with every tile as GEMM columns),
            then the inverse transforms; each phase in parallel. The transform phases cut
            channels, every job taking all tiles (``channel_jobs``), so each writes its rows
            of V (reads its rows of M) in place; where one channel's tiles are too many for
            that, they cut chunks of tile rows and copy each chunk's part.
    """

    def __init__(self, m, n, c, h, w, o, ho, wo, pt, pl, nthreads=None, weight_grad=False):
        self.m, self.alpha = m, m + R - 1
        self.n, self.c, self.h, self.w, self.o = n, c, h, w, o
        self.ho, self.wo, self.pt, self.pl = ho, wo, pt, pl
        self.th, self.tw = -(-ho // m), -(-wo // m)
        self.nthreads = nthreads or get_num_threads()
        a2 = self.alpha ** 2
        self.total_tiles = n * self.th * self.tw
        fused_target = max(min(MAX_TILES, max(MIN_TILES, (TILES_PER_64 * (c + o)) // 128)),
                           min(WIDE_MAX_TILES, WIDE_TILES_X_CH // (c + o)))
        u_limit = FUSED_DU_BYTES if weight_grad else FUSED_U_BYTES
        self.fused = (4 * a2 * o * c <= u_limit
                      and self.total_tiles >= self.nthreads * MIN_TILES)
        if self.fused:
            target = fused_target
        else:
            target = max(PHASED_MIN_TILES, PHASED_FLOATS // (a2 * max(c, o)))
        per_image = self.th * self.tw
        if per_image >= target:     # chunks of tile rows within an image
            k = -(-per_image // target)
            if n == 1:              # equal shares for the threads
                k = min(self.th, -(-k // self.nthreads) * self.nthreads)
            self.chunks = [(i, 1, r0, r1 - r0) for i in range(n)
                           for r0, r1 in even_blocks(self.th, k)]
        else:                       # chunks of whole images
            k = max(1, round(n * per_image / target))
            k = min(n, -(-k // self.nthreads) * self.nthreads)
            self.chunks = [(i0, i1 - i0, 0, self.th) for i0, i1 in even_blocks(n, k)]
        self.all_tiles = (0, n, 0, self.th)     # the chunk of every tile (phased transforms)
        self.offsets = []
        off = 0
        for ch in self.chunks:
            self.offsets.append(off)
            off += self.tiles(ch)

    def tiles(self, chunk) -> int:
        return chunk[1] * chunk[3] * self.tw

    def max_tiles(self) -> int:
        return max(self.tiles(ch) for ch in self.chunks)

    def blocks(self, size: int, parts: int | None = None) -> list[tuple[int, int]]:
        """range(size) in ``parts`` contiguous blocks (default: one per thread)."""
        return even_blocks(size, parts or self.nthreads)

    def channel_jobs(self, size: int) -> list[tuple[int, int]] | None:
        """``size`` channels cut into blocks that each take every tile (``all_tiles``): a
        multiple of the thread count, each block's tiles within PHASE_JOB_FLOATS; None where
        one channel's tiles exceed PHASE_JOB_FLOATS / 8."""
        per_channel = self.alpha ** 2 * self.total_tiles
        if 8 * per_channel > PHASE_JOB_FLOATS:
            return None
        k = max(self.nthreads, -(-size * per_channel // PHASE_JOB_FLOATS))
        return self.blocks(size, -(-k // self.nthreads) * self.nthreads)

    def phase_jobs(self, size: int) -> list[tuple]:
        """The phased transforms' jobs over ``size`` channels: (chunk, first tile column,
        tiles, c0, c1). Channel blocks with every tile (``channel_jobs``), whose rows of V, M
        or Z are read and written in place; else chunks of tile rows (whole chunks when there
        are enough, else split channels too), whose parts are copied."""
        blocks = self.channel_jobs(size)
        if blocks is not None:
            return [(self.all_tiles, 0, self.total_tiles, c0, c1) for c0, c1 in blocks]
        parts = 1 if len(self.chunks) >= self.nthreads else self.nthreads
        return [(ch, off, self.tiles(ch), c0, c1) for ch, off in zip(self.chunks, self.offsets)
                for c0, c1 in self.blocks(size, parts)]

    def _scratch_floats(self, chunk, cb, ob, weight_grad) -> int:
        """One thread's transform buffers for ``chunk`` with cb input and ob output channels:
        the input strip, the "B" and "A" buffers (the input transform's row pass and gather,
        the output transform's two products), and the dy transform's two (weight gradient)."""
        a, m, a2 = self.alpha, self.m, self.alpha ** 2
        nb, nr = chunk[1], chunk[3]
        t = self.tiles(chunk)
        ws = self.tw * m + R - 1
        strip = nb * (nr * m + R - 1) * cb * ws
        b = max(nb * nr * a * cb * ws, a * m * ob * t)
        a_buf = max(a2 * cb * t, m * m * ob * t)
        dy = (m * m + a * m) * ob * t if weight_grad else 0
        return strip + b + a_buf + dy

    def workspace_floats(self, c, o, weight_grad=False) -> int:
        """Peak floats besides the output: U (the weight gradient's dU), and V and M (Z)
        with one thread's transform buffers per thread, for the whole map (phased) or per
        chunk (fused; the weight gradient's threads also add up a dU each)."""
        a2 = self.alpha ** 2
        if self.fused:
            per_thread = max(self._scratch_floats(ch, c, o, weight_grad)
                             + a2 * (c + o) * self.tiles(ch) for ch in self.chunks)
            per_thread += 2 * a2 * o * c if weight_grad else 0
            return a2 * o * c + per_thread * min(self.nthreads, len(self.chunks))
        per_thread = max(self._scratch_floats(ch, c1 - c0, c1 - c0, weight_grad)
                         for ch, _, _, c0, c1 in self.phase_jobs(max(c, o)))
        return a2 * o * c + a2 * (c + o) * self.total_tiles + per_thread * self.nthreads


# --------------------------------------------------------------------------- transforms

class _Scratch(threading.local):
    """Per-thread reusable chunk buffers (a chunk's arrays are allocated once per thread).

    Buffers over ``cap`` bytes (default SCRATCH_CAP) are not kept. The algorithm's outputs
    (y, dx, dw) are always fresh arrays; two internal results do live here, each valid only
    until the calling thread's next pass: ``Winograd._u``'s U and the phased
    ``winograd_weight_grad``'s dU (the "U" buffer). ``clear_scratch()`` drops the calling
    thread's buffers.
    """

    def __init__(self):
        self.bufs = {}

    def get(self, name, shape, dtype, cap=None):
        size = prod(shape)
        key = (name, np.dtype(dtype).str)
        buf = self.bufs.get(key)
        if buf is None or buf.size < size:
            buf = np.empty(size, dtype=dtype)
            if buf.nbytes <= (SCRATCH_CAP if cap is None else cap):
                self.bufs[key] = buf
        return buf[:size].reshape(shape)

    def strip(self, shape, dtype, cols):
        """A zero-bordered strip buffer; its columns outside ``cols`` are zero on return."""
        key = ("strip", np.dtype(dtype).str)
        entry = self.bufs.get(key)
        if entry is None or entry[1] != (shape, cols):
            buf = np.empty(shape, dtype=dtype)
            buf[..., :cols[0]] = 0
            buf[..., cols[1]:] = 0
            entry = (buf, (shape, cols))
            if buf.nbytes <= SCRATCH_CAP:
                self.bufs[key] = entry
        return entry[0]


SCRATCH_CAP = 32 << 20
# U (and the weight gradient's dU) of a 512x512 F4 layer is 37.7 MB. glibc hands any
# allocation over 32 MiB straight back to the OS when it is freed, so a fresh one costs its
# page faults on every pass: ~2.4 ms for 37.7 MB here, more than the transform's own ~2.8 ms
# (docs/convolution.md, "Workspace"). The calling thread keeps one such buffer, up to U_CAP.
U_CAP = 160 << 20
_SCRATCH = _Scratch()


def clear_scratch() -> None:
    """Free the calling thread's Winograd scratch buffers (chunk buffers and the reused U)."""
    _SCRATCH.bufs.clear()


def _input_strip(x, plan, chunk, c0, c1):
    """Zero-padded input rows the chunk's tiles read, rows outermost:
    (nb, nr*m+2, c1-c0, tw*m+2)."""
    n0, nb, ti0, nr = chunk
    m = plan.m
    hs, ws = nr * m + R - 1, plan.tw * m + R - 1
    r0 = ti0 * m - plan.pt                      # input row of strip row 0
    lo, hi = max(r0, 0), min(r0 + hs, plan.h)   # input rows present
    q0, q1 = max(0, -plan.pl), min(plan.w, ws - plan.pl)  # input columns present
    s = _SCRATCH.strip((nb, hs, c1 - c0, ws), x.dtype, (q0 + plan.pl, max(q0, q1) + plan.pl))
    if lo >= hi or q0 >= q1:
        s.fill(0)
        return s
    s[:, :lo - r0] = 0
    s[:, hi - r0:] = 0
    s[:, lo - r0:hi - r0, :, q0 + plan.pl:q1 + plan.pl] = \
        x[n0:n0 + nb, c0:c1, lo:hi, q0:q1].transpose(0, 2, 1, 3)
    return s


def _transform_input(x, plan, chunk, c0, c1, bt, out=None):
    """V = B^T d B for every input tile of the chunk: (alpha^2, c1-c0, tiles).

    The row pass runs on the strip itself (alpha consecutive rows of every channel form
    one BLAS operand per tile row); only its result is gathered into tiles.
    """
    n0, nb, ti0, nr = chunk
    a, m, tw = plan.alpha, plan.m, plan.tw
    cb = c1 - c0
    s = _input_strip(x, plan, chunk, c0, c1)                        # (nb, hs, cb, ws)
    sn, sr = s.strides[:2]
    ws = s.shape[3]
    rows = as_strided(s, (nb, nr, a, cb * ws), (sn, m * sr, sr, s.strides[3]))
    e = _SCRATCH.get("B", (nb, nr, a, cb, ws), x.dtype)
    np.matmul(bt, rows, out=e.reshape(nb, nr, a, cb * ws))          # (n, ti, xi, c, col)
    en, er, ex, ec, ew = e.strides
    d = _SCRATCH.get("A", (a, a, cb, nb, nr, tw), x.dtype)
    np.copyto(d, as_strided(e, (a, a, cb, nb, nr, tw), (ex, ew, ec, en, er, m * ew)))
    cols = cb * nb * nr * tw
    if out is None:
        out = _SCRATCH.get("V", (a * a, cb, nb * nr * tw), x.dtype)
    np.matmul(bt, d.reshape(a, a, cols), out=_view(out, (a, a, cols)))  # columns: (xi, nu, ...)
    return out


def _view(a, shape):
    """``a`` reshaped without copying (an error, never a silent copy, if that is impossible)."""
    v = a.view()
    v.shape = shape
    return v


def _transform_output(mm, plan, chunk, y, o0, o1, at, a_mat):
    """Y = A^T M A for every tile and scatter into y[n0:n0+nb, o0:o1] (edge tiles cropped).

    The second pass multiplies by A on the right, so each tile row comes out as
    (..., tw, m): contiguous output rows, copied into y in long runs.
    """
    n0, nb, ti0, nr = chunk
    a, m, tw = plan.alpha, plan.m, plan.tw
    ob = o1 - o0
    cols = ob * nb * nr * tw
    y1 = _SCRATCH.get("B", (a, m, cols), mm.dtype)                     # (nu, row, ...)
    np.matmul(at, _view(mm, (a, a, cols)).transpose(1, 0, 2), out=y1)
    y2 = _SCRATCH.get("A", (m, cols, m), mm.dtype)
    np.matmul(y1.transpose(1, 2, 0), a_mat, out=y2)
    yt = y2.reshape(m, ob, nb, nr, tw, m).transpose(2, 1, 3, 0, 4, 5)  # (nb, ob, nr, m, tw, m)
    row0 = ti0 * m
    rows = min(plan.ho, row0 + nr * m) - row0
    dst = y[n0:n0 + nb, o0:o1, row0:row0 + rows]
    fr, rr = divmod(rows, m)
    fc, rc = divmod(plan.wo, m)
    if fr and fc:
        _view(dst[:, :, :fr * m, :fc * m], (nb, ob, fr, m, fc, m))[...] = yt[:, :, :fr, :, :fc]
    if rr and fc:
        _view(dst[:, :, fr * m:, :fc * m], (nb, ob, rr, fc, m))[...] = yt[:, :, fr, :rr, :fc]
    if rc and fr:
        _view(dst[:, :, :fr * m, fc * m:], (nb, ob, fr, m, rc))[...] = yt[:, :, :fr, :, fc, :rc]
    if rr and rc:
        dst[:, :, fr * m:, fc * m:] = yt[:, :, fr, :rr, fc, :rc]


def _transform_dy(dy, plan, chunk, o0, o1, a_mat, out=None):
    """Z = A dy_tile A^T for every output tile of the chunk: (alpha^2, o1-o0, tiles)."""
    n0, nb, ti0, nr = chunk
    a, m, tw = plan.alpha, plan.m, plan.tw
    ob = o1 - o0
    cols = ob * nb * nr * tw
    row0 = ti0 * m
    rows = min(plan.ho, row0 + nr * m) - row0
    src = dy[n0:n0 + nb, o0:o1, row0:row0 + rows]
    if rows < nr * m or plan.wo < tw * m:          # edge tiles: zero-pad to whole tiles
        s = _SCRATCH.get("dys", (nb, ob, nr * m, tw * m), dy.dtype)
        s.fill(0)
        s[:, :, :rows, :plan.wo] = src
        src = s
    d = _SCRATCH.get("Z1", (m, m, ob, nb, nr, tw), dy.dtype)
    np.copyto(d, _view(src, (nb, ob, nr, m, tw, m)).transpose(3, 5, 1, 0, 2, 4))
    e = _SCRATCH.get("Z2", (a, m, cols), dy.dtype)
    np.matmul(a_mat, d.reshape(m, m * cols), out=e.reshape(a, m * cols))   # rows
    if out is None:
        out = _SCRATCH.get("Z3", (a * a, ob, nb * nr * tw), dy.dtype)
    np.matmul(a_mat, e, out=_view(out, (a, a, cols)))                       # columns
    return out


def transform_weight(w, m, out=None):
    """U = G w G^T as (alpha^2, O, C) (the forward's; the data gradient uses it transposed);
    into ``out`` (alpha^2, O, C) if given."""
    o, c = w.shape[:2]
    kg = matrices(m, w.dtype.str)[3]
    w9 = np.ascontiguousarray(w).reshape(o * c, R * R)
    u = np.empty((kg.shape[0], o, c), dtype=w.dtype) if out is None else out
    u2 = u.reshape(kg.shape[0], o * c)
    k = min(get_num_threads(), o)
    edges = [o * i // k for i in range(k + 1)]

    def block(i):
        a, b = edges[i] * c, edges[i + 1] * c
        np.matmul(kg, w9[a:b].T, out=u2[:, a:b])

    parallel_map(block, range(k))
    return u


# --------------------------------------------------------------------------- engine

def winograd_conv(x, u, plan, y, reversed_=False, keep=None):
    """y (N, O, HO, WO) <- Winograd convolution of x with transformed weights u (alpha^2, O, C);
    ``reversed_``: with the data gradient's matrices (u transformed by G' = G J);
    ``keep``: an (alpha^2, C, all tiles) array that receives the input tiles V (forward
    matrices only), which the weight gradient of the same step can use instead of
    transforming x again (``winograd_weight_grad(..., v=keep)``)."""
    at, a_mat, bt, _ = matrices(plan.m, x.dtype.str, reversed_)
    a2 = plan.alpha ** 2
    if plan.fused:
        def run(i):
            chunk, off = plan.chunks[i], plan.offsets[i]
            v = _transform_input(x, plan, chunk, 0, plan.c, bt)
            if keep is not None:
                keep[:, :, off:off + plan.tiles(chunk)] = v
            mm = _SCRATCH.get("m", (a2, plan.o, v.shape[2]), y.dtype)
            _transform_output(np.matmul(u, v, out=mm), plan, chunk, y, 0, plan.o, at, a_mat)
        parallel_map(run, range(len(plan.chunks)))
        return y
    v = _phase_input(x, plan, bt, out=keep)
    mm = np.empty((a2, plan.o, plan.total_tiles), dtype=y.dtype)

    def gemm(xb):
        np.matmul(u[xb[0]:xb[1]], v[xb[0]:xb[1]], out=mm[xb[0]:xb[1]])

    parallel_map(gemm, plan.blocks(a2))
    del v

    def output(job):
        chunk, off, nt, o0, o1 = job
        part = mm[:, o0:o1, off:off + nt]
        if nt < plan.total_tiles:           # a chunk of tile rows: its part of M, contiguous
            buf = _SCRATCH.get("m", part.shape, y.dtype)
            np.copyto(buf, part)
            part = buf
        _transform_output(part, plan, chunk, y, o0, o1, at, a_mat)

    parallel_map(output, plan.phase_jobs(plan.o))
    return y


def _phase_input(x, plan, bt, out=None):
    """V (alpha^2, C, all tiles), transformed chunk by chunk in parallel (into ``out``)."""
    v = np.empty((plan.alpha ** 2, plan.c, plan.total_tiles), dtype=x.dtype) if out is None else out
    _phase_transform(v, plan, lambda ch, c0, c1, out=None:
                     _transform_input(x, plan, ch, c0, c1, bt, out=out))
    return v


def _phase_transform(dst, plan, transform):
    """``transform(chunk, c0, c1, out=None)`` -> (alpha^2, c1-c0, the chunk's tiles), run on
    ``plan.phase_jobs`` in parallel into ``dst`` (alpha^2, channels, all tiles): in place
    where a job takes every tile, else through the transform's own buffer."""
    def run(job):
        chunk, off, nt, c0, c1 = job
        part = dst[:, c0:c1, off:off + nt]
        if nt == plan.total_tiles:
            transform(chunk, c0, c1, out=part)
        else:
            part[...] = transform(chunk, c0, c1)

    parallel_map(run, plan.phase_jobs(dst.shape[1]))


def winograd_weight_grad(dy, x, plan, v=None):
    """dU (alpha^2, O, C) = sum over tiles of (A dy_tile A^T) V^T, V the forward input tiles
    (``v``: V as the forward kept it, (alpha^2, C, all tiles); else transformed here).
    Phased schedule: dU is the calling thread's reused "U" buffer, valid until its next pass."""
    _, a_mat, bt, _ = matrices(plan.m, x.dtype.str)
    a2 = plan.alpha ** 2
    if plan.fused:
        k = min(plan.nthreads, len(plan.chunks))
        groups = [list(range(len(plan.chunks)))[i::k] for i in range(k)]

        def run(indices):
            du = np.zeros((a2, plan.o, plan.c), dtype=x.dtype)
            part = np.empty_like(du)
            for i in indices:
                chunk, off = plan.chunks[i], plan.offsets[i]
                if v is None:
                    vc = _transform_input(x, plan, chunk, 0, plan.c, bt)
                else:
                    vc = v[:, :, off:off + plan.tiles(chunk)]
                z = _transform_dy(dy, plan, chunk, 0, plan.o, a_mat)
                du += np.matmul(z, vc.transpose(0, 2, 1), out=part)
            return du

        parts = parallel_map(run, groups)
        total = parts[0]
        for p in parts[1:]:
            total += p
        return total
    if v is None:
        v = _phase_input(x, plan, bt)
    z = np.empty((a2, plan.o, plan.total_tiles), dtype=x.dtype)
    _phase_transform(z, plan, lambda ch, o0, o1, out=None:
                     _transform_dy(dy, plan, ch, o0, o1, a_mat, out=out))
    du = _SCRATCH.get("U", (a2, plan.o, plan.c), x.dtype, cap=U_CAP)   # the caller's thread

    def gemm(xb):
        np.matmul(z[xb[0]:xb[1]], v[xb[0]:xb[1]].transpose(0, 2, 1), out=du[xb[0]:xb[1]])

    parallel_map(gemm, plan.blocks(a2))
    return du


def weight_from_transformed(du, m, o, c, out=None):
    """dw (O, C, 3, 3) = G^T dU G for every (o, c): the adjoint of ``transform_weight``;
    into ``out`` (O, C, 3, 3), C-contiguous, if given. One GEMM, (O*C, alpha^2) @ (alpha^2, 9),
    writing dw in its own layout."""
    kg = matrices(m, du.dtype.str)[3]
    if out is None:
        out = np.empty((o, c, R, R), dtype=du.dtype)
    du2, out2 = du.reshape(du.shape[0], o * c), out.reshape(o * c, R * R)

    def block(rows):                    # memory-bound (reads alpha^2 O C floats): all threads
        np.matmul(du2[:, rows[0]:rows[1]].T, kg, out=out2[rows[0]:rows[1]])

    parallel_map(block, even_blocks(o * c, get_num_threads() if o * c >= 1 << 16 else 1))
    return out


# --------------------------------------------------------------------------- algorithm

class Winograd(ConvAlgorithm):
    """F(m x m, 3 x 3) Winograd convolution; see the module docstring."""

    def __init__(self, m: int):
        self.m = m
        self.name = f"winograd{m}"

    array_modules = ("numpy",)      # strided views, scratch buffers and numpy matmuls

    def supports(self, g, pass_):
        if (g.kh, g.kw) != (R, R):
            return f"kernel {g.kh}x{g.kw} (needs 3x3)"
        if g.stride != (1, 1):
            return f"stride {g.stride} (needs 1)"
        if g.dilation != (1, 1):
            return f"dilation {g.dilation} (needs 1)"
        return None


    def _u(self, w, prepared, i, o0, o1):
        """Group i's U (alpha^2, Og, Cg): prepared, or transformed now into the calling
        thread's reused U buffer (valid until its next pass)."""
        if prepared is not None:
            return prepared[i]
        shape = ((self.m + R - 1) ** 2, o1 - o0, w.shape[1])
        return transform_weight(w[o0:o1], self.m,
                                out=_SCRATCH.get("U", shape, w.dtype, cap=U_CAP))

    saves_input = True      # forward(..., save=) / backward_weight(..., saved=): see below
    saved_name = "V"
    prepare_reuses = True

    def forward(self, x, w, g, prepared=None, save=None):
        """``save``: a dict that receives this forward's input tiles V per group
        ((alpha^2, C/groups, all tiles) each, (alpha/m)^2 = 2.25x (F4) or 4x (F2) the input),
        for ``backward_weight(..., saved=save)`` of the same step."""
        self.require(g, "forward", xp=get_xp(x, w))
        y = np.empty(g.y_shape, dtype=np.result_type(x, w))
        plan = _Plan(self.m, g.n, g.c // g.groups, g.h, g.w, g.o // g.groups, g.ho, g.wo,
                     g.padding[0], g.padding[1])
        keep = None
        if save is not None:
            keep = [np.empty(((self.m + R - 1) ** 2, g.c // g.groups, plan.total_tiles),
                             dtype=x.dtype) for _ in range(g.groups)]
        with pool_region():
            for i, (c0, c1, o0, o1) in enumerate(self._groups(g)):
                u = self._u(w, prepared, i, o0, o1)
                winograd_conv(x[:, c0:c1], u, plan, y[:, o0:o1],
                              keep=None if keep is None else keep[i])
        if save is not None:
            save["input_tiles"] = (self.name, g, keep)
        return y

    def saved_bytes(self, g, itemsize) -> int:
        """Memory ``forward(..., save=)`` keeps: V for every group."""
        tiles = g.n * -(-g.ho // self.m) * -(-g.wo // self.m)
        return (self.m + R - 1) ** 2 * g.c * tiles * itemsize

    def backward_data(self, dy, w, g, prepared=None):
        self.require(g, "backward_data", xp=get_xp(dy, w))
        dx = np.empty(g.x_shape, dtype=np.result_type(dy, w))
        plan = _Plan(self.m, g.n, g.o // g.groups, g.ho, g.wo, g.c // g.groups, g.h, g.w,
                     R - 1 - g.padding[0], R - 1 - g.padding[1])
        with pool_region():
            for i, (c0, c1, o0, o1) in enumerate(self._groups(g)):
                u = self._u(w, prepared, i, o0, o1)                   # (alpha^2, Og, Cg)
                winograd_conv(dy[:, o0:o1], u.transpose(0, 2, 1), plan, dx[:, c0:c1],
                              reversed_=True)
        return dx

    # U depends on w alone: one prepared U per group serves the forward and the data
    # gradient at every image size.
    def prepared_key(self, g, pass_):
        return None if pass_ == "backward_weight" else ("U", g.groups)

    def prepare(self, w, g, pass_, reuse=None):
        if self.prepared_key(g, pass_) is None:
            return None
        groups = self._groups(g)
        a2 = (self.m + R - 1) ** 2
        shapes = [(a2, o1 - o0, w.shape[1]) for _, _, o0, o1 in groups]
        if not (isinstance(reuse, tuple) and len(reuse) == len(groups)
                and all(isinstance(u, np.ndarray) and u.shape == s and u.dtype == w.dtype
                        and u.flags.c_contiguous and u.flags.writeable
                        for u, s in zip(reuse, shapes))):
            reuse = (None,) * len(groups)
        with pool_region():
            return tuple(transform_weight(w[o0:o1], self.m, out=u)
                         for (_, _, o0, o1), u in zip(groups, reuse))

    def prepared_bytes(self, g, pass_, itemsize):
        if self.prepared_key(g, pass_) is None:
            return 0
        return (self.m + R - 1) ** 2 * g.o * (g.c // g.groups) * itemsize

    def backward_weight(self, dy, x, g, saved=None):
        """``saved``: the dict a ``forward(..., save=)`` of this x filled (its V is used if it
        came from this algorithm on this geometry; otherwise x is transformed here)."""
        self.require(g, "backward_weight", xp=get_xp(dy, x))
        dw = np.empty(g.w_shape, dtype=np.result_type(dy, x))
        og, cg = g.o // g.groups, g.c // g.groups
        plan = _Plan(self.m, g.n, cg, g.h, g.w, og, g.ho, g.wo, g.padding[0], g.padding[1],
                     weight_grad=True)
        kept = (saved or {}).get("input_tiles")
        vs = kept[2] if kept is not None and kept[0] == self.name and kept[1] == g else None
        with pool_region():
            for i, (c0, c1, o0, o1) in enumerate(self._groups(g)):
                du = winograd_weight_grad(dy[:, o0:o1], x[:, c0:c1], plan,
                                          v=None if vs is None else vs[i])
                weight_from_transformed(du, self.m, og, cg, out=dw[o0:o1])
        return dw

    def workspace_bytes(self, g, pass_, itemsize):
        og, cg = g.o // g.groups, g.c // g.groups
        if pass_ == "backward_data":
            plan = _Plan(self.m, g.n, og, g.ho, g.wo, cg, g.h, g.w, 0, 0)
            floats = plan.workspace_floats(og, cg)
        else:
            wgrad = pass_ == "backward_weight"
            plan = _Plan(self.m, g.n, cg, g.h, g.w, og, g.ho, g.wo, 0, 0, weight_grad=wgrad)
            floats = plan.workspace_floats(cg, og, weight_grad=wgrad)
        return int(floats) * itemsize


register(Winograd(2))
register(Winograd(4))
