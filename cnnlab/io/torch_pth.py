"""PyTorch ``.pth`` state dicts read into numpy without importing torch.

Two on-disk formats exist (both end in .pth/.pt):

**zip** (``torch.save`` since 1.6): a zip archive (entries stored uncompressed) under
one top folder ``<prefix>/``::

    <prefix>/data.pkl      the object, pickled (protocol 2)
    <prefix>/data/<key>    raw bytes of storage <key>
    <prefix>/byteorder     "little" or "big" (absent in early files: little)
    <prefix>/version, .format_version, .storage_alignment, .data/serialization_id

Storages are persistent ids ``('storage', storage_type, key, location, numel)``;
for ``torch.storage.UntypedStorage`` numel counts bytes.

**legacy** (``torch.save`` before 1.6, ``_use_new_zipfile_serialization=False``,
and the old published files such as torchvision's ``vgg16-397923af.pth`` /
``vgg19-dcbb9e9d.pth``): a sequence of pickles in one file::

    pickle  0x1950a86a20f9469cfc6c        magic number
    pickle  1001                          protocol version
    pickle  {protocol_version, little_endian, type_sizes}   sys_info
    pickle  the object; persistent ids ('storage', storage_type, root_key, location,
            numel, view_metadata), view_metadata None or (view_key, offset, size)
    pickle  list of storage keys, in the order their data follows
    then per key: int64 little-endian element count, then count * itemsize raw bytes

Tensors appear in the object pickle as ``torch._utils._rebuild_tensor_v2(storage,
storage_offset, size, stride, requires_grad, backward_hooks[, metadata])`` (torch
>= 0.4), ``_rebuild_tensor(storage, offset, size, stride)`` (0.3),
``_rebuild_tensor_v3(..., dtype[, metadata])`` (dtypes without a legacy storage
class, e.g. uint16), or -- in the oldest files -- ``torch.FloatTensor()`` followed by
BUILD with state ``(storage, offset, size, stride)``. Offsets, sizes and strides count
elements. Those names, the storage classes, torch dtypes and
``collections.OrderedDict`` are the only globals allowed (see safe_pickle); each maps
to a small stand-in here that records (storage, offset, size, stride, dtype). Once the
state dict is picked out of what the pickle held, its storages are read one at a time
and each tensor becomes ``as_strided`` over the storage bytes, copied to a C-contiguous
array (so views that shared a storage in torch no longer share memory).
"""
import collections
import io
import math
import os
import struct
import types
import zipfile
import zlib

import numpy as np

from cnnlab.errors import FileFormatError
from cnnlab.io.safe_pickle import restricted_load
from cnnlab.io.safetensors import bfloat16_bits_to_float32

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001
_CHUNK = 16 << 20               # zip members are read in pieces of this size
MAX_EXPANDED_BYTES = 64 << 20   # larger than its storage only up to this (no memory bombs)

# torch dtype name -> numpy dtype of the stored elements (bfloat16: raw uint16 bits)
_ELEMENT = {
    "float32": np.dtype("<f4"), "float64": np.dtype("<f8"), "float16": np.dtype("<f2"),
    "bfloat16": np.dtype("<u2"), "int64": np.dtype("<i8"), "int32": np.dtype("<i4"),
    "int16": np.dtype("<i2"), "int8": np.dtype("i1"), "uint8": np.dtype("u1"),
    "bool": np.dtype("?"), "uint16": np.dtype("<u2"), "uint32": np.dtype("<u4"),
    "uint64": np.dtype("<u8"), "complex64": np.dtype("<c8"), "complex128": np.dtype("<c16"),
}
_STORAGE_CLASSES = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8",
    "BoolStorage": "bool", "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
}


class _StorageType:
    """Stand-in for ``torch.FloatStorage`` etc.: names the element dtype, nothing else."""

    def __init__(self, name, dtype_name):
        self.name, self.dtype_name = name, dtype_name

    def __repr__(self):
        return f"torch.{self.name}"


class _TorchDtype:
    """Stand-in for ``torch.float32`` etc. (the dtype argument of ``_rebuild_tensor_v3``)."""

    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return f"torch.{self.name}"


class _Storage:
    """Bytes [byte_offset, byte_offset + nbytes) of root storage ``key``."""

    def __init__(self, key, dtype_name, byte_offset, nbytes):
        self.key, self.dtype_name = key, dtype_name
        self.byte_offset, self.nbytes = byte_offset, nbytes


