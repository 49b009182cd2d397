"""The array backend: numpy on the CPU, cupy on an NVIDIA GPU.

This is the only module that imports cupy. Code that must run on both calls
``xp = get_xp(array)`` and uses ``xp`` where it would use ``np``; there is no
global "current device" switch: the backend follows the arrays.
"""
from __future__ import annotations

import numpy as np

try:  # pragma: no cover - exercised only where cupy and a GPU exist
    import cupy as _cupy
    _CUPY_ERROR = None
except Exception as _err:  # ImportError, or a cupy without a usable CUDA runtime
    _cupy = None
    _CUPY_ERROR = f"{type(_err).__name__}: {_err}"


def gpu_available() -> bool:
    """True when cupy imported and sees at least one CUDA device."""
    if _cupy is None:
        return False
    try:  # pragma: no cover
        return _cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # pragma: no cover
        return False


def get_xp(*arrays):
    """Return the array module (numpy or cupy) that owns ``arrays``.

    Non-array arguments (None, Python scalars) are ignored; with no cupy arrays
    among them the answer is numpy.
    """
    if _cupy is not None:
        for a in arrays:
            if isinstance(a, _cupy.ndarray):
                return _cupy
    return np


def module_name(xp) -> str:
    """ "numpy" or "cupy" for an array module (None: numpy)."""
    return "numpy" if xp is None else xp.__name__.split(".")[0]


def to_device(array, device: str = "cpu"):
    """Copy ``array`` to ``device`` ("cpu" or "gpu"); a no-op when it is already there."""
    if device == "cpu":
        if _cupy is not None and isinstance(array, _cupy.ndarray):
            return _cupy.asnumpy(array)
        return np.asarray(array)
    if device in ("gpu", "cuda"):
        if _cupy is None:
            raise RuntimeError(
                "device 'gpu' needs cupy: pip install 'cnnlab[gpu]' on a machine with CUDA"
                f" (importing cupy gave {_CUPY_ERROR})")
        return _cupy.asarray(array)
    raise ValueError(f"unknown device {device!r}; use 'cpu' or 'gpu'")


def to_numpy(array):
    """Return ``array`` as a numpy array (copying from the GPU when needed)."""
    return to_device(array, "cpu")
