"""Packed data sets: every image of a split in one file, read by memory mapping.

Training from a packed file opens one file once; an image is a slice of a
``numpy.memmap``: no per-image file open, no decoding. Layout (little-endian)::

    offset 0    8 bytes   magic b"CNNLPACK"
    offset 8    uint32    format version (1)
    offset 12   uint32    L, length of the JSON header
    offset 16   32 bytes  sha256 of the payload (image bytes, then label bytes);
                          all zero when the file was written without a checksum
    offset 48   L bytes   JSON header, UTF-8: n, height, width, channels,
                          channel_axis (false for (N, H, W) images), dtype ("uint8"),
                          label_dtype ("<i8"), classes, name, images_offset,
                          labels_offset, checksum ("sha256" or null)
    images_offset         n * height * width * channels uint8, row-major (N, H, W, C)
    labels_offset         n int64 labels

Both offsets are multiples of 64. A truncated or damaged file raises
:class:`~cnnlab.errors.FileFormatError` naming the file and the byte offset.
"""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..errors import CnnlabError, FileFormatError, ShapeError
from ..io.atomic import atomic_write
from .dataset import ArrayDataset
from .registry import register_path_handler

MAGIC = b"CNNLPACK"
VERSION = 1
PREAMBLE = struct.Struct("<8sII32s")  # magic, version, JSON length, payload sha256
ALIGN = 64
SUFFIX = ".cnnpack"
_MAX_HEADER = 1 << 24
_CHUNK_BYTES = 1 << 24


