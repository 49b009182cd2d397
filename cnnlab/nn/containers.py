"""Containers: Sequential chains, Residual adds a shortcut, Concat joins branches on channels.

    Sequential(m1, ..., mk):   y = mk(...m1(x)),        backward in reverse order
    Residual(body, shortcut):  y = body(x) + shortcut(x) (identity shortcut when None)
                               dx = body.backward(dy) + shortcut.backward(dy)
    Concat(b1, ..., bk):       y = cat([b1(x), ..., bk(x)], axis=1)
                               dx = sum_i bi.backward(dy[:, channels of bi])
"""
from __future__ import annotations

from collections import OrderedDict

from ..backend import get_xp
from .module import Module


class Sequential(Module):
    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], (dict, OrderedDict)):
            items = modules[0].items()
        else:
            items = ((str(i), m) for i, m in enumerate(modules))
        for name, m in items:
            setattr(self, name, m)

    def __len__(self):
        return len(self._modules)

    def __getitem__(self, i):
        if isinstance(i, str):
            return self._modules[i]
        return list(self._modules.values())[i]

    def __iter__(self):
        return iter(self._modules.values())

    def append(self, module: Module) -> "Sequential":
        setattr(self, str(len(self._modules)), module)
        return self

    def forward(self, x):
        for m in self._modules.values():
            x = m.forward(x)
        return x

    def backward(self, dout):
        mods = list(self._modules.values())
        for i in range(len(mods) - 1, -1, -1):
            if i == 0:
                mods[0].need_input_grad = self.need_input_grad
            dout = mods[i].backward(dout)
        return dout


class Residual(Module):
    def __init__(self, body: Module, shortcut: Module | None = None):
        super().__init__()
        self.body = body
        if shortcut is not None:
            self.shortcut = shortcut

    def forward(self, x):
        s = self.shortcut.forward(x) if "shortcut" in self._modules else x
        return self.body.forward(x) + s

    def backward(self, dout):
        dx = self.body.backward(dout)
        ds = self.shortcut.backward(dout) if "shortcut" in self._modules else dout
        return dx + ds


class Concat(Module):
    def __init__(self, *branches: Module):
        super().__init__()
        for i, b in enumerate(branches):
            setattr(self, str(i), b)

    def forward(self, x):
        outs = [b.forward(x) for b in self._modules.values()]
        self._channels = [o.shape[1] for o in outs]
        return get_xp(outs[0]).concatenate(outs, axis=1)

    def backward(self, dout):
        dx, start = None, 0
        for b, c in zip(self._modules.values(), self._channels):
            g = b.backward(dout[:, start:start + c])
            dx = g if dx is None else dx + g
            start += c
        return dx
