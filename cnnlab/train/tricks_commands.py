"""``cnnlab experiment augmentation``: the training-tricks experiments of docs/tricks.md.

    cnnlab experiment augmentation [--part digits,fashion,dropout] [--seeds 3] [--json FILE]
                                   [--digits-epochs 100] [--fashion-epochs 150]
    cnnlab experiment augmentation --quick        (smoke test: seconds, meaningless numbers)
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import CnnlabError


def register(subparsers) -> None:
    """Add ``augmentation`` under ``cnnlab experiment``."""
    from ..cli import experiment_subparsers
    from .tricks_experiment import PARTS
    e = experiment_subparsers(subparsers).add_parser(
        "augmentation", help="augmentation, test-time augmentation, ensembles, dropout vs "
                             "DropConnect on small training sets",
        description="Train LeNet on 1,000 mnist-5k digits and on 2,000 Fashion-MNIST images with "
                    "and without augmentation (3 seeds each) and report the test accuracy, the "
                    "gain of 10-crop test-time augmentation and of an ensemble of the seeds' "
                    "models; and compare no dropout, dropout and DropConnect. Takes about an "
                    "hour on one core; see docs/tricks.md.")
    e.add_argument("--part", default=",".join(PARTS),
                   help=f"comma-separated parts to run (default all: {','.join(PARTS)})")
    e.add_argument("--seeds", type=int, default=None, metavar="N",
                   help="seeds per arm (default 3; 2 or more for the ensemble; not with --quick)")
    e.add_argument("--digits-epochs", type=int, default=None, metavar="N",
                   help="epochs of the digits and dropout parts (default 100)")
    e.add_argument("--fashion-epochs", type=int, default=None, metavar="N",
                   help="epochs of the fashion part (default 150; docs/tricks.md also shows 50)")
    e.add_argument("--quick", action="store_true", help="tiny settings, for smoke tests")
    e.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    e.add_argument("--threads", type=int, default=1, metavar="N",
                   help="BLAS / convolution threads (default 1: LeNet's products are small)")
    e.set_defaults(func=augmentation_command)


def augmentation_command(args) -> int:
    from .commands import threads, use_conv_cache
    from .tricks_experiment import PARTS, TricksConfig, run_tricks
    parts = [p.strip() for p in args.part.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        raise CnnlabError(f"unknown --part {', '.join(unknown) or '(empty)'}; choose from "
                          f"{', '.join(PARTS)}")
    if args.seeds is not None and args.seeds < 1:
        raise CnnlabError(f"--seeds must be at least 1, got {args.seeds}")
    if args.quick and args.seeds is not None:
        raise CnnlabError("--quick sets its own two seeds; drop --seeds or --quick")
    from ..checks import writable_file
    writable_file(args.json, "--json")              # before an hour of work, not after
    cfg = TricksConfig.quick() if args.quick else TricksConfig(seeds=tuple(range(args.seeds or 3)))
    for name in ("digits_epochs", "fashion_epochs"):
        value = getattr(args, name)
        if value is not None:
            if value < 1:
                raise CnnlabError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
            setattr(cfg, name, value)
    use_conv_cache()
    with threads(args.threads):
        results = run_tricks(cfg, parts, log=print)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
        print(f"wrote {args.json}")
    return 0
