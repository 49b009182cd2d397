"""Linear classifiers on fixed features, trained by cnnlab itself, with cross-validated L2.

Model: scores = W z + b, W (K, D), b (K,), with z the features centred on the training mean
and scaled (``standardize``):
    "global"   z = (x - mu) / s, one scale s = the RMS of the centred training features
               (keeps the features' relative scales, so weak dimensions stay weak; default)
    "feature"  z = (x - mu) / sigma per feature (constant features get sigma = 1)
    "none"     z = x
With very few examples per class "feature" inflates near-constant, noisy dimensions; on the
transfer experiments' 10-per-class sets it costs 5-15 points against "global".

    softmax  (multinomial logistic regression):  L = mean_i CE(scores_i, y_i) + reg/2 ||W||^2
    svm      (multiclass hinge, margin 1):        L = mean_i sum_{k != y_i} max(0, s_k - s_y + 1)
                                                      + reg/2 ||W||^2

Trained with cnnlab.nn.Linear + CrossEntropyLoss / SVMLoss and cnnlab.optim.Adam under a
cosine learning-rate schedule: full batch when N <= ``batch_size`` (the default for the
transfer experiments' small sets), otherwise shuffled mini-batches. The bias is not decayed.

``cross_validate(X, y, regs, k)``: stratified k-fold accuracy of each L2 strength;
``fit_cv`` picks the best (ties: the larger reg) and refits on all of X.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import nn
from ..errors import CnnlabError
from ..optim import Adam, Cosine, apply_schedule

DEFAULT_REGS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


class LinearClassifier:
    """``fit(X, y)``, ``decision_function(X)``, ``predict(X)``, ``score(X, y)``; X (N, D) float."""

    def __init__(self, loss="softmax", reg=1e-3, steps=300, lr=0.01, batch_size=4096,
                 standardize="global", seed=0, num_classes=None):
        if loss not in ("softmax", "svm"):
            raise CnnlabError(f"loss must be 'softmax' or 'svm', got {loss!r}")
        standardize = {True: "feature", False: "none", None: "none"}.get(standardize, standardize)
        if standardize not in ("global", "feature", "none"):
            raise CnnlabError(f"standardize must be 'global', 'feature' or 'none', got {standardize!r}")
        if reg < 0 or steps < 1 or lr <= 0:
            raise CnnlabError(f"need reg >= 0, steps >= 1 and lr > 0 (got {reg}, {steps}, {lr})")
        self.loss, self.reg, self.steps, self.lr = loss, float(reg), int(steps), float(lr)
        self.batch_size, self.standardize, self.seed = int(batch_size), standardize, seed
        self.num_classes = num_classes
        self.layer = None
        self.history = []

    # -- preprocessing --------------------------------------------------------------------
    def _fit_scaler(self, X):
        d = X.shape[1]
        if self.standardize == "none":
            self.mean_, self.std_ = np.zeros(d, np.float32), np.ones(d, np.float32)
            return
        self.mean_ = X.mean(axis=0)
        if self.standardize == "feature":
            sd = X.std(axis=0)
            self.std_ = np.where(sd > 1e-8, sd, 1.0).astype(np.float32)
        else:
            rms = float(np.sqrt(((X - self.mean_) ** 2).mean()))
            self.std_ = np.full(d, rms if rms > 1e-8 else 1.0, np.float32)

    def _z(self, X):
        X = np.asarray(X, dtype=np.float32)
        if self.layer is None:
            raise CnnlabError("classifier is not fitted; call fit(X, y) first")
        if X.ndim != 2 or X.shape[1] != self.layer.in_features:
            raise CnnlabError(f"expected features of shape (N, {self.layer.in_features}), "
                              f"got {X.shape}")
        return (X - self.mean_) / self.std_

    # -- training -------------------------------------------------------------------------
    def fit(self, X, y) -> "LinearClassifier":
        X = np.asarray(X, dtype=np.float32)
        y = np.asarray(y, dtype=np.int64)
        if X.ndim != 2 or len(X) != len(y) or len(X) == 0:
            raise CnnlabError(f"fit expects X (N, D) and y (N,), got {X.shape} and {y.shape}")
        k = self.num_classes or int(y.max()) + 1
        rng = np.random.default_rng(self.seed)
        self._fit_scaler(X)
        self.layer = nn.Linear(X.shape[1], k, rng=rng)
        # small start: the problem is convex; He init would only add noise to the scores
        self.layer.weight.data *= np.float32(0.01)
        self.layer.need_input_grad = False      # the features are fixed
        Z = (X - self.mean_) / self.std_
        crit = nn.CrossEntropyLoss() if self.loss == "softmax" else nn.SVMLoss()
        opt = Adam(self.layer.parameters(), lr=self.lr)
        sched = Cosine(self.steps)
        n, bs = len(Z), min(self.batch_size, len(Z))
        order = np.arange(n)
        pos = n
        self.history = []
        for t in range(self.steps):
            apply_schedule(opt, self.lr, sched, t)
            if bs == n:
                zb, yb = Z, y
            else:
                if pos + bs > n:
                    rng.shuffle(order)
                    pos = 0
                idx = order[pos:pos + bs]
                pos += bs
                zb, yb = Z[idx], y[idx]
            opt.zero_grad()
            scores = self.layer.forward(zb)
            w = self.layer.weight
            loss = crit(scores, yb) + 0.5 * self.reg * float((w.data * w.data).sum())
            self.layer.backward(crit.backward())
            w.grad += self.reg * w.data
            opt.step()
            self.history.append(loss)
        return self

    def decision_function(self, X) -> np.ndarray:
        return self.layer.forward(self._z(X))

    def predict(self, X) -> np.ndarray:
        return self.decision_function(X).argmax(axis=1)

    def score(self, X, y) -> float:
        return float((self.predict(X) == np.asarray(y)).mean())

    # -- persistence ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"weight": self.layer.weight.data, "bias": self.layer.bias.data,
                "mean": self.mean_, "std": self.std_}


def stratified_folds(y, k: int, seed: int = 0) -> list[np.ndarray]:
    """k disjoint index arrays; each class's samples are shuffled and dealt round-robin."""
    y = np.asarray(y)
    counts = np.bincount(y)
    if k < 2 or k > counts[counts > 0].min():
        raise CnnlabError(f"{k}-fold cross-validation needs at least {k} samples of every "
                          f"class (smallest class has {counts[counts > 0].min()}); lower k")
    rng = np.random.default_rng(seed)
    folds = [[] for _ in range(k)]
    offset = 0
    for c in np.flatnonzero(counts):
        idx = rng.permutation(np.flatnonzero(y == c))
        for i, j in enumerate(idx):
            folds[(i + offset) % k].append(j)
        offset += len(idx)
    return [np.sort(np.array(f, dtype=np.int64)) for f in folds]


