"""Model files: weights + what is needed to use them (architecture, input, preprocessing,
class names, how they were made and how well they do).

A model file is a .safetensors (or .npz) written by cnnlab.io.save_arrays (atomically): the
arrays are ``model.state_dict()`` and the metadata (str -> str, values JSON-encoded) is

    format         "cnnlab-model/1"
    arch           registry name (cnnlab.models.registry), e.g. "lenet", "resnet18"
    num_classes    int;  in_channels: int;  input_shape: [C, H, W]
    preprocessing  {"scale": 1/255, "mean": [...], "std": [...]}: x = (pixels * scale - mean) / std
    classes        ["0", "1", ...]
    dataset        what it was trained on, e.g. "fashion-mnist/train"
    command        the command that reproduces the file
    accuracy       {"test": 0.91, "split": "fashion-mnist/test", "n": 10000}
    extra          anything else (epochs, seed, wall time, load)

``save_model(path, model, info)`` / ``load_model(path) -> (model, info)``.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import CnnlabError, FileFormatError

FORMAT = "cnnlab-model/1"


@dataclass
class ModelInfo:
    arch: str
    num_classes: int
    in_channels: int = 1
    input_shape: tuple = (1, 28, 28)
    preprocessing: dict = field(default_factory=lambda: {"scale": 1 / 255, "mean": [0.0], "std": [1.0]})
    classes: list = field(default_factory=list)
    dataset: str = ""
    command: str = ""
    accuracy: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    name: str = ""

    def to_metadata(self) -> dict:
        d = asdict(self)
        meta = {k: json.dumps(v) for k, v in d.items()}
        meta["format"] = FORMAT
        return meta

    @classmethod
    def from_metadata(cls, meta: dict, where: str = "model file") -> "ModelInfo":
        if meta.get("format") != FORMAT:
            raise FileFormatError(f"{where} is not a cnnlab model file (metadata format "
                                  f"{meta.get('format')!r}, expected {FORMAT!r}); for plain "
                                  f"weights use load_weights(model, path)")
        known = {f for f in cls.__dataclass_fields__}
        try:
            kw = {k: json.loads(v) for k, v in meta.items() if k in known}
        except ValueError as e:
            raise FileFormatError(f"{where}: metadata is not valid JSON ({e})") from None
        if "input_shape" in kw:
            kw["input_shape"] = tuple(kw["input_shape"])
        return cls(**kw)

    def normalize(self, images) -> np.ndarray:
        """uint8 pixels (N, H, W) / (N, H, W, C), or float (N, C, H, W) already on the [0, 1]
        scale -> the model's input: ``(x - mean) / std`` per channel, float32 NCHW (the same
        arithmetic as the trainer's data loader)."""
        from ..data.imageops import to_float_batch

        mean, std = self.preprocessing.get("mean"), self.preprocessing.get("std")
        x = np.asarray(images)
        if x.dtype == np.uint8:
            return to_float_batch(x, mean, std)
        x = x.astype(np.float32)
        c = x.shape[1]
        if mean is not None:
            x = x - np.resize(np.asarray(mean, np.float32), c).reshape(1, c, 1, 1)
        if std is not None:
            x = x / np.resize(np.asarray(std, np.float32), c).reshape(1, c, 1, 1)
        return np.ascontiguousarray(x)

    def describe(self) -> str:
        acc = self.accuracy.get("test")
        lines = [f"{self.name or self.arch}: {self.arch}, input {'x'.join(map(str, self.input_shape))}, "
                 f"{self.num_classes} classes",
                 f"  trained on {self.dataset or '?'}"
                 + (f"; test accuracy {100 * acc:.2f}% on {self.accuracy.get('split', '?')}"
                    if acc is not None else "")]
        if self.command:
            lines.append(f"  reproduce: {self.command}")
        return "\n".join(lines)


def save_model(path, model, info: ModelInfo) -> None:
    """Write ``model``'s state_dict and ``info`` to ``path`` (.safetensors or .npz), atomically."""
    from ..io import save_arrays

    arrays = {k: np.ascontiguousarray(np.asarray(v)) for k, v in model.state_dict().items()}
    save_arrays(path, arrays, info.to_metadata())


def read_info(path) -> ModelInfo:
    """The metadata of a model file, without building the model."""
    from ..io import load_arrays

    _, meta = load_arrays(path)
    return ModelInfo.from_metadata(meta, os.fspath(path))


def load_model(path, strict: bool = True):
    """(model, info) from a model file: the architecture is rebuilt from the registry and the
    weights are loaded (missing/unexpected/mismatched keys: one error listing them all)."""
    from ..io import load_arrays
    from ..models.registry import MODELS, get_model

    arrays, meta = load_arrays(path)
    info = ModelInfo.from_metadata(meta, os.fspath(path))
    if info.arch not in MODELS:
        raise CnnlabError(f"{os.fspath(path)}: architecture {info.arch!r} is not a registered "
                          f"model ({', '.join(MODELS)}); build it yourself and call "
                          f"load_weights(model, path)")
    model = get_model(info.arch, num_classes=info.num_classes, in_channels=info.in_channels,
                      input_size=info.input_shape[1])
    try:
        model.load_state_dict(arrays, strict=strict)
    except CnnlabError as e:
        raise CnnlabError(f"{os.fspath(path)}: {e}") from None
    model.eval()
    return model, info


def load_weights(model, path, strict: bool = True) -> dict:
    """Load the arrays of any .npz/.safetensors/.pth file into ``model`` (PyTorch naming)."""
    from ..io import load_arrays, load_torch_state_dict
    from .torchvision import import_state_dict

    p = os.fspath(path)
    arrays = load_arrays(p)[0] if p.lower().endswith((".npz", ".safetensors")) else load_torch_state_dict(p)
    return import_state_dict(model, arrays, strict=strict)
