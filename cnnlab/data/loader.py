"""Mini-batches with augmentation done in the background, reproducibly.

``DataLoader`` cuts a data set into batches, augments each sample with a transform
(see :mod:`cnnlab.data.transforms`) and yields ``(x, y)``: x float32 (B, C, H, W), y
int64 (B,). With ``num_workers > 0`` the batches are built by worker threads (or
processes) into a bounded window ahead of the consumer, so augmentation overlaps the
training step.

Reproducibility: batch b of epoch e draws all of its randomness from
``batch_rng(seed, e, b)``, and the epoch's sample order from ``shuffle_order(seed, e, n)``.
Neither depends on which worker builds the batch or when, so the output is the same for
any number of workers and either mode; batches are delivered in order.
"""
from __future__ import annotations

import multiprocessing as mp
import queue
import signal
import sys
import threading
import time
import traceback

import numpy as np

from ..errors import ShapeError
from .imageops import to_float_batch
from .transforms import apply_to_batch

_POLL_S = 0.1


class WorkerError(RuntimeError):
    """A data-loading worker raised; the message holds the worker's traceback."""


def batch_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator for batch ``index`` of ``epoch``: SeedSequence(seed, spawn_key=(epoch, 1, index))."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(epoch, 1, index)))


def shuffle_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The sample order of ``epoch``: a permutation of n from SeedSequence(seed, spawn_key=(epoch, 0))."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(epoch, 0)))
    return rng.permutation(n)