class _TensorRef:
    """A tensor as the pickle describes it: storage + element offset, size and stride."""
    storage = None

    def _set(self, storage, storage_offset, size, stride, dtype_name):
        if not isinstance(storage, _Storage):
            raise FileFormatError(f"tensor refers to a {type(storage).__name__}, not a storage")
        if not isinstance(size, (tuple, list)) or not isinstance(stride, (tuple, list)):
            raise FileFormatError(f"bad tensor size {size!r} / stride {stride!r}")
        size, stride = tuple(size), tuple(stride)
        if (type(storage_offset) is not int or storage_offset < 0
                or len(size) != len(stride)
                or not all(type(n) is int and n >= 0 for n in size)
                or not all(type(s) is int and s >= 0 for s in stride)):
            raise FileFormatError(f"bad tensor geometry: offset {storage_offset!r}, "
                                  f"size {size!r}, stride {stride!r}")
        if dtype_name not in _ELEMENT:
            raise FileFormatError(f"unsupported tensor dtype {dtype_name}")
        self.storage, self.offset, self.size, self.stride = storage, storage_offset, size, stride
        self.dtype_name = dtype_name
        return self


class _LegacyTensor(_TensorRef):
    """Stand-in for ``torch.FloatTensor`` etc. in the oldest files: ``FloatTensor()``
    then BUILD with state ``(storage, storage_offset, size, stride)``."""
    dtype_name = None

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) != 4:
            raise FileFormatError("legacy tensor state must be (storage, offset, size, stride)")
        self._set(*state, self.dtype_name)


def _rebuild_tensor(storage, storage_offset, size, stride):
    dtype_name = storage.dtype_name if isinstance(storage, _Storage) else None
    return _TensorRef()._set(storage, storage_offset, size, stride, dtype_name)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       dtype, metadata=None):
    if not isinstance(dtype, _TorchDtype):
        raise FileFormatError(f"_rebuild_tensor_v3 needs a torch dtype, got {type(dtype).__name__}")
    return _TensorRef()._set(storage, storage_offset, size, stride, dtype.name)


def _rebuild_parameter(data, requires_grad, backward_hooks):
    return data


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
    return data


def _allowed_globals():
    """The only globals a .pth may name, each mapped to a stand-in above."""
    allowed = {("collections", "OrderedDict"): collections.OrderedDict}
    for function in (_rebuild_tensor, _rebuild_tensor_v2, _rebuild_tensor_v3,
                     _rebuild_parameter, _rebuild_parameter_with_state):
        allowed[("torch._utils", function.__name__)] = function
    for storage_name, dtype_name in _STORAGE_CLASSES.items():
        storage_type = _StorageType(storage_name, dtype_name)
        tensor_name = storage_name.replace("Storage", "Tensor")
        tensor_type = type(tensor_name, (_LegacyTensor,), {"dtype_name": dtype_name})
        for module in ("torch", "torch.cuda"):       # files saved from a GPU name torch.cuda.*
            allowed[(module, storage_name)] = storage_type
            allowed[(module, tensor_name)] = tensor_type
    untyped = _StorageType("UntypedStorage", "uint8")
    allowed[("torch", "UntypedStorage")] = untyped
    allowed[("torch.storage", "UntypedStorage")] = untyped
    for name in _ELEMENT:
        allowed[("torch", name)] = _TorchDtype(name)
    return allowed


ALLOWED_GLOBALS = types.MappingProxyType(_allowed_globals())
_HINT = ("a .pth must hold only tensors (a state dict); if it is a whole pickled model, "
         "re-save it with torch.save(model.state_dict(), path)")


def _text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else value


