"""Inverted dropout and DropConnect (Wan et al., ICML 2013). Randomness comes from ``rng``.

dropout (train): out = x * m / (1 - p),  m ~ Bernoulli(1 - p) per element; (eval): out = x.
    dx = dout * m / (1 - p)

DropConnect on a linear layer (train): out = x @ (w * M / (1 - p)).T + b, one mask M over the
weights per mini-batch (one GEMM), or with ``per_sample=True`` one mask M_n per example as in
the paper: out[n] = (w * M_n / (1 - p)) @ x[n] + b, an (N, K, D) mask (memory N K D, so for
small layers). Evaluation uses the expected weights w (the inverted scaling makes
E[w * M / (1-p)] = w: the paper's "mean" inference rule).
    per batch:  dx = dout @ w_m,  dw = (dout.T @ x) * M / (1 - p),  with w_m = w * M / (1-p)
    per sample: dx[n] = dout[n] @ w_m[n],  dw = sum_n outer(dout[n], x[n]) * M_n / (1 - p)
    db = sum_n dout
"""
from __future__ import annotations

from ..backend import get_xp
from ..errors import CnnlabError
from .linear import linear_backward, linear_forward


def check_drop_probability(p):
    if not 0 <= p < 1:
        raise CnnlabError(f"drop probability must be in [0, 1), got {p}")


def _mask(rng, shape, p, like):
    """The scaled keep mask (1 / (1 - p) where kept, else 0) in ``like``'s dtype, drawn from
    the numpy Generator ``rng`` on the host (the same masks on CPU and GPU for one seed) and
    placed where ``like`` lives."""
    keep = (rng.random(shape) >= p).astype(like.dtype) / like.dtype.type(1 - p)
    return get_xp(like).asarray(keep)


def dropout_forward(x, p, rng, training=True):
    """x: any shape -> same shape. ``rng``: a numpy.random.Generator (ignored in eval)."""
    check_drop_probability(p)
    if not training or p == 0:
        return x, None
    keep = _mask(rng, x.shape, p, x)
    return x * keep, keep


def dropout_backward(dout, cache):
    return dout if cache is None else dout * cache


def dropconnect_forward(x, w, b, p, rng, training=True, per_sample=False):
    """x (N, D), w (K, D), b (K,) or None -> out (N, K); see the module docstring."""
    check_drop_probability(p)
    if not training or p == 0:
        out, lin_cache = linear_forward(x, w, b)
        return out, (lin_cache, None)
    if per_sample:
        keep = _mask(rng, (x.shape[0],) + w.shape, p, w)
        wm = w * keep                                          # (N, K, D)
        out = get_xp(x, w).matmul(wm, x[:, :, None])[:, :, 0]
        if b is not None:
            out = out + b
        return out, ("per_sample", x, wm, keep, b is not None)
    keep = _mask(rng, w.shape, p, w)
    out, lin_cache = linear_forward(x, w * keep, b)
    return out, (lin_cache, keep)


def dropconnect_backward(dout, cache, need_dx=True, need_dw=True):
    """Return (dx, dw, db)."""
    if isinstance(cache[0], str):                              # "per_sample"
        _, x, wm, keep, has_b = cache
        dx = get_xp(dout, wm).matmul(dout[:, None, :], wm)[:, 0, :] if need_dx else None
        dw = ((dout[:, :, None] * keep) * x[:, None, :]).sum(axis=0) if need_dw else None
        db = dout.sum(axis=0) if (need_dw and has_b) else None
        return dx, dw, db
    lin_cache, keep = cache
    dx, dw_masked, db = linear_backward(dout, lin_cache, need_dx, need_dw)
    dw = dw_masked if (keep is None or dw_masked is None) else dw_masked * keep
    return dx, dw, db
