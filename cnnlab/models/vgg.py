"""VGG-11/13/16/19 (Simonyan & Zisserman 2015), with and without batch norm.

Layout and parameter names follow torchvision, so its state_dicts load directly:
    features    Sequential of Conv2d(3x3, pad 1) [-> BatchNorm2d] -> ReLU ... MaxPool2d(2)
    avgpool     adaptive average pool to 7x7 (an identity at 224x224 input; any size >= 32 works)
    classifier  Linear(512*7*7, 4096) -> ReLU -> Dropout -> Linear(4096, 4096) -> ReLU
                -> Dropout -> Linear(4096, num_classes)
x: (N, 3, H, W) -> (N, num_classes). ``layer_names(cfg)`` gives the conventional names
(conv1_1, relu1_1, ..., pool5) of the entries of ``features``.
"""
from __future__ import annotations

import numpy as np

from .. import nn
from ..backend import get_xp
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


def adaptive_windows(size: int, out: int) -> list[tuple[int, int]]:
    """PyTorch's adaptive pooling windows along one axis: [floor(i*size/out), ceil((i+1)*size/out))."""
    return [((i * size) // out, -(-((i + 1) * size) // out)) for i in range(out)]


class AdaptiveAvgPool2d(nn.Module):
    """Average-pool (N, C, H, W) to (N, C, OH, OW) with PyTorch's adaptive windows: output cell
    (i, j) is the mean of rows [floor(i H/OH), ceil((i+1) H/OH)) and the same for columns, so
    any H, W work (smaller maps are repeated, e.g. 1x1 -> 7x7). Backward spreads each output
    gradient evenly over its window. When OH divides H and OW divides W this is a plain
    average pool (the identity at H = OH)."""

    def __init__(self, output_size=7):
        super().__init__()
        self.size = output_size
        self.output_size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)

    def forward(self, x):
        if x.ndim != 4:
            raise ShapeError(f"AdaptiveAvgPool2d expects (N, C, H, W), got {tuple(x.shape)}")
        n, c, h, w = x.shape
        oh, ow = self.output_size
        self._shape = x.shape
        if (h, w) == (oh, ow):
            return x
        if h % oh == 0 and w % ow == 0:
            return x.reshape(n, c, oh, h // oh, ow, w // ow).mean(axis=(3, 5))
        out = get_xp(x).empty((n, c, oh, ow), dtype=x.dtype)
        for i, (r0, r1) in enumerate(adaptive_windows(h, oh)):
            for j, (c0, c1) in enumerate(adaptive_windows(w, ow)):
                out[:, :, i, j] = x[:, :, r0:r1, c0:c1].mean(axis=(2, 3))
        return out

    def backward(self, dout):
        n, c, h, w = self._shape
        oh, ow = self.output_size
        if (h, w) == (oh, ow):
            return dout
        xp = get_xp(dout)
        if h % oh == 0 and w % ow == 0:
            kh, kw = h // oh, w // ow
            d = dout[:, :, :, None, :, None] / (kh * kw)
            return xp.broadcast_to(d, (n, c, oh, kh, ow, kw)).reshape(n, c, h, w).copy()
        dx = xp.zeros(self._shape, dtype=dout.dtype)
        for i, (r0, r1) in enumerate(adaptive_windows(h, oh)):
            for j, (c0, c1) in enumerate(adaptive_windows(w, ow)):
                area = (r1 - r0) * (c1 - c0)
                dx[:, :, r0:r1, c0:c1] += dout[:, :, i:i + 1, j:j + 1] / area
        return dx

    def extra_repr(self):
        return f"output_size={self.output_size}"


class AdaptiveAvgPool7(AdaptiveAvgPool2d):
    """VGG's ``avgpool``: adaptive average pooling to 7x7 (an identity at 224x224 input)."""

    def __init__(self, size=7):
        super().__init__(size)


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
