"""Named arrays + string metadata on disk, as .npz or .safetensors (chosen by suffix).

This is what checkpoints and exported weights use. Both formats hold only plain
numeric arrays (never pickles) and both are written atomically.

- ``.safetensors``: see ``cnnlab.io.safetensors``; metadata goes in ``__metadata__``.
- ``.npz``: ``np.savez`` (uncompressed), one entry per array; the metadata dict is
  stored as a JSON string in a 0-d unicode array under the reserved name
  ``__metadata__``. Loaded with ``allow_pickle=False``, so an npz holding object
  arrays is refused.
"""
import json
import os
import zipfile

import numpy as np

from cnnlab.errors import FileFormatError
from cnnlab.io.atomic import atomic_write
from cnnlab.io.safetensors import load_safetensors, save_safetensors

METADATA_KEY = "__metadata__"
SUFFIXES = (".npz", ".safetensors")


def array_format(path) -> str:
    """The array file format of ``path`` by its suffix, ".npz" or ".safetensors"
    (FileFormatError for any other, before anything is read or computed)."""
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix not in SUFFIXES:
        raise FileFormatError(f"{os.fspath(path)}: unknown array file suffix {suffix!r}; "
                              f"use .npz or .safetensors")
    return suffix


def _check_metadata(metadata):
    if metadata is None:
        return {}
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise ValueError("metadata must be a dict of str -> str "
                         "(encode other values with json.dumps)")
    return dict(metadata)


def save_arrays(path, arrays, metadata=None):
    """Write ``arrays`` (dict name -> numpy array) and ``metadata`` (dict str -> str) to
    ``path`` atomically, as .npz or .safetensors according to its suffix.

    Names are strings and may not be ``__metadata__``; arrays must be numeric or bool
    (no object arrays; complex numbers in .npz only: safetensors has no complex dtype).
    The file appears complete or not at all.
    """
    kind = array_format(path)
    metadata = _check_metadata(metadata)
    for name in arrays:
        if not isinstance(name, str) or not name or name == METADATA_KEY:
            raise ValueError(f"array name {name!r} is not allowed")
    if kind == ".safetensors":
        save_safetensors(path, arrays, metadata)
        return
    entries = {}
    for name, value in arrays.items():
        array = np.asarray(value)
        if array.dtype.hasobject or array.dtype.kind not in "biufc":
            raise TypeError(f"array {name!r} has dtype {array.dtype}; only numeric and bool "
                            f"arrays can be saved")
        entries[name] = array
    entries[METADATA_KEY] = np.array(json.dumps(metadata, ensure_ascii=False))
    with atomic_write(path, "wb") as f:       # what np.savez writes, for any array name
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            for name, array in entries.items():
                with archive.open(name + ".npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, array, allow_pickle=False)


def _npz_error(where, err):
    if isinstance(err, ValueError) and "allow_pickle" in str(err):
        return FileFormatError(f"{where} holds pickled objects, which cnnlab does not load: "
                               f"files are data, not code")
    return FileFormatError(f"{where} is truncated or not a valid .npz file "
                           f"({type(err).__name__}: {err})")


def load_arrays(path):
    """Read a .npz or .safetensors file written by ``save_arrays`` (or any such file)
    -> (dict name -> numpy array in file order, metadata dict str -> str).

    Raises FileFormatError if the file is missing, truncated, holds pickled objects or
    has malformed metadata.
    """
    kind = array_format(path)
    where = os.fspath(path)
    if kind == ".safetensors":
        arrays, metadata = load_safetensors(path)
        return arrays, metadata or {}
    try:
        loaded = np.load(path, allow_pickle=False)
    except FileNotFoundError as err:
        raise FileFormatError(f"cannot read {where}: no such file") from err
    except Exception as err:                       # numpy/zipfile errors for a bad file
        raise _npz_error(where, err) from err
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise FileFormatError(f"{where} is a single .npy array, not an .npz archive")
    try:
        with loaded:
            arrays = {name: loaded[name] for name in loaded.files}
    except Exception as err:
        raise _npz_error(where, err) from err
    odd = [name for name, a in arrays.items() if not isinstance(a, np.ndarray)]
    if odd:                                    # numpy hands back non-.npy members as bytes
        raise FileFormatError(f"{where}: member(s) {', '.join(odd)} are not .npy arrays")
    metadata = {}
    if METADATA_KEY in arrays:
        raw = arrays.pop(METADATA_KEY)
        try:
            metadata = json.loads(str(raw[()]))
        except (ValueError, TypeError, IndexError) as err:
            raise FileFormatError(f"{where}: {METADATA_KEY} entry is not a JSON string") from err
        if not isinstance(metadata, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise FileFormatError(f"{where}: {METADATA_KEY} must be a JSON object of strings")
    return arrays, metadata
