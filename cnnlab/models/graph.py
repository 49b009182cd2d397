"""How a block combines its children: a tiny graph language, and a module that runs one.

    Seq(a, b, c)     y = c(b(a(x)))                    backward: the reverse chain
    Add(a, b)        y = a(x) + b(x)                   backward: da + db
    Cat(a, b)        y = cat([a(x), b(x)], axis=1)     backward: each branch gets its channels

Items are child names (str), nested Seq/Add/Cat nodes, or None for the identity. A block with
torchvision's parameter names (a ResNet ``BasicBlock``: conv1, bn1, conv2, bn2, downsample) is
then just its children plus

    def graph(self):
        return Seq(Add(Seq("conv1", "bn1", "relu1", "conv2", "bn2"), "downsample"), "relu")

and :class:`GraphModule` derives forward and backward from it. The summary
(:mod:`cnnlab.models.summary`) and the tests' PyTorch converter read the same description.
"""
from __future__ import annotations

from dataclasses import dataclass

from .. import nn
from ..backend import get_xp
from ..errors import CnnlabError


class _Node:
    __slots__ = ("items",)

    def __init__(self, *items):
        self.items = tuple(items)

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(repr(i) for i in self.items)})"

    def __eq__(self, other):
        return type(self) is type(other) and self.items == other.items

    def __hash__(self):
        return hash((type(self).__name__, self.items))


class Seq(_Node):
    """Apply the items one after another."""


class Add(_Node):
    """Sum of the items, each applied to the same input."""


class Cat(_Node):
    """Channel concatenation of the items, each applied to the same input."""


def graph_of(module):
    """How ``module`` combines its children (a Seq/Add/Cat), or None for a leaf layer."""
    if hasattr(module, "graph"):
        return module.graph()
    if isinstance(module, nn.Sequential):
        return Seq(*module._modules)
    if isinstance(module, nn.Residual):
        return Add("body", "shortcut" if "shortcut" in module._modules else None)
    if isinstance(module, nn.Concat):
        return Cat(*module._modules)
    if module._modules:
        raise CnnlabError(f"{type(module).__name__} has children but no graph(); add a graph() "
                          f"method returning Seq/Add/Cat of its child names")
    return None


@dataclass
class _Run:
    """What one forward remembers for backward: the graph and each Cat's channel counts."""

    graph: object
    channels: dict


class GraphModule(nn.Module):
    """A module whose forward/backward follow ``self.graph()`` over its named children."""

    def graph(self):
        raise NotImplementedError

    def forward(self, x):
        self._run = _Run(self.graph(), {})
        return self._forward(self._run.graph, x)

    def backward(self, dout):
        run, self._run = self._run, None
        if run is None:
            raise CnnlabError(f"{type(self).__name__}.backward called without a forward")
        return self._backward(run, run.graph, dout)

    def _forward(self, node, x):
        if node is None:
            return x
        if isinstance(node, str):
            return self._modules[node].forward(x)
        if isinstance(node, Seq):
            for item in node.items:
                x = self._forward(item, x)
            return x
        outs = [self._forward(item, x) for item in node.items]
        if isinstance(node, Add):
            y = outs[0]
            for o in outs[1:]:
                y = y + o
            return y
        self._run.channels[id(node)] = [o.shape[1] for o in outs]
        return get_xp(outs[0]).concatenate(outs, axis=1)

    def _backward(self, run, node, d):
        if node is None:
            return d
        if isinstance(node, str):
            return self._modules[node].backward(d)
        if isinstance(node, Seq):
            for item in reversed(node.items):
                d = self._backward(run, item, d)
            return d
        if isinstance(node, Add):
            grads = [self._backward(run, item, d) for item in node.items]
        else:
            grads, start = [], 0
            for item, c in zip(node.items, run.channels[id(node)]):
                grads.append(self._backward(run, item, d[:, start:start + c]))
                start += c
        dx = grads[0]
        for g in grads[1:]:
            dx = dx + g
        return dx
