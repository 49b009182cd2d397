"""Loss modules: ``loss = crit(scores, y)`` then ``dscores = crit.backward()``.

scores (N, K) float, y (N,) int -> a Python float (mean over the batch).
"""
from __future__ import annotations

from .. import functional as F


class CrossEntropyLoss:
    """Softmax cross-entropy with optional label smoothing (see cnnlab.functional.loss)."""

    def __init__(self, label_smoothing: float = 0.0):
        self.label_smoothing = label_smoothing
        self._cache = None

    def __call__(self, scores, y) -> float:
        loss, self._cache = F.softmax_cross_entropy_forward(scores, y, self.label_smoothing)
        return float(loss)

    def backward(self, dloss: float = 1.0):
        return F.softmax_cross_entropy_backward(dloss, self._cache)


class SVMLoss:
    """Multiclass hinge loss with margin ``delta`` (see cnnlab.functional.loss)."""

    def __init__(self, delta: float = 1.0):
        self.delta = delta
        self._cache = None

    def __call__(self, scores, y) -> float:
        loss, self._cache = F.svm_hinge_forward(scores, y, self.delta)
        return float(loss)

    def backward(self, dloss: float = 1.0):
        return F.svm_hinge_backward(dloss, self._cache)


LOSSES = {"cross_entropy": CrossEntropyLoss, "svm": SVMLoss}
