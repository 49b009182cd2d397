"""The safetensors format, read and written by hand (no dependency on the package).

Layout of a file::

    bytes 0..8         N, the header length, unsigned 64-bit little-endian
    bytes 8..8+N       the header: a UTF-8 JSON object
                       {"<name>": {"dtype": "F32", "shape": [2, 3], "data_offsets": [b, e]},
                        ..., "__metadata__": {"<str>": "<str>", ...}}   (metadata optional)
    bytes 8+N..end     the byte buffer; tensor <name> is buffer[b:e], C order, little-endian

Rules checked on load (a file that breaks one raises FileFormatError naming the file):
the header fits in the file and is at most 100 MB of JSON object with no duplicate
keys; each dtype is known; each shape is a list of non-negative integers; each
e - b equals prod(shape) * itemsize; sorted by offset the ranges start at 0, touch
without gap or overlap and end exactly at the end of the buffer (a shorter file is
reported as truncated, with the byte offset where data is missing).

The writer pads the header with spaces to a multiple of 8 bytes and lays tensors out
by decreasing itemsize, so every tensor is aligned to its element size in the file;
the header lists tensors in the caller's order, which ``load_safetensors`` keeps.
BF16 tensors are widened to float32 on load (numpy has no bfloat16).
"""
import json
import math
import os
import struct
import sys

import numpy as np

from cnnlab.errors import FileFormatError
from cnnlab.io.atomic import atomic_write

MAX_HEADER_BYTES = 100 * 1024 * 1024

# safetensors dtype name -> little-endian numpy dtype of the stored bytes
_STORED = {
    "BOOL": np.dtype("?"),
    "U8": np.dtype("u1"),
    "I8": np.dtype("i1"),
    "U16": np.dtype("<u2"),
    "I16": np.dtype("<i2"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),     # raw bfloat16 bits, widened to float32 after reading
    "U32": np.dtype("<u4"),
    "I32": np.dtype("<i4"),
    "F32": np.dtype("<f4"),
    "U64": np.dtype("<u8"),
    "I64": np.dtype("<i8"),
    "F64": np.dtype("<f8"),
}
_NAME_OF = {np.dtype(np.bool_): "BOOL", np.dtype(np.uint8): "U8", np.dtype(np.int8): "I8",
            np.dtype(np.uint16): "U16", np.dtype(np.int16): "I16", np.dtype(np.float16): "F16",
            np.dtype(np.uint32): "U32", np.dtype(np.int32): "I32", np.dtype(np.float32): "F32",
            np.dtype(np.uint64): "U64", np.dtype(np.int64): "I64", np.dtype(np.float64): "F64"}


