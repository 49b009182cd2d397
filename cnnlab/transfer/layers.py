"""Naming layers and setting per-layer learning rates for transfer learning.

Layers are named as ``named_modules`` names them (``features.28``, ``layer4.1.conv2``,
``fc``). Flat Sequential models also answer to conventional aliases counted by type
(``conv1, relu1, pool1, conv2, ..., flatten, fc1, relu3, dropout1, fc2, ...``); VGG answers to
its ``feature_names`` (``conv5_3``, ``pool5``). ``resolve_layer`` accepts either.

Per-layer learning rates: every Parameter has ``lr_mult``; the optimizer uses lr * lr_mult.
``set_lr_mult(model, {"fc*": 0.1, "conv*": 0.01})`` sets it by glob patterns over layer names
and aliases (the first matching pattern wins; unmatched parameters keep theirs or get
``default``).
"""
from __future__ import annotations

import fnmatch
from collections import OrderedDict

from .. import nn
from ..errors import CnnlabError

_KIND = [(nn.Conv2d, "conv"), (nn.Linear, "fc"), (nn.BatchNorm1d, "bn"), (nn.BatchNorm2d, "bn"),
         (nn.ReLU, "relu"), (nn.LeakyReLU, "relu"), (nn.Sigmoid, "sigmoid"), (nn.Tanh, "tanh"),
         (nn.MaxPool2d, "pool"), (nn.GlobalAvgPool2d, "pool"), (nn.Dropout, "dropout"),
         (nn.Flatten, "flatten")]


def _kind(m) -> str | None:
    for t, k in _KIND:
        if isinstance(m, t):
            return k
    return None


def layer_aliases(model) -> "OrderedDict[str, str]":
    """alias -> dotted layer name, for models whose own names are bare indices."""
    out = OrderedDict()
    names = getattr(model, "feature_names", None)
    if names and "features" in model._modules:
        for i, alias in enumerate(names):
            out[alias] = f"features.{i}"
    if isinstance(model, nn.Sequential) and all(k.isdigit() for k in model._modules) \
            and all(not m._modules for m in model.children()):
        counts = {}
        for key, m in model.named_children():
            k = _kind(m)
            if k is None:
                continue
            counts[k] = counts.get(k, 0) + 1
            out[k if k == "flatten" else f"{k}{counts[k]}"] = key
    return out


def resolve_layer(model, name: str) -> str:
    """The dotted name of layer ``name`` (a dotted name or an alias); raises listing the names."""
    own = dict(model.named_modules())
    if name in own and name:
        return name
    aliases = layer_aliases(model)
    if name in aliases:
        return aliases[name]
    listed = [n for n in own if n] + [f"{a} (= {d})" for a, d in aliases.items()]
    raise CnnlabError(f"no layer named {name!r}; layers are: {', '.join(listed)}")


def display_names(model) -> dict:
    """dotted name -> alias (for printing), where an alias exists."""
    return {d: a for a, d in layer_aliases(model).items()}


def parameter_layers(model) -> "OrderedDict[str, list]":
    """Layers that own parameters, in definition order: layer name -> [(param name, Parameter)]."""
    out = OrderedDict()
    for name, p in model.named_parameters():
        layer = name.rsplit(".", 1)[0] if "." in name else ""
        out.setdefault(layer, []).append((name, p))
    return out


def set_lr_mult(model, rules, default: float | None = None) -> "OrderedDict[str, float]":
    """Set ``lr_mult`` of every parameter by glob patterns over its layer name, its alias or the
    parameter name (``{"fc3": 1.0, "fc*": 0.1, "*": 0.01}``; first match wins). Parameters that
    no pattern matches get ``default`` (or keep their multiplier when it is None).
    Returns parameter name -> the multiplier it now has."""
    rules = list(rules.items()) if isinstance(rules, dict) else list(rules)
    alias = display_names(model)
    used, out = set(), OrderedDict()      # used: patterns matching some layer (won or not)
    for layer, params in parameter_layers(model).items():
        keys = [layer] + ([alias[layer]] if layer in alias else [])
        for pname, p in params:
            matching = [(pattern, mult) for pattern, mult in rules
                        if any(fnmatch.fnmatchcase(k, pattern) for k in keys + [pname])]
            used.update(pattern for pattern, _ in matching)
            if matching:
                p.lr_mult = float(matching[0][1])
            elif default is not None:
                p.lr_mult = float(default)
            out[pname] = p.lr_mult
    unused = [pat for pat, _ in rules if pat not in used]
    if unused:
        raise CnnlabError(f"lr_mult pattern(s) {', '.join(map(repr, unused))} match no layer; "
                          f"layers with parameters: {', '.join(_with_alias(model))}")
    return out


def _with_alias(model):
    alias = display_names(model)
    return [f"{l} ({alias[l]})" if l in alias else l for l in parameter_layers(model)]


def freeze_until(model, layer: str):
    """Freeze every parameter up to and including layer ``layer`` (a name or alias); the later
    ones train. Returns the dotted name. (Module.freeze with alias resolution.)"""
    name = resolve_layer(model, layer)
    model.freeze(until=name)
    return name


def train_from(model, layer: str):
    """Train layer ``layer`` and everything after it; freeze everything before it."""
    name = resolve_layer(model, layer)
    order = [n for n, _ in model.named_modules()]
    idx = order.index(name)
    earlier = [n for n in order[:idx] if n and not name.startswith(n + ".")]
    model.unfreeze()
    if earlier:
        model.freeze(until=earlier[-1])
        # a parent container listed before ``name`` must not freeze ``name`` itself
        for pname, p in model.named_parameters():
            if pname.startswith(name + "."):
                p.frozen = False
    return name


def trainable_summary(model) -> "OrderedDict[str, tuple]":
    """layer -> (number of parameters, frozen?, lr_mult) for every layer with parameters."""
    out = OrderedDict()
    for layer, params in parameter_layers(model).items():
        n = sum(int(p.data.size) for _, p in params)
        out[layer] = (n, all(p.frozen for _, p in params), params[0][1].lr_mult)
    return out
