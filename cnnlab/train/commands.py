"""``cnnlab train`` and ``cnnlab eval``.

    cnnlab train [--model lenet] [--data mnist-5k] [--epochs N] [--batch-size B]
                 [--optimizer adam] [--lr LR] [--seed S] [--out DIR] [--resume [RUN]] ...
    cnnlab eval CHECKPOINT [CHECKPOINT ...] [--data SPEC] [--split test]
                [--tta none|10crop|multiscale] [--tta-pad P] [--scales S [S ...]]
                [--flips | --no-flips]
                [--json FILE]

``cnnlab eval`` with several checkpoints also reports their ensemble (the mean of their
class probabilities); the probabilities, TTA and ensembles are in
:mod:`cnnlab.train.evaluation`.

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

from ..checks import positive_number, writable_file
from ..errors import CnnlabError
from ..optim import OPTIMIZERS, make_optimizer, make_schedule
from .checkpoint import build_from_checkpoint, build_model_from_config, load_checkpoint
from .evaluation import DEFAULT_PAD, TTA_MODES, accuracy, ensemble_proba, nll, predict_proba
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
SMALL_MODELS = ("lenet", "lenet_plain", "lenet_dropout", "lenet_dropconnect", "seed_net")
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
    p.add_argument("--format", choices=("npz", "safetensors"), default=None,
                   help="checkpoint file format (default npz; a resumed run keeps its own)")
    p.add_argument("--workers", type=int, metavar="K", default=None,
                   help="background workers that prepare augmented batches while the model "
                        "trains (default: 1 with augmentation, which kept the time spent "
                        "waiting for data at about 0.1%% of an epoch of small_vgg on "
                        "Fashion-MNIST; 0 without: build batches inline); does not change "
                        "the results")
    p.add_argument("--worker-mode", choices=("thread", "process"), default="thread",
                   help="workers are threads (default: start instantly, share memory) or "
                        "processes (for pipelines that hold the GIL)")
    _add_threads_option(p)
    p.add_argument("--quiet", action="store_true",
                   help="no progress bar and no per-epoch lines, only the final summary")
    p.set_defaults(func=train_command)


def _register_eval(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="loss and accuracy of trained checkpoints (with TTA, ensembles) on a data set",
        description="Rebuild the network each checkpoint holds (architecture, weights and "
                    "input normalisation come from the file) and report its loss and "
                    "accuracy on a data set split. With --tta, the softmax is averaged over "
                    "test-time crops of each image and the loss is the negative "
                    "log-likelihood of the averaged probabilities. With several checkpoints, "
                    "a last line reports their ensemble: the mean of their probabilities.")
    p.add_argument("checkpoints", metavar="CHECKPOINT", nargs="+",
                   help="a checkpoint (.npz or .safetensors written by `cnnlab train`) or a run "
                        "folder (its last.npz); several are evaluated one after another, then "
                        "as an ensemble (they must predict the same classes)")
    p.add_argument("--data", metavar="SPEC", default=None,
                   help="data set to evaluate on (default: the one the checkpoint was trained on)")
    p.add_argument("--split", choices=("test", "train"), default="test",
                   help="which split of the data set (default test)")
    p.add_argument("--limit", type=int, metavar="N", default=None,
                   help="evaluate on N images only, a fixed random subset")
    p.add_argument("--batch-size", type=int, metavar="B", default=500,
                   help="images per forward pass (default 500; with --tta: crops per pass); "
                        "does not change the results")
    p.add_argument("--tta", choices=TTA_MODES, default="none",
                   help="test-time augmentation: none (default); 10crop: the 4 corner crops, "
                        "the centre crop and their mirror images (images the model's size are "
                        "padded by --tta-pad first); multiscale: 10 crops at each of --scales")
    p.add_argument("--tta-pad", type=int, metavar="P", default=None,
                   help=f"zero padding per side before the 10 crops of an image as large as the "
                        f"model input (default {DEFAULT_PAD}: the shift of --augment shift)")
    p.add_argument("--scales", type=int, metavar="S", nargs="+", default=None,
                   help="short sides for --tta multiscale, each >= the model input (default: "
                        "224, 256, 384, 480, 640 scaled by input/224, e.g. 28 32 48 60 80)")
    mirrors = p.add_mutually_exclusive_group()
    mirrors.add_argument("--flips", dest="flips", action="store_const", const=True,
                         default=None,
                         help="with --tta: include the mirrored crops (10 per scale). Default: "
                              "only for a checkpoint trained with flips (--augment shift+flip)")
    mirrors.add_argument("--no-flips", dest="flips", action="store_const", const=False,
                         help="with --tta: leave out the mirrored crops (5 per scale instead of "
                              "10), for classes a left-right flip changes, such as digits")
    p.add_argument("--json", metavar="FILE", default=None,
                   help="also write every result (per checkpoint and ensemble) to FILE as JSON")
    _add_threads_option(p)
    p.set_defaults(func=eval_command)


def _add_threads_option(p) -> None:
    p.add_argument("--threads", type=int, metavar="N", default=None,
                   help="CPU threads for BLAS and the convolution algorithms (default: 1 for "
                        f"{', '.join(SMALL_MODELS)}, whose products are too small to split, "
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
    use_conv_cache(report=not args.quiet)
    ckpt = None
    if args.resume is not None:
        ckpt, settings, out_dir = _resume_settings(args)
    else:
        settings = default_settings(args.model or DEFAULTS["model"])
        settings.update({k: getattr(args, k) for k in DEFAULTS if getattr(args, k) is not None})
        settings["data"] = recorded_spec(settings["data"])
        settings["limit"] = args.limit
        _check_settings(settings)
        out_dir = Path(args.out) if args.out else _default_out(settings)
        refuse_overwrite(out_dir)

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
                      config=config, num_workers=_workers(args.workers, transform),
                      worker_mode=args.worker_mode,
                      checkpoint_format=Path(ckpt.path).suffix if ckpt
                      else "." + (args.format or "npz"),
                      log=None if args.quiet else print)
    if ckpt is not None:
        trainer.restore(ckpt)
        if not args.quiet:
            print(f"resuming {ckpt.path} after epoch {trainer.epoch} of {trainer.epochs}")
    elif not args.quiet:
        print(f"training {settings['model']} on {settings['data']} ({len(train_ds):,} train / "
              f"{len(test_ds):,} test images) for {_count(settings['epochs'], 'epoch')}; run folder "
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
          f"{_count(final.get('epoch'), 'epoch')}, {final.get('seconds', 0):.1f} s; "
          f"checkpoints, metrics.json and plot.png in {out_dir}")
    return 0


def _workers(requested: int | None, transform) -> int:
    """--workers, or its default: one background worker when there is augmentation to do."""
    if requested is None:
        return 1 if transform is not None else 0
    if requested < 0:
        raise CnnlabError(f"--workers must be 0 or more, got {requested}")
    return requested


def default_settings(model: str) -> dict:
    """The ``cnnlab train`` defaults for ``model`` (DEFAULTS with its MODEL_DEFAULTS)."""
    return {**DEFAULTS, **MODEL_DEFAULTS.get(model, {}), "model": model}


def _per_model(key: str) -> str:
    return "".join(f"; {m}: {d[key]}" for m, d in MODEL_DEFAULTS.items() if key in d)


def use_conv_cache(report: bool = True) -> None:
    """Keep the convolution algorithms "auto" measures on disk ($CNNLAB_CACHE/conv_algos.json).

    Besides saving the measurements, this makes every run on this machine use the same
    algorithms, and so the same rounding: two runs with the same seed, or a stopped run
    resumed and one left alone, end with identical weights. ``report``: print a line on
    stderr for each new measurement (the layer, what won, how long the timing took), above
    any progress bar; measurements found on disk are not timed again and print nothing.
    """
    from ..conv import CHOOSER, enable_disk_cache
    enable_disk_cache()
    CHOOSER.notify = _print_above_bars if report else None


def _print_above_bars(line: str) -> None:
    from tqdm import tqdm
    tqdm.write(f"cnnlab: {line}", file=sys.stderr)


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
    positive_number(s["lr"], "--lr")
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
        if key == "data":
            given = recorded_spec(given)
        if given != settings[key]:
            flag = "--" + key.replace("_", "-")
            raise CnnlabError(f"{flag} {given} differs from the run being resumed "
                              f"({settings[key]}); drop {flag} to resume, or start a new run "
                              f"without --resume")
    if args.limit is not None and args.limit != settings.get("limit"):
        raise CnnlabError(f"--limit {args.limit} differs from the run being resumed "
                          f"({settings.get('limit')}); drop --limit to resume")
    if args.format is not None and "." + args.format != Path(ckpt.path).suffix:
        raise CnnlabError(f"--format {args.format} differs from the run being resumed "
                          f"({Path(ckpt.path).suffix[1:]}); drop --format to resume")
    done = int(ckpt.info.get("epoch", 0))
    if args.epochs is not None:
        if args.epochs <= done:
            raise CnnlabError(f"{ckpt.path} has trained {done} epochs already; give --epochs "
                              f"above {done} to train further")
        settings["epochs"] = args.epochs
    elif done >= int(settings["epochs"]):
        raise CnnlabError(f"{ckpt.path} has finished its {done} epochs; give --epochs above "
                          f"{done} to train further")
    _check_settings(settings)
    source = Path(ckpt.path).parent
    out_dir = Path(args.out) if args.out else source
    if out_dir.resolve() != source.resolve():
        refuse_overwrite(out_dir)          # another run's folder: never overwritten
        _copy_best(source, out_dir, Path(ckpt.path).suffix)
    return ckpt, settings, out_dir


def _copy_best(source: Path, out_dir: Path, suffix: str) -> None:
    """Resuming into a new folder: start it with the run's best checkpoint, so that the new
    folder's best.* matches the history it carries (copied atomically)."""
    import shutil

    from ..io.atomic import atomic_write
    best = source / f"best{suffix}"
    if best.is_file():
        out_dir.mkdir(parents=True, exist_ok=True)
        with best.open("rb") as src, atomic_write(out_dir / best.name, "wb") as dst:
            shutil.copyfileobj(src, dst)


