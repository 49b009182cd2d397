"""Checkpoints: model and optimizer arrays plus JSON metadata, in one .npz or .safetensors file.

Layout (written atomically by :func:`cnnlab.io.save_arrays`, so a crash mid-write leaves the
previous file intact; never a pickle)::

    model.<name>      every entry of model.state_dict() (parameters and buffers)
    optim.<name>      every entry of optimizer.state_dict() (moments, step_count, lr)
    __metadata__      {"format": "cnnlab-checkpoint", "format_version": "1", "info": JSON}

``info`` is a JSON object with whatever the trainer records: the completed epoch, the
global step, the run configuration (model name and constructor arguments, data spec,
seed, optimizer, schedule), the input normalisation, the metrics history and the
state of the dropout generator. :func:`load_checkpoint` returns it decoded.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import CnnlabError, FileFormatError
from ..io import load_arrays, save_arrays

FORMAT = "cnnlab-checkpoint"
FORMAT_VERSION = "1"
SUFFIXES = (".npz", ".safetensors")


@dataclass
class Checkpoint:
    """What a checkpoint file holds: model arrays, optimizer arrays and the decoded info."""

    model_state: dict
    optimizer_state: dict
    info: dict
    path: str = field(default="")

    @property
    def config(self) -> dict:
        """The run configuration (``info["config"]``): model, data, optimizer, ... ."""
        return self.info.get("config", {})


def save_checkpoint(path, model, optimizer=None, info: dict | None = None) -> Path:
    """Write ``model`` (and ``optimizer``) state and ``info`` (JSON-able) to ``path``.

    The suffix picks the format: .npz or .safetensors. The write is atomic.
    """
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise CnnlabError(f"checkpoint {path} must end in .npz or .safetensors")
    arrays = {f"model.{k}": _host(v) for k, v in model.state_dict().items()}
    if optimizer is not None:
        arrays.update({f"optim.{k}": _host(v) for k, v in optimizer.state_dict().items()})
    info = dict(info or {})
    info.setdefault("cnnlab_version", __version__)
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION,
                "info": json.dumps(info, allow_nan=True)}
    save_arrays(path, arrays, metadata)
    return path


def load_checkpoint(path) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`.

    A folder means its ``last.npz`` (or ``last.safetensors``). A missing file, a file that
    is not a cnnlab checkpoint or a damaged one raises FileFormatError naming the file.
    """
    path = resolve_checkpoint(path)
    arrays, metadata = load_arrays(path)
    if metadata.get("format") != FORMAT:
        raise FileFormatError(f"{path} is not a cnnlab checkpoint (no checkpoint metadata); "
                              f"give a last.npz or best.npz written by `cnnlab train`")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise FileFormatError(f"{path} has checkpoint format version "
                              f"{metadata.get('format_version')!r}; this cnnlab reads version "
                              f"{FORMAT_VERSION}: upgrade cnnlab or retrain")
    try:
        info = json.loads(metadata.get("info", "{}"))
    except ValueError as err:
        raise FileFormatError(f"{path}: checkpoint metadata is not valid JSON ({err}); "
                              f"the file is damaged, use another checkpoint") from err
    model_state = {k[len("model."):]: v for k, v in arrays.items() if k.startswith("model.")}
    optim_state = {k[len("optim."):]: v for k, v in arrays.items() if k.startswith("optim.")}
    if not model_state:
        raise FileFormatError(f"{path} holds no model weights; give a checkpoint written by "
                              f"`cnnlab train`")
    return Checkpoint(model_state, optim_state, info, str(path))


def build_model_from_config(model_config: dict):
    """The model described by a run's ``config["model"]``: {"name", "in_channels",
    "num_classes", "input_size", "seed"}, freshly initialised (load weights after)."""
    from ..models import build_model

    try:
        name = model_config["name"]
        args = {k: int(model_config[k]) for k in ("in_channels", "num_classes", "input_size")}
    except (KeyError, TypeError, ValueError) as err:
        raise FileFormatError(f"the checkpoint does not say which model it holds ({err}); "
                              f"give a checkpoint written by `cnnlab train`") from None
    seed = int(model_config.get("seed", 0))
    try:
        from ..models.registry import MODELS, get_model
    except ImportError:
        MODELS = {}
    if name in MODELS:
        return get_model(name, seed=seed, **args)
    return build_model(name, seed=seed, **args)


def build_from_checkpoint(path_or_checkpoint):
    """(model with the checkpoint's weights, in eval mode, Checkpoint) for a checkpoint path,
    a run folder or a loaded :class:`Checkpoint`."""
    ckpt = (path_or_checkpoint if isinstance(path_or_checkpoint, Checkpoint)
            else load_checkpoint(path_or_checkpoint))
    model = build_model_from_config(ckpt.config.get("model") or {})
    try:
        model.load_state_dict(ckpt.model_state)
    except CnnlabError as err:
        raise FileFormatError(f"{ckpt.path}: the weights do not fit the model "
                              f"{ckpt.config['model']['name']!r} ({err})") from None
    return model.eval(), ckpt


def resolve_checkpoint(path) -> Path:
    """``path`` itself, or for a run folder its last.npz / last.safetensors."""
    path = Path(path)
    if path.is_dir():
        for suffix in SUFFIXES:
            if (path / f"last{suffix}").is_file():
                return path / f"last{suffix}"
        raise FileFormatError(f"{path} is a folder without last.npz or last.safetensors; "
                              f"give the checkpoint file or the run folder `cnnlab train` wrote")
    if not path.is_file():
        raise FileFormatError(f"checkpoint {path} does not exist; check the path "
                              f"(runs are in runs/<model>-<data>-<time>/last.npz by default)")
    return path


def _host(a):
    """A numpy copy of ``a`` (cupy arrays are moved to the host)."""
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


def checkpoint_names(suffix: str = ".npz") -> tuple[str, str]:
    """The file names of the last and the best checkpoint in a run folder."""
    if suffix not in SUFFIXES:
        raise CnnlabError(f"checkpoint format must be .npz or .safetensors, got {suffix!r}")
    return f"last{suffix}", f"best{suffix}"


__all__ = ["Checkpoint", "save_checkpoint", "load_checkpoint", "resolve_checkpoint",
           "build_model_from_config", "build_from_checkpoint", "checkpoint_names", "FORMAT",
           "FORMAT_VERSION"]
