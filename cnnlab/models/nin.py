"""Network in Network (Lin et al. 2014): 1x1 convolutions as a per-pixel MLP.

A 1x1 conv C -> O is a fully connected layer applied at every pixel: C*O weights, H*W*C*O
multiply-adds, receptive field unchanged. An ``mlpconv`` block is

    conv KxK (C -> O) -> ReLU -> conv 1x1 (O -> O) -> ReLU -> conv 1x1 (O -> O) -> ReLU

and the network ends without fully connected layers: the last block outputs one map per class
and a global average pool turns each map into its score.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .. import nn


def mlpconv(in_channels, out_channels, kernel_size, stride=1, padding=0, last_relu=True, rng=None):
    """KxK conv then two 1x1 convs, ReLU after each (the last one optional)."""
    layers = OrderedDict(conv=nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, rng=rng),
                         relu=nn.ReLU(),
                         cccp1=nn.Conv2d(out_channels, out_channels, 1, rng=rng), relu1=nn.ReLU(),
                         cccp2=nn.Conv2d(out_channels, out_channels, 1, rng=rng))
    if last_relu:
        layers["relu2"] = nn.ReLU()
    return nn.Sequential(layers)


def nin(in_channels=1, num_classes=10, input_size=28, rng=None, widths=(32, 64)):
    """NiN for small images: two mlpconv blocks (5x5) with 2x2 max pooling and dropout, then an
    mlpconv (3x3) with ``num_classes`` maps -> global average pool -> flatten.
    x: (N, C, H, W) -> (N, num_classes) for any H, W >= 4."""
    rng = rng if rng is not None else np.random.default_rng()
    a, b = widths
    return nn.Sequential(OrderedDict(
        block1=mlpconv(in_channels, a, 5, padding=2, rng=rng), pool1=nn.MaxPool2d(2),
        drop1=nn.Dropout(0.25, rng=rng),
        block2=mlpconv(a, b, 5, padding=2, rng=rng), pool2=nn.MaxPool2d(2),
        drop2=nn.Dropout(0.25, rng=rng),
        block3=mlpconv(b, num_classes, 3, padding=1, last_relu=False, rng=rng),
        avgpool=nn.GlobalAvgPool2d(), flatten=nn.Flatten()))
