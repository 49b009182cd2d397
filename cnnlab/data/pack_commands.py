"""``cnnlab data pack`` and ``cnnlab augment``.

    cnnlab data pack SOURCE -o FILE [--split train|test] [--size HxW] [--color rgb|gray]
    cnnlab augment IMAGE --preview OUT.png [--samples 8] [--seed 0]

``register_data_subcommands(data_subparsers)`` adds ``pack`` under ``cnnlab data``;
``register(subparsers)`` adds the top-level ``augment``. Handlers return an exit code
and let :class:`~cnnlab.errors.CnnlabError` reach the CLI.
"""
from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np

from ..errors import CnnlabError
from ..io.atomic import atomic_write
from .dataset import ArrayDataset
from .geometric import RandomLens, RandomRotation, RandomShear, RandomStretch, RandomTranslate
from .imageops import resize
from .imagefolder import ImageFolder, is_image_folder, split_classes, split_folder
from .packed import SUFFIX, pack_dataset
from .transforms import (ColorJitter, HorizontalFlip, PCALighting, RandomCrop, RandomResizedCrop,
                         ScaleAugmentation, pca_lighting_basis)

PREVIEW_MAX_SIDE = 512


def parse_size(text: str) -> tuple[int, int]:
    """"HxW" or "N" -> (h, w); argparse type."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"size must be HxW or N with positive ints, got {text!r}")
    return parts[0], parts[1]


def register_data_subcommands(data_subparsers) -> None:
    """Add ``pack`` to the sub-commands of ``cnnlab data``."""
    p = data_subparsers.add_parser(
        "pack", help="write a data set split into one packed file for fast training",
        description="Read one split of a data set (a name such as fashion-mnist, a path "
                    "cnnlab can load, or an image folder ROOT/CLASS/IMAGE) and write all its "
                    f"images and labels into one packed file (*{SUFFIX}) that training reads "
                    "by memory mapping, without decoding. The file is written atomically and "
                    "carries a sha256 of its contents.")
    p.add_argument("source", metavar="SOURCE", help="data set name, path, or image folder")
    p.add_argument("-o", "--output", metavar="FILE", required=True,
                   help=f"packed file to write (conventionally SPLIT{SUFFIX})")
    p.add_argument("--split", choices=("train", "test"), default="train",
                   help="which split to pack (default: train)")
    p.add_argument("--size", type=parse_size, default=None, metavar="HxW",
                   help="resize every image to H x W (bilinear); needed when an image folder's "
                        "images differ in size")
    p.add_argument("--color", choices=("rgb", "gray"), default=None,
                   help="for image folders: decode as RGB (default) or grayscale")
    p.add_argument("--no-checksum", action="store_true",
                   help="do not store the payload sha256 (saves one pass when packing)")
    p.set_defaults(func=pack_command)


MAX_SAMPLES = 64     # a preview row wider than this is unreadable (and slow to render)


def register(subparsers) -> None:
    """Add the top-level ``augment`` command."""
    p = subparsers.add_parser(
        "augment", help="preview data augmentation on an image",
        description="Apply each augmentation cnnlab offers to IMAGE several times and "
                    "write a grid PNG: one labelled row per transform, the original on the "
                    f"left. Images larger than {PREVIEW_MAX_SIDE} pixels are shrunk first.")
    p.add_argument("image", metavar="IMAGE", help="an image file Pillow can read")
    p.add_argument("--preview", metavar="OUT.png", required=True, help="grid PNG to write")
    p.add_argument("--samples", type=int, default=8,
                   help=f"augmented samples per row (default 8, at most {MAX_SAMPLES})")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.set_defaults(func=augment_command)


def pack_command(args: argparse.Namespace) -> int:
    """Pack ``args.source`` (split ``args.split``) into ``args.output``."""
    source = Path(args.source).expanduser()
    if source.is_dir() and is_image_folder(source):
        folder = split_folder(source, args.split)
        dataset = ImageFolder(folder, size=args.size, color=args.color or "rgb",
                              name=f"{source.name}/{args.split}",
                              classes=split_classes(source, args.split))
    else:
        if args.color is not None:
            raise CnnlabError(f"--color applies to image folders; {args.source} is read as "
                              f"it is stored")
        from .registry import load_dataset
        dataset = load_dataset(args.source, args.split)
        if args.size is not None:
            dataset = ArrayDataset(np.stack([resize(im, args.size) for im in dataset.images]),
                                   dataset.labels, dataset.classes, dataset.name, dataset.source)
    out = Path(args.output)
    if out.suffix != SUFFIX:
        raise CnnlabError(f"-o {out}: a packed data set is named *{SUFFIX} (e.g. "
                          f"{args.split}{SUFFIX}), so that cnnlab can tell it from other files")
    if out.parent and not out.parent.exists():
        raise CnnlabError(f"cannot write {out}: folder {out.parent} does not exist")
    pack_dataset(dataset, out, checksum=not args.no_checksum, progress=True)
    from .packed import PackedDataset
    packed = PackedDataset(out)
    shape = "x".join(str(s) for s in packed.images.shape[1:])
    print(f"packed {len(packed):,} images {shape} of {packed.name} ({len(packed.classes)} classes) "
          f"into {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


def preview_transforms(image: np.ndarray) -> list[tuple[str, object]]:
    """The (label, transform) rows of the preview, sized for ``image`` (H, W, 3)."""
    h, w = image.shape[:2]
    short = min(h, w)
    return [
        ("horizontal flip", HorizontalFlip()),
        (f"random crop, pad {max(1, short // 8)}", RandomCrop((h, w), padding=max(1, short // 8))),
        ("random resized crop", RandomResizedCrop((h, w))),
        ("scale aug. (ResNet)",
         ScaleAugmentation((round(short * 256 / 224), round(short * 480 / 224)), short)),
        ("colour jitter 0.4", ColorJitter(0.4, 0.4, 0.4)),
        ("PCA lighting, std 1\n(paper: 0.1)", PCALighting(*pca_lighting_basis(image), std=1.0)),
        ("translate 15%", RandomTranslate(0.15)),
        ("rotate 20 deg", RandomRotation(20)),
        ("stretch 25%", RandomStretch(0.25)),
        ("shear 15 deg", RandomShear(15)),
        ("lens k in [-0.3, 0.3]", RandomLens(0.3)),
    ]


def augment_command(args: argparse.Namespace) -> int:
    """Write the augmentation preview grid of ``args.image`` to ``args.preview``."""
    from PIL import Image, UnidentifiedImageError

    if not 1 <= args.samples <= MAX_SAMPLES:
        raise CnnlabError(f"--samples must be 1 to {MAX_SAMPLES}, got {args.samples}")
    if args.seed < 0:
        raise CnnlabError(f"--seed must be non-negative, got {args.seed}")
    if not str(args.preview).lower().endswith(".png"):
        raise CnnlabError(f"--preview writes a PNG: name it *.png, got {args.preview}")
    target = Path(args.preview)
    if target.parent and not target.parent.is_dir():
        raise CnnlabError(f"cannot write {target}: folder {target.parent} does not exist")
    try:
        with Image.open(args.image) as im:
            im = im.convert("RGB")
            if max(im.size) > PREVIEW_MAX_SIDE:
                im.thumbnail((PREVIEW_MAX_SIDE, PREVIEW_MAX_SIDE))
            image = np.asarray(im)
    except (OSError, UnidentifiedImageError) as e:
        raise CnnlabError(f"cannot read image {args.image}: {e}") from None
    rows = preview_transforms(image)
    png = render_grid(image, rows, args.samples, args.seed)
    with atomic_write(args.preview, "wb") as f:
        f.write(png)
    print(f"wrote {args.preview}: {len(rows)} transforms x {args.samples} samples (seed {args.seed})")
    return 0


def render_grid(image: np.ndarray, rows, samples: int, seed: int) -> bytes:
    """PNG bytes of a grid: one row per (label, transform), the original first."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = samples + 1
    fig = Figure(figsize=(1.3 * cols + 1.6, 1.3 * len(rows)), dpi=100)
    FigureCanvasAgg(fig)
    for r, (label, transform) in enumerate(rows):
        for c in range(cols):
            ax = fig.add_subplot(len(rows), cols, r * cols + c + 1)
            if c == 0:
                shown = image
            else:
                rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(r, c)))
                shown = transform(image, rng)
            ax.imshow(shown, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
            if r == 0:
                ax.set_title("original" if c == 0 else f"sample {c}", fontsize=8)
    fig.subplots_adjust(left=0.16, right=0.99, top=0.97, bottom=0.01, wspace=0.05, hspace=0.08)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
