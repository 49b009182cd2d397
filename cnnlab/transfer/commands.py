"""``cnnlab features``, ``cnnlab finetune`` and ``cnnlab experiment transfer``.

    cnnlab features MODEL --layer NAME [--data SPEC] [--split train,test] [--limit N] -o feats.npz
    cnnlab finetune MODEL --data SPEC [--train-from LAYER] [--per-class N] [--epochs E] [--lr LR]
                    [--lr-mult PATTERN=MULT ...] [--slide-lrs] [--seed S] [--out DIR]
    cnnlab experiment transfer [--part similar,different,filters] [--seeds 3] [--quick]

MODEL is a zoo name (``cnnlab zoo list``), a model file, a `cnnlab train` checkpoint or run
folder, or a torchvision .pth. Importing this module registers the data sets
mnist-5k-digits0-4 and mnist-5k-digits5-9 (so `cnnlab train --data mnist-5k-digits0-4` works).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..checks import at_least, positive_number, writable_file
from ..errors import CnnlabError
from ..train.commands import limit_dataset, refuse_overwrite
from . import datasets  # noqa: F401  (registers the digit-subset data sets)


def register(subparsers) -> None:
    """Add ``features``, ``finetune`` and ``experiment transfer`` to ``subparsers``."""
    p = subparsers.add_parser(
        "features", help="save the outputs of one layer of a trained network for a data set",
        description="Run a trained network over a data set and save the output of one layer "
                    "(flattened) with the labels, as .npz: train_features, train_labels, "
                    "test_features, test_labels. Layer names: `cnnlab summary MODEL` shows them "
                    "(dotted names, or aliases like conv1, pool2, fc2, relu4, conv5_3).")
    p.add_argument("model", metavar="MODEL", help="zoo name, model file, checkpoint or .pth")
    p.add_argument("--layer", required=True, help="layer whose output to save")
    p.add_argument("--data", default=None, help="data set (default: the one the model was trained on)")
    p.add_argument("--split", default="train,test", help="splits to extract (default train,test)")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="N images of each split, a fixed random subset (as train --limit)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("-o", "--output", required=True, help="output .npz (or .safetensors)")
    p.set_defaults(func=features_command)

    f = subparsers.add_parser(
        "finetune", help="train a pretrained network with a new head on new data",
        description="Load a pretrained network, replace its last layer by a fresh one with as "
                    "many outputs as the new data has classes, freeze the layers before "
                    "--train-from and train the rest (cnnlab train's trainer: checkpoints, "
                    "metrics.json and plot.png in --out; `cnnlab eval` works on the run).")
    f.add_argument("model", metavar="MODEL", help="zoo name, model file, checkpoint or .pth")
    f.add_argument("--data", required=True, help="the new data set")
    f.add_argument("--train-from", default=None, metavar="LAYER",
                   help="first layer to train; earlier ones are frozen (default: train all)")
    f.add_argument("--per-class", type=int, default=None, metavar="N",
                   help="use only N labelled training images per class")
    f.add_argument("--epochs", type=int, default=10)
    f.add_argument("--batch-size", type=int, default=64)
    f.add_argument("--lr", type=float, default=2e-3, help="base learning rate (the new head's)")
    f.add_argument("--optimizer", default="adam")
    f.add_argument("--lr-mult", action="append", default=[], metavar="PATTERN=MULT",
                   help="learning-rate multiplier for layers matching PATTERN (glob over layer "
                        "names and aliases), e.g. --lr-mult 'fc*=0.1'; repeatable")
    f.add_argument("--slide-lrs", action="store_true",
                   help="head x1, top layer(s) x0.1, intermediate layers x0.01 (the slides' rule)")
    f.add_argument("--top", default=None, metavar="LAYER",
                   help="with --slide-lrs: the first of the 'top' layers at x0.1 (default: the "
                        "layer with parameters just below the head)")
    f.add_argument("--augment", choices=("none", "shift"), default="shift")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--out", default=None, help="run folder (default runs/finetune-<time>)")
    f.add_argument("--quiet", action="store_true")
    f.set_defaults(func=finetune_command)

    _experiment_parser(subparsers)


def _experiment_parser(subparsers):
    """Add ``transfer`` under ``cnnlab experiment``."""
    from ..cli import experiment_subparsers
    inner = experiment_subparsers(subparsers)
    e = inner.add_parser(
        "transfer", help="the transfer-learning 2x2 table and the small-filters comparison",
        description="Run the experiments of docs/transfer.md and print their tables: (1) a "
                    "similar data set with little data: digits 0-4 -> 5-9 with 5/10/50/200 "
                    "labels per class (scratch, linear classifier, finetune top, finetune all); "
                    "(2) a very different data set: Fashion-MNIST <-> MNIST, linear classifiers "
                    "on every stage; (3) one 7x7 conv vs three 3x3 convs.")
    e.add_argument("--part", default="similar,different,filters",
                   help="comma-separated parts to run (default all)")
    e.add_argument("--seeds", type=int, default=None, help="seeds per cell (default 3)")
    e.add_argument("--per-class", default=None,
                   help="labelled images per class (part 1; default 5,10,50,200)")
    e.add_argument("--quick", action="store_true",
                   help="tiny settings, for smoke tests (not with --seeds or --per-class)")
    e.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    e.set_defaults(func=experiment_command)


# -- features -------------------------------------------------------------------------------
def features_command(args) -> int:
    from ..data import load_dataset
    from ..io import save_arrays
    from ..zoo import resolve
    from .features import extract_features
    from .layers import resolve_layer

    from ..io.arrays import array_format
    at_least(args.batch_size, 1, "--batch-size")
    at_least(args.limit, 1, "--limit")
    array_format(args.output)               # a bad suffix fails now, not after the work
    writable_file(args.output, "-o")
    model, info = resolve(args.model)
    layer = resolve_layer(model, args.layer)
    spec = args.data or (info.dataset.rsplit("/", 1)[0] if info.dataset.endswith("/train")
                         else info.dataset)
    if not spec:
        raise CnnlabError(f"{args.model} does not record its data set; give --data")
    splits = [s.strip() for s in args.split.split(",") if s.strip()]
    arrays = {}
    for split in splits:
        ds = load_dataset(spec, split)
        if args.limit is not None:
            ds = limit_dataset(ds, args.limit)     # files are often sorted by class
        _check_fits(info, ds, spec)
        t = time.perf_counter()
        x = info.normalize(ds.images)
        with tqdm(total=len(x), unit="image", desc=f"features ({split})", leave=False,
                  file=sys.stderr, disable=None) as bar:
            arrays[f"{split}_features"] = extract_features(model, x, layer, args.batch_size,
                                                           progress=bar.update)
        arrays[f"{split}_labels"] = ds.labels
        print(f"{split}: {len(ds):,} images -> features {arrays[f'{split}_features'].shape} "
              f"({time.perf_counter() - t:.1f} s)")
    save_arrays(args.output, arrays, {"model": str(args.model), "layer": layer, "data": spec,
                                      "classes": ",".join(ds.classes)})
    print(f"wrote {args.output}")
    return 0


def _check_fits(info, ds, spec):
    c, h, w = info.input_shape
    if ds.channels != c or ds.images.shape[1:3] != (h, w):
        raise CnnlabError(f"the model takes {c}-channel {h}x{w} images but {spec} has "
                          f"{ds.channels}-channel {ds.images.shape[1]}x{ds.images.shape[2]} images")


# -- finetune -------------------------------------------------------------------------------
def parse_lr_mults(items) -> dict:
    out = {}
    for item in items:
        pattern, sep, value = item.partition("=")
        try:
            out[pattern] = float(value)
        except ValueError:
            sep = ""
        if not sep or not pattern:
            raise CnnlabError(f"--lr-mult {item!r} is not PATTERN=MULT (e.g. 'fc*=0.1')")
    return out


def finetune_command(args) -> int:
    from ..data import load_dataset
    from ..zoo import resolve
    from .datasets import per_class_sample
    from .finetune import finetune, replace_head, slide_lr_mults

    at_least(args.epochs, 1, "--epochs")
    at_least(args.batch_size, 1, "--batch-size")
    at_least(args.per_class, 1, "--per-class")
    positive_number(args.lr, "--lr")
    out = Path(args.out) if args.out else Path("runs") / f"finetune-{time.strftime('%Y%m%d-%H%M%S')}"
    refuse_overwrite(out, resumable=False)
    model, info = resolve(args.model)
    train = load_dataset(args.data, "train")
    test = load_dataset(args.data, "test")
    _check_fits(info, train, args.data)
    if args.per_class is not None:
        train = per_class_sample(train, args.per_class, args.seed)
    rng = np.random.default_rng(args.seed)
    head = replace_head(model, len(train.classes), rng)
    mults = parse_lr_mults(args.lr_mult)
    if args.top is not None and not args.slide_lrs:
        raise CnnlabError("--top applies to --slide-lrs; add it, or use --lr-mult")
    if args.slide_lrs:      # the user's --lr-mult patterns first: they win where they match
        mults = {**mults, **{k: v for k, v in slide_lr_mults(
            model, args.train_from or head_first(model), head, args.top).items()
            if k not in mults}}
    transform = None
    if args.augment == "shift":
        from ..data.transforms import RandomCrop
        transform = RandomCrop(train.images.shape[1:3], padding=2)
    c, h, _ = info.input_shape
    config = {"model": {"name": info.arch, "in_channels": c, "num_classes": len(train.classes),
                        "input_size": h, "seed": args.seed},
              "data": {"spec": args.data, "limit": None, "classes": list(train.classes),
                       "channels": c, "image_size": [h, h]},
              "finetune": {"from": str(args.model), "train_from": args.train_from,
                           "per_class": args.per_class, "lr": args.lr, "lr_mult": mults,
                           "epochs": args.epochs, "seed": args.seed, "augment": args.augment},
              "title": f"{info.arch} finetuned on {args.data}"}
    if not args.quiet:
        print(f"finetuning {args.model} ({info.arch}) on {args.data}: {len(train):,} train / "
              f"{len(test):,} test images, new head {head} -> {len(train.classes)} classes, "
              f"training from {args.train_from or 'the first layer'}; run folder {out}")
    res = finetune(model, train, test, mean=info.preprocessing.get("mean"),
                   std=info.preprocessing.get("std"), train_from=args.train_from, lr=args.lr,
                   lr_mult=mults or None, epochs=args.epochs, batch_size=args.batch_size,
                   optimizer=args.optimizer, seed=args.seed, out_dir=out, transform=transform,
                   config=config, progress=not args.quiet, log=None if args.quiet else print)
    print(f"finetuned: test accuracy {100 * res.test_acc:.2f}% ({res.trainable:,} trained "
          f"parameters, {res.seconds:.1f} s); run in {out}")
    return 0


def head_first(model) -> str:
    return next(n for n, _ in model.named_modules() if n)


# -- experiment -----------------------------------------------------------------------------
def experiment_command(args) -> int:
    import json

    from .experiment import ExperimentConfig, run_experiments

    parts = [p.strip() for p in args.part.split(",") if p.strip()]
    unknown = set(parts) - {"similar", "different", "filters"}
    if unknown:
        raise CnnlabError(f"unknown --part {', '.join(sorted(unknown))}; choose from similar, "
                          f"different, filters")
    if args.quick and (args.seeds is not None or args.per_class is not None):
        raise CnnlabError("--quick sets its own tiny seeds and sizes; drop --seeds/--per-class "
                          "or --quick")
    at_least(args.seeds, 1, "--seeds")
    try:
        per_class = tuple(int(v) for v in (args.per_class or "5,10,50,200").split(","))
    except ValueError:
        raise CnnlabError(f"--per-class {args.per_class!r} is not a comma-separated list of "
                          f"integers") from None
    writable_file(args.json, "--json")              # before the work, not after
    cfg = ExperimentConfig.quick() if args.quick else ExperimentConfig()
    cfg.seeds = tuple(range(args.seeds or 3)) if not args.quick else cfg.seeds
    if not args.quick:
        cfg.per_class = per_class
    results = run_experiments(cfg, parts, log=print)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
        print(f"wrote {args.json}")
    return 0
