"""The small networks trained on 28x28 digits and clothes.

seed_net   the seed's exact architecture ("CNN in Practice", naive NumPy CNN on 4,000 digits):
           conv 3x3 stride 3 padding 1, 5 filters (28x28 -> 10x10x5) -> ReLU -> 2x2 max pool
           (-> 5x5x5) -> 5x5 conv, 10 filters, as the fully connected layer (-> 1x1x10) -> softmax
lenet      LeNet-5 style: conv5x5(6, pad 2) -> ReLU -> pool -> conv5x5(16) -> ReLU -> pool
           -> FC 120 -> ReLU -> FC 84 -> ReLU -> FC 10, with ReLU and max pooling instead of
           tanh/subsampling; a little wider (16/32 filters) and with dropout before the classifier
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


def lenet(in_channels=1, num_classes=10, input_size=28, rng=None):
    side = ((input_size // 2) - 4) // 2
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
        nn.Dropout(0.3, rng=rng),
        nn.Linear(120, 84, rng=rng),
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


MODELS = {"lenet": lenet, "seed_net": seed_net, "small_vgg": small_vgg}


def build_model(name: str, in_channels=1, num_classes=10, input_size=28, seed=0):
    """Build a registered model with weights drawn from ``numpy.random.default_rng(seed)``."""
    from ..errors import CnnlabError

    if name not in MODELS:
        raise CnnlabError(f"unknown model {name!r}; choose one of {', '.join(sorted(MODELS))}")
    rng = np.random.default_rng(seed)
    model = MODELS[name](in_channels=in_channels, num_classes=num_classes, input_size=input_size, rng=rng)
    model.set_rng(rng)
    return model
