"""Running loss/accuracy averages and the run's metrics.json.

metrics.json (written atomically after every epoch, and when a run stops)::

    {"run": {...configuration...},
     "epochs": [{"epoch": 1, "train_loss": .., "train_acc": .., "test_loss": .., "test_acc": ..,
                 "lr": .., "train_seconds": .., "seconds": .., "data_wait_seconds": ..,
                 "data_wait_fraction": ..}, ...],
     "final": {"epoch": .., "train_loss": .., "train_acc": .., "test_loss": .., "test_acc": ..,
               "best_test_acc": .., "best_epoch": .., "seconds": ..},
     "stopped": null or "the reason training stopped early"}

train_loss / train_acc are averages over the epoch's mini-batches in training mode
(dropout on, weights changing); test_* are measured in eval mode after the epoch.
Accuracies are fractions in [0, 1]; lr is the learning rate of the epoch's last step;
train_seconds is the wall-clock time of the training steps (batch preparation
included), seconds that of the whole epoch with evaluation; final "seconds" is the
run's total; data_wait_seconds is the part of train_seconds the training step spent
waiting for its batch, data_wait_fraction their ratio. Non-finite values are written as null (JSON has no NaN).
"""
from __future__ import annotations

import json
import math

import numpy as np

from ..backend import get_xp

from ..io import atomic_write


def correct_count(scores, y) -> int:
    """How many rows of ``scores`` (N, K) have their largest score at label ``y`` (N,); either
    may live on the GPU (compared there, one number copied back)."""
    xp = get_xp(scores, y)
    return int((xp.asarray(scores).argmax(axis=1) == xp.asarray(y)).sum())


class RunningMean:
    """Sample-weighted mean of per-batch losses and accuracy over an epoch."""

    def __init__(self):
        self.loss_sum, self.correct, self.count = 0.0, 0, 0

    def update(self, loss: float, correct: int, n: int) -> None:
        self.loss_sum += float(loss) * n
        self.correct += int(correct)
        self.count += int(n)

    @property
    def loss(self) -> float:
        return self.loss_sum / self.count if self.count else float("nan")

    @property
    def acc(self) -> float:
        return self.correct / self.count if self.count else float("nan")


def final_metrics(history: list[dict], seconds: float) -> dict:
    """The "final" block: the last epoch's figures, the best test accuracy, total seconds."""
    if not history:
        return {"epoch": 0, "seconds": seconds}
    last = history[-1]
    out = {k: last.get(k) for k in ("epoch", "train_loss", "train_acc", "test_loss", "test_acc")}
    scored = [h for h in history if _finite(h.get("test_acc"))]
    if scored:
        best = max(scored, key=lambda h: h["test_acc"])
        out["best_test_acc"], out["best_epoch"] = best["test_acc"], best["epoch"]
    out["seconds"] = seconds
    return out


def write_metrics(path, run: dict, history: list[dict], seconds: float,
                  stopped: str | None = None) -> dict:
    """Write metrics.json atomically; returns the dict written."""
    data = {"run": run, "epochs": history, "final": final_metrics(history, seconds),
            "stopped": stopped}
    data = _json_safe(data)
    with atomic_write(path, "w") as f:
        json.dump(data, f, indent=2, allow_nan=False)
        f.write("\n")
    return data


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _json_safe(v):
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if isinstance(v, (np.floating, float)):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.ndarray):
        return _json_safe(v.tolist())
    return v


def mean_std(values) -> tuple[float, float]:
    """(mean, population standard deviation) of ``values``, e.g. accuracies over seeds."""
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std())


def pct_mean_std(values) -> str:
    """Fractions over seeds as "91.2 ± 0.4" (percent; one value: "91.2")."""
    m, s = mean_std(values)
    return f"{100 * m:.1f} ± {100 * s:.1f}" if len(values) > 1 else f"{100 * m:.1f}"
