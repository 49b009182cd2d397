"""Data sets: in-memory arrays, file readers, the name/path registry and downloads.

``load_dataset(spec, split)`` is the entry point; see :mod:`cnnlab.data.registry`.
"""
from cnnlab.data.dataset import ArrayDataset, stratified_split
from cnnlab.data.idx import find_idx_split, read_idx, write_idx
from cnnlab.data.kaggle_csv import kaggle_dataset, read_kaggle_csv
from cnnlab.data.registry import (
    FASHION_CLASSES,
    SPLITS,
    dataset_names,
    load_dataset,
    load_idx_folder,
    register_dataset,
    register_path_handler,
)
from cnnlab.data.sources import (
    DownloadableDataset,
    RemoteFile,
    dataset_cache_dir,
    fetch_dataset,
    register_source,
)

# Formats that register themselves with the registry (names, path handlers, download sources).
from cnnlab.data import cifar, imagefolder, packed  # noqa: E402,F401  (registration)

__all__ = [
    "ArrayDataset", "stratified_split",
    "read_idx", "write_idx", "find_idx_split",
    "read_kaggle_csv", "kaggle_dataset",
    "load_dataset", "dataset_names", "register_dataset", "register_path_handler",
    "load_idx_folder", "SPLITS", "FASHION_CLASSES",
    "DownloadableDataset", "RemoteFile", "register_source", "fetch_dataset",
    "dataset_cache_dir",
]
