"""VGG-11/13/16/19 (Simonyan & Zisserman 2015), with and without batch norm.

Layout and parameter names follow torchvision, so its state_dicts load directly:
    features    Sequential of Conv2d(3x3, pad 1) [-> BatchNorm2d] -> ReLU ... MaxPool2d(2)
    avgpool     AdaptiveAvgPool to 7x7 (an identity at 224x224 input)
    classifier  Linear(512*7*7, 4096) -> ReLU -> Dropout -> Linear(4096, 4096) -> ReLU
                -> Dropout -> Linear(4096, num_classes)
x: (N, 3, H, W) -> (N, num_classes). ``layer_names(cfg)`` gives the conventional names
(conv1_1, relu1_1, ..., pool5) of the entries of ``features``.
"""
from __future__ import annotations

import numpy as np

from .. import nn
from ..errors import CnnlabError, ShapeError

CONFIGS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}


def make_features(cfg, batch_norm=False, in_channels=3, pooling="max", rng=None):
    """The convolutional part as a Sequential, torchvision indexing (conv, [bn,] relu, ..., pool)."""
    layers, c = [], in_channels
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2) if pooling == "max" else nn.AvgPool2d(2, 2))
        else:
            layers.append(nn.Conv2d(c, v, 3, padding=1, rng=rng))
            if batch_norm:
                layers.append(nn.BatchNorm2d(v))
            layers.append(nn.ReLU())
            c = v
    return nn.Sequential(*layers)


def layer_names(cfg, batch_norm=False) -> list[str]:
    """Names of the entries of ``features``: conv1_1, [bn1_1,] relu1_1, ..., pool1, conv2_1, ..."""
    names, block, idx = [], 1, 1
    for v in cfg:
        if v == "M":
            names.append(f"pool{block}")
            block, idx = block + 1, 1
        else:
            names.append(f"conv{block}_{idx}")
            if batch_norm:
                names.append(f"bn{block}_{idx}")
            names.append(f"relu{block}_{idx}")
            idx += 1
    return names


class AdaptiveAvgPool7(nn.Module):
    """Average-pool (N, C, H, W) to (N, C, 7, 7) when H and W are multiples of 7 (identity at 7)."""

    def __init__(self, size=7):
        super().__init__()
        self.size = size

    def forward(self, x):
        h, w = x.shape[2:]
        if h % self.size or w % self.size:
            raise ShapeError(f"VGG classifier needs feature maps that are multiples of {self.size} "
                             f"(input 224x224); got {h}x{w}")
        kh, kw = h // self.size, w // self.size
        self._inner = None if (kh, kw) == (1, 1) else nn.AvgPool2d((kh, kw), (kh, kw))
        return x if self._inner is None else self._inner.forward(x)

    def backward(self, dout):
        return dout if self._inner is None else self._inner.backward(dout)


class VGG(nn.Sequential):
    def __init__(self, name="vgg16", batch_norm=False, num_classes=1000, in_channels=3,
                 pooling="max", dropout=0.5, rng=None):
        if name not in CONFIGS:
            raise CnnlabError(f"unknown VGG {name!r}; choose one of {', '.join(CONFIGS)}")
        rng = rng if rng is not None else np.random.default_rng()
        cfg = CONFIGS[name]
        super().__init__()
        self.features = make_features(cfg, batch_norm, in_channels, pooling, rng)
        self.avgpool = AdaptiveAvgPool7()
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096, rng=rng), nn.ReLU(), nn.Dropout(dropout, rng=rng),
            nn.Linear(4096, 4096, rng=rng), nn.ReLU(), nn.Dropout(dropout, rng=rng),
            nn.Linear(4096, num_classes, rng=rng))
        object.__setattr__(self, "arch", name + ("_bn" if batch_norm else ""))
        object.__setattr__(self, "feature_names", layer_names(cfg, batch_norm))


def vgg(name="vgg16", batch_norm=False, num_classes=1000, seed=0, **kw) -> VGG:
    return VGG(name, batch_norm, num_classes, rng=np.random.default_rng(seed), **kw)
