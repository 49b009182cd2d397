"""Weight initialisation. Each function takes an explicit numpy Generator."""
from __future__ import annotations

import numpy as np


def he_normal(shape, fan_in: int, rng, dtype=np.float32):
    """N(0, 2 / fan_in): He et al. 2015, for layers followed by ReLU."""
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(dtype)


def uniform_fan_in(shape, fan_in: int, rng, dtype=np.float32):
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default for biases and final layers."""
    bound = 1.0 / np.sqrt(fan_in)
    return rng.uniform(-bound, bound, shape).astype(dtype)


def default_rng(rng):
    """The generator to initialise with: the one given, else a fresh unseeded one."""
    return rng if rng is not None else np.random.default_rng()
