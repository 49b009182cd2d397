"""``cnnlab data``: download data sets and describe them.

    cnnlab data fetch NAME [--dir DIR] [--quiet]
    cnnlab data info [SPEC]

``register(subparsers)`` adds the commands; each handler returns an exit code
and lets :class:`~cnnlab.errors.CnnlabError` reach the CLI, which prints it.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from cnnlab.data.registry import NAMED, PATH_HANDLERS, SPLITS, load_dataset
from cnnlab.data.sources import SOURCES, dataset_cache_dir, fetch_dataset, get_source
from cnnlab.errors import CnnlabError


def register(subparsers) -> None:
    """Add ``data`` with its sub-commands ``fetch`` and ``info`` to ``subparsers``."""
    data = subparsers.add_parser(
        "data", help="download data sets and show what they contain",
        description="Download data sets into the cache and describe any data set cnnlab "
                    "can load. The cache is $CNNLAB_CACHE, else ~/.cache/cnnlab.")
    sub = data.add_subparsers(dest="data_command", metavar="COMMAND", required=True)

    fetch = sub.add_parser(
        "fetch", help="download a data set and verify its sha256 sums",
        description="Download every file of a data set, show progress, check each file "
                    "against its published sha256, and skip files already there and "
                    "correct. Set CNNLAB_MIRROR=URL to download URL/NAME/FILE instead of "
                    "the publisher's address (the sha256 sums are still checked).")
    fetch.add_argument("name", metavar="NAME",
                       help=f"data set to download: {', '.join(SOURCES)}")
    fetch.add_argument("--dir", metavar="DIR", default=None,
                       help="folder to put the files in (default: the cache, where loading "
                            "the data set by name looks); files put elsewhere load by "
                            "giving DIR as the data set path")
    fetch.add_argument("--quiet", action="store_true",
                       help="no progress bars, only the final summary line")
    fetch.set_defaults(func=fetch_command)

    info = sub.add_parser(
        "info", help="sizes, shapes, class counts, location and channel statistics",
        description="Describe a data set: its train and test sizes, image shape, images "
                    "per class, where its files are and the per-channel mean and std of "
                    "the training images (on the [0, 1] scale, as used for normalisation). "
                    "Without SPEC, list the data sets cnnlab knows and whether each is "
                    "on this machine.")
    info.add_argument("spec", metavar="SPEC", nargs="?", default=None,
                      help="a data set name (see `cnnlab data info`) or a path: a folder of IDX "
                           "files, an image folder (CLASS/IMAGE or train/ and test/), a packed "
                           ".cnnpack file, a CIFAR archive or folder, or a Kaggle "
                           "digit-recognizer CSV")
    info.set_defaults(func=info_command)

    from cnnlab.data.pack_commands import register_data_subcommands

    register_data_subcommands(sub)


def fetch_command(args: argparse.Namespace) -> int:
    """Download data set ``args.name`` into ``args.dir`` or the cache."""
    source = get_source(args.name)
    folder = fetch_dataset(args.name, args.dir, progress=not args.quiet)
    how = (f"load it as `{args.name}`" if args.dir is None
           else f"load it by giving {folder} as the data set path")
    print(f"{args.name}: {len(source.files)} files, {source.total_bytes / 1e6:.1f} MB, "
          f"sha256 verified, in {folder}; {how}")
    return 0


def info_command(args: argparse.Namespace) -> int:
    """Print a description of ``args.spec``, or the list of known data sets."""
    if args.spec is None:
        print(_list_datasets())
    else:
        print(describe(args.spec))
    return 0


def describe(spec: str) -> str:
    """A few lines on data set ``spec``: sizes, shape, class counts, files, mean/std."""
    splits, missing = {}, []
    for split in SPLITS:
        try:
            splits[split] = load_dataset(spec, split)
        except CnnlabError as e:
            if split == "train":
                raise
            missing.append(f"{split}: {e}")
    train = splits["train"]
    shape = "x".join(str(s) for s in train.images.shape[1:3]) + f", {train.channels} channel" \
        + ("s" if train.channels > 1 else "")
    lines = [f"{spec}", f"  files:    {train.source or '(in memory)'}",
             f"  images:   {shape}, {train.images.dtype}",
             "  sizes:    " + ", ".join(f"{s} {len(d):,}" for s, d in splits.items())]
    lines += [f"  ({m})" for m in missing]
    mean, std = train.channel_stats()
    lines.append(f"  mean:     {_numbers(mean)}   (train, per channel, [0, 1] scale)")
    lines.append(f"  std:      {_numbers(std)}")
    counts = {s: d.class_counts() for s, d in splits.items()}
    width = max(len(c) for c in train.classes)
    lines.append(f"  classes:  {len(train.classes)}")
    lines.append(f"    {'':{width}}  " + "  ".join(f"{s:>7}" for s in counts))
    for i, name in enumerate(train.classes):
        row = "  ".join(f"{c[i] if i < len(c) else 0:>7,}" for c in counts.values())
        lines.append(f"    {name:{width}}  {row}")
    return "\n".join(lines)


def _list_datasets() -> str:
    width = max(len(n) for n in NAMED)
    lines = ["data sets (cnnlab data info NAME for details):"]
    for name, entry in NAMED.items():
        where = entry.locate() if entry.locate else "available"
        status = f"at {where}" if isinstance(where, Path) else where or (
            f"not on this machine: cnnlab data fetch {name}" if name in SOURCES
            else "not on this machine")
        lines.append(f"  {name:{width}}  {entry.description}")
        lines.append(f"  {'':{width}}  {status}")
    lines.append("also accepted as a data set: " + "; ".join(h.description for h in PATH_HANDLERS))
    lines.append(f"downloads go to {dataset_cache_dir('NAME')}")
    return "\n".join(lines)


def _numbers(values) -> str:
    return " ".join(f"{v:.4f}" for v in values)
