"""The data sets cnnlab can download, where from, and their published sha256 sums.

``cnnlab data fetch NAME`` calls :func:`fetch_dataset`, which downloads each of
the data set's files with :func:`cnnlab.download.fetch` into
``cache_dir()/datasets/NAME`` (or a folder you choose).

Mirrors: when ``$CNNLAB_MIRROR`` is set (e.g. ``http://127.0.0.1:8000`` or an
in-house server), each file is fetched from ``$CNNLAB_MIRROR/NAME/FILENAME``
instead of its publisher's URL. The sha256 sums below are still enforced, so a
mirror can only serve the same bytes.

Other areas add their own entries with :func:`register_source`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cnnlab.download import cache_dir, fetch
from cnnlab.errors import CnnlabError


@dataclass(frozen=True)
class RemoteFile:
    """One file of a data set: its name, published sha256 and size in bytes."""

    filename: str
    sha256: str
    size: int


@dataclass(frozen=True)
class DownloadableDataset:
    """A data set made of files under one base URL (which ends in '/')."""

    name: str
    base_url: str
    files: tuple[RemoteFile, ...]
    description: str
    license: str

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def url(self, remote: RemoteFile) -> str:
        """``$CNNLAB_MIRROR/NAME/FILENAME`` when a mirror is set, else the publisher's URL."""
        mirror = os.environ.get("CNNLAB_MIRROR", "").strip()
        if mirror:
            return f"{mirror.rstrip('/')}/{self.name}/{remote.filename}"
        return self.base_url + remote.filename


SOURCES: dict[str, DownloadableDataset] = {}


def register_source(source: DownloadableDataset) -> DownloadableDataset:
    """Make ``source`` downloadable by ``cnnlab data fetch source.name``."""
    SOURCES[source.name] = source
    return source


def get_source(name: str) -> DownloadableDataset:
    """The entry for ``name``; CnnlabError listing the choices if there is none."""
    try:
        return SOURCES[name]
    except KeyError:
        raise CnnlabError(f"no downloadable data set named {name!r}; choose one of: "
                          f"{', '.join(sorted(SOURCES))}") from None


def dataset_cache_dir(name: str) -> Path:
    """Where ``cnnlab data fetch NAME`` puts its files: ``cache_dir()/datasets/NAME``."""
    return cache_dir() / "datasets" / name


def fetch_dataset(name: str, dest_dir: str | os.PathLike | None = None, *,
                  progress: bool = True) -> Path:
    """Download every file of data set ``name`` (skipping verified ones) -> the folder."""
    source = get_source(name)
    folder = Path(dest_dir) if dest_dir is not None else dataset_cache_dir(name)
    for remote in source.files:
        fetch(source.url(remote), folder / remote.filename, remote.sha256,
              progress=progress, desc=f"{name} {remote.filename}")
    return folder


# MNIST (Yann LeCun, Corinna Cortes, Christopher J.C. Burges). The original files
# of yann.lecun.com/exdb/mnist, from the mirror torchvision uses. Published md5
# sums (torchvision): f68b3c2dcbeaaa9fbdd348bbdeb94873, d53e105ee54ea40749a09fcbcd1e9432,
# 9fb629c4189551a2d022fa330f9573f3, ec29112dd5afa0611ce80d1b7f02629c (order below);
# sizes as on LeCun's page. The sha256 sums are those published by many
# independent projects that download these same files (from LeCun's site, this
# mirror and storage.googleapis.com/cvdf-datasets/mnist), all in agreement. They
# could NOT be recomputed here: no copy of full MNIST is reachable offline.
register_source(DownloadableDataset(
    name="mnist",
    base_url="https://ossci-datasets.s3.amazonaws.com/mnist/",
    files=(
        RemoteFile("train-images-idx3-ubyte.gz",
                   "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", 9_912_422),
        RemoteFile("train-labels-idx1-ubyte.gz",
                   "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", 28_881),
        RemoteFile("t10k-images-idx3-ubyte.gz",
                   "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6", 1_648_877),
        RemoteFile("t10k-labels-idx1-ubyte.gz",
                   "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", 4_542),
    ),
    description="MNIST handwritten digits, 60,000 train + 10,000 test, 28x28 grayscale",
    license="CC BY-SA 3.0 (Yann LeCun, Corinna Cortes, Christopher J.C. Burges)",
))

# Fashion-MNIST (Han Xiao, Kashif Rasul, Roland Vollgraf; Zalando Research), from
# the official S3 bucket (its website endpoint offers plain http only; the sha256
# check protects the bytes). Published md5 sums, README of
# github.com/zalandoresearch/fashion-mnist: 8d4fb7e6c68d591d4c3dfef9ec88bf0d,
# 25c81989df183df01b3e8a0aad5dffbe, bef4ecab320f06d8554ea6380940ec79,
# bb300cfdad3c16e7a12a480ee83cd310 (order below). The sha256 sums below were
# checked locally: Debian's dataset-fashion-mnist ships these files with the gzip
# name field dropped and a new mtime (hence 23-24 bytes shorter, other hashes);
# putting back the name and the original mtime (1504176606 for train-*,
# 1504176627 for t10k-*) rebuilds files whose md5 equals the published md5, and
# their sha256 equal the values below, which TensorFlow Datasets also publishes.
# cnnlab reads the Debian files directly (they decompress to the same IDX data).
register_source(DownloadableDataset(
    name="fashion-mnist",
    base_url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    files=(
        RemoteFile("train-images-idx3-ubyte.gz",
                   "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84", 26_421_880),
        RemoteFile("train-labels-idx1-ubyte.gz",
                   "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845", 29_515),
        RemoteFile("t10k-images-idx3-ubyte.gz",
                   "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073", 4_422_102),
        RemoteFile("t10k-labels-idx1-ubyte.gz",
                   "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5", 5_148),
    ),
    description="Fashion-MNIST Zalando article images, 60,000 train + 10,000 test, "
                "28x28 grayscale, 10 classes",
    license="MIT (Zalando SE)",
))
