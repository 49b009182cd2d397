"""IDX files, the format of MNIST and Fashion-MNIST: read, write, find a split in a folder.

Layout (all integers big-endian)::

    byte 0-1   0x00 0x00
    byte 2     element type: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
               0x0D float32, 0x0E float64
    byte 3     number of dimensions d
    byte 4..   d sizes, uint32 each
    then       prod(sizes) elements, row-major, big-endian

Files may be gzip-compressed (recognised by their first two bytes, whatever
their name). A file whose header or size does not add up raises
:class:`~cnnlab.errors.FileFormatError` naming the file and the byte offset
(in the uncompressed stream) where it goes wrong.
"""
from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np

from cnnlab.errors import FileFormatError

DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
CODES = {np.dtype(v).newbyteorder("="): k for k, v in DTYPES.items()}
GZIP_MAGIC = b"\x1f\x8b"
CHUNK_BYTES = 1 << 14  # gzip is fed in 16 KiB steps: errors name the step's byte range


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (raw or .gz) -> array of its sizes, native byte order.

    MNIST images come back uint8 (N, 28, 28), labels uint8 (N,).
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise FileFormatError(f"{path}: file ends at byte {len(data)}, inside the 4-byte IDX "
                              f"header; the file is truncated, download it again")
    if data[0:2] != b"\x00\x00":
        raise FileFormatError(f"{path}: bytes 0-1 are {data[0:2].hex()}, an IDX file starts "
                              f"with 0000; this is not an IDX file")
    code, ndim = data[2], data[3]
    if code not in DTYPES:
        raise FileFormatError(f"{path}: byte 2 holds element type 0x{code:02X}, expected one of "
                              f"{', '.join(f'0x{c:02X}' for c in DTYPES)}; not an IDX file")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise FileFormatError(f"{path}: file ends at byte {len(data)}, inside the header of "
                              f"{header} bytes for {ndim} dimensions; the file is truncated")
    shape = tuple(int(s) for s in np.frombuffer(data, ">u4", count=ndim, offset=4))
    dtype = np.dtype(DTYPES[code])
    expected = header + math.prod(shape) * dtype.itemsize      # exact: no int64 overflow
    if len(data) < expected:
        raise FileFormatError(f"{path}: data ends at byte {len(data)} but the header (shape "
                              f"{shape}, {dtype.newbyteorder('=').name}) needs {expected} bytes; "
                              f"the file is truncated, download it again")
    if len(data) > expected:
        raise FileFormatError(f"{path}: {len(data) - expected} unexpected bytes from byte "
                              f"{expected} on, after the data of shape {shape}; the file is corrupt")
    array = np.frombuffer(data, dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array) -> Path:
    """Write ``array`` (any shape, one of the IDX element types) as IDX; gzip if path ends in .gz.

    Written to a temporary file first and renamed, so a failure leaves no partial file.
    """
    path = Path(path)
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    if native not in CODES:
        raise FileFormatError(f"{path}: IDX cannot store {array.dtype}; convert to one of "
                              f"uint8, int8, int16, int32, float32, float64")
    if array.ndim > 255:
        raise FileFormatError(f"{path}: IDX stores at most 255 dimensions, got {array.ndim}")
    head = bytes([0, 0, CODES[native], array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    body = np.ascontiguousarray(array, dtype=native.newbyteorder(">")).tobytes()
    tmp = path.with_name(f".{path.name}.part")
    try:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(tmp, "wb") as f:
            f.write(head)
            f.write(body)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def find_idx_split(folder: str | os.PathLike, split: str) -> tuple[Path, Path] | None:
    """Locate (images, labels) IDX files for ``split`` in ``folder``, or None if absent.

    Accepts the MNIST names and their common variants, raw or .gz:
    ``train-images-idx3-ubyte[.gz]``, ``train-images.idx3-ubyte``; "test" looks
    for ``t10k-*`` then ``test-*``. Raises FileFormatError if a name matches
    more than one file (e.g. both .gz and raw copies that differ in name only).
    """
    folder = Path(folder)
    prefixes = {"train": ("train",), "test": ("t10k", "test")}[split]
    for prefix in prefixes:
        found = [_one(folder, prefix, kind) for kind in ("images", "labels")]
        if all(found):
            return found[0], found[1]
    return None


def _one(folder: Path, prefix: str, kind: str) -> Path | None:
    rank = "idx3" if kind == "images" else "idx1"
    names = [p for p in sorted(folder.iterdir()) if p.is_file()
             and p.name.startswith(f"{prefix}-{kind}") and rank in p.name]
    raw = [p for p in names if not p.name.endswith(".gz")]
    choice = raw or names  # prefer an unpacked copy: no decompression
    if len(choice) > 1:
        raise FileFormatError(f"{folder}: several {prefix} {kind} files "
                              f"({', '.join(p.name for p in choice)}); keep one")
    return choice[0] if choice else None


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when it starts with the gzip magic."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError as e:
        raise FileFormatError(f"{path}: no such file") from e
    except IsADirectoryError as e:
        raise FileFormatError(f"{path}: is a folder, expected an IDX file") from e
    return _gunzip(path, raw) if raw[:2] == GZIP_MAGIC else raw


def _gunzip(path: Path, raw: bytes) -> bytes:
    """Decompress every gzip member of ``raw``; errors give the compressed byte offset."""
    out, pos, view = bytearray(), 0, memoryview(raw)
    while pos < len(raw):
        if raw[pos:pos + 2] != GZIP_MAGIC:
            raise FileFormatError(f"{path}: {len(raw) - pos} unexpected bytes from byte {pos} "
                                  f"on, after the gzip data; the file is corrupt")
        inflater, start = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS), pos
        try:
            while start < len(raw) and not inflater.eof:
                chunk = view[start:start + CHUNK_BYTES]
                out += inflater.decompress(chunk)
                start += len(chunk)
        except zlib.error as e:
            raise FileFormatError(
                f"{path}: corrupt gzip data in bytes {start}..{start + len(chunk)} ({e}), after "
                f"{len(out)} uncompressed bytes; download the file again") from e
        if not inflater.eof:
            raise FileFormatError(
                f"{path}: gzip data stops at byte {len(raw)} before its end marker, after "
                f"{len(out)} uncompressed bytes; the file is truncated, download it again")
        pos = start - len(inflater.unused_data)
    return bytes(out)
