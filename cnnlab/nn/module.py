"""Module: the base of every layer and container.

A module owns its parameters (:class:`Parameter`), its buffers (running statistics) and the
cache of its last forward. ``forward(x)`` computes and remembers what ``backward(dout)``
needs; ``backward`` returns the input gradient and accumulates parameter gradients.
Switches are explicit and separate: ``train()``/``eval()`` set the mode, ``freeze()`` marks
parameters frozen, ``set_rng(rng)`` hands the generator to stochastic layers.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from ..backend import get_xp, to_device
from ..errors import CnnlabError
from .parameter import Parameter


def _like(current, value):
    """``value`` as a fresh array with ``current``'s dtype on ``current``'s device (a GPU
    array loads into a CPU module and the other way round)."""
    xp = get_xp(current)
    if xp is np:
        value = to_device(value, "cpu")
    return xp.asarray(value, dtype=current.dtype).copy()


class Module:
    def __init__(self):
        object.__setattr__(self, "_params", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        self.training = True
        #: False when nothing upstream needs this module's input gradient (e.g. the first layer).
        self.need_input_grad = True

    # -- registration -------------------------------------------------------------------
    def __setattr__(self, name, value):
        if isinstance(value, Parameter):
            self._params[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        elif name in self._buffers:
            self._buffers[name] = value
        object.__setattr__(self, name, value)

    def register_buffer(self, name: str, array) -> None:
        """A state array that is saved in state_dict but not trained (e.g. running_mean)."""
        self._buffers[name] = array
        object.__setattr__(self, name, array)

    # -- computation --------------------------------------------------------------------
    def forward(self, x):
        raise NotImplementedError

    def backward(self, dout):
        raise NotImplementedError(f"{type(self).__name__} has no backward")

    def array_module(self):
        """numpy or cupy: where this module's parameters live (numpy without parameters);
        callers move inputs there (``xp.asarray(x)``)."""
        for p in self.parameters():
            return get_xp(p.data)
        return np

    def _in_weight_dtype(self, x):
        """``x`` in this module's weight dtype: a layer with weights computes in their dtype
        (float32 weights, uint8 or float64 input: float32), as Conv2d, Linear and batch norm
        do; its gradients come out in that dtype too."""
        dt = self.weight.data.dtype
        return x if x.dtype == dt else x.astype(dt)

    def _take_cache(self):
        """The cache the last ``forward`` left for ``backward``, now dropped (one backward per
        forward); a CnnlabError if there is none."""
        cache = getattr(self, "_cache", None)
        if cache is None:
            raise CnnlabError(f"{type(self).__name__}.backward() needs a forward() first (one "
                              f"backward per forward)")
        self._cache = None
        return cache

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # -- traversal ----------------------------------------------------------------------
    def children(self):
        return iter(self._modules.values())

    def named_children(self):
        return iter(self._modules.items())

    def named_modules(self, prefix: str = ""):
        yield prefix, self
        for name, m in self._modules.items():
            yield from m.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self):
        return (m for _, m in self.named_modules())

    def named_parameters(self, prefix: str = ""):
        """(dotted name, Parameter), each parameter once (a module or parameter reached twice
        is listed under its first name, so an optimizer steps it once, as in PyTorch)."""
        seen = set()
        for mname, m in self.named_modules(prefix):
            for pname, p in m._params.items():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield (f"{mname}.{pname}" if mname else pname), p

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def named_buffers(self):
        for mname, m in self.named_modules():
            for bname, b in m._buffers.items():
                yield (f"{mname}.{bname}" if mname else bname), m, bname, b

    def get_submodule(self, name: str) -> "Module":
        for n, m in self.named_modules():
            if n == name:
                return m
        names = [n for n, _ in self.named_modules() if n]
        raise CnnlabError(f"no layer named {name!r}; layers are: {', '.join(names)}")

    # -- state --------------------------------------------------------------------------
    def state_dict(self) -> "OrderedDict[str, object]":
        """Parameter and buffer arrays by dotted name (PyTorch naming: ``features.0.weight``).

        The entries are the module's own arrays, not copies: parameters are updated in place
        by the optimizer (a kept state_dict follows them), while batch-norm running statistics
        are replaced by each training forward (a kept state_dict keeps the old ones). Copy the
        arrays (``{k: v.copy() for k, v in m.state_dict().items()}``) for a snapshot."""
        out = OrderedDict()
        for mname, m in self.named_modules():
            for pname, p in m._params.items():
                out[f"{mname}.{pname}" if mname else pname] = p.data
            for bname, b in m._buffers.items():
                out[f"{mname}.{bname}" if mname else bname] = b
        return out

    def load_state_dict(self, state, strict: bool = True) -> dict:
        """Copy arrays from ``state`` into this module.

        With ``strict`` any missing key, unexpected key or shape mismatch raises one
        CnnlabError listing all of them; otherwise the matching arrays are loaded and the
        problems are returned as ``{"missing": [...], "unexpected": [...], "mismatched": [...]}``.
        """
        own = OrderedDict()
        for mname, m in self.named_modules():
            for pname in m._params:
                own[f"{mname}.{pname}" if mname else pname] = (m, pname, "param")
            for bname in m._buffers:
                own[f"{mname}.{bname}" if mname else bname] = (m, bname, "buffer")
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        mismatched = []
        for k, (m, name, kind) in own.items():
            if k not in state:
                continue
            cur = m._params[name].data if kind == "param" else m._buffers[name]
            if tuple(np.shape(state[k])) != tuple(np.shape(cur)):
                mismatched.append(f"{k}: expected {tuple(np.shape(cur))}, got {tuple(np.shape(state[k]))}")
        report = {"missing": missing, "unexpected": unexpected, "mismatched": mismatched}
        if strict and (missing or unexpected or mismatched):
            parts = []
            if missing:
                parts.append(f"missing keys: {', '.join(missing)}")
            if unexpected:
                parts.append(f"unexpected keys: {', '.join(unexpected)}")
            if mismatched:
                parts.append(f"shape mismatches: {'; '.join(mismatched)}")
            raise CnnlabError("state_dict does not match the model (" + " | ".join(parts)
                              + "); pass strict=False to load what matches")
        for k, (m, name, kind) in own.items():
            if k not in state or any(s.startswith(k + ":") for s in mismatched):
                continue
            if kind == "param":
                cur = m._params[name].data
                m._params[name].data = _like(cur, state[k])
            else:
                cur = m._buffers[name]
                m.register_buffer(name, _like(cur, state[k]))
        return report

    # -- switches -----------------------------------------------------------------------
    def train(self, mode: bool = True) -> "Module":
        for m in self.modules():
            m.training = mode
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def freeze(self, until: str | None = None) -> "Module":
        """Freeze all parameters, or exactly those of the layers up to and including ``until``
        (definition order, as ``named_modules`` lists them); the later ones are unfrozen."""
        if until is None:
            for p in self.parameters():
                p.frozen = True
            return self
        self.get_submodule(until)  # raises with the list of names when unknown
        order = {n: i for i, (n, _) in enumerate(self.named_modules())}
        for name, p in self.named_parameters():
            layer = name.rsplit(".", 1)[0] if "." in name else ""
            p.frozen = (layer == until or layer.startswith(until + ".")
                        or order[layer] < order[until])
        return self

    def unfreeze(self) -> "Module":
        for p in self.parameters():
            p.frozen = False
        return self

    def set_rng(self, rng) -> "Module":
        """Give ``rng`` (a numpy Generator) to every stochastic layer (dropout, DropConnect)."""
        for m in self.modules():
            if hasattr(m, "rng"):
                m.rng = rng
        return self

    def to(self, device: str) -> "Module":
        """Move parameters and buffers to "cpu" or "gpu" (and drop what convolution layers
        keep of the old arrays: prepared weights, a training step's U)."""
        for m in self.modules():
            if hasattr(m, "clear_weight_cache"):
                m.clear_weight_cache()
        for p in self.parameters():
            p.data = to_device(p.data, device)
            p.grad = None
        for _, m, bname, b in list(self.named_buffers()):
            m.register_buffer(bname, to_device(b, device))
        return self

    def astype(self, dtype) -> "Module":
        """Cast parameters and buffers (e.g. ``np.float64`` for gradient checks)."""
        for p in self.parameters():
            p.data = p.data.astype(dtype)
            p.grad = None
        for _, m, bname, b in list(self.named_buffers()):
            m.register_buffer(bname, b.astype(dtype))
        return self

    # -- display ------------------------------------------------------------------------
    def summary(self, input_shape, batch: int = 1):
        """Per-layer output shape, parameters, multiply-adds, activation memory and receptive
        field for an input of ``input_shape`` (C, H, W) or "3x224x224"; ``str()`` is the table."""
        from ..models.summary import summarize

        return summarize(self, input_shape, batch)

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        if not self._modules:
            return f"{type(self).__name__}({self.extra_repr()})"
        lines = [f"{type(self).__name__}("]
        for name, m in self._modules.items():
            sub = repr(m).replace("\n", "\n  ")
            lines.append(f"  ({name}): {sub}")
        lines.append(")")
        return "\n".join(lines)