class _BatchMaker:
    """Builds one batch. Picklable, so process workers get their own copy; a data set
    object is pickled as itself (a PackedDataset as its path), not as its arrays."""

    def __init__(self, data, transform, seed, mean, std):
        self.data, (self.images, self.labels) = data, _unpack(data)
        self.transform, self.seed, self.mean, self.std = transform, seed, mean, std
        self.channels_first = self.images.dtype != np.uint8
        shape = self.images.shape           # mean/std checked now, not at the first batch
        channels = 1 if len(shape) < 4 else shape[1] if self.channels_first else shape[3]
        to_float_batch(np.zeros((1, 1, 1, channels) if channels > 1 else (1, 1, 1), np.uint8),
                       mean, std)

    def __getstate__(self):
        state = dict(self.__dict__)
        if hasattr(self.data, "images"):
            del state["images"], state["labels"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if "images" not in state:
            self.images, self.labels = _unpack(self.data)

    def load(self, task):
        """(epoch, index, sample indices) -> (transformed images, labels int64)."""
        epoch, index, rows = task
        images = np.asarray(self.images[rows])
        labels = np.asarray(self.labels[rows], dtype=np.int64)
        if self.transform is not None:
            rng = batch_rng(self.seed, epoch, index)
            layout = "NCHW" if self.channels_first else "NHWC"
            images = apply_to_batch(self.transform, images, rng, layout=layout)
        return images, labels

    def finish(self, images) -> np.ndarray:
        """Transformed images -> float32 (B, C, H, W), scaled and normalised."""
        if self.channels_first:
            images = images.transpose(0, 2, 3, 1)
        return to_float_batch(images, self.mean, self.std)

    def __call__(self, task):
        images, labels = self.load(task)
        return self.finish(images), labels


class DataLoader:
    """Iterate over ``data`` in batches: ``for x, y in loader: ...``.

    data: an object with ``images`` and ``labels`` (an ArrayDataset, a PackedDataset) or
        an ``(images, labels)`` pair. Images are uint8 (N, H, W) or (N, H, W, C) (scaled
        to [0, 1]) or float (N, C, H, W) (used as they are).
    batch_size: samples per batch; the last batch is smaller unless ``drop_last``.
    shuffle: a new order each epoch (see :func:`shuffle_order`).
    transform: ``t(image, rng)`` applied to each sample (H, W[, C]) before conversion.
    seed: non-negative int; with the epoch and batch index it fixes all randomness.
    num_workers: 0 builds batches inline in the consumer; k > 0 uses k workers.
    prefetch: batches each worker may build ahead (window = num_workers * prefetch).
    mode: "thread" or "process". Threads share memory and start instantly; Pillow
        resizing and numpy's large-array work run in parallel, but scipy's
        map_coordinates (the warp path) holds the GIL, so warp-heavy pipelines scale
        better with processes (data and transform must pickle under "spawn").
    mean, std: scalars or per-channel values on the [0, 1] scale: x <- (x - mean) / std.

    ``wait_seconds`` accumulates the time the consumer spent waiting for batches
    (everything, inline). A completed pass moves to the next epoch; ``set_epoch(e)``
    sets it explicitly. Leaving the loop early (break, an exception, Ctrl-C) stops the
    workers; a worker's exception is re-raised as :class:`WorkerError` with its traceback.
    """

    def __init__(self, data, batch_size: int = 64, shuffle: bool = False, transform=None,
                 seed: int = 0, num_workers: int = 0, prefetch: int = 2, drop_last: bool = False,
                 mode: str = "thread", mean=None, std=None, mp_context: str | None = None):
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if int(num_workers) < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if int(prefetch) < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")
        if mode not in ("thread", "process"):
            raise ValueError(f"mode must be 'thread' or 'process', got {mode!r}")
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable as t(image, rng), got {transform!r}")
        self.batch_size, self.shuffle, self.drop_last = int(batch_size), bool(shuffle), bool(drop_last)
        self.num_workers, self.prefetch, self.mode = int(num_workers), int(prefetch), mode
        self.seed, self.epoch = int(seed), 0
        self.mp_context = mp_context
        self.wait_seconds = 0.0
        self._maker = _BatchMaker(data, transform, self.seed, mean, std)
        self._pool = None

    @property
    def num_samples(self) -> int:
        return len(self._maker.labels)

    def __len__(self) -> int:
        n, b = self.num_samples, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch`` for the next pass (its order and its augmentation draws)."""
        if int(epoch) < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def tasks(self, epoch: int | None = None) -> list:
        """The (epoch, batch index, sample indices) of every batch of ``epoch``."""
        epoch = self.epoch if epoch is None else epoch
        n = self.num_samples
        order = shuffle_order(self.seed, epoch, n) if self.shuffle else np.arange(n)
        return [(epoch, b, order[b * self.batch_size:(b + 1) * self.batch_size])
                for b in range(len(self))]

    def __iter__(self):
        tasks = self.tasks()
        if self.num_workers == 0:
            batches = self._inline(tasks)
        else:
            batches = self._parallel(tasks)
        yield from batches
        self.epoch = tasks[0][0] + 1 if tasks else self.epoch + 1

    def _inline(self, tasks):
        for task in tasks:
            t0 = time.perf_counter()
            batch = self._maker(task)
            self.wait_seconds += time.perf_counter() - t0
            yield batch

    def _parallel(self, tasks):
        if self._pool is not None:
            self._pool.close()
        pool_cls = _ThreadPool if self.mode == "thread" else _ProcessPool
        pool = self._pool = pool_cls(self._maker, self.num_workers, self.mp_context)
        finish_here = self.mode == "process"
        window = self.num_workers * self.prefetch
        try:
            for task in tasks[:window]:
                pool.submit(task)
            ready = {}
            for b in range(len(tasks)):
                t0 = time.perf_counter()
                while b not in ready:
                    index, ok, payload = pool.get()
                    if not ok:
                        raise WorkerError(
                            f"data loader worker failed on batch {index} of epoch {tasks[0][0]}:\n"
                            f"{payload.rstrip()}")
                    ready[index] = payload
                images, labels = ready.pop(b)
                x = self._maker.finish(images) if finish_here else images
                self.wait_seconds += time.perf_counter() - t0
                if b + window < len(tasks):
                    pool.submit(tasks[b + window])
                yield x, labels
        finally:
            pool.close()
            if self._pool is pool:
                self._pool = None

    def close(self) -> None:
        """Stop the workers of an unfinished pass (also done when the loop is left)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _unpack(data):
    if hasattr(data, "images") and hasattr(data, "labels"):
        images, labels = data.images, data.labels
    else:
        try:
            images, labels = data
        except (TypeError, ValueError):
            raise TypeError(
                "DataLoader takes a dataset with .images and .labels or an (images, labels) "
                f"pair, got {type(data).__name__}") from None
    if not isinstance(images, np.ndarray):
        images = np.asarray(images)
    labels = np.asarray(labels)
    if images.dtype == np.uint8:
        if images.ndim not in (3, 4):
            raise ShapeError(f"uint8 images must be (N, H, W) or (N, H, W, C), got {images.shape}")
    elif np.issubdtype(images.dtype, np.floating):
        if images.ndim != 4:
            raise ShapeError(f"float images must be (N, C, H, W), got {images.shape}")
    else:
        raise ShapeError(f"images must be uint8 or float, got {images.dtype}")
    if labels.shape != (len(images),):
        raise ShapeError(f"labels must have shape ({len(images)},) to match the images, got {labels.shape}")
    return images, labels


def _run_task(maker, task, load_only: bool):
    try:
        result = maker.load(task) if load_only else maker(task)
        return task[1], True, result
    except BaseException:  # the consumer re-raises it with this text
        return task[1], False, traceback.format_exc()


class _ThreadPool:
    """Daemon worker threads fed through a task queue; results come back unordered."""

    def __init__(self, maker, n: int, _context=None):
        self.tasks, self.results = queue.Queue(), queue.Queue()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._work, args=(maker,), daemon=True,
                                         name=f"cnnlab-loader-{i}") for i in range(n)]
        for t in self.threads:
            t.start()

    def _work(self, maker):
        while not self.stop.is_set():
            task = self.tasks.get()
            if task is None or self.stop.is_set():
                return
            self.results.put(_run_task(maker, task, load_only=False))

    def submit(self, task) -> None:
        self.tasks.put(task)

    def get(self):
        while True:
            try:
                return self.results.get(timeout=_POLL_S)
            except queue.Empty:
                if not any(t.is_alive() for t in self.threads):
                    raise WorkerError("all data loader worker threads have stopped") from None

    def close(self) -> None:
        self.stop.set()
        for _ in self.threads:
            self.tasks.put(None)
        for t in self.threads:
            t.join(timeout=10.0)


