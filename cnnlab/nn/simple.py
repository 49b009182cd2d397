"""Parameter-free layers: activations, pooling, flatten, dropout. Shapes as in cnnlab.functional."""
from __future__ import annotations

import numpy as np

from .. import functional as F
from ..functional.dropout import check_drop_probability
from .module import Module


class _Pair(Module):
    """A module around one forward/backward pair with fixed keyword arguments."""

    fwd = bwd = None

    def forward(self, x):
        out, self._cache = type(self).fwd(x, **self._kwargs())
        return out

    def backward(self, dout):
        dx = type(self).bwd(dout, self._cache)
        self._cache = None
        return dx

    def _kwargs(self):
        return {}


class ReLU(_Pair):
    fwd, bwd = F.relu_forward, F.relu_backward


class LeakyReLU(_Pair):
    fwd, bwd = F.leaky_relu_forward, F.leaky_relu_backward

    def __init__(self, negative_slope=0.01):
        super().__init__()
        self.negative_slope = negative_slope

    def _kwargs(self):
        return {"negative_slope": self.negative_slope}


class Sigmoid(_Pair):
    fwd, bwd = F.sigmoid_forward, F.sigmoid_backward


class Tanh(_Pair):
    fwd, bwd = F.tanh_forward, F.tanh_backward


class Flatten(_Pair):
    fwd, bwd = F.flatten_forward, F.flatten_backward


class MaxPool2d(_Pair):
    fwd, bwd = F.max_pool_forward, F.max_pool_backward

    def __init__(self, kernel_size=2, stride=None, padding=0):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = kernel_size if stride is None else stride
        self.padding = padding
        F.pool_params(kernel_size, self.stride, padding)    # checked now, not at forward

    def _kwargs(self):
        return {"kernel_size": self.kernel_size, "stride": self.stride, "padding": self.padding}

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AvgPool2d(MaxPool2d):
    fwd, bwd = F.avg_pool_forward, F.avg_pool_backward

    def __init__(self, kernel_size=2, stride=None, padding=0, count_include_pad=True):
        super().__init__(kernel_size, stride, padding)
        self.count_include_pad = count_include_pad

    def _kwargs(self):
        return {**super()._kwargs(), "count_include_pad": self.count_include_pad}


class GlobalAvgPool2d(_Pair):
    """(N, C, H, W) -> (N, C, 1, 1)."""

    fwd, bwd = F.global_avg_pool_forward, F.global_avg_pool_backward


class Dropout(Module):
    """Inverted dropout with drop probability ``p``; identity in eval mode."""

    def __init__(self, p=0.5, rng=None):
        super().__init__()
        check_drop_probability(p)
        self.p = p
        self.rng = rng if rng is not None else np.random.default_rng()

    def forward(self, x):
        out, self._cache = F.dropout_forward(x, self.p, self.rng, self.training)
        return out

    def backward(self, dout):
        dx = F.dropout_backward(dout, self._cache)    # None in eval mode or with p = 0
        self._cache = None
        return dx

    def extra_repr(self):
        return f"p={self.p}"


class Identity(Module):
    def forward(self, x):
        return x

    def backward(self, dout):
        return dout
