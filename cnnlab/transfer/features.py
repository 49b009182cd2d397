"""Feature extraction: the output of any named layer of a network, for a batch or a data set.

``extract_features(model, x, layer)`` runs the model in eval mode on x (N, C, H, W), in
batches, and returns the output of ``layer`` (a dotted name or an alias: ``fc2``, ``conv5_3``,
``layer4``), flattened to (N, D) unless ``flatten=False``. The forward pass stops at that
layer, so nothing after it is computed. Modes are restored afterwards.
"""
from __future__ import annotations

import numpy as np

from ..backend import to_numpy
from ..errors import CnnlabError
from .layers import resolve_layer


class _Reached(Exception):
    def __init__(self, out):
        super().__init__()
        self.out = out


def _tap(module):
    """Make ``module`` raise _Reached with its output (undone by deleting the attribute)."""
    inner = type(module).forward

    def forward(x):
        raise _Reached(inner(module, x))
    object.__setattr__(module, "forward", forward)


def layer_output(model, x, layer: str):
    """The output of ``layer`` for one batch x, without running the layers after it."""
    name = resolve_layer(model, layer)
    target = model.get_submodule(name)
    _tap(target)
    try:
        model.forward(x)
    except _Reached as r:
        return r.out
    finally:
        object.__delattr__(target, "forward")
    raise CnnlabError(f"layer {name!r} was not reached by the forward pass")


def extract_features(model, x, layer: str | None = None, batch_size: int = 256,
                     flatten: bool = True, progress=None) -> np.ndarray:
    """Outputs of ``layer`` (None: the model's output) for x (N, ...) -> (N, D) float32
    (or the layer's own shape with ``flatten=False``). Eval mode; modes restored after."""
    if len(x) == 0:
        raise CnnlabError("no images to extract features from")
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    parts = []
    try:
        for start in range(0, len(x), batch_size):
            xb = x[start:start + batch_size]
            out = model.forward(xb) if layer is None else layer_output(model, xb, layer)
            parts.append(to_numpy(out).astype(np.float32, copy=False))
            if progress is not None:
                progress(len(xb))
    finally:
        for m, t in modes:
            m.training = t
    feats = np.concatenate(parts)
    return feats.reshape(len(feats), -1) if flatten else feats


def extract_many(model, x, layers, batch_size: int = 256) -> dict:
    """{layer: (N, D) float32 features} for several layers, one forward pass per batch that
    stops after the deepest of them."""
    names = {l: resolve_layer(model, l) for l in layers}
    order = [n for n, _ in model.named_modules()]
    deepest = max(names.values(), key=order.index)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    parts = {l: [] for l in layers}
    try:
        for start in range(0, len(x), batch_size):
            xb = x[start:start + batch_size]
            seen = {}
            wrapped = []
            for n in set(names.values()):
                module = model.get_submodule(n)
                _record(module, seen, n, stop=(n == deepest))
                wrapped.append(module)
            try:
                model.forward(xb)
            except _Reached:
                pass
            finally:
                for module in wrapped:
                    object.__delattr__(module, "forward")
            for l, n in names.items():
                if n not in seen:
                    raise CnnlabError(f"layer {l!r} was not reached by the forward pass")
                out = np.asarray(seen[n], dtype=np.float32)
                parts[l].append(out.reshape(len(out), -1))
    finally:
        for m, t in modes:
            m.training = t
    return {l: np.concatenate(p) for l, p in parts.items()}


def _record(module, seen, name, stop=False):
    """Make ``module.forward`` store its output in ``seen[name]`` (and stop the pass)."""
    inner = type(module).forward

    def forward(x):
        out = inner(module, x)
        seen[name] = out
        if stop:
            raise _Reached(out)
        return out
    object.__setattr__(module, "forward", forward)