def _align(offset: int) -> int:
    return -(-offset // ALIGN) * ALIGN


def _layout(header: dict) -> bytes:
    """Fill images_offset / labels_offset (which depend on the JSON length) -> JSON bytes."""
    image_bytes = header["n"] * header["height"] * header["width"] * header["channels"]
    header["images_offset"] = header["labels_offset"] = 0
    while True:
        text = json.dumps(header, sort_keys=True).encode("utf-8")
        images_offset = _align(PREAMBLE.size + len(text))
        labels_offset = _align(images_offset + image_bytes)
        if (images_offset, labels_offset) == (header["images_offset"], header["labels_offset"]):
            return text
        header["images_offset"], header["labels_offset"] = images_offset, labels_offset


def pack_dataset(dataset, path, checksum: bool = True, name: str | None = None,
                 progress: bool = False) -> Path:
    """Write ``dataset`` to the packed file ``path`` (atomically) and return the path.

    dataset: an ArrayDataset-like object (``images`` uint8 (N, H, W) or (N, H, W, C),
        ``labels``, ``classes``, ``name``), or a sized, indexable data set whose items
        are ``(image, label)`` and that has ``labels`` and ``classes`` (e.g. an
        ImageFolder: images are then decoded one at a time while writing).
    checksum: store the sha256 of the payload (checked by ``PackedDataset(path, verify=True)``).
    progress: show a tqdm bar counting images.
    """
    path = Path(path)
    labels = np.asarray(dataset.labels).astype("<i8")
    classes = [str(c) for c in getattr(dataset, "classes", [])]
    n = len(labels)
    images = getattr(dataset, "images", None)
    if images is not None:
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim not in (3, 4) or len(images) != n:
            raise ShapeError(f"pack_dataset needs uint8 images (N, H, W) or (N, H, W, C) with one "
                             f"label each, got {images.dtype} {images.shape} and {n} labels")
        shape = images.shape[1:]
    else:
        if n == 0:
            raise ShapeError("pack_dataset: an indexable data set must have at least one item")
        shape = np.asarray(dataset[0][0]).shape
        if len(shape) not in (2, 3):
            raise ShapeError(f"pack_dataset: images must be (H, W) or (H, W, C), got {shape}")
    header = {
        "n": n, "height": int(shape[0]), "width": int(shape[1]),
        "channels": int(shape[2]) if len(shape) == 3 else 1,
        "channel_axis": len(shape) == 3, "dtype": "uint8", "label_dtype": "<i8",
        "classes": classes, "name": str(name or getattr(dataset, "name", path.stem)),
        "checksum": "sha256" if checksum else None,
    }
    text = _layout(header)
    digest = hashlib.sha256()
    with atomic_write(path, "wb") as f:
        f.write(PREAMBLE.pack(MAGIC, VERSION, len(text), bytes(32)))
        f.write(text)
        f.write(bytes(header["images_offset"] - f.tell()))
        with tqdm(total=n, unit="img", desc=f"packing {path.name}", disable=not progress) as bar:
            for chunk in _image_chunks(dataset, images, shape, n):
                data = chunk.tobytes()
                digest.update(data)
                f.write(data)
                bar.update(len(chunk) if chunk.ndim == len(shape) + 1 else 1)
        f.write(bytes(header["labels_offset"] - f.tell()))
        data = labels.tobytes()
        digest.update(data)
        f.write(data)
        if checksum:
            f.seek(PREAMBLE.size - 32)
            f.write(digest.digest())
    return path


def _image_chunks(dataset, images, shape, n):
    if images is not None:
        per_chunk = max(1, _CHUNK_BYTES // max(1, int(np.prod(shape))))
        for start in range(0, n, per_chunk):
            yield np.ascontiguousarray(images[start:start + per_chunk])
        return
    files = getattr(dataset, "files", None)
    for i in range(n):
        image = np.asarray(dataset[i][0])
        if image.shape != shape or image.dtype != np.uint8:
            what = f"{files[i]}" if files is not None else f"item {i}"
            first = f"{files[0]}" if files is not None else "item 0"
            raise ShapeError(f"pack_dataset: {what} is {image.dtype} {image.shape}, expected "
                             f"uint8 {shape} like {first}; give a fixed size (e.g. --size HxW)")
        yield np.ascontiguousarray(image)


def read_header(path) -> dict:
    """Read and check the header of packed file ``path`` -> dict (with ``sha256`` bytes)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            pre = f.read(PREAMBLE.size)
            if len(pre) < PREAMBLE.size:
                raise FileFormatError(f"{path}: file ends at offset {len(pre)}, inside the "
                                      f"{PREAMBLE.size}-byte preamble; the file is truncated")
            magic, version, length, sha = PREAMBLE.unpack(pre)
            if magic != MAGIC:
                raise FileFormatError(f"{path}: bytes at offset 0 are {magic!r}, not {MAGIC!r}; "
                                      f"not a cnnlab packed file (make one with `cnnlab data pack`)")
            if version != VERSION:
                raise FileFormatError(f"{path}: format version {version} at offset 8; this cnnlab "
                                      f"reads version {VERSION}, upgrade cnnlab or re-pack")
            if length > _MAX_HEADER:
                raise FileFormatError(f"{path}: header length {length} at offset 12 is implausible; "
                                      f"the file is damaged")
            text = f.read(length)
    except OSError as e:
        raise FileFormatError(f"{path}: cannot read packed file ({e.strerror})") from None
    if len(text) < length:
        raise FileFormatError(f"{path}: file ends at offset {PREAMBLE.size + len(text)}, inside the "
                              f"{length}-byte header that starts at offset {PREAMBLE.size}; truncated")
    try:
        header = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        where = PREAMBLE.size + getattr(e, "pos", getattr(e, "start", 0))
        raise FileFormatError(f"{path}: header is not valid JSON (offset {where}); "
                              f"the file is damaged") from None
    _check_header(path, header)
    header["sha256"] = sha
    header["file_size"] = size
    return header


def _check_header(path: Path, h) -> None:
    ints = ("n", "height", "width", "channels", "images_offset", "labels_offset")
    if not isinstance(h, dict) or any(not isinstance(h.get(k), int) or h[k] < 0 for k in ints):
        raise FileFormatError(f"{path}: header at offset {PREAMBLE.size} lacks the fields "
                              f"{', '.join(ints)} as non-negative ints; the file is damaged")
    if h.get("dtype") != "uint8" or h.get("label_dtype") != "<i8":
        raise FileFormatError(f"{path}: header at offset {PREAMBLE.size} has dtype "
                              f"{h.get('dtype')!r} / label_dtype {h.get('label_dtype')!r}; "
                              f"only uint8 images and <i8 labels are supported")
    if not isinstance(h.get("classes"), list) or min(h["height"], h["width"], h["channels"]) < 1:
        raise FileFormatError(f"{path}: header at offset {PREAMBLE.size} has bad classes or image "
                              f"shape; the file is damaged")
    image_bytes = h["n"] * h["height"] * h["width"] * h["channels"]
    if h["images_offset"] < PREAMBLE.size or h["labels_offset"] < h["images_offset"] + image_bytes:
        raise FileFormatError(f"{path}: header offsets (images {h['images_offset']}, labels "
                              f"{h['labels_offset']}) overlap; the file is damaged")


class PackedDataset(ArrayDataset):
    """A packed file opened as an ArrayDataset whose ``images`` are a read-only view of a
    memory map (``images.base`` is the ``np.memmap``; nothing is read until used).

    ``images``: uint8 (N, H, W) or (N, H, W, C) backed by the file (pages are read on
    access); ``labels``: int64 (N,) in memory; ``classes``, ``name``, ``source`` (the
    path). Pickles as its path, so worker processes re-open the file instead of copying
    it. ``verify=True`` checks the payload sha256 (reads the whole file).
    """

    def __init__(self, path, verify: bool = False):
        path = Path(path)
        h = read_header(path)
        n, shape = h["n"], (h["height"], h["width"])
        if h.get("channel_axis", True):
            shape = shape + (h["channels"],)
        end = h["labels_offset"] + 8 * n
        if h["file_size"] < end:
            part = "image" if h["file_size"] < h["images_offset"] + n * int(np.prod(shape)) else "label"
            raise FileFormatError(
                f"{path}: file ends at offset {h['file_size']} but its header describes {n} images "
                f"{shape} ending at offset {end}; {part} data is missing (truncated copy?), "
                f"re-pack or copy the file again")
        if n:
            images = np.memmap(path, dtype=np.uint8, mode="r", offset=h["images_offset"], shape=(n,) + shape)
        else:
            images = np.zeros((0,) + shape, dtype=np.uint8)
        labels = np.fromfile(path, dtype="<i8", count=n, offset=h["labels_offset"]).astype(np.int64)
        bad = np.flatnonzero((labels < 0) | (labels >= max(len(h["classes"]), 1)))
        if h["classes"] and bad.size:
            i = int(bad[0])
            raise FileFormatError(f"{path}: label {labels[i]} of image {i} (offset "
                                  f"{h['labels_offset'] + 8 * i}) is outside 0..{len(h['classes']) - 1}; "
                                  f"the file is damaged")
        classes = h["classes"] or [str(c) for c in range(int(labels.max(initial=-1)) + 1)]
        self.path, self.header = path, h
        super().__init__(images, labels, classes, str(h.get("name", path.stem)), str(path))
        if verify:
            self.verify()

    def verify(self) -> None:
        """Recompute the payload sha256; FileFormatError if it differs from the stored one."""
        h = self.header
        if h.get("checksum") != "sha256":
            raise FileFormatError(f"{self.path} was packed without a checksum; nothing to verify")
        digest = hashlib.sha256()
        image_end = h["images_offset"] + self.images.size
        with open(self.path, "rb") as f:
            for start, stop in ((h["images_offset"], image_end),
                                (h["labels_offset"], h["labels_offset"] + 8 * len(self.labels))):
                f.seek(start)
                remaining = stop - start
                while remaining:
                    block = f.read(min(remaining, _CHUNK_BYTES))
                    if not block:
                        break
                    digest.update(block)
                    remaining -= len(block)
        if digest.digest() != h["sha256"]:
            end = h["labels_offset"] + 8 * len(self.labels)
            raise FileFormatError(
                f"{self.path}: payload (offset {h['images_offset']} to {end}) "
                f"does not match the sha256 stored at offset {PREAMBLE.size - 32}; the file is damaged")

    def __reduce__(self):
        return (PackedDataset, (str(self.path),))

    def __repr__(self) -> str:
        return f"PackedDataset({str(self.path)!r}, n={len(self)}, shape={self.images.shape[1:]})"

    __eq__ = object.__eq__
    __hash__ = object.__hash__


def is_packed_file(path) -> bool:
    """True when ``path`` is a file starting with the packed-format magic."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def load_packed(path, split: str = "train") -> ArrayDataset:
    """Registry handler. A folder holding ``train.cnnpack`` / ``test.cnnpack``: the split's
    file. A single packed file is one data set, used as the "train" split (as a single
    image folder is); asking it for "test" is an error that says how to add one.
    """
    path = Path(path)
    if path.is_dir():
        path = path / f"{split}{SUFFIX}"
        if not path.is_file():
            raise CnnlabError(f"{path.parent}: no {path.name}; pack that split with "
                              f"`cnnlab data pack SOURCE --split {split} -o {path}`")
    elif split != "train":
        raise CnnlabError(f"{path} is a single packed file (used as the train split); to have a "
                          f"{split} split put train{SUFFIX} and {split}{SUFFIX} in one folder and "
                          f"give the folder")
    return PackedDataset(path)


def is_packed_path(path) -> bool:
    """A packed file, or a folder with train.cnnpack / test.cnnpack."""
    path = Path(path)
    if path.is_dir():
        return any(is_packed_file(path / f"{s}{SUFFIX}") for s in ("train", "test"))
    return is_packed_file(path)



register_path_handler("packed", is_packed_path, load_packed,
                      description=f"a packed file (`cnnlab data pack`, *{SUFFIX}) or a folder "
                                  f"with train{SUFFIX} / test{SUFFIX}")
