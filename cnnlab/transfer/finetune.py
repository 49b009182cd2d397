"""Finetuning a pretrained network on new data: a new head, frozen early layers, and smaller
learning rates for the pretrained layers that do train.

    model, info = cnnlab.zoo.resolve("lenet-mnist-5k-digits0-4")
    head = replace_head(model, num_classes=5, rng=rng)           # fresh last layer
    result = finetune(model, train_ds, test_ds, mean=..., std=..., train_from="fc1",
                      lr=1e-3, lr_mult={"fc3": 1.0, "fc*": 0.1})

The slides' rule of thumb for the learning rates: the new head trains at the base rate, the
pretrained top layers at ~1/10 of it and the intermediate layers at ~1/100
(:func:`slide_lr_mults`). Layers before ``train_from`` are frozen (their parameters are not
updated; note that a frozen batch norm in train mode still normalises with batch statistics).
Training is cnnlab.train.Trainer's, so runs write the usual checkpoints and metrics.json,
and ``cnnlab eval`` works on them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import nn
from ..errors import CnnlabError
from .layers import parameter_layers, resolve_layer, set_lr_mult, train_from as _train_from


def find_head(model) -> str:
    """The dotted name of the last layer with parameters (Linear or Conv2d): the classifier."""
    last = None
    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            last = name
    if last is None:
        raise CnnlabError("the model has no Linear or Conv2d layer to use as its head")
    return last


def _parent(model, name):
    if "." in name:
        parent_name, key = name.rsplit(".", 1)
        return model.get_submodule(parent_name), key
    return model, name


def replace_head(model, num_classes: int, rng=None, head: str | None = None) -> str:
    """Replace the classifier (``head`` or the last Linear/Conv2d) by a freshly initialised
    layer with ``num_classes`` outputs and the same inputs. Returns its dotted name."""
    name = head or find_head(model)
    old = model.get_submodule(name)
    rng = rng if rng is not None else np.random.default_rng()
    dtype = old.weight.data.dtype
    if isinstance(old, nn.Linear):
        new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None, rng=rng, dtype=dtype)
    elif isinstance(old, nn.Conv2d):
        new = nn.Conv2d(old.in_channels, num_classes, old.kernel_size, old.stride, old.padding,
                        old.dilation, 1, old.bias is not None, old.algo, rng, dtype)
    else:
        raise CnnlabError(f"layer {name!r} is a {type(old).__name__}; the head must be Linear or Conv2d")
    parent, key = _parent(model, name)
    setattr(parent, key, new)
    return name


def slide_lr_mults(model, train_from: str, head: str, top: str | None = None,
                   top_mult: float = 0.1, intermediate_mult: float = 0.01) -> dict:
    """lr multipliers for finetuning from ``train_from`` on: the new ``head`` 1, the pretrained
    layers from ``top`` (default: the layer with parameters just before the head) up to the
    head ``top_mult``, the earlier trainable ones ``intermediate_mult``.
    Returns {layer name: multiplier} (pass to set_lr_mult)."""
    layers = list(parameter_layers(model))
    head = resolve_layer(model, head)
    start = resolve_layer(model, train_from)
    if head not in layers:
        raise CnnlabError(f"head {head!r} has no parameters")
    hi = layers.index(head)
    top_name = resolve_layer(model, top) if top else (layers[hi - 1] if hi > 0 else head)
    order = [n for n, _ in model.named_modules()]
    first = next((i for i, l in enumerate(layers) if order.index(l) >= order.index(start)), hi)
    ti = layers.index(top_name) if top_name in layers else hi
    out = {}
    for i, l in enumerate(layers):
        if i < first:
            continue
        out[l] = 1.0 if i == hi else top_mult if i >= ti else intermediate_mult
    return out


@dataclass
class FinetuneResult:
    test_acc: float
    train_acc: float
    seconds: float
    history: list
    head: str
    trainable: int


def finetune(model, train_ds, test_ds=None, *, mean=None, std=None, train_from: str | None = None,
             lr: float = 1e-3, lr_mult: dict | None = None, epochs: int = 10, batch_size: int = 64,
             optimizer: str = "adam", weight_decay: float = 0.0, schedule: str = "cosine",
             seed: int = 0, out_dir=None, transform=None, config: dict | None = None,
             progress: bool = False, log=None, eval_each_epoch: bool = True) -> FinetuneResult:
    """Train ``model`` (already with its new head) on ``train_ds`` with cnnlab.train.Trainer.

    train_from: layer name or alias; the layers before it are frozen (None: train all).
    lr_mult: {layer pattern: multiplier} for set_lr_mult (unmatched layers: 1).
    mean/std: the pretrained network's input normalisation (keep it; None: the new data's).
    eval_each_epoch: evaluate ``test_ds`` after every epoch (False: once, at the end).
    """
    from ..optim import make_optimizer, make_schedule
    from ..train import Trainer

    model.unfreeze()
    if train_from is not None:
        _train_from(model, train_from)
    for p in model.parameters():
        p.lr_mult = 1.0
    if lr_mult:
        set_lr_mult(model, lr_mult)
    trainable = [p for p in model.parameters() if not p.frozen]
    if not trainable:
        raise CnnlabError("nothing to train: every parameter is frozen")
    opt = make_optimizer(optimizer, trainable, lr, weight_decay)
    steps = epochs * -(-len(train_ds) // batch_size)
    sched = make_schedule(schedule, steps)
    trainer = Trainer(model, optimizer=opt, schedule=sched, out_dir=out_dir, seed=seed,
                      batch_size=batch_size, epochs=epochs, progress=progress,
                      transform=transform, normalize=True, mean=mean, std=std,
                      config=config, log=log)
    trainer.fit(train_ds, test_ds if eval_each_epoch else None)
    last = trainer.history[-1]
    test_acc = float(last["test_acc"])
    if test_ds is not None and not eval_each_epoch:
        test_acc = trainer.evaluate(test_ds)[1]
    return FinetuneResult(test_acc, float(last["train_acc"]),
                          float(trainer.elapsed), trainer.history, find_head(model),
                          sum(int(p.data.size) for p in trainable))