@dataclass
class CVResult:
    regs: tuple
    mean_accuracy: list
    std_accuracy: list
    best_reg: float
    k: int
    model: LinearClassifier | None = field(default=None, repr=False)

    def table(self) -> str:
        rows = [f"{'L2 strength':>12}  {'CV accuracy':>14}"]
        for r, m, s in zip(self.regs, self.mean_accuracy, self.std_accuracy):
            mark = "  <- best" if r == self.best_reg else ""
            rows.append(f"{r:>12g}  {100 * m:>7.2f} ± {100 * s:4.2f}{mark}")
        return "\n".join(rows)


def cross_validate(X, y, regs=DEFAULT_REGS, k: int = 5, loss="softmax", seed=0,
                   **kw) -> CVResult:
    """Stratified k-fold accuracy for each L2 strength in ``regs`` (k is lowered to the
    smallest class count when that is smaller, but not below 2)."""
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    counts = np.bincount(y)
    k = max(2, min(k, int(counts[counts > 0].min())))
    folds = stratified_folds(y, k, seed)
    num_classes = int(y.max()) + 1
    means, stds = [], []
    for reg in regs:
        accs = []
        for i in range(k):
            val = folds[i]
            tr = np.concatenate([folds[j] for j in range(k) if j != i])
            clf = LinearClassifier(loss, reg, seed=seed, num_classes=num_classes, **kw)
            accs.append(clf.fit(X[tr], y[tr]).score(X[val], y[val]))
        means.append(float(np.mean(accs)))
        stds.append(float(np.std(accs)))
    best = max(range(len(regs)), key=lambda i: (round(means[i], 6), regs[i]))
    return CVResult(tuple(regs), means, stds, float(regs[best]), k)


def fit_cv(X, y, regs=DEFAULT_REGS, k: int = 5, loss="softmax", seed=0, **kw) -> CVResult:
    """Cross-validate the L2 strength, then refit on all of X with the best one
    (``result.model``)."""
    res = cross_validate(X, y, regs, k, loss, seed, **kw)
    y = np.asarray(y, dtype=np.int64)
    res.model = LinearClassifier(loss, res.best_reg, seed=seed, num_classes=int(y.max()) + 1,
                                 **kw).fit(X, y)
    return res


def fit_cv_select(feature_sets: dict, y, regs=DEFAULT_REGS, k: int = 5, loss="softmax", seed=0,
                  **kw) -> tuple:
    """Cross-validate over (feature set, L2 strength) jointly, e.g. the features of several
    layers: the pair with the best k-fold accuracy wins (ties: the earlier set, the larger reg)
    and is refit on all of y. Returns (name of the chosen set, its CVResult with ``model``)."""
    best = None
    for name, X in feature_sets.items():
        res = cross_validate(X, y, regs, k, loss, seed, **kw)
        score = max(res.mean_accuracy)
        if best is None or score > best[0] + 1e-9:
            best = (score, name, res)
    _, name, res = best
    y = np.asarray(y, dtype=np.int64)
    res.model = LinearClassifier(loss, res.best_reg, seed=seed, num_classes=int(y.max()) + 1,
                                 **kw).fit(feature_sets[name], y)
    return name, res