class _Pickled:
    """Storages declared by one file's persistent ids (keys as str)."""

    def __init__(self, where):
        self.where = where
        self.roots = {}     # root key -> _Storage covering the whole root
        self.views = {}     # legacy view key -> _Storage

    def _root(self, storage_type, key, numel):
        key = str(_text(key))
        if not isinstance(storage_type, _StorageType):
            raise FileFormatError(f"{self.where}: storage {key!r} has type "
                                  f"{type(storage_type).__name__}, expected a torch storage class")
        if type(numel) is not int or numel < 0:
            raise FileFormatError(f"{self.where}: storage {key!r} has size {numel!r}")
        nbytes = numel * _ELEMENT[storage_type.dtype_name].itemsize
        root = self.roots.get(key)
        if root is None:
            root = self.roots[key] = _Storage(key, storage_type.dtype_name, 0, nbytes)
        elif root.nbytes != nbytes:
            raise FileFormatError(f"{self.where}: storage {key!r} is declared with "
                                  f"{root.nbytes} and with {nbytes} bytes")
        return root

    def load_zip_id(self, pid):
        """('storage', storage_type, key, location, numel) -> _Storage."""
        if not isinstance(pid, tuple) or len(pid) != 5 or _text(pid[0]) != "storage":
            raise FileFormatError(f"{self.where}: unexpected persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        return self._root(storage_type, key, numel)

    def load_legacy_id(self, pid):
        """('storage', storage_type, root_key, location, numel, view_metadata) -> _Storage."""
        kind = _text(pid[0]) if isinstance(pid, tuple) and pid else None
        if kind == "module":
            raise FileFormatError(f"{self.where} holds a pickled nn.Module, not a state dict; "
                                  f"re-save it with torch.save(model.state_dict(), path)")
        if kind != "storage" or len(pid) != 6:
            raise FileFormatError(f"{self.where}: unexpected persistent id {pid!r}")
        _, storage_type, key, _location, numel, view = pid
        root = self._root(storage_type, key, numel)
        if view is None:
            return root
        if (not isinstance(view, tuple) or len(view) != 3
                or not all(type(v) is int and v >= 0 for v in view[1:])):
            raise FileFormatError(f"{self.where}: bad storage view {view!r}")
        view_key, offset, size = str(_text(view[0])), view[1], view[2]
        itemsize = _ELEMENT[root.dtype_name].itemsize
        if (offset + size) * itemsize > root.nbytes:
            raise FileFormatError(f"{self.where}: storage view {view_key!r} [{offset}, "
                                  f"{offset + size}) lies outside storage {root.key!r}")
        if view_key not in self.views:
            self.views[view_key] = _Storage(root.key, root.dtype_name, offset * itemsize,
                                            size * itemsize)
        return self.views[view_key]


def _is_tensor(value):
    return isinstance(value, _TensorRef) and value.storage is not None


def _choose_state_dict(obj, where):
    """The dict of tensors inside what the pickle held: the object itself, or the value
    under 'state_dict' or 'model' of a checkpoint dict. Returns [(name, _TensorRef)]."""
    candidates = [obj]
    if isinstance(obj, dict):
        candidates += [obj[k] for k in ("state_dict", "model") if isinstance(obj.get(k), dict)]
    for candidate in candidates:
        if isinstance(candidate, dict) and all(_is_tensor(v) for v in candidate.values()):
            bad_keys = [k for k in candidate if not isinstance(k, str)]
            if bad_keys:
                raise FileFormatError(f"{where}: state dict key {bad_keys[0]!r} is not a string")
            return list(candidate.items())
    if isinstance(obj, dict):
        specific = candidates[-1]           # the 'state_dict' / 'model' entry when there is one
        key, value = next((k, v) for k, v in specific.items() if not _is_tensor(v))
        raise FileFormatError(
            f"{where} does not hold a state dict of tensors: entry {key!r} is a "
            f"{type(value).__name__} (top-level keys: {list(obj)[:8]})")
    raise FileFormatError(f"{where} holds a {type(obj).__name__}, not a state dict (a dict "
                          f"of tensors, possibly under 'state_dict' or 'model')")


def _is_c_contiguous(shape, stride):
    expected = 1
    for n, s in zip(reversed(shape), reversed(stride)):
        if n != 1 and s != expected:
            return False
        expected *= n
    return True


def _build(where, tensor, data, big_endian, owned=False):
    """Numpy array for ``tensor`` from ``data``, the uint8 bytes of its root storage.

    owned: ``data`` is a writable buffer no other tensor uses, so a tensor that is
    exactly the whole storage in C order can be a view of it instead of a copy.
    """
    try:
        return _build_array(where, tensor, data, big_endian, owned)
    except ValueError as err:       # more dimensions or elements than numpy can hold
        if isinstance(err, FileFormatError):
            raise
        raise FileFormatError(f"{where}: a tensor of shape {list(tensor.size)} cannot be "
                              f"built ({err})") from None


def _build_array(where, tensor, data, big_endian, owned):
    storage = tensor.storage
    element = _ELEMENT[tensor.dtype_name].newbyteorder(">" if big_endian else "<")
    native = element.newbyteorder("=")
    available = storage.nbytes // element.itemsize
    shape, stride, offset = tensor.size, tensor.stride, tensor.offset
    if 0 in shape:
        array = np.empty(shape, dtype=native)
    else:
        last = offset + sum((n - 1) * s for n, s in zip(shape, stride))
        numel = math.prod(shape)
        if numel > available and numel * element.itemsize > MAX_EXPANDED_BYTES:
            raise FileFormatError(
                f"{where}: a tensor of shape {list(shape)} repeats the {available} elements "
                f"of storage {storage.key!r} (an expanded view); cnnlab does not materialise "
                f"expanded views over {MAX_EXPANDED_BYTES >> 20} MiB")
        if last >= available:
            raise FileFormatError(
                f"{where}: a tensor of shape {list(shape)} (offset {offset}, stride "
                f"{list(stride)}) reads element {last} of storage {storage.key!r}, which "
                f"holds {available}")
        start = storage.byte_offset
        flat = data[start:start + available * element.itemsize].view(element)
        if (owned and element == native and start == 0 and offset == 0
                and numel * element.itemsize == len(data) and _is_c_contiguous(shape, stride)):
            array = flat.reshape(shape)          # the tensor is the whole buffer: no copy
        else:
            strided = np.lib.stride_tricks.as_strided(
                flat[offset:], shape=shape, strides=[s * element.itemsize for s in stride],
                writeable=False)
            array = np.array(strided, dtype=native, order="C")
    if tensor.dtype_name == "bfloat16":
        array = bfloat16_bits_to_float32(array)
    return array


def _assemble(where, entries, read_root, keys_in_order, big_endian=False):
    """Read each root storage the entries use (once, in file order) and build the arrays."""
    by_root = collections.defaultdict(list)
    for index, (_, tensor) in enumerate(entries):
        by_root[tensor.storage.key].append(index)
    arrays = [None] * len(entries)
    for key in keys_in_order:
        data = read_root(key)
        indices = by_root.pop(key, ())
        for index in indices:
            arrays[index] = _build(where, entries[index][1], data, big_endian,
                                   owned=len(indices) == 1)
    if by_root:
        raise FileFormatError(f"{where}: data for storage {next(iter(by_root))!r} is missing")
    return collections.OrderedDict((name, array) for (name, _), array in zip(entries, arrays))


def _load_zip(path, where):
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise FileFormatError(f"{where}: truncated or corrupt zip archive ({err}); "
                              f"download or save it again") from err
    with archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")
                   and n.count("/") == 1]
        if len(pickles) != 1:
            raise FileFormatError(f"{where}: zip archive has no single '<name>/data.pkl'; "
                                  f"not a PyTorch file")
        prefix = pickles[0][:-len("data.pkl")]

        def record(name):
            try:
                return archive.read(prefix + name)
            except KeyError:
                raise FileFormatError(f"{where}: archive entry {prefix + name!r} is "
                                      f"missing") from None
            except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as err:
                raise FileFormatError(f"{where}: archive entry {prefix + name!r} is truncated "
                                      f"or corrupt ({err})") from err

        big_endian = False
        if prefix + "byteorder" in archive.namelist():
            order = record("byteorder")
            if order not in (b"little", b"big"):
                raise FileFormatError(f"{where}: unknown byteorder {order!r}")
            big_endian = order == b"big"
        pickled = _Pickled(where)
        obj = restricted_load(io.BytesIO(record("data.pkl")), ALLOWED_GLOBALS,
                              pickled.load_zip_id, encoding="utf-8", source=where,
                              hint=_HINT)
        entries = _choose_state_dict(obj, where)

        def read_root(key):
            # straight into a fresh writable buffer, in chunks (zipfile checks the CRC)
            root, name = pickled.roots[key], f"{prefix}data/{key}"
            try:
                info = archive.getinfo(name)
            except KeyError:
                raise FileFormatError(f"{where}: archive entry {name!r} is missing") from None
            if info.file_size != root.nbytes:   # larger would be a decompression bomb
                raise FileFormatError(f"{where}: storage {name} has {info.file_size} bytes, "
                                      f"expected {root.nbytes}")
            data = np.empty(info.file_size, dtype=np.uint8)
            view, done = memoryview(data), 0
            try:
                with archive.open(info) as member:
                    while done < info.file_size:
                        got = member.readinto(view[done:done + _CHUNK])
                        if not got:
                            break
                        done += got
            except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as err:
                raise FileFormatError(f"{where}: archive entry {name!r} is truncated or "
                                      f"corrupt ({err})") from err
            if done != info.file_size:
                raise FileFormatError(f"{where}: archive entry {name!r} is truncated at "
                                      f"byte {done} of {info.file_size}")
            return data[:root.nbytes]

        used = dict.fromkeys(t.storage.key for _, t in entries)
        return _assemble(where, entries, read_root, list(used), big_endian)


