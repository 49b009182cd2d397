"""How the convolution algorithms use the cores: BLAS threads and a small worker pool.

Two kinds of parallelism, never stacked on top of each other:

* many independent chunks (Winograd tile chunks, xi-blocks of its GEMMs,
  channel blocks, im2col's column blocks and channel blocks): a pool of
  ``get_num_threads()`` threads, the caller being one, each running numpy/BLAS
  calls that release the GIL, with BLAS limited to one thread for the whole pass
  (``pool_region``) so the two levels do not oversubscribe the cores;
* what is left (FFT products and transforms): BLAS's own threads and scipy.fft's
  ``workers``.

The convolutions that neural style and training run (im2col, Winograd) use the pool
only. That matters more than it seems: after every multi-threaded call OpenBLAS's
worker threads busy-wait for new work (about 0.1 s: ``OPENBLAS_THREAD_TIMEOUT``,
2^28 cycles by default), and lowering BLAS's thread count does not stop them; so one
BLAS-threaded GEMM before a pool region leaves a spinning thread on one of the cores
the pool needs. With im2col on BLAS threads, a 2-thread style evaluation at 256 px
spent ~270 ms of CPU per evaluation in such a thread and ran no faster than on one
thread (docs/convolution.md, "Threads").

Limiting BLAS threads needs ``threadpoolctl`` (a small pure-Python package).
Without it, ``parallel_map`` runs the chunks one after another in the calling
thread and BLAS keeps its own threads: slower transforms, same results.

The thread count is explicit configuration, not environment magic:
``set_num_threads(n)`` (default: the CPUs this process may run on).
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np

try:  # optional: only needed to switch BLAS to one thread inside the pool
    from threadpoolctl import ThreadpoolController as _Controller
except Exception:  # pragma: no cover - exercised where threadpoolctl is absent
    _Controller = None


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


class _ThreadConfig:
    """The worker pool and the BLAS thread switch (one per process)."""

    def __init__(self):
        self.num_threads = _cpu_count()
        self._pool = None
        self._blas = None  # list of threadpoolctl LibController for BLAS libraries
        self._lock = threading.RLock()  # one pool region at a time; the owner may nest

    def pool(self) -> ThreadPoolExecutor:
        if self._pool is None or self._pool._max_workers != max(1, self.num_threads - 1):
            if self._pool is not None:
                self._pool.shutdown(wait=False)
            self._pool = ThreadPoolExecutor(max(1, self.num_threads - 1),
                                            thread_name_prefix="cnnlab-conv")
        return self._pool

    def blas_libs(self):
        if self._blas is None:
            if _Controller is None:
                self._blas = []
            else:
                self._blas = list(_Controller().select(user_api="blas").lib_controllers)
        return self._blas


_CONFIG = _ThreadConfig()


def get_num_threads() -> int:
    """Threads the convolution algorithms use for their chunked work."""
    return _CONFIG.num_threads


def set_num_threads(n: int) -> None:
    """Use ``n`` threads (>= 1) for chunked convolution work. BLAS keeps its own setting."""
    n = int(n)
    if n < 1:
        raise ValueError(f"number of threads must be >= 1, got {n}")
    _CONFIG.num_threads = n


def can_parallelize() -> bool:
    """True when ``parallel_map`` really runs chunks on several threads."""
    return _CONFIG.num_threads > 1 and bool(_CONFIG.blas_libs())


def pool_threads() -> int:
    """Threads ``parallel_map`` would use if called here: 1 where it runs serially (one
    thread configured, no threadpoolctl, or inside a pool worker)."""
    return _CONFIG.num_threads if can_parallelize() and not _in_worker() else 1


@contextmanager
def blas_threads(n: int):
    """Limit every loaded BLAS library to ``n`` threads in the block (no-op without threadpoolctl)."""
    libs = _CONFIG.blas_libs()
    old = [lib.num_threads for lib in libs]
    for lib in libs:
        lib.set_num_threads(n)
    try:
        yield
    finally:
        for lib, k in zip(libs, old):
            lib.set_num_threads(k)


@contextmanager
def pool_region():
    """One pass of a chunked algorithm: BLAS stays single-threaded for the whole block.

    ``parallel_map`` calls inside do not switch BLAS back and forth, and the few
    BLAS calls between them run on the calling thread, so no BLAS worker wakes up
    and spins against the pool. Regions of different threads run one at a time
    (a re-entrant lock); inside a pool worker, or where the pool is not used, this
    does nothing.
    """
    if not can_parallelize() or _in_worker():
        yield
        return
    with _CONFIG._lock:
        with blas_threads(1):
            yield


def even_blocks(size: int, parts: int) -> list[tuple[int, int]]:
    """range(size) cut into ``parts`` contiguous pieces whose lengths differ by at most one
    (fewer if size < parts; at least one)."""
    parts = max(1, min(parts, size))
    edges = [size * i // parts for i in range(parts + 1)]
    return list(zip(edges[:-1], edges[1:]))


def parallel_map(fn, items) -> list:
    """``[fn(item) for item in items]``, spread over the worker pool with single-threaded BLAS.

    Items are handed out dynamically (a shared iterator), the calling thread
    works too, and results come back in order. ``fn`` must only write to
    disjoint parts of shared arrays. Runs serially (BLAS keeps its threads)
    when there is one item, one thread, no threadpoolctl, or when called from
    inside another ``parallel_map``.
    """
    items = list(items)
    if len(items) <= 1 or not can_parallelize() or _in_worker():
        return [fn(item) for item in items]
    results = [None] * len(items)
    order = iter(range(len(items)))  # next() on a range iterator is atomic under the GIL

    def worker():
        _WORKER.active = True
        try:
            for i in order:
                results[i] = fn(items[i])
        finally:
            _WORKER.active = False

    helpers = min(_CONFIG.num_threads, len(items)) - 1
    with pool_region():  # one parallel region at a time; a second caller waits
        futures = [_CONFIG.pool().submit(worker) for _ in range(helpers)]
        try:
            worker()
        finally:
            for f in futures:
                f.result()
    return results


_WORKER = threading.local()


def _in_worker() -> bool:
    return getattr(_WORKER, "active", False)


#: Element-wise passes (bias, ReLU, pooling, batch norm) over at least this many elements are
#: split by channels over the pool (numpy's loops release the GIL), like the convolutions.
PARALLEL_MIN_ELEMENTS = 1 << 17


def by_channels(fn, a) -> None:
    """fn(c0, c1) for blocks of the channels (axis 1) of ``a``: one block per pool thread when
    ``a`` is a numpy array of at least PARALLEL_MIN_ELEMENTS elements, else one call fn(0, C).
    ``fn`` must write only its own channels; each channel is computed the same way whatever
    the blocks, so results do not depend on the thread count."""
    c = a.shape[1]
    big = a.size >= PARALLEL_MIN_ELEMENTS and isinstance(a, np.ndarray)
    parts = min(c, pool_threads()) if big else 1
    if parts <= 1:
        fn(0, c)
        return
    parallel_map(lambda e: fn(*e), even_blocks(c, parts))