def refuse_overwrite(out_dir: Path, resumable: bool = True) -> None:
    """Raise CnnlabError if ``out_dir`` already holds a run (its last checkpoint);
    ``resumable``: the message suggests `cnnlab train --resume` (not for finetune runs)."""
    for name in ("last.npz", "last.safetensors"):
        if (out_dir / name).exists():
            hint = (f"continue it with `cnnlab train --resume {out_dir}` or choose another --out"
                    if resumable else "choose another --out")
            raise CnnlabError(f"{out_dir} already holds a run ({name}); {hint}")


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
    from ..conv import default_algo
    x = train_ds.subset([0]).as_float()
    shape = "x".join(str(v) for v in x.shape[1:])
    try:
        with default_algo("im2col"):        # one image: not worth timing algorithms for
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


def _count(n, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def recorded_spec(spec: str) -> str:
    """A data set as a run records it: a registered name as it is, a path made absolute (so
    that `cnnlab eval RUN` works from any folder)."""
    from ..data.registry import NAMED
    spec = str(spec)
    if spec in NAMED:
        return spec
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec


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
    """Run ``cnnlab eval``: one line per checkpoint, then one for their ensemble when two or
    more different checkpoint files are given."""
    use_conv_cache()
    _check_eval_options(args)
    ckpts = [load_checkpoint(path) for path in args.checkpoints]
    members = _distinct(ckpts)              # a file given twice (file and run folder) counts once
    ensemble = len(members) > 1
    if ensemble:
        check_ensemble([ckpts[i] for i in members], args.data)
    if len(members) < len(ckpts):
        print("cnnlab: note: a checkpoint is given more than once; it is evaluated each time "
              "and counts once in an ensemble", file=sys.stderr)
    results = []
    for ckpt in ckpts:
        small = (ckpt.config.get("model") or {}).get("name") in SMALL_MODELS
        with threads(args.threads if args.threads is not None else 1 if small else None):
            result = evaluate_checkpoint(ckpt, args.data, args.split, args.limit,
                                         args.batch_size, tta=args.tta, pad=args.tta_pad,
                                         scales=args.scales, flips=args.flips,
                                         return_proba=ensemble)
        if result["note"]:
            print(f"cnnlab: note: {result['note']}", file=sys.stderr)
        print(f"{result['checkpoint']}: {result['model']} on {result['data']} {args.split} "
              f"({result['images']:,} images{_tta_text(result)}): loss {result['loss']:.4f}, "
              f"accuracy {result['acc']:.2%}")
        results.append(result)
    summary = ensemble_result([results[i] for i in members]) if ensemble else None
    if summary:
        print(f"ensemble of {summary['models']} models: {summary['data']} {args.split} "
              f"({summary['images']:,} images{_tta_text(summary)}): loss {summary['loss']:.4f}, "
              f"accuracy {summary['acc']:.2%} (best single {summary['best_single_acc']:.2%}, "
              f"mean single {summary['mean_single_acc']:.2%})")
    if args.json:
        _write_eval_json(args, results, summary)
    return 0


def _distinct(ckpts) -> list[int]:
    """Indices of the first occurrence of each checkpoint file."""
    seen, keep = set(), []
    for i, c in enumerate(ckpts):
        key = Path(c.path).resolve()
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return keep


def _check_eval_options(args) -> None:
    if args.batch_size < 1:
        raise CnnlabError(f"--batch-size must be at least 1, got {args.batch_size}")
    writable_file(args.json, "--json")      # before the evaluation, not after
    if args.limit is not None and args.limit < 1:
        raise CnnlabError(f"--limit must be at least 1, got {args.limit}")
    if args.tta_pad is not None:
        if args.tta == "none":
            raise CnnlabError("--tta-pad applies to --tta 10crop or multiscale; add one of them")
        if args.tta_pad < 0:
            raise CnnlabError(f"--tta-pad must be >= 0, got {args.tta_pad}")
    if args.scales is not None and args.tta != "multiscale":
        raise CnnlabError("--scales applies to --tta multiscale only; add --tta multiscale")
    if args.flips is not None and args.tta == "none":
        flag = "--flips" if args.flips else "--no-flips"
        raise CnnlabError(f"{flag} applies to --tta 10crop or multiscale; add one of them")


def check_ensemble(ckpts, data: str | None = None) -> None:
    """Raise CnnlabError unless the checkpoints can be averaged: they predict the same number
    of classes and (without ``data``) were trained on the same data set."""
    counts = [(c.config.get("model") or {}).get("num_classes") for c in ckpts]
    if len(set(counts)) > 1:
        listed = ", ".join(f"{c.path} {k}" for c, k in zip(ckpts, counts))
        raise CnnlabError(f"an ensemble averages class probabilities, so its checkpoints must "
                          f"predict the same number of classes; got {listed}")
    if data is None:
        specs = [(c.config.get("data") or {}).get("spec") for c in ckpts]
        if len(set(specs)) > 1:
            listed = ", ".join(f"{c.path} on {s}" for c, s in zip(ckpts, specs))
            raise CnnlabError(f"an ensemble is evaluated on one data set, but the checkpoints "
                              f"were trained on different ones ({listed}); give --data SPEC")


def ensemble_result(results: list[dict]) -> dict:
    """The ensemble of evaluated checkpoints (each result with "proba" and "labels"): loss
    (NLL of the mean probabilities), accuracy, and the best and mean single accuracies."""
    labels = results[0]["labels"]
    for r in results[1:]:
        if r["images"] != results[0]["images"] or not np.array_equal(r["labels"], labels):
            raise CnnlabError(f"{r['checkpoint']} was evaluated on other images than "
                              f"{results[0]['checkpoint']}; give --data SPEC")
    proba = ensemble_proba([r["proba"] for r in results])
    singles = [r["acc"] for r in results]
    first = results[0]
    return {"models": len(results), "checkpoints": [str(r["checkpoint"]) for r in results],
            "data": first["data"], "split": first["split"], "images": first["images"],
            "tta": first["tta"],
            "flips": first["flips"] if all(r["flips"] == first["flips"] for r in results)
            else "per model",
            "scales": first["scales"] if all(r["scales"] == first["scales"] for r in results)
            else None,
            "loss": nll(proba, labels), "acc": accuracy(proba, labels),
            "best_single_acc": max(singles), "mean_single_acc": float(np.mean(singles))}


def _tta_text(result: dict) -> str:
    if result.get("tta", "none") == "none":
        return ""
    flips = result.get("flips", True)
    text = f", {result['tta']} TTA" + {True: "", False: " without mirrors"}.get(
        flips, " with mirrors as each model was trained")
    if result.get("scales"):
        text += " at scales " + "/".join(str(s) for s in result["scales"])
    return text


def _write_eval_json(args, results: list[dict], summary: dict | None) -> None:
    import json

    from ..io.atomic import atomic_write
    drop = ("proba", "labels")
    data = {"split": args.split, "limit": args.limit, "tta": args.tta, "flips": args.flips,
            "checkpoints": [{k: (str(v) if k == "checkpoint" else v) for k, v in r.items()
                             if k not in drop} for r in results],
            "ensemble": summary}
    path = Path(args.json)
    if path.parent and not path.parent.is_dir():
        raise CnnlabError(f"cannot write --json {path}: folder {path.parent} does not exist")
    with atomic_write(path, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


def evaluate_checkpoint(path, data: str | None = None, split: str = "test",
                        limit: int | None = None, batch_size: int = 500, *,
                        tta: str = "none", pad: int | None = None, scales=None,
                        flips: bool | None = None, return_proba: bool = False) -> dict:
    """Loss and accuracy of the checkpoint at ``path`` (a file, a run folder or a loaded
    Checkpoint) on ``data`` (default: the data set it was trained on).

    Returns {"checkpoint", "model", "data", "split", "images", "loss", "acc", "note", "tta",
    "pad", "scales", "flips"}. With tta "none" and not ``return_proba``, loss and accuracy come
    from :meth:`Trainer.evaluate` (mean cross-entropy, float32). Otherwise the probabilities
    come from :func:`~cnnlab.train.evaluation.predict_proba` with ``tta``, ``pad``, ``scales``
    and ``flips`` (batch_size: crops per forward pass) and the loss is their mean negative
    log-likelihood (float64); ``return_proba`` adds "proba" (N, classes) and "labels" (N,).
    ``flips`` None (the default): the mirrored crops only if the checkpoint was trained with
    flips (:func:`trained_with_flips`); mirror images of what a model never saw mirrored (a
    digit) cost accuracy instead of adding views.
    """
    from ..data import load_dataset
    model, ckpt = build_from_checkpoint(path)
    spec = data or (ckpt.config.get("data") or {}).get("spec")
    if not spec:
        raise CnnlabError(f"{ckpt.path} does not record its data set; give --data")
    try:
        ds = load_dataset(spec, split)
    except CnnlabError as err:
        if data is not None:
            raise
        raise CnnlabError(f"{ckpt.path} was trained on {spec!r}, which cannot be loaded here "
                          f"({err}); give --data") from None
    ds = limit_dataset(ds, limit)
    check_data_fits(ckpt, ds, spec, tta)
    norm = ckpt.info.get("normalization") or {}
    size = ckpt.config["model"]["input_size"]
    used_pad, used_scales = None, None
    if tta != "none":
        from ..data.tta import default_scales
        used_pad = DEFAULT_PAD if pad is None else int(pad)
        if tta == "multiscale":
            used_scales = list(scales) if scales is not None else list(default_scales(size))
    if flips is None:
        flips = trained_with_flips(ckpt)
    proba = None
    if tta == "none" and not return_proba:
        trainer = Trainer(model, mean=norm.get("mean"), std=norm.get("std"), progress=False,
                          eval_batch_size=batch_size, log=None)
        loss, acc = trainer.evaluate(ds)
    else:
        if len(ds.labels) == 0:
            raise CnnlabError("the evaluation set is empty")
        model.need_input_grad = False
        proba = predict_proba(model, ds.images, mean=norm.get("mean"), std=norm.get("std"),
                              tta=tta, input_size=size, pad=pad, scales=scales,
                              batch_size=batch_size, flips=flips)
        loss, acc = nll(proba, ds.labels), accuracy(proba, ds.labels)
    trained_on = (ckpt.config.get("data") or {}).get("classes")
    note = None
    if trained_on and list(trained_on) != list(ds.classes):
        note = (f"{ckpt.path} was trained on other classes ({_few(trained_on)}) than those of "
                f"{spec} ({_few(ds.classes)}); labels are compared by number")
    result = {"checkpoint": ckpt.path, "model": ckpt.config["model"]["name"], "data": spec,
              "split": split, "images": len(ds), "loss": loss, "acc": acc, "note": note,
              "tta": tta, "pad": used_pad, "scales": used_scales,
              "flips": None if tta == "none" else bool(flips)}
    if return_proba:
        result["proba"], result["labels"] = proba, np.asarray(ds.labels)
    return result


def trained_with_flips(ckpt) -> bool:
    """Whether the checkpoint's training augmentation mirrored images (an --augment with
    "flip" in its name, of `cnnlab train` or `cnnlab finetune`); True where the checkpoint
    does not record its augmentation (imported ImageNet weights, say, trained with flips)."""
    for section in ("train", "finetune"):
        augment = (ckpt.config.get(section) or {}).get("augment")
        if augment is not None:
            return "flip" in str(augment)
    return True


def check_data_fits(ckpt, ds, spec: str, tta: str = "none") -> None:
    """Raise CnnlabError when ``ds`` is not the kind of data ``ckpt`` was trained on.

    Without TTA the images must be the model's input size; with TTA (``tta`` other than
    "none") larger images are fine (crops are taken), smaller ones are not.
    """
    m = ckpt.config["model"]
    h, w = ds.images.shape[1:3]
    s = m["input_size"]
    same = (h, w) == (s, s)
    if ds.channels != m["in_channels"] or not (same or (tta != "none" and min(h, w) >= s)):
        fix = ("test-time crops cannot enlarge images: evaluate on images at least that large"
               if tta != "none" and ds.channels == m["in_channels"]
               else "evaluate on data like the training data")
        raise CnnlabError(
            f"{ckpt.path} was trained on {m['in_channels']}-channel {s}x{s} images but --data "
            f"{spec} has {ds.channels}-channel {h}x{w} images; {fix}")
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