def _load_legacy(path, where):
    with open(path, "rb") as f:
        magic = restricted_load(f, {}, source=where)
        if magic != LEGACY_MAGIC:
            raise FileFormatError(f"{where}: not a PyTorch file (bad magic number)")
        version = restricted_load(f, {}, source=where)
        if version != LEGACY_PROTOCOL_VERSION:
            raise FileFormatError(f"{where}: unsupported legacy .pth protocol version "
                                  f"{version!r} (expected {LEGACY_PROTOCOL_VERSION})")
        sys_info = restricted_load(f, {}, source=where)
        if not isinstance(sys_info, dict):
            raise FileFormatError(f"{where}: legacy .pth header is corrupt (sys_info)")
        pickled = _Pickled(where)
        obj = restricted_load(f, ALLOWED_GLOBALS, pickled.load_legacy_id, encoding="utf-8",
                              source=where, hint=_HINT)
        keys = restricted_load(f, {}, encoding="utf-8", source=where)
        if not isinstance(keys, list):
            raise FileFormatError(f"{where}: legacy .pth storage key list is corrupt")
        keys = [str(_text(k)) for k in keys]
        entries = _choose_state_dict(obj, where)
        needed = {t.storage.key for _, t in entries}
        missing = sorted(needed - set(keys))
        if missing:
            raise FileFormatError(f"{where}: data for storage {missing[0]!r} is missing")

        def read_root(key):
            root = pickled.roots.get(key)
            if root is None:
                raise FileFormatError(f"{where}: storage {key!r} has data but the pickle "
                                      f"never declares it")
            itemsize = _ELEMENT[root.dtype_name].itemsize
            position = f.tell()
            head = f.read(8)
            if len(head) < 8:
                raise FileFormatError(f"{where}: truncated: storage {key!r} header missing "
                                      f"at byte {position}")
            (count,) = struct.unpack("<q", head)
            if count * itemsize != root.nbytes:
                raise FileFormatError(f"{where}: storage {key!r} at byte {position} holds "
                                      f"{count} elements, expected {root.nbytes // itemsize}")
            if key not in needed:
                f.seek(root.nbytes, os.SEEK_CUR)
                return None
            data = np.empty(root.nbytes, dtype=np.uint8)
            got = f.readinto(memoryview(data)) if root.nbytes else 0
            if got != root.nbytes:
                raise FileFormatError(f"{where}: truncated: storage {key!r} data ends at byte "
                                      f"{position + 8 + got}, expected {root.nbytes} bytes "
                                      f"from byte {position + 8}")
            return data

        arrays = _assemble(where, entries, read_root, keys)
    return arrays


