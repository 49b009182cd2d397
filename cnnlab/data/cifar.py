"""CIFAR-10 and CIFAR-100, "python version", read without running any pickle code.

The archives (Krizhevsky 2009, https://www.cs.toronto.edu/~kriz/cifar.html) hold
Python 2 pickles (protocol 2) of dicts:

- CIFAR-10, ``cifar-10-batches-py/``: ``data_batch_1`` .. ``data_batch_5`` (train),
  ``test_batch``; each {"data": uint8 (10000, 3072), "labels": [int]}; ``batches.meta``
  has "label_names".
- CIFAR-100, ``cifar-100-python/``: ``train``, ``test`` with "data", "fine_labels",
  "coarse_labels"; ``meta`` has "fine_label_names" and "coarse_label_names".

A row of "data" is the 1024 red, then green, then blue values of a 32x32 image in
row-major order; images come back uint8 (N, 32, 32, 3). Pickles are read with
:func:`cnnlab.io.safe_pickle.restricted_load` (numpy arrays and plain containers only,
Python 2 strings decoded as latin1; keys may be str or bytes), from the .tar.gz itself
or from the extracted folder.
"""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np

from ..errors import CnnlabError, FileFormatError
from ..io.safe_pickle import NUMPY_GLOBALS, restricted_load
from .dataset import ArrayDataset
from .registry import register_dataset, register_path_handler
from .sources import DownloadableDataset, RemoteFile, dataset_cache_dir, register_source

# Official archives. md5: published on the CIFAR page (CIFAR-10) and used by torchvision
# (both). sha256: as published in Keras's dataset loaders (keras/datasets/cifar10.py and
# cifar100.py, file_hash) and torchvision's prototype datasets; sizes are the servers'
# Content-Length. Not recomputed here (no network).
SOURCES = {
    "cifar10": {
        "url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "filename": "cifar-10-python.tar.gz",
        "folder": "cifar-10-batches-py",
        "sha256": "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
        "md5": "c58f30108f718f92721af3b95e74349a",
        "size": 170_498_071,
    },
    "cifar100": {
        "url": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "filename": "cifar-100-python.tar.gz",
        "folder": "cifar-100-python",
        "sha256": "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7",
        "md5": "eb9058c3a382ffc7106e4002c42a8d85",
        "size": 169_001_437,
    },
}

CIFAR10_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
CIFAR100_FILES = {"train": ["train"], "test": ["test"]}
_PIXELS = 3 * 32 * 32


def _text(v):
    return v.decode("latin1") if isinstance(v, bytes) else v


def unpickle_batch(fileobj, source: str) -> dict:
    """One CIFAR pickle -> dict with str keys (bytes keys and values decoded as latin1)."""
    obj = restricted_load(fileobj, NUMPY_GLOBALS, encoding="latin1", source=source)
    if not isinstance(obj, dict):
        raise FileFormatError(f"{source}: expected a pickled dict, got {type(obj).__name__}; "
                              f"not a CIFAR batch file")
    return {_text(k): v for k, v in obj.items()}


class _Archive:
    """Named members of a CIFAR .tar.gz, or files in an extracted folder."""

    def __init__(self, path: Path, folder: str):
        self.path, self.folder = path, folder
        if path.is_dir():
            self.root = path / folder if (path / folder).is_dir() else path
        elif path.is_file():
            self.root = None
        else:
            raise CnnlabError(f"{path}: no such file or folder; give the CIFAR .tar.gz or the "
                              f"folder it extracts to ({folder}/)")

    def read(self, names: list[str]) -> dict[str, dict]:
        """{name: unpickled dict} for each member ``name`` (its base name)."""
        out = {}
        if self.root is not None:
            for name in names:
                f = self.root / name
                if not f.is_file():
                    raise FileFormatError(f"{self.root}: missing {name}; is this an extracted "
                                          f"{self.folder} folder?")
                with open(f, "rb") as fh:
                    out[name] = unpickle_batch(fh, str(f))
            return out
        try:
            with tarfile.open(self.path, "r:*") as tar:
                for member in tar:                      # one pass: gzip cannot seek back cheaply
                    base = member.name.rsplit("/", 1)[-1]
                    if member.isfile() and base in names and base not in out:
                        data = tar.extractfile(member).read()
                        out[base] = unpickle_batch(io.BytesIO(data), f"{self.path}:{member.name}")
        except (tarfile.TarError, EOFError, OSError) as e:
            raise FileFormatError(f"{self.path}: cannot read the archive ({e}); the download "
                                  f"is incomplete or damaged, fetch it again") from None
        missing = [n for n in names if n not in out]
        if missing:
            raise FileFormatError(f"{self.path}: archive has no {', '.join(missing)}; not a "
                                  f"CIFAR python-version archive ({self.folder}/)")
        return out


