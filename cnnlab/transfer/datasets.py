"""Data sets for the transfer experiments, registered by name with cnnlab.data:

    mnist-5k-digits0-4   the bundled MNIST 5k digits 0..4 (2,000 train / 500 test), labels 0..4
    mnist-5k-digits5-9   digits 5..9, labels 0..4 (class names "5".."9")

so ``cnnlab train --data mnist-5k-digits0-4`` pretrains the "source" network and
``cnnlab finetune ... --data mnist-5k-digits5-9`` transfers it.
"""
from __future__ import annotations

import numpy as np

from ..data import ArrayDataset, load_dataset, register_dataset
from ..errors import CnnlabError


def digit_subset(ds: ArrayDataset, digits, name: str) -> ArrayDataset:
    """Rows of ``ds`` whose label is in ``digits``, relabelled 0..len(digits)-1 in that order."""
    digits = list(digits)
    keep = np.isin(ds.labels, digits)
    labels = np.searchsorted(np.array(digits), ds.labels[keep]) if digits == sorted(digits) else \
        np.array([digits.index(v) for v in ds.labels[keep]])
    return ArrayDataset(ds.images[keep], labels, [ds.classes[d] for d in digits], name, ds.source)


def per_class_sample(ds: ArrayDataset, n: int, seed: int) -> ArrayDataset:
    """``n`` images of each class drawn without replacement with ``default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(len(ds.classes)):
        idx = np.flatnonzero(ds.labels == c)
        if len(idx) < n:
            raise CnnlabError(f"{ds.name} has only {len(idx)} images of class {ds.classes[c]!r}; "
                              f"cannot draw {n}")
        rows.append(rng.choice(idx, n, replace=False))
    return ds.subset(np.sort(np.concatenate(rows)))


def _digits(lo, hi):
    def load(split):
        return digit_subset(load_dataset("mnist-5k", split), range(lo, hi + 1),
                            f"mnist-5k-digits{lo}-{hi}/{split}")
    return load


register_dataset("mnist-5k-digits0-4", _digits(0, 4),
                 description="bundled MNIST 5k, digits 0-4 only (2,000 train / 500 test)")
register_dataset("mnist-5k-digits5-9", _digits(5, 9),
                 description="bundled MNIST 5k, digits 5-9 relabelled 0-4 (2,000 train / 500 test)")