def load_torch_state_dict(path):
    """Read a PyTorch state dict (.pth/.pt, zip or legacy format) -> OrderedDict name -> array.

    Key order is the file's. Arrays are C-contiguous, writable and share no memory,
    in the tensor's dtype (float32/float16/float64/int*/uint*/bool/complex; bfloat16
    becomes float32); views that shared a storage in torch (a slice, a transpose) come
    back as independent arrays with the values torch shows. A checkpoint dict that wraps
    the state dict under 'state_dict' or 'model' is unwrapped. torch is never imported
    and nothing in the file is executed: a file that names any other global, holds a
    whole pickled model, is truncated or lacks a storage raises FileFormatError saying so.
    """
    where = os.fspath(path)
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as err:
        raise FileFormatError(f"cannot read {where}: {err.strerror or err}") from err
    if head.startswith(b"PK"):
        return _load_zip(path, where)
    if len(head) >= 262 and head[257:262] == b"ustar":
        raise FileFormatError(f"{where} uses the tar format of PyTorch < 0.1.10, which cnnlab "
                              f"does not read; re-save it with a newer torch")
    if not head.startswith(b"\x80"):
        raise FileFormatError(f"{where} is not a PyTorch .pth file (neither a zip archive "
                              f"nor a pickle)")
    return _load_legacy(path, where)
