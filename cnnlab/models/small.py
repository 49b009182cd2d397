"""The small networks trained on 28x28 digits and clothes.

seed_net   the seed's exact architecture ("CNN in Practice", naive NumPy CNN on 4,000 digits):
           conv 3x3 stride 3 padding 1, 5 filters (28x28 -> 10x10x5) -> ReLU -> 2x2 max pool
           (-> 5x5x5) -> 5x5 conv, 10 filters, as the fully connected layer (-> 1x1x10) -> softmax
lenet      LeNet-5 style: conv5x5(6, pad 2) -> ReLU -> pool -> conv5x5(16) -> ReLU -> pool
           -> FC 120 -> ReLU -> FC 84 -> ReLU -> FC 10, with ReLU and max pooling instead of
           tanh/subsampling; a little wider (16/32 filters) and with dropout before the classifier
           (variants: lenet_plain without it, lenet_dropout at p = 0.5, lenet_dropconnect with
           DropConnect p = 0.5 on fc2 instead)
small_vgg  VGG-style: [conv3x3 -> BN -> ReLU] x2 -> pool, twice (32 then 64 channels), then
           FC 256 -> BN -> ReLU -> dropout 0.5 -> FC 10; dropout 0.25 after each pooling
"""
from __future__ import annotations

import numpy as np

from .. import nn


def seed_net(in_channels=1, num_classes=10, input_size=28, rng=None):
    # 28 + 2 = 30 -> 3x3 stride 3 -> 10 -> pool 2 -> 5; the 5x5 conv then sees the whole map.
    side = (input_size + 2 - 3) // 3 + 1
    side //= 2
    return nn.Sequential(
        nn.Conv2d(in_channels, 5, 3, stride=3, padding=1, rng=rng),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(5, num_classes, side, rng=rng),
        nn.Flatten(),
    )


def lenet(in_channels=1, num_classes=10, input_size=28, rng=None, dropout=0.3, dropconnect=0.0):
    """LeNet (see the module docstring). ``dropout``: the probability of the dropout layer
    after fc1 (0: the layer is left out); ``dropconnect`` > 0 makes fc2 a
    :class:`~cnnlab.nn.DropConnectLinear` that drops each weight with that probability, one
    mask per example as in Wan et al.
    (the names and shapes of the parameters do not change)."""
    side = ((input_size // 2) - 4) // 2
    fc2 = (nn.DropConnectLinear(120, 84, p=dropconnect, rng=rng, per_sample=True) if dropconnect > 0
           else nn.Linear(120, 84, rng=rng))
    regularizer = [nn.Dropout(dropout, rng=rng)] if dropout > 0 else [nn.Identity()]
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 5, padding=2, rng=rng),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5, rng=rng),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * side * side, 120, rng=rng),
        nn.ReLU(),
        *regularizer,
        fc2,
        nn.ReLU(),
        nn.Linear(84, num_classes, rng=rng),
    )


def small_vgg(in_channels=1, num_classes=10, input_size=28, rng=None, widths=(32, 64)):
    layers, c = [], in_channels
    for w in widths:
        for _ in range(2):
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False, rng=rng), nn.BatchNorm2d(w), nn.ReLU()]
            c = w
        layers += [nn.MaxPool2d(2), nn.Dropout(0.25, rng=rng)]
    side = input_size // (2 ** len(widths))
    layers += [nn.Flatten(), nn.Linear(c * side * side, 256, bias=False, rng=rng), nn.BatchNorm1d(256),
               nn.ReLU(), nn.Dropout(0.5, rng=rng), nn.Linear(256, num_classes, rng=rng)]
    return nn.Sequential(*layers)


def lenet_dropconnect(in_channels=1, num_classes=10, input_size=28, rng=None):
    """LeNet with DropConnect (p = 0.5, one mask per example) on fc2 instead of dropout after fc1."""
    return lenet(in_channels, num_classes, input_size, rng, dropout=0.0, dropconnect=0.5)


def lenet_dropout(in_channels=1, num_classes=10, input_size=28, rng=None):
    """LeNet with dropout p = 0.5 (instead of 0.3) after fc1."""
    return lenet(in_channels, num_classes, input_size, rng, dropout=0.5)


def lenet_plain(in_channels=1, num_classes=10, input_size=28, rng=None):
    """LeNet without dropout or DropConnect."""
    return lenet(in_channels, num_classes, input_size, rng, dropout=0.0)


MODELS = {"lenet": lenet, "seed_net": seed_net, "small_vgg": small_vgg,
          "lenet_plain": lenet_plain, "lenet_dropout": lenet_dropout,
          "lenet_dropconnect": lenet_dropconnect}


def build_model(name: str, in_channels=1, num_classes=10, input_size=28, seed=0):
    """Build a registered model with weights drawn from ``numpy.random.default_rng(seed)``."""
    from ..errors import CnnlabError

    if name not in MODELS:
        raise CnnlabError(f"unknown model {name!r}; choose one of {', '.join(sorted(MODELS))}")
    rng = np.random.default_rng(seed)
    model = MODELS[name](in_channels=in_channels, num_classes=num_classes, input_size=input_size, rng=rng)
    model.set_rng(rng)
    return model