def _process_main(maker, tasks, results):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    while True:
        task = tasks.get()
        if task is None:
            return
        results.put(_run_task(maker, task, load_only=True))


class _ProcessPool:
    """Worker processes (fork where available) fed through multiprocessing queues."""

    def __init__(self, maker, n: int, context: str | None = None):
        if context is None:
            context = "fork" if sys.platform.startswith("linux") else "spawn"
        ctx = mp.get_context(context)
        self.tasks, self.results = ctx.Queue(), ctx.Queue()
        self.procs = [ctx.Process(target=_process_main, args=(maker, self.tasks, self.results),
                                  daemon=True, name=f"cnnlab-loader-{i}") for i in range(n)]
        for p in self.procs:
            p.start()
        self.closed = False

    def submit(self, task) -> None:
        self.tasks.put(task)

    def get(self):
        while True:
            try:
                return self.results.get(timeout=_POLL_S)
            except queue.Empty:
                dead = [p for p in self.procs if not p.is_alive()]
                if dead:
                    p = dead[0]
                    how = (f"killed by signal {-p.exitcode}" if p.exitcode and p.exitcode < 0
                           else f"exit code {p.exitcode}")
                    raise WorkerError(f"data loader worker process {p.pid} stopped ({how}); "
                                      "out of memory? try fewer workers or mode='thread'") from None

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            for _ in self.procs:         # one stop mark each; any worker may take any mark
                self.tasks.put(None)
        except (OSError, ValueError):
            pass
        deadline = time.monotonic() + 2.0
        for p in self.procs:
            p.join(timeout=max(0.0, deadline - time.monotonic()))
        for p in self.procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=2.0)
            if p.is_alive():
                p.kill()
                p.join()
        for q in (self.tasks, self.results):
            q.cancel_join_thread()
            q.close()