def _images(batch: dict, where: str) -> np.ndarray:
    data = batch.get("data")
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != _PIXELS:
        shape = getattr(data, "shape", type(data).__name__)
        raise FileFormatError(f"{where}: 'data' must be an array (N, {_PIXELS}), got {shape}")
    planes = data.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32)
    return np.ascontiguousarray(planes.transpose(0, 2, 3, 1))


def _labels(batch: dict, key: str, n: int, classes: int, where: str) -> np.ndarray:
    if key not in batch:
        raise FileFormatError(f"{where}: no '{key}' entry; keys are {sorted(batch)}")
    labels = np.asarray(batch[key], dtype=np.int64).reshape(-1)
    if len(labels) != n:
        raise FileFormatError(f"{where}: {n} images but {len(labels)} '{key}'")
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise FileFormatError(f"{where}: '{key}' span {labels.min()}..{labels.max()}, "
                              f"expected 0..{classes - 1}")
    return labels


def _names(meta: dict, key: str, where: str) -> list[str]:
    names = meta.get(key)
    if not isinstance(names, (list, tuple)) or not names:
        raise FileFormatError(f"{where}: meta file has no '{key}' list")
    return [str(_text(n)) for n in names]


def _check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise CnnlabError(f"split must be 'train' or 'test', got {split!r}")


def load_cifar10(path, split: str = "train") -> ArrayDataset:
    """CIFAR-10 ``split`` from ``cifar-10-python.tar.gz`` or its extracted folder.

    train: the 5 data batches (50,000 images) in order; test: test_batch (10,000).
    Images uint8 (N, 32, 32, 3), labels int64 0..9, classes from batches.meta.
    """
    _check_split(split)
    path = Path(path)
    files = CIFAR10_FILES[split]
    batches = _Archive(path, SOURCES["cifar10"]["folder"]).read(files + ["batches.meta"])
    classes = _names(batches["batches.meta"], "label_names", str(path))
    images, labels = [], []
    for name in files:
        x = _images(batches[name], f"{path}:{name}")
        images.append(x)
        labels.append(_labels(batches[name], "labels", len(x), len(classes), f"{path}:{name}"))
    return ArrayDataset(np.concatenate(images), np.concatenate(labels), classes,
                        f"cifar10/{split}", str(path))


def load_cifar100(path, split: str = "train", label: str = "fine") -> ArrayDataset:
    """CIFAR-100 ``split`` from ``cifar-100-python.tar.gz`` or its extracted folder.

    label: "fine" (100 classes) or "coarse" (20 superclasses). Images uint8
    (N, 32, 32, 3): 50,000 train, 10,000 test.
    """
    _check_split(split)
    if label not in ("fine", "coarse"):
        raise CnnlabError(f"CIFAR-100 label must be 'fine' or 'coarse', got {label!r}")
    path = Path(path)
    batches = _Archive(path, SOURCES["cifar100"]["folder"]).read([split, "meta"])
    classes = _names(batches["meta"], f"{label}_label_names", str(path))
    where = f"{path}:{split}"
    x = _images(batches[split], where)
    y = _labels(batches[split], f"{label}_labels", len(x), len(classes), where)
    suffix = "" if label == "fine" else "-coarse"
    return ArrayDataset(x, y, classes, f"cifar100{suffix}/{split}", str(path))


