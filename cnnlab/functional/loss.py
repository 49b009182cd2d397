"""Classification losses on scores (N, K) with integer labels y (N,), averaged over N.

softmax cross-entropy with label smoothing e:
    p = softmax(s),  q = (1 - e) * onehot(y) + e / K,   L = -(1/N) sum_n sum_k q log p
    dL/ds = (p - q) / N

multiclass SVM (hinge) loss, margin delta (CS231n convention: no division by K):
    L = (1/N) sum_n sum_{j != y_n} max(0, s_j - s_{y_n} + delta)
    dL/ds_j = [margin_j > 0] / N,  dL/ds_y = -(number of positive margins) / N

L2 weight decay: L = (lam / 2) * sum_w ||w||^2,  dL/dw = lam * w.
"""
from __future__ import annotations

from ..backend import get_xp
from ..errors import ShapeError


def _check(scores, y):
    if scores.ndim != 2:
        raise ShapeError(f"loss expects scores of shape (N, K), got {tuple(scores.shape)}")
    if y.shape != (scores.shape[0],):
        raise ShapeError(f"loss expects labels of shape ({scores.shape[0]},), got {tuple(y.shape)}")
    xp = get_xp(y)
    if y.size and (int(xp.min(y)) < 0 or int(xp.max(y)) >= scores.shape[1]):
        raise ShapeError(f"labels must be in [0, {scores.shape[1]}), got range "
                         f"[{int(xp.min(y))}, {int(xp.max(y))}]")


def log_softmax(s):
    """Row-wise log-softmax of (N, K) scores, stable."""
    xp = get_xp(s)
    z = s - s.max(axis=1, keepdims=True)
    return z - xp.log(xp.exp(z).sum(axis=1, keepdims=True))


def softmax(s):
    """Row-wise softmax of (N, K) scores."""
    return get_xp(s).exp(log_softmax(s))


def softmax_cross_entropy_forward(scores, y, label_smoothing=0.0):
    """Return (loss, cache); loss is a 0-d array in the dtype of scores."""
    _check(scores, y)
    if not 0 <= label_smoothing < 1:
        raise ShapeError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    xp = get_xp(scores)
    n, k = scores.shape
    logp = log_softmax(scores)
    q = xp.full(scores.shape, label_smoothing / k, dtype=scores.dtype)
    q[xp.arange(n), y] += 1 - label_smoothing
    loss = -(q * logp).sum() / n
    return loss, (xp.exp(logp), q)


def softmax_cross_entropy_backward(dloss, cache):
    p, q = cache
    return (p - q) * (dloss / p.shape[0])


def svm_hinge_forward(scores, y, delta=1.0):
    _check(scores, y)
    xp = get_xp(scores)
    n = scores.shape[0]
    correct = scores[xp.arange(n), y][:, None]
    margins = xp.maximum(0, scores - correct + delta)
    margins[xp.arange(n), y] = 0
    return margins.sum() / n, (margins > 0, y, scores.dtype)


def svm_hinge_backward(dloss, cache):
    positive, y, dtype = cache
    xp = get_xp(positive)
    n = positive.shape[0]
    d = positive.astype(dtype)
    d[xp.arange(n), y] = -positive.sum(axis=1)
    return d * (dloss / n)


def l2_penalty_forward(weights, lam):
    """weights: a list of arrays -> (0.5 * lam * sum ||w||^2, cache)."""
    total = sum(float((w * w).sum()) for w in weights)
    return 0.5 * lam * total, (weights, lam)


def l2_penalty_backward(dloss, cache):
    weights, lam = cache
    return [w * (lam * dloss) for w in weights]
