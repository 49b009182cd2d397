"""Neural-style losses as forward/backward pairs (Gatys, Ecker & Bethge 2016).

Feature maps f are (N, C, H, W); for one sample, F = f[n].reshape(C, M) has C filters
("N_l" in Gatys' notation) by M = H*W positions. Every loss is summed over the batch.

Two normalisations (``mode``):

``"gatys"`` (the definitions of the paper)
    gram             G = F F^T
    content loss     L = weight * 1/2 * sum (F - P)^2                 dL/dF = weight (F - P)
    style loss       E = weight * sum (G - A)^2 / (4 C^2 M^2)        dE/dF = weight (G - A) F / (C^2 M^2)

``"johnson"`` (jcjohnson/neural-style: nn.MSECriterion, Gram divided by its input's size)
    gram             G = F F^T / (C M)
    content loss     L = weight * mean (F - P)^2                      dL/dF = weight * 2 (F - P) / (C M)
    style loss       E = weight * mean (G - A)^2 = weight * sum (G - A)^2 / C^2
                                                  dE/dF = weight * 2 (G - A) F * 2 / (C^2 * C M)

The ReLU mask of Gatys' formula ("where F > 0") is applied by the network's backward pass,
not here. With ``normalize_gradients`` (jcjohnson's ``-normalize_gradients``) the gradient
of each term is divided by its own L1 norm before the weight multiplies it:
``dF = weight * d / (||d||_1 + 1e-8)`` with d the unweighted gradient. That is no longer the
gradient of L; the loss value reported is unchanged.

Total variation (jcjohnson's TVLoss, whose backward pass is the gradient of this):
    L = weight * 1/2 * sum_{i < H-1, j < W-1} (x[i, j] - x[i, j+1])^2 + (x[i, j] - x[i+1, j])^2

Loss values are Python floats (sums accumulated in float64); gradients have the dtype of
the features (float32 in a style run, float64 in the checks). Nothing here uses BLAS's own
threads (which busy-wait after each call and take a core from cnnlab.conv's worker pool,
see cnnlab.conv.threads): the Gram products run on one BLAS thread each, with the GIL
released (the style pass computes the layers' losses in parallel on the pool), and the
style backward products (G - A) F in column blocks on the pool.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_xp
from ..conv.threads import blas_threads, even_blocks, parallel_map, pool_threads
from ..errors import CnnlabError

MODES = ("gatys", "johnson")
#: Style backward products (G - A) F of at least this many multiply-adds are split over the
#: worker threads by columns, into two blocks per thread from 4x PARALLEL_MIN_POSITIONS positions.
PARALLEL_MIN_MACS = 1 << 22
PARALLEL_MIN_POSITIONS = 4096


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise CnnlabError(f"unknown loss normalisation {mode!r}; choose one of {', '.join(MODES)}")


def _flat(f):
    """(N, C, H, W) -> (N, C, M) view."""
    if f.ndim != 4:
        raise CnnlabError(f"style losses expect feature maps (N, C, H, W), got shape {tuple(f.shape)}")
    return f.reshape(f.shape[0], f.shape[1], -1)


def _sumsq(d) -> float:
    """sum(d**2) as a Python float, accumulated in float64 (no BLAS, no temporary)."""
    v = d.reshape(-1)
    xp = get_xp(d)
    return float(xp.einsum("i,i->", v, v, dtype=xp.float64))


def _l1_normalized(d):
    """d / (||d||_1 + 1e-8), in place (jcjohnson's gradient normalisation)."""
    xp = get_xp(d)
    d /= (float(xp.abs(d).sum()) + 1e-8)
    return d


# ------------------------------------------------------------------------------- gram
def gram_forward(f, scale=1.0):
    """f (N, C, H, W) -> G (N, C, C), G[n] = scale * F F^T with F = f[n].reshape(C, H*W).

    On the CPU each F F^T is ``np.matmul(F, F.T)``, which numpy runs as one BLAS syrk (half
    the multiply-adds of a general product) and mirrors into a symmetric result, with the
    GIL released, so the layers' Grams run in parallel on the worker pool (scipy's ``ssyrk``
    wrapper holds the GIL: with it the style pass's losses ran one after another).
    """
    xp = get_xp(f)
    F_ = _flat(f)
    if xp is np:
        G = np.empty((F_.shape[0], F_.shape[1], F_.shape[1]), dtype=F_.dtype)
        with blas_threads(1):
            for n in range(F_.shape[0]):
                np.matmul(F_[n], F_[n].T, out=G[n])
    else:
        G = xp.matmul(F_, F_.transpose(0, 2, 1))
    if scale != 1.0:
        G *= scale
    return G, (F_, f.shape, scale)


def gram_backward(dG, cache):
    """dG (N, C, C) -> df (N, C, H, W):  dF = scale * (dG + dG^T) F."""
    xp = get_xp(dG)
    F_, shape, scale = cache
    df = xp.matmul(dG + dG.transpose(0, 2, 1), F_)
    if scale != 1.0:
        df *= scale
    return df.reshape(shape)


def gram_scale(mode: str, c: int, m: int) -> float:
    """The factor of the Gram matrix in ``mode``: 1 (gatys) or 1 / (C M) (johnson)."""
    _check_mode(mode)
    return 1.0 if mode == "gatys" else 1.0 / (c * m)


def style_target(f, mode="gatys", positions=None):
    """The target Gram A (N, C, C) of style features f (N, C, H, W).

    ``positions`` is M of the image being generated. In "gatys" mode the Gram is a sum over
    positions, so a style image of another size is rescaled to M: A = F_s F_s^T * M / M_s
    (the identity when the sizes match, Gatys' setting). "johnson" Grams are means already.
    """
    c, ms = f.shape[1], f.shape[2] * f.shape[3]
    G, _ = gram_forward(f, gram_scale(mode, c, ms))
    if mode == "gatys" and positions is not None and positions != ms:
        G *= positions / ms
    return G


# ------------------------------------------------------------------------------- content
def content_loss_forward(f, target, weight=1.0, mode="gatys", normalize_gradients=False):
    """f, target (N, C, H, W) -> (loss float, cache); see the module docstring."""
    _check_mode(mode)
    if f.shape != target.shape:
        raise CnnlabError(f"content target has shape {tuple(target.shape)}, features {tuple(f.shape)}")
    d = f - target
    if mode == "gatys":
        loss = 0.5 * _sumsq(d)
        coef = 1.0
    else:               # the mean over each image's C*H*W values, summed over the batch
        per_image = d.size // d.shape[0]
        loss = _sumsq(d) / per_image
        coef = 2.0 / per_image
    return weight * loss, (d, coef, weight, normalize_gradients)


def content_loss_backward(dout, cache):
    """dout (scalar) -> df (N, C, H, W). Consumes the cache (its difference array is reused)."""
    d, coef, weight, normalize = cache
    if coef != 1.0:
        d *= coef
    if normalize:
        _l1_normalized(d)
    d *= weight * float(dout)
    return d


# ------------------------------------------------------------------------------- style
def style_loss_forward(f, target_gram, weight=1.0, mode="gatys", normalize_gradients=False):
    """f (N, C, H, W), target_gram A (N or 1, C, C) -> (loss float, cache); see the module docstring."""
    _check_mode(mode)
    n, c = f.shape[:2]
    m = f.shape[2] * f.shape[3]
    if target_gram.shape[-2:] != (c, c):
        raise CnnlabError(f"style target is {tuple(target_gram.shape)}, features have {c} channels")
    G, gcache = gram_forward(f, gram_scale(mode, c, m))
    G -= target_gram                                       # G - A, reused by backward
    if mode == "gatys":
        loss = _sumsq(G) / (4.0 * c * c * m * m)
        coef = 1.0 / (2.0 * c * c * m * m)                 # dE/dG = (G - A) / (2 C^2 M^2)
    else:
        loss = _sumsq(G) / (c * c)
        coef = 2.0 / (c * c)                               # dE/dG = 2 (G - A) / C^2
    return weight * loss, (G, coef, gcache, weight, normalize_gradients)


def style_loss_backward(dout, cache):
    """dout (scalar) -> df (N, C, H, W).

    G - A is symmetric, so the Gram backward (dG + dG^T) F collapses to 2 dG F: one GEMM.
    """
    xp_diff, coef, (F_, shape, scale), weight, normalize = cache
    xp = get_xp(xp_diff)
    c, m = F_.shape[1:]
    first = 2.0 * coef * scale
    last = None if normalize else weight * float(dout)    # the L1 norm needs all of df first
    if xp is np:
        df = np.empty(F_.shape, dtype=np.result_type(xp_diff, F_))
        parts = pool_threads() if c * c * m >= PARALLEL_MIN_MACS else 1
        parts *= 2 if m >= 4 * PARALLEL_MIN_POSITIONS else 1

        def block(sl):                  # column blocks on the conv worker pool
            out = df[:, :, sl]
            np.matmul(xp_diff, F_[:, :, sl], out=out)
            out *= first
            if last is not None:
                out *= last
        with blas_threads(1):
            parallel_map(block, [slice(a, b) for a, b in even_blocks(m, parts)])
    else:
        df = xp.matmul(xp_diff, F_)
        df *= first
        if last is not None:
            df *= last
    df = df.reshape(shape)
    if normalize:
        _l1_normalized(df)
        df *= weight * float(dout)
    return df


# ------------------------------------------------------------------------------- total variation
def tv_loss_forward(x, weight=1.0):
    """x (N, C, H, W) -> (loss float, cache); see the module docstring."""
    if x.ndim != 4:
        raise CnnlabError(f"TV loss expects an image batch (N, C, H, W), got {tuple(x.shape)}")
    core = x[:, :, :-1, :-1]
    dx = core - x[:, :, :-1, 1:]
    dy = core - x[:, :, 1:, :-1]
    loss = 0.5 * (_sumsq(dx) + _sumsq(dy))
    return weight * loss, (dx, dy, x.shape, weight)


def tv_loss_backward(dout, cache):
    """dout (scalar) -> dx (N, C, H, W)."""
    dx, dy, shape, weight = cache
    xp = get_xp(dx)
    g = xp.zeros(shape, dtype=dx.dtype)
    g[:, :, :-1, :-1] += dx
    g[:, :, :-1, :-1] += dy
    g[:, :, :-1, 1:] -= dx
    g[:, :, 1:, :-1] -= dy
    g *= weight * float(dout)
    return g
