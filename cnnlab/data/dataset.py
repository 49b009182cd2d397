"""An in-memory labelled image set, and the fixed stratified split cnnlab uses.

Images stay uint8 (0..255) until a model needs them: :meth:`ArrayDataset.as_float`
turns them into float32 NCHW on the [0, 1] scale, optionally normalised by
per-channel mean and std (those of :meth:`ArrayDataset.channel_stats`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cnnlab.errors import CnnlabError


@dataclass
class ArrayDataset:
    """Images and integer labels held in memory.

    images:  uint8 (N, H, W) grayscale or (N, H, W, C), 0..255
    labels:  int64 (N,), each in 0..len(classes)-1
    classes: class names, index = label
    name:    short name shown in logs ("mnist-5k/train")
    source:  where the arrays came from (a file or folder), "" if built in memory
    """

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    name: str
    source: str = field(default="")

    def __post_init__(self):
        self.images = np.asarray(self.images)
        if self.images.dtype != np.uint8 or self.images.ndim not in (3, 4):
            raise CnnlabError(
                f"dataset {self.name}: images must be uint8 (N, H, W) or (N, H, W, C), "
                f"got {self.images.dtype} {self.images.shape}; convert with "
                f"np.clip(x, 0, 255).astype(np.uint8)")
        labels = np.asarray(self.labels)
        if labels.ndim != 1 or len(labels) != len(self.images):
            raise CnnlabError(
                f"dataset {self.name}: labels must have shape ({len(self.images)},) "
                f"to match the images, got {labels.shape}")
        if labels.size and not np.issubdtype(labels.dtype, np.integer):
            raise CnnlabError(f"dataset {self.name}: labels must be integers, got {labels.dtype}")
        self.labels = labels.astype(np.int64, copy=False)
        self.classes = [str(c) for c in self.classes]
        if self.labels.size and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            raise CnnlabError(
                f"dataset {self.name}: labels span {self.labels.min()}..{self.labels.max()} "
                f"but there are {len(self.classes)} classes; pass one name per class")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def channels(self) -> int:
        """C: 1 for (N, H, W) images, else the last axis."""
        return 1 if self.images.ndim == 3 else self.images.shape[3]

    def subset(self, indices) -> ArrayDataset:
        """A new dataset holding rows ``indices`` (int array or boolean mask), same classes."""
        idx = np.asarray(indices)
        return ArrayDataset(self.images[idx], self.labels[idx], list(self.classes),
                            self.name, self.source)

    def class_counts(self) -> np.ndarray:
        """int64 (len(classes),): how many images each class has."""
        return np.bincount(self.labels, minlength=len(self.classes))

    def as_float(self, mean=None, std=None) -> np.ndarray:
        """float32 (N, C, H, W): ``x = images / 255``, then ``(x - mean[c]) / std[c]`` if given.

        mean, std: scalars or sequences of length C on the [0, 1] scale, e.g. the
        training split's :meth:`channel_stats` applied to both splits.
        """
        x = self.images.astype(np.float32)
        x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
        x *= np.float32(1 / 255)
        if mean is not None:
            x -= self._per_channel(mean, "mean")
        if std is not None:
            s = self._per_channel(std, "std")
            if np.any(s <= 0):
                raise CnnlabError(f"dataset {self.name}: std must be positive, got {std}")
            x /= s
        return np.ascontiguousarray(x)

    def channel_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std), each float64 (C,), of the pixels on the [0, 1] scale, per channel.

        Exact and light on memory: computed from a 256-bin histogram of each
        channel's uint8 values, std with the population (1/n) formula.
        """
        if len(self) == 0:
            raise CnnlabError(f"dataset {self.name} is empty; it has no channel statistics")
        pixels = self.images.reshape(-1, self.channels)
        levels = np.arange(256, dtype=np.float64) / 255
        mean, std = np.empty(self.channels), np.empty(self.channels)
        for c in range(self.channels):
            counts = np.bincount(pixels[:, c], minlength=256).astype(np.float64)
            p = counts / counts.sum()
            mean[c] = p @ levels
            std[c] = np.sqrt(max(p @ (levels - mean[c]) ** 2, 0.0))
        return mean, std

    def _per_channel(self, value, what: str) -> np.ndarray:
        v = np.asarray(value, dtype=np.float32).reshape(-1)
        if v.size == 1:
            v = np.repeat(v, self.channels)
        if v.size != self.channels:
            raise CnnlabError(
                f"dataset {self.name}: {what} has {v.size} values but the images have "
                f"{self.channels} channels; give one value per channel")
        return v.reshape(1, -1, 1, 1)


def sample_per_class(labels, n: int, seed: int) -> np.ndarray:
    """Sorted indices of ``n`` samples of each class 0..max(labels), drawn without
    replacement by ``numpy.random.default_rng(seed)``; a class with fewer than ``n``
    samples is an error."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(int(labels.max()) + 1 if labels.size else 0):
        pool = np.flatnonzero(labels == c)
        if len(pool) < n:
            raise CnnlabError(f"class {c} has {len(pool)} samples, fewer than the {n} asked for")
        rows.append(rng.choice(pool, n, replace=False))
    return np.sort(np.concatenate(rows)) if rows else np.zeros(0, dtype=np.int64)


def stratified_split(labels, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed stratified split -> (train_idx, test_idx), both int64 and sorted ascending.

    For each class c (ascending) holding n_c samples, ``round(n_c * test_fraction)``
    of them go to test. Which ones: the class's indices are ordered by the raw
    64-bit outputs of ``numpy.random.PCG64([seed, c])`` (a bit generator whose
    stream NumPy keeps stable across versions), and the first ones in that order
    are the test samples. Same labels and seed -> same split, on any machine.
    """
    labels = np.asarray(labels)
    if not 0 < test_fraction < 1:
        raise CnnlabError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    train, test = [], []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        keys = np.random.PCG64([seed, int(c)]).random_raw(len(members))
        order = members[np.argsort(keys, kind="stable")]
        n_test = int(round(len(members) * test_fraction))
        test.append(order[:n_test])
        train.append(order[n_test:])
    return _sorted_indices(train), _sorted_indices(test)


def _sorted_indices(parts: list[np.ndarray]) -> np.ndarray:
    return np.sort(np.concatenate(parts)).astype(np.int64) if parts else np.zeros(0, np.int64)
