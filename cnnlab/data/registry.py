"""``load_dataset(spec, split)``: one entry point for every data set cnnlab knows.

A spec is either a registered name or a path:

- names (:func:`register_dataset`): ``mnist-5k`` (bundled, the default),
  ``mnist`` and ``fashion-mnist`` (from ``cnnlab data fetch``'s cache;
  Fashion-MNIST also from Debian's ``/usr/share/datasets/fashion-mnist``);
- paths (:func:`register_path_handler`, tried in order): a folder of IDX files
  (MNIST layout), a Kaggle digit-recognizer CSV or a folder holding train.csv.

Names win over paths: write ``./mnist`` for a folder called mnist. Other
modules add data sets (CIFAR, image folders, packed files) by registering
them; nothing here needs to change.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from cnnlab.data.dataset import ArrayDataset, stratified_split
from cnnlab.data.idx import find_idx_split, read_idx
from cnnlab.data.kaggle_csv import kaggle_dataset, read_header
from cnnlab.data.sources import dataset_cache_dir, get_source
from cnnlab.errors import CnnlabError, FileFormatError

SPLITS = ("train", "test")


@dataclass(frozen=True)
class NamedDataset:
    """A data set known by name. load(split) -> ArrayDataset.

    locate() -> the folder or file it reads, or None when it is not on this
    machine; locate itself is None for data sets that are always there.
    """

    name: str
    load: Callable[[str], ArrayDataset]
    description: str
    locate: Callable[[], Path | None] | None


@dataclass(frozen=True)
class PathHandler:
    """A file format: matches(path) says whether it is one; load(path, split) reads it."""

    name: str
    matches: Callable[[Path], bool]
    load: Callable[[Path, str], ArrayDataset]
    description: str


NAMED: dict[str, NamedDataset] = {}
PATH_HANDLERS: list[PathHandler] = []


def register_dataset(name: str, loader: Callable[[str], ArrayDataset], *,
                     description: str = "",
                     locate: Callable[[], Path | None] | None = None) -> None:
    """Make ``load_dataset(name, split)`` call ``loader(split)``.

    locate: returns where the data set's files are, or None when they are not
    on this machine (shown by ``cnnlab data info``); leave it out for data sets
    that are always available (generated, bundled).
    """
    NAMED[name] = NamedDataset(name, loader, description, locate)


def register_path_handler(name: str, matches: Callable[[Path], bool],
                          loader: Callable[[Path, str], ArrayDataset], *,
                          description: str = "") -> None:
    """Let ``load_dataset(PATH, split)`` read a format: the first handler whose
    ``matches(path)`` is true loads it with ``loader(path, split)``."""
    PATH_HANDLERS.append(PathHandler(name, matches, loader, description))


def dataset_names() -> list[str]:
    """The registered names, in registration order."""
    return list(NAMED)


def load_dataset(spec: str = "mnist-5k", split: str = "train") -> ArrayDataset:
    """Load split "train" or "test" of ``spec`` (a registered name or a path).

    Returns an ArrayDataset: images uint8 (N, H, W) or (N, H, W, C), labels int64 (N,).
    """
    if split not in SPLITS:
        raise CnnlabError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    spec = str(spec)
    if spec in NAMED:
        return NAMED[spec].load(split)
    path = Path(spec).expanduser()
    if not path.exists():
        raise CnnlabError(
            f"unknown data set {spec!r}: not a name ({', '.join(NAMED)}) and no such "
            f"file or folder; give one of those names or a path to "
            f"{' or '.join(h.description for h in PATH_HANDLERS)}")
    for handler in PATH_HANDLERS:
        if handler.matches(path):
            return handler.load(path, split)
    raise CnnlabError(
        f"{path}: not a data set cnnlab can read; expected "
        f"{' or '.join(h.description for h in PATH_HANDLERS)}")


# --- mnist-5k: the bundled default ----------------------------------------------------

MNIST_5K_FILE = Path(__file__).parent / "files" / "mnist_5k.npz"
MNIST_5K_SHA256 = "246e0c30eeea57c8d0037d3f38c8e00651ec204cc61b8022563e9aeeb9d756f4"
MNIST_5K_TEST_FRACTION = 0.2
MNIST_5K_SEED = 5000
DIGITS = [str(d) for d in range(10)]


def load_mnist_5k(split: str) -> ArrayDataset:
    """The bundled 5,000 MNIST digits (see files/PROVENANCE.md), 4,000 train / 1,000 test.

    The split is fixed and stratified: ``stratified_split(labels, 0.2, seed=5000)``
    puts 100 of each digit's 500 images in "test" and the other 400 in "train",
    the same on every machine and NumPy version. Images uint8 (N, 28, 28).
    """
    data = MNIST_5K_FILE.read_bytes()
    if hashlib.sha256(data).hexdigest() != MNIST_5K_SHA256:
        raise FileFormatError(f"{MNIST_5K_FILE} is damaged (sha256 mismatch); reinstall "
                              f"cnnlab to restore it")
    with np.load(MNIST_5K_FILE, allow_pickle=False) as npz:
        images, labels = npz["images"], npz["labels"]
    train, test = stratified_split(labels, MNIST_5K_TEST_FRACTION, MNIST_5K_SEED)
    rows = train if split == "train" else test
    return ArrayDataset(images[rows], labels[rows], DIGITS, f"mnist-5k/{split}",
                        str(MNIST_5K_FILE))


# --- IDX folders: mnist, fashion-mnist and any folder in the MNIST layout ---------------

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")


def is_idx_folder(path: Path) -> bool:
    """True for a folder holding the train or the test pair of IDX files."""
    return path.is_dir() and any(find_idx_split(path, s) for s in SPLITS)


def load_idx_folder(path: Path, split: str, classes: list[str] | None = None,
                    name: str | None = None) -> ArrayDataset:
    """Read ``split`` from a folder of IDX files -> images uint8 (N, H, W), labels int64 (N,).

    Class names: ``classes`` if given, else the lines of ``classes.txt`` in the
    folder, else "0", "1", ... up to the largest label.
    """
    found = find_idx_split(path, split)
    if found is None:
        prefix = "train" if split == "train" else "t10k (or test)"
        raise FileFormatError(f"{path}: no {split} IDX files ({prefix}-images-idx3-ubyte[.gz] "
                              f"and {prefix}-labels-idx1-ubyte[.gz])")
    images, labels = (read_idx(f) for f in found)
    if images.ndim != 3 or images.dtype != np.uint8 or labels.ndim != 1:
        raise FileFormatError(f"{found[0].parent}: expected uint8 images (N, H, W) and labels "
                              f"(N,), got {images.dtype} {images.shape} and {labels.shape}")
    if len(images) != len(labels):
        raise FileFormatError(f"{found[0]} holds {len(images)} images but {found[1]} holds "
                              f"{len(labels)} labels; the files do not belong together")
    classes = classes or _folder_classes(path, labels)
    return ArrayDataset(images, labels.astype(np.int64), classes,
                        f"{name or path.name}/{split}", str(path))


def _folder_classes(path: Path, labels: np.ndarray) -> list[str]:
    """classes.txt's lines, else "0" .. the largest label of either split (so that both
    splits of a folder name the same classes, whichever labels one of them lacks)."""
    listed = path / "classes.txt"
    if listed.is_file():
        return [line.strip() for line in listed.read_text().splitlines() if line.strip()]
    top = int(labels.max(initial=0))
    for split in SPLITS:
        found = find_idx_split(path, split)
        if found is not None:
            top = max(top, int(read_idx(found[1]).max(initial=0)))
    return [str(c) for c in range(top + 1)]


def _cached_folder(name: str, extra: tuple[Path, ...] = ()) -> Path | None:
    """The first of the cache folder and ``extra`` holding both splits of ``name``."""
    for folder in (dataset_cache_dir(name), *extra):
        if folder.is_dir() and all(find_idx_split(folder, s) for s in SPLITS):
            return folder
    return None


def _idx_dataset(name: str, classes: list[str], extra: tuple[Path, ...], install: str):
    """(loader, locate) for a downloadable IDX data set."""
    def locate() -> Path | None:
        return _cached_folder(name, extra)

    def load(split: str) -> ArrayDataset:
        folder = locate()
        if folder is None:
            mb = get_source(name).total_bytes / 1e6
            raise CnnlabError(f"{name} is not on this machine (looked in "
                              f"{', '.join(str(p) for p in (dataset_cache_dir(name), *extra))}); "
                              f"run `cnnlab data fetch {name}` (about {mb:.0f} MB){install}")
        return load_idx_folder(folder, split, classes, name)
    return load, locate


def _is_kaggle_csv(path: Path) -> bool:
    if path.is_dir():
        return (path / "train.csv").is_file()
    if path.suffix.lower() != ".csv":
        return False
    try:
        first = read_header(path)[:2]
    except FileFormatError:
        return False
    return first in (["label", "pixel0"], ["pixel0", "pixel1"])


register_dataset("mnist-5k", load_mnist_5k, locate=lambda: MNIST_5K_FILE,
                 description="5,000 MNIST digits bundled with cnnlab, 4,000 train / 1,000 test")
_mnist_load, _mnist_locate = _idx_dataset("mnist", DIGITS, (), "")
register_dataset("mnist", _mnist_load, locate=_mnist_locate,
                 description="MNIST digits, 60,000 train / 10,000 test (cnnlab data fetch mnist)")
_fashion_load, _fashion_locate = _idx_dataset(
    "fashion-mnist", FASHION_CLASSES, (FASHION_SYSTEM_DIR,),
    ", or `apt-get install dataset-fashion-mnist`")
register_dataset("fashion-mnist", _fashion_load, locate=_fashion_locate,
                 description="Fashion-MNIST, 60,000 train / 10,000 test (cnnlab data fetch "
                             "fashion-mnist, or Debian's dataset-fashion-mnist)")
register_path_handler("idx", is_idx_folder, load_idx_folder,
                      description="a folder of IDX files (train-images-idx3-ubyte[.gz], ...)")
register_path_handler("kaggle-csv", _is_kaggle_csv, kaggle_dataset,
                      description="a Kaggle digit-recognizer train.csv (or its folder)")
