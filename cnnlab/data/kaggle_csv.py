"""The Kaggle "Digit Recognizer" CSV files (MNIST digits as text).

``train.csv``: a header ``label,pixel0,...,pixel783`` then one row per image,
the label (0..9) followed by 784 pixel values (0..255, row-major 28x28).
``test.csv``: the same without the label column.

:func:`read_kaggle_csv` reads either file; :func:`kaggle_dataset` turns a
labelled file into cnnlab's train/test splits (a fixed stratified 80/20
holdout, since Kaggle's own test.csv has no labels).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cnnlab.data.dataset import ArrayDataset, stratified_split
from cnnlab.errors import FileFormatError

SIDE = 28
PIXELS = [f"pixel{i}" for i in range(SIDE * SIDE)]
DIGITS = [str(d) for d in range(10)]
HOLDOUT_FRACTION = 0.2
HOLDOUT_SEED = 20_160_101


def read_kaggle_csv(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """Read train.csv or test.csv -> (images uint8 (N, 28, 28), labels int64 (N,) or None).

    labels is None for a file without the ``label`` column (Kaggle's test.csv).
    """
    path = Path(path)
    columns = read_header(path)
    has_label = columns[0] == "label"
    if columns[has_label:] != PIXELS:
        raise FileFormatError(
            f"{path}: header must be 'label,pixel0,...,pixel783' (train.csv) or "
            f"'pixel0,...,pixel783' (test.csv), got {len(columns)} columns starting "
            f"{','.join(columns[:3])}; is this a Kaggle digit-recognizer file?")
    try:
        table = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.int64, ndmin=2)
    except ValueError as e:
        raise FileFormatError(f"{path}: {_first_bad_line(path, len(columns)) or e}") from e
    if table.shape[1] != len(columns):
        raise FileFormatError(f"{path}: {_first_bad_line(path, len(columns))}")
    pixels = table[:, int(has_label):]
    _check_range(path, pixels, 0, 255, "pixel", first_column=int(has_label) + 1)
    images = pixels.astype(np.uint8).reshape(-1, SIDE, SIDE)
    if not has_label:
        return images, None
    labels = table[:, 0]
    _check_range(path, labels[:, None], 0, 9, "label", first_column=1)
    return images, labels


def read_header(path: Path) -> list[str]:
    """The column names on the first line of a CSV file."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            first = f.readline()
    except FileNotFoundError as e:
        raise FileFormatError(f"{path}: no such file") from e
    except UnicodeDecodeError as e:
        raise FileFormatError(f"{path}: not a text file ({e}); expected a CSV file") from e
    return [c.strip().strip('"') for c in first.strip().split(",")]


def kaggle_dataset(path: str | os.PathLike, split: str) -> ArrayDataset:
    """A labelled Kaggle CSV (or a folder holding train.csv) -> the "train" or "test" split.

    The split is :func:`~cnnlab.data.dataset.stratified_split` with 20% of each
    digit held out as "test" (seed ``HOLDOUT_SEED``): fixed, so a model trained on
    "train" is always evaluated on the same unseen rows.
    """
    path = Path(path)
    csv = path / "train.csv" if path.is_dir() else path
    images, labels = read_kaggle_csv(csv)
    if labels is None:
        raise FileFormatError(
            f"{csv}: has no label column (Kaggle's test.csv), so it cannot be split or "
            f"evaluated; give train.csv, or read it with read_kaggle_csv() to predict")
    train, test = stratified_split(labels, HOLDOUT_FRACTION, HOLDOUT_SEED)
    rows = train if split == "train" else test
    return ArrayDataset(images[rows], labels[rows], DIGITS, f"{csv.name}/{split}", str(csv))


def _check_range(path: Path, values: np.ndarray, low: int, high: int, what: str,
                 first_column: int):
    bad = np.argwhere((values < low) | (values > high))
    if len(bad):
        row, col = bad[0]
        raise FileFormatError(
            f"{path}: line {row + 2}, column {col + first_column} holds {what} "
            f"{values[row, col]}, outside {low}..{high}")


def _first_bad_line(path: Path, n_columns: int) -> str | None:
    """Why the first malformed data line is malformed ("line 7 has 784 values, ..."), if any.

    Only called after the fast reader failed, to say where (lines count from 1,
    the header being line 1).
    """
    with open(path, encoding="utf-8-sig") as f:
        next(f, None)
        for number, line in enumerate(f, start=2):
            if not line.strip():
                continue
            fields = line.rstrip("\r\n").split(",")
            if len(fields) != n_columns:
                return f"line {number} has {len(fields)} values, the header names {n_columns}"
            for column, value in enumerate(fields, start=1):
                try:
                    int(value)
                except ValueError:
                    return (f"line {number}, column {column} holds {value.strip()!r}, "
                            f"expected an integer")
    return None