def _archive_in(folder: Path) -> Path | None:
    """The CIFAR archive a folder holds (as `cnnlab data fetch --dir` leaves it), or None."""
    for name in ("cifar10", "cifar100"):
        candidate = folder / SOURCES[name]["filename"]
        if candidate.is_file():
            return candidate
    return None


def is_cifar_path(path) -> bool:
    """A CIFAR python-version archive (by name), an extracted folder (by its meta file), or a
    folder holding the archive."""
    path = Path(path)
    if path.is_dir() and _archive_in(path) is not None:
        return True
    if path.is_file():
        return path.name in (SOURCES["cifar10"]["filename"], SOURCES["cifar100"]["filename"])
    if path.is_dir():
        return any((path / sub / meta).is_file() for sub in ("", "cifar-10-batches-py", "cifar-100-python")
                   for meta in ("batches.meta", "meta"))
    return False


def load_cifar_path(path, split: str = "train") -> ArrayDataset:
    """Registry handler: read ``split`` from a CIFAR-10 or CIFAR-100 archive or folder."""
    path = Path(path)
    if path.is_dir() and not any((path / sub).is_dir() for sub in
                                 ("cifar-10-batches-py", "cifar-100-python")) \
            and not (path / "batches.meta").is_file() and not (path / "meta").is_file():
        path = _archive_in(path) or path
    if path.is_file():
        is_100 = path.name == SOURCES["cifar100"]["filename"]
    else:
        is_100 = (path / "cifar-100-python").is_dir() or (path / "meta").is_file()
    return load_cifar100(path, split) if is_100 else load_cifar10(path, split)


def locate_cifar(name: str) -> Path | None:
    """The cached archive or extracted folder of ``name`` ("cifar10"/"cifar100"), or None."""
    src = SOURCES[name]
    cache = dataset_cache_dir(name)
    for candidate in (cache / src["filename"], cache / src["folder"]):
        if candidate.exists():
            return candidate
    return None


def _named_loader(name: str, label: str = "fine"):
    def load(split: str) -> ArrayDataset:
        where = locate_cifar(name)
        if where is None:
            mb = SOURCES[name]["size"] / 1e6
            raise CnnlabError(f"{name} is not on this machine (looked in {dataset_cache_dir(name)}); "
                              f"run `cnnlab data fetch {name}` (about {mb:.0f} MB)")
        if name == "cifar10":
            return load_cifar10(where, split)
        return load_cifar100(where, split, label)
    return load


for _name, _desc in (("cifar10", "CIFAR-10 tiny images, 50,000 train / 10,000 test, 32x32 RGB, "
                                 "10 classes (Krizhevsky 2009)"),
                     ("cifar100", "CIFAR-100 tiny images, 50,000 train / 10,000 test, 32x32 RGB, "
                                  "100 classes (Krizhevsky 2009)")):
    _src = SOURCES[_name]
    register_source(DownloadableDataset(
        name=_name,
        base_url=_src["url"].rsplit("/", 1)[0] + "/",
        files=(RemoteFile(_src["filename"], _src["sha256"], _src["size"]),),
        description=_desc,
        license="no explicit license; cite Krizhevsky, Learning Multiple Layers of Features "
                "from Tiny Images, 2009",
    ))
    register_dataset(_name, _named_loader(_name), description=_desc,
                     locate=lambda _n=_name: locate_cifar(_n))

register_dataset("cifar100-coarse", _named_loader("cifar100", "coarse"),
                 description="CIFAR-100 with its 20 coarse (superclass) labels",
                 locate=lambda: locate_cifar("cifar100"))
register_path_handler("cifar", is_cifar_path, load_cifar_path,
                      description="a CIFAR python-version archive (cifar-10-python.tar.gz, "
                                  "cifar-100-python.tar.gz) or its extracted folder")
