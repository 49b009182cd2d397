"""Helpers every benchmark uses: timing, the environment line, geometric means.

A benchmark prints ratios against PyTorch measured in the same run, so both
sides share these helpers. Timings are the best of ``repeat`` runs after
``warmup`` runs (the minimum is the least noisy estimate on a shared machine);
``settle()`` sleeps briefly between frameworks so that one library's idle
spinning threads (OpenMP, OpenBLAS) do not eat into the other's timing.
"""
from __future__ import annotations

import math
import os
import platform
import time

import numpy as np

from cnnlab.conv.chooser import cpu_model


CLOCK = time.perf_counter  # use_cpu_clock() switches to the calling thread's CPU time


def use_cpu_clock(on: bool = True) -> None:
    """Time with the calling thread's CPU time instead of the wall clock.

    Only meaningful single-threaded (all work on the calling thread); it is then
    insensitive to other processes competing for the cores, unlike wall time.
    """
    global CLOCK
    CLOCK = time.thread_time if on else time.perf_counter


def best_time(fn, repeat: int = 3, warmup: int = 1, warm_seconds: float = 0.0) -> float:
    """Seconds of the fastest of ``repeat`` calls of ``fn()``, after ``warmup`` untimed calls
    and, with ``warm_seconds``, untimed calls until that much time has passed (a steady
    state: on this VM a core idle for a while, e.g. after ``settle()``, runs the next tens
    of milliseconds of a thread pool's work up to 2x slower)."""
    t_end = time.perf_counter() + warm_seconds
    done = 0
    while done < warmup or (warm_seconds > 0 and time.perf_counter() < t_end):
        fn()
        done += 1
    best = float("inf")
    for _ in range(max(1, repeat)):
        t0 = CLOCK()
        fn()
        best = min(best, CLOCK() - t0)
    return best


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3     # glibc mallopt parameters
MMAP_THRESHOLD = 32 << 20                       # glibc's own ceiling for its dynamic threshold


def steady_malloc() -> str:
    """Put glibc's allocator in the state a long-running process reaches anyway, for both
    libraries alike, and say so (for the header line).

    glibc serves an allocation over its mmap threshold with fresh pages from the OS (page
    faults on first touch, returned on free) and starts that threshold at 128 KiB, raising
    it (up to 32 MiB) each time a larger such block is freed. So whether a 12.8 MB array
    costs page faults depends on what the process freed before: PyTorch's conv1_1 at 224 px
    (forward + both gradients) took 15 ms in a fresh process and 6.3 ms after any 20 MB
    array had been freed, and a benchmark timing both libraries in one process got one or
    the other depending on cnnlab's allocations. Fixing the threshold at that 32 MiB
    ceiling (and the trim threshold at twice it, as glibc does) removes the dependence.
    No-op where the C library has no ``mallopt`` (not glibc)."""
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = (libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
              and libc.mallopt(M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD))
    except (OSError, AttributeError):
        ok = False
    return (f"malloc: mmap threshold fixed at {MMAP_THRESHOLD >> 20} MiB" if ok
            else "malloc: default (no glibc mallopt)")


def settle(seconds: float = 0.15) -> None:
    """Let the other library's worker threads stop spinning before timing this one."""
    time.sleep(seconds)


def geomean(values) -> float:
    values = [v for v in values if v and v > 0 and math.isfinite(v)]
    if not values:
        return float("nan")
    return math.exp(sum(math.log(v) for v in values) / len(values))


def blas_info() -> str:
    """numpy's BLAS: name, version, architecture and threads (threadpoolctl, else build info)."""
    try:
        from threadpoolctl import threadpool_info
        for lib in threadpool_info():
            if lib.get("user_api") == "blas" and "numpy" in lib.get("filepath", ""):
                name = {"openblas": "OpenBLAS", "mkl": "MKL", "blis": "BLIS"}.get(
                    lib.get("internal_api"), lib.get("internal_api"))
                arch = f" {lib['architecture']}" if lib.get("architecture") else ""
                return f"{name} {lib.get('version')}{arch}, {lib.get('num_threads')} threads"
    except Exception:
        pass
    try:
        blas = np.__config__.CONFIG["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version')}"
    except Exception:
        return "BLAS unknown"


def load_line() -> str:
    try:
        a, b, c = os.getloadavg()
        return f"load average {a:.2f} {b:.2f} {c:.2f} on {os.cpu_count()} cpus"
    except OSError:
        return f"{os.cpu_count()} cpus"


def versions_line(torch_module=None, threads: int | None = None) -> str:
    """One line naming what the numbers depend on: Python, numpy, BLAS, torch, threads, CPU."""
    import scipy
    parts = [f"Python {platform.python_version()}", f"numpy {np.__version__} ({blas_info()})",
             f"scipy {scipy.__version__}"]
    if torch_module is not None:
        parts.append(f"torch {torch_module.__version__} ({torch_module.get_num_threads()} threads)")
    if threads is not None:
        parts.append(f"cnnlab conv threads {threads}")
    parts.append(cpu_model())
    return ", ".join(parts)




def sgemm_rate(n: int = 2048, repeat: int = 3) -> float:
    """numpy float32 GEMM rate (GFLOP/s) for an n x n x n product, with numpy's BLAS threads."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), dtype=np.float32)
    t = best_time(lambda: np.matmul(a, b, out=out), repeat=repeat, warmup=1)
    return 2 * n ** 3 / t / 1e9
