"""Every model cnnlab can build by name, with the input it is meant for.

``get_model(name, num_classes=None, in_channels=None, seed=0)`` builds one;
``default_input(name)`` is its (C, H, W); ``model_names()`` lists them. Used by
``cnnlab summary`` and by the model zoo to rebuild an architecture from a checkpoint.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .. import nn
from ..errors import CnnlabError
from .inception import InceptionBlock, inception_net
from .nin import nin as nin_net
from .resnet import DEPTHS as RESNET_DEPTHS
from .resnet import ResNet
from .small import lenet, lenet_dropconnect, lenet_dropout, lenet_plain, seed_net, small_vgg
from .vgg import CONFIGS as VGG_CONFIGS
from .vgg import VGG


@dataclass(frozen=True)
class ModelSpec:
    name: str
    build: Callable          # build(in_channels, num_classes, input_size, rng) -> Module
    input_shape: tuple       # (C, H, W) the architecture is designed for
    num_classes: int
    description: str


MODELS: "OrderedDict[str, ModelSpec]" = OrderedDict()


def register_model(name, build, input_shape, num_classes, description=""):
    MODELS[name] = ModelSpec(name, build, tuple(input_shape), num_classes, description)


def model_names() -> list[str]:
    return list(MODELS)


def _spec(name) -> ModelSpec:
    if name not in MODELS:
        raise CnnlabError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name]


def default_input(name: str) -> tuple:
    return _spec(name).input_shape


def get_model(name: str, num_classes=None, in_channels=None, input_size=None, seed=0) -> nn.Module:
    """Build model ``name`` with weights from ``numpy.random.default_rng(seed)``."""
    spec = _spec(name)
    for what, value in (("num_classes", num_classes), ("in_channels", in_channels),
                        ("input_size", input_size)):
        if value is not None and value < 1:
            raise CnnlabError(f"{what} must be at least 1, got {value}")
    rng = np.random.default_rng(seed)
    c = spec.input_shape[0] if in_channels is None else in_channels
    model = spec.build(c, spec.num_classes if num_classes is None else num_classes,
                       spec.input_shape[1] if input_size is None else input_size, rng)
    model.set_rng(rng)
    object.__setattr__(model, "arch", name)
    return model


def small_filters_net(in_channels=1, num_classes=10, input_size=28, rng=None, kind="3x3",
                      width=32):
    """The small-filters comparison. A common stem (3x3 conv in_channels -> width, ReLU, 2x2 max
    pool), then the block under test, width -> width channels with a 7x7 receptive field:
    one 7x7 conv (``kind="7x7"``: 49 C^2 weights) or three 3x3 convs (``"3x3"``: 27 C^2), each
    followed by ReLU; then 2x2 max pool -> flatten -> fc. x: (N, C, H, W) -> (N, num_classes)."""
    rng = rng if rng is not None else np.random.default_rng()
    w = width
    layers = OrderedDict(conv0=nn.Conv2d(in_channels, w, 3, padding=1, rng=rng), relu0=nn.ReLU(),
                         pool0=nn.MaxPool2d(2))
    if kind == "7x7":
        layers["conv1"] = nn.Conv2d(w, w, 7, padding=3, rng=rng)
        layers["relu1"] = nn.ReLU()
    elif kind == "3x3":
        for i in (1, 2, 3):
            layers[f"conv1_{i}"] = nn.Conv2d(w, w, 3, padding=1, rng=rng)
            layers[f"relu1_{i}"] = nn.ReLU()
    else:
        raise CnnlabError(f"kind must be '7x7' or '3x3', got {kind!r}")
    side = input_size // 4
    layers.update(pool1=nn.MaxPool2d(2), flatten=nn.Flatten(),
                  fc=nn.Linear(w * side * side, num_classes, rng=rng))
    return nn.Sequential(layers)


def _small(fn):
    return lambda c, k, s, rng: fn(in_channels=c, num_classes=k, input_size=s, rng=rng)


for _name, _fn, _desc in (("seed_net", seed_net, "the seed's 3-layer net"),
                          ("lenet", lenet, "LeNet-5 style, 16/32 filters"),
                          ("lenet_plain", lenet_plain, "LeNet without dropout"),
                          ("lenet_dropout", lenet_dropout, "LeNet, dropout 0.5 after fc1"),
                          ("lenet_dropconnect", lenet_dropconnect,
                           "LeNet, DropConnect 0.5 on fc2 instead of dropout"),
                          ("small_vgg", small_vgg, "VGG-style with batch norm, 32/64 channels"),
                          ("nin", nin_net, "Network in Network (mlpconv + global average pool)"),
                          ("inception_net", inception_net,
                           "stem + one Inception block (3x3 factorized as 1x3 + 3x1)")):
    register_model(_name, _small(_fn), (1, 28, 28), 10, _desc)
register_model("small_filters_7x7",
               lambda c, k, s, rng: small_filters_net(c, k, s, rng, kind="7x7"), (1, 28, 28), 10,
               "stem, one 7x7 conv C -> C, pool, fc")
register_model("small_filters_3x3",
               lambda c, k, s, rng: small_filters_net(c, k, s, rng, kind="3x3"), (1, 28, 28), 10,
               "stem, three 3x3 convs C -> C (7x7 field), pool, fc")

for _v in VGG_CONFIGS:
    for _bn in (False, True):
        register_model(_v + ("_bn" if _bn else ""),
                       (lambda v, bn: lambda c, k, s, rng: VGG(v, bn, k, in_channels=c, rng=rng))(_v, _bn),
                       (3, 224, 224), 1000, f"{_v.upper()}{' with batch norm' if _bn else ''}, "
                       f"torchvision layout")
for _r in RESNET_DEPTHS:
    register_model(_r, (lambda r: lambda c, k, s, rng: ResNet(r, k, c, rng=rng))(_r),
                   (3, 224, 224), 1000, f"{_r} (torchvision layout)")
    register_model(_r + "_small",
                   (lambda r: lambda c, k, s, rng: ResNet(r, k, c, stem="small", rng=rng))(_r),
                   (1, 28, 28), 10, f"{_r} with a 3x3 stem for 28x28 / 32x32 inputs")
register_model("inception_block", lambda c, k, s, rng: InceptionBlock(c, 128, rng=rng),
               (768, 17, 17), 0, "one Inception-v3 block (torchvision InceptionC(768, 128))")
