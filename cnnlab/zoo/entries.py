"""The models shipped with cnnlab (cnnlab/zoo/files/*.safetensors), trained by cnnlab itself.

Each file carries its own metadata (see cnnlab.zoo.checkpoint), including the command that
reproduces it and its test accuracy. ``list_entries()`` reads them; ``load(name)`` returns
(model, info); ``resolve(spec)`` turns a zoo name or a path into a model.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import CnnlabError
from .checkpoint import ModelInfo, load_model, read_info

FILES = Path(__file__).parent / "files"
SUFFIX = ".safetensors"


def entry_path(name: str) -> Path:
    return FILES / f"{name}{SUFFIX}"


def entry_names() -> list[str]:
    return sorted(p.name[:-len(SUFFIX)] for p in FILES.glob(f"*{SUFFIX}"))


def list_entries() -> list[ModelInfo]:
    out = []
    for name in entry_names():
        info = read_info(entry_path(name))
        info.name = info.name or name
        out.append(info)
    return out


def load(name: str):
    """(model, info) of zoo entry ``name`` (eval mode)."""
    path = entry_path(name)
    if not path.is_file():
        raise CnnlabError(f"no zoo model {name!r}; available: {', '.join(entry_names()) or 'none'}")
    model, info = load_model(path)
    info.name = info.name or name
    return model, info


def resolve(spec):
    """(model in eval mode, ModelInfo) for a zoo name, a zoo model file, a `cnnlab train`
    checkpoint or run folder, or a torchvision .pth file."""
    spec = os.fspath(spec)
    if entry_path(spec).is_file():
        return load(spec)
    if not os.path.exists(spec):
        raise CnnlabError(f"{spec!r} is neither a zoo model ({', '.join(entry_names()) or 'none'}) "
                          f"nor an existing file or run folder")
    if spec.lower().endswith((".pth", ".pt")):
        return _from_torchvision(spec)
    if os.path.isdir(spec):
        return _from_run(spec)
    from ..io import load_arrays
    _, meta = load_arrays(spec)
    if meta.get("format") == "cnnlab-checkpoint":
        return _from_run(spec)
    return load_model(spec)


def _from_run(path):
    from ..train import build_from_checkpoint

    model, ckpt = build_from_checkpoint(path)
    m, d = ckpt.config.get("model", {}), ckpt.config.get("data", {})
    norm = ckpt.info.get("normalization") or {}
    info = ModelInfo(arch=m["name"], num_classes=int(m["num_classes"]),
                     in_channels=int(m["in_channels"]),
                     input_shape=(int(m["in_channels"]), int(m["input_size"]), int(m["input_size"])),
                     preprocessing={"scale": 1 / 255, "mean": norm.get("mean"), "std": norm.get("std")},
                     classes=list(d.get("classes", [])), dataset=f"{d.get('spec', '')}/train",
                     name=os.fspath(ckpt.path))
    return model, info


def _from_torchvision(path):
    from .torchvision import load_torchvision

    model = load_torchvision(path)
    info = ModelInfo(arch=getattr(model, "arch", "?"), num_classes=find_classes(model),
                     in_channels=3, input_shape=(3, 224, 224),
                     preprocessing={"scale": 1 / 255, "mean": [0.485, 0.456, 0.406],
                                    "std": [0.229, 0.224, 0.225]},
                     name=os.path.basename(path))
    return model.eval(), info


def find_classes(model) -> int:
    """The number of outputs of the model's last layer with parameters."""
    last = [p for n, p in model.named_parameters() if n.endswith("weight")][-1]
    return int(last.data.shape[0])