def bfloat16_bits_to_float32(bits):
    """uint16 array of bfloat16 bit patterns -> float32 array (exact: bf16 is f32's top half)."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def _check_metadata(metadata, where):
    if metadata is None:
        return None
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise FileFormatError(f"{where}: __metadata__ must map strings to strings")
    return dict(metadata)


def save_safetensors(path, tensors, metadata=None):
    """Write ``tensors`` (dict name -> numpy array) to ``path`` atomically.

    Supported dtypes: bool, uint8/16/32/64, int8/16/32/64, float16/32/64. ``metadata``
    is an optional dict of str -> str stored under ``__metadata__``. Raises TypeError
    for an unsupported dtype and ValueError for a bad name or metadata.
    """
    if metadata is not None and (not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
        raise ValueError("safetensors metadata must be a dict of str -> str "
                         "(encode other values with json.dumps)")
    arrays = {}
    for name, value in tensors.items():
        if not isinstance(name, str) or name == "__metadata__":
            raise ValueError(f"tensor name {name!r} is not allowed in a safetensors file")
        array = np.asarray(value)
        if array.dtype.newbyteorder("=") not in _NAME_OF:
            raise TypeError(f"tensor {name!r} has dtype {array.dtype}, which safetensors "
                            f"cannot store; supported: bool, (u)int8-64, float16/32/64")
        # astype, not ascontiguousarray: that one turns 0-d arrays into 1-d
        arrays[name] = array.astype(array.dtype.newbyteorder("<"), order="C", copy=False)

    # data layout: larger items first, so each tensor starts at a multiple of its itemsize
    layout = sorted(arrays, key=lambda n: -arrays[n].dtype.itemsize)
    offsets, position = {}, 0
    for name in layout:
        offsets[name] = (position, position + arrays[name].nbytes)
        position += arrays[name].nbytes

    header = {}
    if metadata is not None:
        header["__metadata__"] = dict(metadata)
    for name, array in arrays.items():
        header[name] = {"dtype": _NAME_OF[array.dtype.newbyteorder("=")],
                        "shape": list(array.shape),
                        "data_offsets": list(offsets[name])}
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)

    with atomic_write(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for name in layout:
            f.write(memoryview(arrays[name].reshape(-1).view(np.uint8)))


def _no_duplicates(pairs):
    result = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _parse_entry(name, entry, where):
    """Validate one header entry; returns (stored dtype, shape, begin, end, is_bf16)."""
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise FileFormatError(f"{where}: entry {name!r} must have exactly the keys "
                              f"dtype, shape, data_offsets; got {entry!r}")
    dtype_name, shape, data_offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype_name not in _STORED:
        raise FileFormatError(f"{where}: tensor {name!r} has dtype {dtype_name!r}; "
                              f"supported: {', '.join(_STORED)}")
    if (not isinstance(shape, list)
            or not all(type(d) is int and d >= 0 for d in shape)):
        raise FileFormatError(f"{where}: tensor {name!r} has shape {shape!r}; "
                              f"expected a list of non-negative integers")
    if (not isinstance(data_offsets, list) or len(data_offsets) != 2
            or not all(type(o) is int and o >= 0 for o in data_offsets)
            or data_offsets[0] > data_offsets[1]):
        raise FileFormatError(f"{where}: tensor {name!r} has data_offsets {data_offsets!r}; "
                              f"expected [begin, end] with 0 <= begin <= end")
    stored = _STORED[dtype_name]
    begin, end = data_offsets
    expected = math.prod(shape) * stored.itemsize
    if end - begin != expected:
        raise FileFormatError(
            f"{where}: tensor {name!r} ({dtype_name}, shape {shape}) needs {expected} bytes "
            f"but its data_offsets [{begin}, {end}] span {end - begin}")
    return stored, tuple(shape), begin, end, dtype_name == "BF16"


def read_safetensors_header(path):
    """Read and validate the header of a safetensors file without reading tensor data.

    Returns (entries, metadata, data_start): entries is a dict name -> (stored dtype,
    shape, begin, end, is_bf16) in header order with offsets relative to the buffer,
    data_start the absolute file offset where the buffer begins.
    """
    where = os.fspath(path)
    try:
        file_size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise FileFormatError(f"{where}: truncated safetensors file: {len(head)} bytes, "
                                      f"the 8-byte header length is missing")
            (header_len,) = struct.unpack("<Q", head)
            if header_len > MAX_HEADER_BYTES:
                raise FileFormatError(f"{where}: safetensors header length {header_len} exceeds "
                                      f"{MAX_HEADER_BYTES} bytes; not a safetensors file?")
            if 8 + header_len > file_size:
                raise FileFormatError(f"{where}: truncated safetensors file: header needs bytes "
                                      f"8..{8 + header_len} but the file ends at byte {file_size}")
            raw = f.read(header_len)
    except OSError as err:
        raise FileFormatError(f"cannot read {where}: {err.strerror or err}") from err
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError) as err:
        raise FileFormatError(f"{where}: safetensors header is not valid: {err}") from err
    if not isinstance(header, dict):
        raise FileFormatError(f"{where}: safetensors header must be a JSON object")

    metadata = _check_metadata(header.pop("__metadata__", None), where)
    entries = {name: _parse_entry(name, entry, where) for name, entry in header.items()}

    data_start = 8 + header_len
    buffer_len = file_size - data_start
    position = 0
    for name, (_, _, begin, end, _) in sorted(entries.items(), key=lambda kv: kv[1][2:4]):
        if begin != position:
            problem = "overlaps the previous tensor" if begin < position else "leaves a gap"
            raise FileFormatError(f"{where}: tensor {name!r} starts at buffer offset {begin}, "
                                  f"expected {position}: it {problem}")
        position = end
    if position > buffer_len:
        raise FileFormatError(f"{where}: truncated safetensors file: tensor data runs to byte "
                              f"{data_start + position} but the file ends at byte {file_size}")
    if position < buffer_len:
        raise FileFormatError(f"{where}: {buffer_len - position} unexpected bytes after the last "
                              f"tensor (data ends at byte {data_start + position} of {file_size})")
    return entries, metadata, data_start


def load_safetensors(path):
    """Read a safetensors file -> (dict name -> numpy array, metadata dict or None).

    Arrays come back in the header's order, native byte order, C-contiguous and
    writable; BF16 becomes float32. Any malformed or truncated file raises
    FileFormatError naming the file and the problem.
    """
    where = os.fspath(path)
    entries, metadata, data_start = read_safetensors_header(path)
    tensors = {}
    with open(path, "rb") as f:
        for name, (stored, shape, begin, end, is_bf16) in entries.items():
            try:
                array = np.empty(shape, dtype=stored)
            except ValueError as err:           # more dimensions or elements than numpy has
                raise FileFormatError(f"{where}: tensor {name!r} has an impossible shape "
                                      f"{list(shape)} ({err})") from None
            f.seek(data_start + begin)
            view = memoryview(array.reshape(-1).view(np.uint8))
            got = f.readinto(view) if view.nbytes else 0
            if got != end - begin:
                raise FileFormatError(f"{where}: truncated safetensors file: tensor {name!r} "
                                      f"missing bytes from offset {data_start + begin + got}")
            if is_bf16:
                array = bfloat16_bits_to_float32(array)
            elif sys.byteorder == "big" and stored.itemsize > 1:
                array = array.astype(stored.newbyteorder("="))
            tensors[name] = array
    return tensors, metadata
