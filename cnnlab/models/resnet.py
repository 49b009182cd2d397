"""ResNet (He et al. 2016): basic and bottleneck residual blocks, ResNet-18/34/50.

Layout and parameter names follow torchvision, so its state_dicts load directly
(``conv1.weight``, ``bn1.running_mean``, ``layer1.0.conv1.weight``, ``layer2.0.downsample.0.weight``,
``fc.bias``; torchvision's ``num_batches_tracked`` counters are handled by cnnlab.zoo):

    BasicBlock   y = relu(bn2(conv2(relu(bn1(conv1(x))))) + s(x))          conv 3x3, 3x3
    Bottleneck   y = relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))) + s(x))
                 conv1 1x1 C -> w, conv2 3x3 w -> w (carries the stride, "ResNet v1.5"),
                 conv3 1x1 w -> 4 * planes
    s(x)         x, or ``downsample`` = 1x1 conv (stride) -> BN when the shape changes

    ResNet       conv1 7x7/2 (3 -> 64) -> bn1 -> relu -> maxpool 3x3/2 -> layer1..layer4
                 (64, 128, 256, 512 planes; stride 2 from layer2 on) -> avgpool (global)
                 -> flatten -> fc.   x: (N, 3, H, W) -> (N, num_classes)

Convolutions have no bias (batch norm follows each one), as in torchvision.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .. import nn
from ..errors import CnnlabError
from .graph import Add, GraphModule, Seq


def conv_bn(in_channels, out_channels, kernel_size, stride=1, padding=0, rng=None):
    """The two modules of a conv without bias followed by batch norm: (conv, bn)."""
    return (nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False, rng=rng),
            nn.BatchNorm2d(out_channels))


def downsample(in_channels, out_channels, stride=1, rng=None) -> nn.Sequential:
    """The projection shortcut: 1x1 conv with ``stride`` -> BN (torchvision ``downsample``)."""
    return nn.Sequential(*conv_bn(in_channels, out_channels, 1, stride, 0, rng))


class BasicBlock(GraphModule):
    """Two 3x3 convs with a shortcut; (N, C, H, W) -> (N, planes, H/stride, W/stride)."""

    expansion = 1

    def __init__(self, in_channels, planes, stride=1, rng=None):
        super().__init__()
        self.conv1, self.bn1 = conv_bn(in_channels, planes, 3, stride, 1, rng)
        self.relu1 = nn.ReLU()
        self.conv2, self.bn2 = conv_bn(planes, planes, 3, 1, 1, rng)
        if stride != 1 or in_channels != planes:
            self.downsample = downsample(in_channels, planes, stride, rng)
        self.relu = nn.ReLU()

    def graph(self):
        body = Seq("conv1", "bn1", "relu1", "conv2", "bn2")
        return Seq(Add(body, "downsample" if "downsample" in self._modules else None), "relu")


class Bottleneck(GraphModule):
    """1x1 (reduce to ``width``) -> 3x3 (stride) -> 1x1 (expand to 4 * planes), with a shortcut."""

    expansion = 4

    def __init__(self, in_channels, planes, stride=1, width=None, rng=None):
        super().__init__()
        width = width or planes
        out = planes * self.expansion
        self.conv1, self.bn1 = conv_bn(in_channels, width, 1, 1, 0, rng)
        self.relu1 = nn.ReLU()
        self.conv2, self.bn2 = conv_bn(width, width, 3, stride, 1, rng)
        self.relu2 = nn.ReLU()
        self.conv3, self.bn3 = conv_bn(width, out, 1, 1, 0, rng)
        if stride != 1 or in_channels != out:
            self.downsample = downsample(in_channels, out, stride, rng)
        self.relu = nn.ReLU()

    def graph(self):
        body = Seq("conv1", "bn1", "relu1", "conv2", "bn2", "relu2", "conv3", "bn3")
        return Seq(Add(body, "downsample" if "downsample" in self._modules else None), "relu")


DEPTHS = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
}


def make_layer(block, in_channels, planes, blocks, stride=1, rng=None) -> nn.Sequential:
    """``blocks`` residual blocks; the first carries the stride (and the projection)."""
    layers = [block(in_channels, planes, stride, rng=rng)]
    layers += [block(planes * block.expansion, planes, 1, rng=rng) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ResNet(nn.Sequential):
    def __init__(self, name="resnet18", num_classes=1000, in_channels=3, widths=(64, 128, 256, 512),
                 stem="imagenet", rng=None):
        """``stem="imagenet"``: 7x7/2 conv + 3x3/2 max pool (224x224 inputs); ``"small"``: one
        3x3/1 conv and no pooling (28x28 or 32x32 inputs); names and later layers unchanged."""
        if name not in DEPTHS:
            raise CnnlabError(f"unknown ResNet {name!r}; choose one of {', '.join(DEPTHS)}")
        if stem not in ("imagenet", "small"):
            raise CnnlabError(f"stem must be 'imagenet' or 'small', got {stem!r}")
        rng = rng if rng is not None else np.random.default_rng()
        block, counts = DEPTHS[name]
        layers = OrderedDict()
        if stem == "imagenet":
            layers["conv1"], layers["bn1"] = conv_bn(in_channels, widths[0], 7, 2, 3, rng)
        else:
            layers["conv1"], layers["bn1"] = conv_bn(in_channels, widths[0], 3, 1, 1, rng)
        layers["relu"] = nn.ReLU()
        if stem == "imagenet":
            layers["maxpool"] = nn.MaxPool2d(3, 2, 1)
        c = widths[0]
        for i, (w, n) in enumerate(zip(widths, counts)):
            layers[f"layer{i + 1}"] = make_layer(block, c, w, n, 1 if i == 0 else 2, rng)
            c = w * block.expansion
        layers["avgpool"] = nn.GlobalAvgPool2d()
        layers["flatten"] = nn.Flatten()
        layers["fc"] = nn.Linear(c, num_classes, rng=rng)
        super().__init__(layers)
        object.__setattr__(self, "arch", name)


def resnet(name="resnet18", num_classes=1000, seed=0, **kw) -> ResNet:
    """ResNet-18/34/50 with weights drawn from ``numpy.random.default_rng(seed)``."""
    return ResNet(name, num_classes, rng=np.random.default_rng(seed), **kw)


def resnet18(num_classes=1000, seed=0, **kw) -> ResNet:
    return resnet("resnet18", num_classes, seed, **kw)


def resnet34(num_classes=1000, seed=0, **kw) -> ResNet:
    return resnet("resnet34", num_classes, seed, **kw)


def resnet50(num_classes=1000, seed=0, **kw) -> ResNet:
    return resnet("resnet50", num_classes, seed, **kw)
