"""An Inception-v3 style block (Szegedy et al. 2016) with factorized 1xN / Nx1 convolutions.

Factorization: an N x N conv (C -> C channels, N^2 C^2 weights) is replaced by a 1 x N conv
followed by an N x 1 conv (2 N C^2 weights, same N x N receptive field): for N = 7 that is
14 C^2 instead of 49 C^2, and for N = 3, 6 C^2 instead of 9 C^2.

``InceptionBlock`` (torchvision's ``InceptionC`` layout and names for N = 7), x: (N, C, H, W):

    branch1x1                          1x1 C -> b1
    branch7x7_1..3                     1x1 C -> m, 1x7 m -> m, 7x1 m -> b7
    branch7x7dbl_1..5                  1x1 C -> m, 7x1, 1x7, 7x1 (m -> m), 1x7 m -> bd
    pool, branch_pool                  3x3/1 average pool (zero padding counted) -> 1x1 C -> bp
    y = cat([...], axis=1): (N, b1 + b7 + bd + bp, H, W)

Every conv is a ``BasicConv2d``: conv (no bias) -> batch norm (eps 1e-3) -> ReLU, with the
children ``conv`` and ``bn``, so the parameter names are ``branch7x7_2.conv.weight`` etc.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .. import nn
from .graph import Cat, GraphModule, Seq


def basic_conv(in_channels, out_channels, kernel_size, padding=0, stride=1, rng=None):
    """conv (no bias) -> BatchNorm2d(eps=1e-3) -> ReLU, children named conv, bn, relu."""
    return nn.Sequential(OrderedDict(
        conv=nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False, rng=rng),
        bn=nn.BatchNorm2d(out_channels, eps=1e-3),
        relu=nn.ReLU()))


def factorized_conv(in_channels, out_channels, n, mid_channels=None, rng=None, bias=True):
    """1 x n conv (in -> mid) then n x 1 conv (mid -> out), 'same' padding: an n x n field."""
    mid = mid_channels or out_channels
    return nn.Sequential(
        nn.Conv2d(in_channels, mid, (1, n), padding=(0, n // 2), bias=bias, rng=rng),
        nn.Conv2d(mid, out_channels, (n, 1), padding=(n // 2, 0), bias=bias, rng=rng))


class InceptionBlock(GraphModule):
    def __init__(self, in_channels, mid_channels, n=7, out_1x1=192, out_nxn=192, out_dbl=192,
                 out_pool=192, rng=None):
        super().__init__()
        rng = rng if rng is not None else np.random.default_rng()
        c, m, p = in_channels, mid_channels, n // 2
        self.n = n
        self._names = [f"branch{n}x{n}_{i}" for i in (1, 2, 3)], \
            [f"branch{n}x{n}dbl_{i}" for i in (1, 2, 3, 4, 5)]
        single, double = self._names
        self.branch1x1 = basic_conv(c, out_1x1, 1, rng=rng)
        setattr(self, single[0], basic_conv(c, m, 1, rng=rng))
        setattr(self, single[1], basic_conv(m, m, (1, n), (0, p), rng=rng))
        setattr(self, single[2], basic_conv(m, out_nxn, (n, 1), (p, 0), rng=rng))
        setattr(self, double[0], basic_conv(c, m, 1, rng=rng))
        setattr(self, double[1], basic_conv(m, m, (n, 1), (p, 0), rng=rng))
        setattr(self, double[2], basic_conv(m, m, (1, n), (0, p), rng=rng))
        setattr(self, double[3], basic_conv(m, m, (n, 1), (p, 0), rng=rng))
        setattr(self, double[4], basic_conv(m, out_dbl, (1, n), (0, p), rng=rng))
        self.pool = nn.AvgPool2d(3, 1, 1)
        self.branch_pool = basic_conv(c, out_pool, 1, rng=rng)
        self.out_channels = out_1x1 + out_nxn + out_dbl + out_pool

    def graph(self):
        single, double = self._names
        return Cat("branch1x1", Seq(*single), Seq(*double), Seq("pool", "branch_pool"))


def inception_net(in_channels=1, num_classes=10, input_size=28, rng=None, width=32):
    """A small net around one block for 28x28 inputs: stem 3x3 conv -> pool -> Inception block
    (N = 3) -> global average pool -> fc."""
    rng = rng if rng is not None else np.random.default_rng()
    w = width
    block = InceptionBlock(w, w // 2, n=3, out_1x1=w, out_nxn=w, out_dbl=w, out_pool=w, rng=rng)
    return nn.Sequential(OrderedDict(
        stem=basic_conv(in_channels, w, 3, 1, rng=rng), pool=nn.MaxPool2d(2), mixed=block,
        avgpool=nn.GlobalAvgPool2d(), flatten=nn.Flatten(),
        fc=nn.Linear(block.out_channels, num_classes, rng=rng)))
