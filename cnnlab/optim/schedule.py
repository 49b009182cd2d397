"""Learning-rate schedules: functions of the step (or epoch) number returning a multiplier.

    constant:  1
    step:      gamma ** (t // step_size)
    cosine:    min_factor + (1 - min_factor) * (1 + cos(pi * t / total)) / 2
    warmup(s): linear from 1/warmup to 1 over the first ``warmup`` steps, then ``s(t - warmup)``

``apply_schedule(optimizer, base_lr, schedule, t)`` sets optimizer.lr = base_lr * schedule(t).
"""
from __future__ import annotations

import math

from ..errors import CnnlabError


class Constant:
    def __call__(self, t: int) -> float:
        return 1.0


class StepDecay:
    def __init__(self, step_size: int, gamma: float = 0.1):
        if step_size < 1:
            raise CnnlabError(f"step_size must be >= 1, got {step_size}")
        if not (math.isfinite(gamma) and gamma > 0):
            raise CnnlabError(f"step decay gamma must be a finite number above 0, got {gamma}")
        self.step_size, self.gamma = step_size, gamma

    def __call__(self, t: int) -> float:
        return self.gamma ** (t // self.step_size)


class Cosine:
    def __init__(self, total: int, min_factor: float = 0.0):
        if total < 1:
            raise CnnlabError(f"cosine schedule needs total >= 1 steps, got {total}")
        if not 0 <= min_factor <= 1:
            raise CnnlabError(f"cosine min_factor must be in [0, 1], got {min_factor}")
        self.total, self.min_factor = total, min_factor

    def __call__(self, t: int) -> float:
        t = min(t, self.total)
        return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * t / self.total))


class Warmup:
    def __init__(self, warmup: int, after=None):
        if warmup < 1:
            raise CnnlabError(f"warm-up needs at least 1 step, got {warmup}")
        self.warmup, self.after = warmup, after or Constant()

    def __call__(self, t: int) -> float:
        if t < self.warmup:
            return (t + 1) / self.warmup
        return self.after(t - self.warmup)


def make_schedule(name: str, total: int, warmup: int = 0, step_size: int | None = None, gamma: float = 0.1):
    """Schedule by name ("constant", "step", "cosine"), optionally preceded by a linear warm-up
    of ``warmup`` steps, which must be fewer than ``total``."""
    if warmup < 0 or (warmup and warmup >= total):
        raise CnnlabError(f"warm-up must be 0 or more steps and fewer than the run's {total}, "
                          f"got {warmup}")
    if name == "constant":
        s = Constant()
    elif name == "step":
        s = StepDecay(step_size or max(1, total // 3), gamma)
    elif name == "cosine":
        s = Cosine(max(1, total - warmup))
    else:
        raise CnnlabError(f"unknown schedule {name!r}; choose constant, step or cosine")
    return Warmup(warmup, s) if warmup else s


def apply_schedule(optimizer, base_lr: float, schedule, t: int) -> float:
    optimizer.lr = base_lr * schedule(t)
    return optimizer.lr
