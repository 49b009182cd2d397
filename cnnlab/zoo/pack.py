"""Turn a `cnnlab train` run into a zoo model file: weights plus the metadata to use and
reproduce them (architecture, input, normalisation, classes, the command, test accuracy).

    cnnlab train --model lenet --data fashion-mnist --epochs 15 --out runs/lenet-fashion-mnist
    cnnlab zoo pack runs/lenet-fashion-mnist --name lenet-fashion-mnist

The test accuracy is measured again here, on the run's whole test split, with exactly the
preprocessing stored in the file (so anyone can check it with ``cnnlab zoo info --check``).
"""
from __future__ import annotations

import os
import shlex
from pathlib import Path

from ..errors import CnnlabError
from .checkpoint import ModelInfo, load_model, save_model
from .entries import FILES, SUFFIX

_FLAGS = [("model", "--model"), ("data", "--data"), ("epochs", "--epochs"),
          ("batch_size", "--batch-size"), ("optimizer", "--optimizer"), ("lr", "--lr"),
          ("weight_decay", "--weight-decay"), ("schedule", "--schedule"), ("warmup", "--warmup"),
          ("augment", "--augment"), ("seed", "--seed"), ("limit", "--limit")]


def train_command(config: dict, out_dir: str) -> str:
    """The `cnnlab train` command line that reproduces a run from its recorded config."""
    settings = {**config.get("train", {}), "model": config["model"]["name"],
                "data": config["data"]["spec"]}
    parts = ["cnnlab", "train"]
    for key, flag in _FLAGS:
        v = settings.get(key)
        if v is None:
            continue
        parts += [flag, f"{v:g}" if isinstance(v, float) else str(v)]
    return " ".join(shlex.quote(p) for p in parts + ["--out", out_dir])


def accuracy(model, info: ModelInfo, ds, batch_size: int = 500) -> float:
    """Top-1 accuracy of ``model`` on data set ``ds`` with ``info``'s preprocessing."""
    model.eval()
    correct = 0
    for i in range(0, len(ds), batch_size):
        x = info.normalize(ds.images[i:i + batch_size])
        correct += int((model.forward(x).argmax(1) == ds.labels[i:i + batch_size]).sum())
    return correct / len(ds)


def pack_run(run, name: str, out=None, run_dir_in_command: str | None = None) -> tuple[Path, ModelInfo]:
    """Write zoo file ``name`` (default: cnnlab/zoo/files/<name>.safetensors) from the last
    checkpoint of run ``run`` (a run folder or checkpoint file). Returns (path, info)."""
    from ..data import load_dataset
    from ..train import build_from_checkpoint

    model, ckpt = build_from_checkpoint(run)
    cfg = ckpt.config
    if "model" not in cfg or "data" not in cfg:
        raise CnnlabError(f"{ckpt.path} was not written by `cnnlab train`; it has no run config")
    m, d = cfg["model"], cfg["data"]
    norm = ckpt.info.get("normalization") or {}
    run_dir = run_dir_in_command or f"runs/{name}"
    command = f"{train_command(cfg, run_dir)} && cnnlab zoo pack {run_dir} --name {name}"
    info = ModelInfo(arch=m["name"], num_classes=int(m["num_classes"]),
                     in_channels=int(m["in_channels"]),
                     input_shape=(int(m["in_channels"]), int(m["input_size"]), int(m["input_size"])),
                     preprocessing={"scale": 1 / 255, "mean": norm.get("mean"), "std": norm.get("std")},
                     classes=list(d.get("classes", [])), dataset=f"{d['spec']}/train", command=command,
                     name=name)
    test = load_dataset(d["spec"], "test")
    acc = accuracy(model, info, test)
    history = ckpt.info.get("history") or [{}]
    info.accuracy = {"test": acc, "split": f"{d['spec']}/test", "n": len(test)}
    info.extra = {"epochs": ckpt.info.get("epoch"), "train_seconds": round(float(ckpt.info.get("elapsed_seconds", 0)), 1),
                  "train_acc_last_epoch": history[-1].get("train_acc"),
                  "params": int(sum(p.data.size for p in model.parameters()))}
    path = Path(out) if out else FILES / f"{name}{SUFFIX}"
    save_model(path, model, info)
    return path, info


def check_entry(path_or_name) -> tuple[float, float]:
    """(recorded, measured) test accuracy of a zoo file on its own test split."""
    from ..data import load_dataset
    from .entries import entry_path

    path = path_or_name if os.path.exists(str(path_or_name)) else entry_path(str(path_or_name))
    model, info = load_model(path)
    spec = info.accuracy.get("split", "").rsplit("/", 1)[0]
    if not spec:
        raise CnnlabError(f"{path} does not record which split its accuracy is on")
    return float(info.accuracy["test"]), accuracy(model, info, load_dataset(spec, "test"))
