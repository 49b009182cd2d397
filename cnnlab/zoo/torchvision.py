"""PyTorch / torchvision state_dicts in and out of cnnlab models (torch never imported).

cnnlab's VGG (``features.N``, ``classifier.N``), ResNet (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer2.0.downsample.0``, ``fc``) and Inception blocks use torchvision's module tree and
names, so a torchvision state_dict maps key for key. The one difference: torchvision batch
norms carry a ``num_batches_tracked`` counter that cnnlab does not use. On import those
counters are set aside on the model (``model.torch_extra``) and on export they are written
back (0 for layers that never had one), so a state_dict round-trips exactly.

    model = load_torchvision("vgg16-397923af.pth")            # architecture detected
    import_state_dict(model, torch_model.state_dict())        # tensors or arrays
    sd = export_state_dict(model)                              # {name: numpy array}
    torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})

Missing, unexpected and mismatched keys are reported together in one error
(``strict=False`` returns them instead), via ``Module.load_state_dict``.
"""
from __future__ import annotations

import os
import re
from collections import OrderedDict

import numpy as np

from .. import nn
from ..errors import CnnlabError, FileFormatError

COUNTER = "num_batches_tracked"

VGG_DEPTHS = {8: "vgg11", 10: "vgg13", 13: "vgg16", 16: "vgg19"}
RESNET_DEPTHS = {("basic", 2): "resnet18", ("basic", 6): "resnet34", ("bottleneck", 6): "resnet50"}


def _as_numpy(value):
    """A numpy copy of a numpy array, torch tensor (via __array__/numpy()) or number."""
    if hasattr(value, "detach"):            # a torch tensor: no import of torch needed
        value = value.detach().cpu().numpy()
    return np.array(value, copy=True)


def _batchnorm_prefixes(model) -> list[str]:
    return [name for name, m in model.named_modules()
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]


def import_state_dict(model, state, strict: bool = True) -> dict:
    """Load a PyTorch-style state_dict (tensors or arrays) into ``model``.

    ``<bn>.num_batches_tracked`` entries of the model's batch norms are kept aside in
    ``model.torch_extra`` (for export); everything else must match (see
    Module.load_state_dict). Returns the report {"missing", "unexpected", "mismatched"}.
    """
    bns = set(_batchnorm_prefixes(model))
    arrays, extra = OrderedDict(), OrderedDict()
    for k, v in state.items():
        prefix, _, leaf = k.rpartition(".")
        if leaf == COUNTER and prefix in bns:
            extra[k] = _as_numpy(v)
        else:
            arrays[k] = _as_numpy(v)
    report = model.load_state_dict(arrays, strict=strict)
    object.__setattr__(model, "torch_extra", extra)
    return report


def export_state_dict(model, counters: bool = True) -> "OrderedDict[str, np.ndarray]":
    """{name: numpy array} in PyTorch's key order, ready for ``torch_model.load_state_dict``
    (wrap each with ``torch.from_numpy``). With ``counters`` each batch norm gets its
    ``num_batches_tracked`` (int64 scalar) after ``running_var``, as torch writes it."""
    extra = getattr(model, "torch_extra", {}) or {}
    bns = set(_batchnorm_prefixes(model)) if counters else set()
    out = OrderedDict()
    for k, v in model.state_dict().items():
        out[k] = np.array(v, copy=True)
        prefix, _, leaf = k.rpartition(".")
        if leaf == "running_var" and prefix in bns:
            key = f"{prefix}.{COUNTER}"
            out[key] = np.array(extra.get(key, np.array(0, dtype=np.int64)), dtype=np.int64)
    return out


def detect_architecture(state) -> tuple[str, int]:
    """(registry name, num_classes) of a torchvision VGG or ResNet state_dict."""
    keys = list(state)
    if any(k.startswith("features.") for k in keys) and "classifier.6.weight" in state:
        convs = [k for k in keys if re.fullmatch(r"features\.\d+\.weight", k)
                 and np.ndim(state[k]) == 4]
        bn = any(k.endswith(".running_mean") for k in keys)
        if len(convs) not in VGG_DEPTHS:
            raise CnnlabError(f"state_dict looks like a VGG with {len(convs)} conv layers; "
                              f"cnnlab knows VGG-11/13/16/19 (8/10/13/16 convs)")
        return VGG_DEPTHS[len(convs)] + ("_bn" if bn else ""), int(np.shape(state["classifier.6.weight"])[0])
    if "conv1.weight" in state and "fc.weight" in state and "layer1.0.conv1.weight" in state:
        kind = "bottleneck" if "layer1.0.conv3.weight" in state else "basic"
        blocks = {int(m.group(1)) for k in keys if (m := re.match(r"layer3\.(\d+)\.", k))}
        name = RESNET_DEPTHS.get((kind, len(blocks)))
        if name is None:
            raise CnnlabError(f"state_dict looks like a ResNet with {kind} blocks and "
                              f"{len(blocks)} blocks in layer3; cnnlab knows ResNet-18/34/50")
        return name, int(np.shape(state["fc.weight"])[0])
    raise CnnlabError("cannot tell the architecture of this state_dict (only torchvision VGG "
                      "and ResNet files are recognised); name it (`cnnlab zoo import FILE --arch "
                      "lenet`, load_torchvision(path, arch=...)) or build the model yourself and "
                      "use import_state_dict(model, sd)")


def _classes_of(state) -> int:
    """The class count a state_dict's last layer predicts: torchvision's classifier.6 or fc,
    else the last 2-D ".weight" (a Linear), else 1000 (ImageNet)."""
    for key in ("classifier.6.weight", "fc.weight"):
        if key in state:
            return int(np.shape(state[key])[0])
    linear = [k for k, v in state.items() if k.endswith(".weight") and np.ndim(v) == 2]
    return int(np.shape(state[linear[-1]])[0]) if linear else 1000


def from_torchvision(state, arch: str | None = None, num_classes: int | None = None,
                     strict: bool = True):
    """Build the cnnlab model a torchvision state_dict belongs to and load it."""
    from ..models.registry import get_model

    found, k = detect_architecture(state) if arch is None else (arch, None)
    if num_classes is not None:
        k = num_classes
    elif k is None:
        k = _classes_of(state)
    model = get_model(found, num_classes=k)
    import_state_dict(model, state, strict=strict)
    return model


def load_torchvision(path, arch: str | None = None, num_classes: int | None = None,
                     strict: bool = True):
    """A cnnlab model from a torchvision .pth file (read by cnnlab.io.load_torch_state_dict:
    no torch, nothing executed), or from a .npz/.safetensors of the same arrays."""
    from ..io import load_arrays, load_torch_state_dict

    path = os.fspath(path)
    if path.lower().endswith((".npz", ".safetensors")):
        state, _ = load_arrays(path)
    else:
        state = load_torch_state_dict(path)
    if not state:
        raise FileFormatError(f"{path} holds no tensors")
    return from_torchvision(state, arch, num_classes, strict)
