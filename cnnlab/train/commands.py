"""``cnnlab train`` and ``cnnlab eval``.

    cnnlab train [--model lenet] [--data mnist-5k] [--epochs N] [--batch-size B]
                 [--optimizer adam] [--lr LR] [--seed S] [--out DIR] [--resume [RUN]] ...
    cnnlab eval CHECKPOINT [CHECKPOINT ...] [--data SPEC] [--split test]

``register(subparsers)`` adds both. Handlers return an exit code and let
:class:`~cnnlab.errors.CnnlabError` reach the CLI, which prints it as one line.
The defaults are tuned so that ``cnnlab train`` (LeNet on the bundled 5,000 digits)
reaches >= 97% on the 1,000 held-out digits in well under three minutes on two cores.
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np

from ..errors import CnnlabError
from ..optim import OPTIMIZERS, make_optimizer, make_schedule
from .checkpoint import build_from_checkpoint, build_model_from_config, load_checkpoint
from .trainer import Trainer

#: the defaults of ``cnnlab train`` (recorded in every checkpoint's config)
DEFAULTS = {"model": "lenet", "data": "mnist-5k", "epochs": 25, "batch_size": 64,
            "optimizer": "adam", "lr": 0.002, "weight_decay": 0.0, "schedule": "cosine",
            "warmup": 0, "augment": "affine", "seed": 0}
#: defaults that differ for one model: the seed network (5 filters, stride 3) learns best
#: with a larger step and unshifted digits
MODEL_DEFAULTS = {"seed_net": {"lr": 0.01, "augment": "none"}}
#: models whose matrix products are too small to gain from several threads: they run on one
#: (on a 2-core machine with another busy job, 2 BLAS threads made LeNet 4x slower)
SMALL_MODELS = ("lenet", "seed_net")
SCHEDULES = ("cosine", "step", "constant")


def _shift(h, w):
    from ..data.transforms import RandomCrop
    return RandomCrop((h, w), padding=2)


def _shift_flip(h, w):
    from ..data.transforms import Compose, HorizontalFlip, RandomCrop
    return Compose([HorizontalFlip(), RandomCrop((h, w), padding=2)])


def _affine(h, w):
    from ..data.geometric import RandomWarp
    return RandomWarp(translate=2 / max(h, w), rotate=10, stretch=0.1)


#: --augment NAME -> (description, factory(height, width) -> transform or None)
AUGMENTATIONS = {
    "none": ("no augmentation", lambda h, w: None),
    "shift": ("random shifts of up to 2 pixels (pad 2, random crop)", _shift),
    "shift+flip": ("random shifts and horizontal flips (not for digits)", _shift_flip),
    "affine": ("random shifts (2 pixels), rotations (10 degrees) and stretches (10 percent)",
               _affine),
}


def register(subparsers) -> None:
    """Add ``train`` and ``eval`` to ``subparsers``."""
    _register_train(subparsers)
    _register_eval(subparsers)


def _register_train(subparsers) -> None:
    d = DEFAULTS
    p = subparsers.add_parser(
        "train", help="train a network and write checkpoints, metrics.json and plot.png",
        description="Train a network on a data set. Each epoch shuffles the training images, "
                    "trains on mini-batches (a progress bar shows the running loss and "
                    "accuracy), then measures loss and accuracy on the test split. The run "
                    "folder gets last.npz (after every epoch), best.npz (best test accuracy), "
                    "metrics.json and plot.png. With no options: LeNet on the 5,000 bundled "
                    "MNIST digits, about a minute on two cores, >= 97 percent test accuracy.")
    p.add_argument("--model", metavar="NAME", default=None,
                   help=f"network to train: {', '.join(_model_names())} (default {d['model']})")
    p.add_argument("--data", metavar="SPEC", default=None,
                   help="data set: mnist-5k (bundled), mnist, fashion-mnist (see `cnnlab data "
                        "info`), or a path to a folder of IDX files or a Kaggle CSV "
                        f"(default {d['data']})")
    p.add_argument("--epochs", type=int, metavar="N", default=None,
                   help="passes over the training set; with --resume, the new total "
                        f"(default {d['epochs']})")
    p.add_argument("--batch-size", type=int, metavar="B", default=None,
                   help=f"images per mini-batch (default {d['batch_size']})")
    p.add_argument("--optimizer", metavar="NAME", default=None,
                   help=f"update rule: {', '.join(OPTIMIZERS)}; momentum and nesterov use "
                        f"momentum 0.9 (default {d['optimizer']})")
    p.add_argument("--lr", type=float, metavar="LR", default=None,
                   help=f"base learning rate (default {d['lr']:g}{_per_model('lr')})")
    p.add_argument("--weight-decay", type=float, metavar="WD", default=None,
                   help=f"L2 weight decay added to the gradients (default {d['weight_decay']:g})")
    p.add_argument("--schedule", metavar="NAME", default=None,
                   help=f"learning-rate schedule over all steps: {', '.join(SCHEDULES)}; step "
                        f"divides by 10 at each third (default {d['schedule']})")
    p.add_argument("--warmup", type=int, metavar="STEPS", default=None,
                   help=f"linear learning-rate warm-up over the first STEPS mini-batches "
                        f"(default {d['warmup']})")
    p.add_argument("--augment", metavar="NAME", default=None,
                   help="training-image augmentation: "
                        + "; ".join(f"{k}: {v[0]}" for k, v in AUGMENTATIONS.items())
                        + f" (default {d['augment']}{_per_model('augment')})")
    p.add_argument("--seed", type=int, metavar="S", default=None,
                   help="seed for the initial weights, shuffling, augmentation and dropout; the "
                        f"same seed gives the same weights (default {d['seed']})")
    p.add_argument("--limit", type=int, metavar="N", default=None,
                   help="train on N training images only, a fixed random subset (quick runs); "
                        "the test split is used whole")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="run folder for checkpoints, metrics.json and plot.png (default "
                        "runs/<model>-<data>-<date>-<time>)")
    p.add_argument("--resume", metavar="RUN", nargs="?", const="", default=None,
                   help="continue a stopped run from its last checkpoint: RUN is a run folder or "
                        "a checkpoint file (without RUN: the --out folder). Model, data and "
                        "hyper-parameters come from the checkpoint; the result is bit-identical "
                        "to an uninterrupted run. Give --epochs to train longer")
    p.add_argument("--format", choices=("npz", "safetensors"), default="npz",
                   help="checkpoint file format (default npz)")
    p.add_argument("--workers", type=int, metavar="K", default=0,
                   help="threads that prepare augmented batches ahead of training (default 0: "
                        "inline); does not change the results")
    _add_threads_option(p)
    p.add_argument("--quiet", action="store_true",
                   help="no progress bar and no per-epoch lines, only the final summary")
    p.set_defaults(func=train_command)


def _register_eval(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="loss and accuracy of trained checkpoints on a data set",
        description="Rebuild the network each checkpoint holds (architecture, weights and "
                    "input normalisation come from the file) and report its loss and "
                    "accuracy on a data set split.")
    p.add_argument("checkpoints", metavar="CHECKPOINT", nargs="+",
                   help="a checkpoint (.npz or .safetensors written by `cnnlab train`) or a run "
                        "folder (its last.npz); several are evaluated one after another")
    p.add_argument("--data", metavar="SPEC", default=None,
                   help="data set to evaluate on (default: the one the checkpoint was trained on)")
    p.add_argument("--split", choices=("test", "train"), default="test",
                   help="which split of the data set (default test)")
    p.add_argument("--limit", type=int, metavar="N", default=None,
                   help="evaluate on N images only, a fixed random subset")
    p.add_argument("--batch-size", type=int, metavar="B", default=500,
                   help="images per forward pass (default 500); does not change the results")
    _add_threads_option(p)
    p.set_defaults(func=eval_command)


def _add_threads_option(p) -> None:
    p.add_argument("--threads", type=int, metavar="N", default=None,
                   help="CPU threads for BLAS and the convolution algorithms (default: 1 for "
                        f"{' and '.join(SMALL_MODELS)}, whose products are too small to split, "
                        "else all cores); on a machine other jobs keep busy, fewer threads "
                        "can be several times faster. Limiting BLAS needs threadpoolctl, "
                        "else set OPENBLAS_NUM_THREADS=N")


@contextmanager
def threads(n: int | None):
    """Run BLAS and cnnlab's convolution pool on ``n`` threads inside the block, and restore
    the previous settings after it (None: leave them as they are)."""
    if n is None:
        yield
        return
    if n < 1:
        raise CnnlabError(f"--threads must be at least 1, got {n}")
    from ..conv import get_num_threads, set_num_threads
    try:
        from threadpoolctl import threadpool_limits
        blas = threadpool_limits(n, user_api="blas")
    except ImportError:                      # BLAS keeps its threads (OPENBLAS_NUM_THREADS)
        blas = nullcontext()
    before = get_num_threads()
    set_num_threads(n)
    try:
        with blas:
            yield
    finally:
        set_num_threads(before)


# -- train --------------------------------------------------------------------------------
def train_command(args: argparse.Namespace) -> int:
    """Run ``cnnlab train``; returns the exit code (errors are raised as CnnlabError)."""
    use_conv_cache()
    ckpt = None
    if args.resume is not None:
        ckpt, settings, out_dir = _resume_settings(args)
    else:
        settings = default_settings(args.model or DEFAULTS["model"])
        settings.update({k: getattr(args, k) for k in DEFAULTS if getattr(args, k) is not None})
        settings["limit"] = args.limit
        _check_settings(settings)
        out_dir = Path(args.out) if args.out else _default_out(settings)
        _refuse_overwrite(out_dir)

    n = args.threads if args.threads is not None else (
        1 if settings["model"] in SMALL_MODELS else None)
    with threads(n):
        return _train(args, ckpt, settings, out_dir)


def _train(args, ckpt, settings: dict, out_dir: Path) -> int:
    train_ds, test_ds = _load_train_test(settings["data"], settings["limit"])
    model_config = _model_config(settings, train_ds)
    model = build_model_from_config(model_config)
    _check_model_fits(model, train_ds, settings)
    optimizer = make_optimizer(settings["optimizer"], model.parameters(), settings["lr"],
                               settings["weight_decay"])
    steps = settings["epochs"] * -(-len(train_ds) // settings["batch_size"])
    schedule = make_schedule(settings["schedule"], steps, settings["warmup"])
    transform = AUGMENTATIONS[settings["augment"]][1](*train_ds.images.shape[1:3])
    config = {"model": model_config, "data": _data_config(settings, train_ds),
              "train": {k: settings[k] for k in ("optimizer", "lr", "weight_decay", "schedule",
                                                  "warmup", "augment", "batch_size", "epochs",
                                                  "limit", "seed")},
              "title": f"{settings['model']} on {settings['data']}"}
    trainer = Trainer(model, optimizer=optimizer, schedule=schedule, out_dir=out_dir,
                      seed=settings["seed"], batch_size=settings["batch_size"],
                      epochs=settings["epochs"], progress=not args.quiet, transform=transform,
                      config=config, num_workers=args.workers,
                      checkpoint_format=Path(ckpt.path).suffix if ckpt else "." + args.format,
                      log=None if args.quiet else print)
    if ckpt is not None:
        trainer.restore(ckpt)
        if not args.quiet:
            print(f"resuming {ckpt.path} after epoch {trainer.epoch} of {trainer.epochs}")
    elif not args.quiet:
        print(f"training {settings['model']} on {settings['data']} ({len(train_ds):,} train / "
              f"{len(test_ds):,} test images) for {settings['epochs']} epochs; run folder "
              f"{out_dir}")
    try:
        metrics = trainer.fit(train_ds, test_ds)
    except KeyboardInterrupt:
        saved = trainer.last_path is not None and trainer.last_path.is_file()
        hint = (f"continue with `cnnlab train --resume {out_dir}`" if saved
                else "no checkpoint was written yet")
        print(f"cnnlab: interrupted during epoch {trainer.epoch + 1}; {hint}", file=sys.stderr)
        return 130
    final = metrics["final"]
    print(f"{settings['model']} on {settings['data']}: test accuracy "
          f"{_pct(final.get('test_acc'))} (loss {_num(final.get('test_loss'))}) after "
          f"{final.get('epoch')} epochs, {final.get('seconds', 0):.1f} s; "
          f"checkpoints, metrics.json and plot.png in {out_dir}")
    return 0


def default_settings(model: str) -> dict:
    """The ``cnnlab train`` defaults for ``model`` (DEFAULTS with its MODEL_DEFAULTS)."""
    return {**DEFAULTS, **MODEL_DEFAULTS.get(model, {}), "model": model}


def _per_model(key: str) -> str:
    return "".join(f"; {m}: {d[key]}" for m, d in MODEL_DEFAULTS.items() if key in d)


def use_conv_cache() -> None:
    """Keep the convolution algorithms "auto" measures on disk ($CNNLAB_CACHE/conv_algos.json).

    Besides saving the measurements, this makes every run on this machine use the same
    algorithms, and so the same rounding: two runs with the same seed, or a stopped run
    resumed and one left alone, end with identical weights.
    """
    from ..conv import enable_disk_cache
    enable_disk_cache()


def _check_settings(s: dict) -> None:
    if s["model"] not in _model_names():
        raise CnnlabError(f"unknown model {s['model']!r}; choose one of "
                          f"{', '.join(_model_names())} (--model)")
    if s["optimizer"] not in OPTIMIZERS:
        raise CnnlabError(f"unknown optimizer {s['optimizer']!r}; choose one of "
                          f"{', '.join(OPTIMIZERS)} (--optimizer)")
    if s["schedule"] not in SCHEDULES:
        raise CnnlabError(f"unknown schedule {s['schedule']!r}; choose one of "
                          f"{', '.join(SCHEDULES)} (--schedule)")
    if s["augment"] not in AUGMENTATIONS:
        raise CnnlabError(f"unknown augmentation {s['augment']!r}; choose one of "
                          f"{', '.join(AUGMENTATIONS)} (--augment)")
    for key, flag in (("epochs", "--epochs"), ("batch_size", "--batch-size")):
        if s[key] < 1:
            raise CnnlabError(f"{flag} must be at least 1, got {s[key]}")
    if s["limit"] is not None and s["limit"] < 1:
        raise CnnlabError(f"--limit must be at least 1, got {s['limit']}")
    if not s["lr"] > 0:
        raise CnnlabError(f"--lr must be positive, got {s['lr']:g}")
    if s["weight_decay"] < 0:
        raise CnnlabError(f"--weight-decay must be >= 0, got {s['weight_decay']:g}")
    if s["warmup"] < 0:
        raise CnnlabError(f"--warmup must be >= 0, got {s['warmup']}")
    if s["seed"] < 0:
        raise CnnlabError(f"--seed must be a non-negative integer, got {s['seed']}")


def _resume_settings(args):
    """(checkpoint, settings, run folder) for --resume; options other than --epochs must
    agree with the checkpoint (resuming continues the same run)."""
    where = args.resume or args.out
    if not where:
        raise CnnlabError("--resume needs the run to continue: give --resume RUN_FOLDER "
                          "(or a checkpoint file), or --out RUN_FOLDER")
    ckpt = load_checkpoint(where)
    saved = ckpt.config.get("train")
    if not saved or "model" not in ckpt.config or "data" not in ckpt.config:
        raise CnnlabError(f"{ckpt.path} was not written by `cnnlab train` (no run "
                          f"configuration); it cannot be resumed from the command line")
    settings = {**saved, "model": ckpt.config["model"]["name"],
                "data": ckpt.config["data"]["spec"]}
    for key in DEFAULTS:
        given = getattr(args, key)
        if key == "epochs" or given is None:
            continue
        if given != settings[key]:
            flag = "--" + key.replace("_", "-")
            raise CnnlabError(f"{flag} {given} differs from the run being resumed "
                              f"({settings[key]}); drop {flag} to resume, or start a new run "
                              f"without --resume")
    if args.limit is not None and args.limit != settings.get("limit"):
        raise CnnlabError(f"--limit {args.limit} differs from the run being resumed "
                          f"({settings.get('limit')}); drop --limit to resume")
    if args.epochs is not None:
        settings["epochs"] = args.epochs
    _check_settings(settings)
    out_dir = Path(args.out) if args.out else Path(ckpt.path).parent
    return ckpt, settings, out_dir


def _refuse_overwrite(out_dir: Path) -> None:
    for name in ("last.npz", "last.safetensors"):
        if (out_dir / name).exists():
            raise CnnlabError(f"{out_dir} already holds a run ({name}); continue it with "
                              f"`cnnlab train --resume {out_dir}` or choose another --out")


def _default_out(s: dict) -> Path:
    data = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(s["data"]).name or "data")
    return Path("runs") / f"{s['model']}-{data}-{time.strftime('%Y%m%d-%H%M%S')}"


def _model_config(s: dict, train_ds) -> dict:
    h, w = train_ds.images.shape[1:3]
    if h != w:
        raise CnnlabError(f"--data {s['data']} has {h}x{w} images; the models take square "
                          f"images: resize them (cnnlab data pack --size {max(h, w)}x{max(h, w)})")
    return {"name": s["model"], "in_channels": int(train_ds.channels),
            "num_classes": len(train_ds.classes), "input_size": int(h), "seed": s["seed"]}


def _check_model_fits(model, train_ds, s: dict) -> None:
    """One image through the untrained model (eval mode: no state changes), so that a model
    that cannot take this data fails now, with the reason, instead of mid-epoch."""
    x = train_ds.subset([0]).as_float()
    shape = "x".join(str(v) for v in x.shape[1:])
    try:
        scores = model.eval().forward(x)
    except CnnlabError as err:
        raise CnnlabError(f"--model {s['model']} cannot take the {shape} (CxHxW) images of "
                          f"--data {s['data']} ({err}); choose a model made for such images "
                          f"(see `cnnlab train --help`)") from None
    finally:
        model.train()
    if scores.shape != (1, len(train_ds.classes)):
        raise CnnlabError(f"--model {s['model']} gives {scores.shape[1:]} scores per image, "
                          f"not one per class of --data {s['data']} ({len(train_ds.classes)})")


def _data_config(s: dict, train_ds) -> dict:
    return {"spec": s["data"], "limit": s["limit"], "classes": list(train_ds.classes),
            "channels": int(train_ds.channels), "image_size": list(train_ds.images.shape[1:3])}


def _load_train_test(spec: str, limit: int | None):
    from ..data import load_dataset
    train_ds = load_dataset(spec, "train")
    test_ds = load_dataset(spec, "test")
    return limit_dataset(train_ds, limit), test_ds


def limit_dataset(ds, limit: int | None):
    """``ds`` itself, or a fixed random subset of ``limit`` of its images (the same for
    every run: files are often sorted by class, so the first N would not do)."""
    if limit is None or limit >= len(ds):
        return ds
    rng = np.random.default_rng(np.random.SeedSequence(0, spawn_key=(len(ds),)))
    return ds.subset(np.sort(rng.permutation(len(ds))[:limit]))


def _model_names() -> list[str]:
    try:
        from ..models.registry import model_names
        return model_names()
    except ImportError:
        from ..models import MODELS
        return sorted(MODELS)


# -- eval ---------------------------------------------------------------------------------
def eval_command(args: argparse.Namespace) -> int:
    """Run ``cnnlab eval``: one line per checkpoint."""
    use_conv_cache()
    if args.batch_size < 1:
        raise CnnlabError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.limit is not None and args.limit < 1:
        raise CnnlabError(f"--limit must be at least 1, got {args.limit}")
    for path in args.checkpoints:
        ckpt = load_checkpoint(path)
        small = (ckpt.config.get("model") or {}).get("name") in SMALL_MODELS
        with threads(args.threads if args.threads is not None else 1 if small else None):
            result = evaluate_checkpoint(ckpt, args.data, args.split, args.limit,
                                         args.batch_size)
        if result["note"]:
            print(f"cnnlab: note: {result['note']}", file=sys.stderr)
        print(f"{result['checkpoint']}: {result['model']} on {result['data']} {args.split} "
              f"({result['images']:,} images): loss {result['loss']:.4f}, accuracy "
              f"{result['acc']:.2%}")
    return 0


def evaluate_checkpoint(path, data: str | None = None, split: str = "test",
                        limit: int | None = None, batch_size: int = 500) -> dict:
    """Loss and accuracy of the checkpoint at ``path`` (a file, a run folder or a loaded
    Checkpoint) on ``data`` (default: the data set it was trained on)."""
    from ..data import load_dataset
    model, ckpt = build_from_checkpoint(path)
    spec = data or (ckpt.config.get("data") or {}).get("spec")
    if not spec:
        raise CnnlabError(f"{ckpt.path} does not record its data set; give --data")
    ds = load_dataset(spec, split)
    ds = limit_dataset(ds, limit)
    check_data_fits(ckpt, ds, spec)
    norm = ckpt.info.get("normalization") or {}
    trainer = Trainer(model, mean=norm.get("mean"), std=norm.get("std"), progress=False,
                      eval_batch_size=batch_size, log=None)
    loss, acc = trainer.evaluate(ds)
    trained_on = (ckpt.config.get("data") or {}).get("classes")
    note = None
    if trained_on and list(trained_on) != list(ds.classes):
        note = (f"{ckpt.path} was trained on other classes ({_few(trained_on)}) than those of "
                f"{spec} ({_few(ds.classes)}); labels are compared by number")
    return {"checkpoint": ckpt.path, "model": ckpt.config["model"]["name"], "data": spec,
            "split": split, "images": len(ds), "loss": loss, "acc": acc, "note": note}


def check_data_fits(ckpt, ds, spec: str) -> None:
    """Raise CnnlabError when ``ds`` is not the kind of data ``ckpt`` was trained on."""
    m = ckpt.config["model"]
    h, w = ds.images.shape[1:3]
    if ds.channels != m["in_channels"] or (h, w) != (m["input_size"], m["input_size"]):
        raise CnnlabError(
            f"{ckpt.path} was trained on {m['in_channels']}-channel {m['input_size']}x"
            f"{m['input_size']} images but --data {spec} has {ds.channels}-channel {h}x{w} "
            f"images; evaluate on data like the training data")
    k = m["num_classes"]
    if len(ds.classes) > k or (ds.labels.size and ds.labels.max() >= k):
        raise CnnlabError(f"{ckpt.path} predicts {m['num_classes']} classes but --data {spec} "
                          f"has {len(ds.classes)}; evaluate on data with the same classes")


def _few(names, n: int = 3) -> str:
    names = list(names)
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")


def _pct(v) -> str:
    return f"{v:.2%}" if isinstance(v, float) else "n/a"


def _num(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else "n/a"
