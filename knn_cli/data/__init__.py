"""CIFAR-10: find it, fetch it if needed, read it safely, split, normalize and cache it.

Everything here is a plain function returning arrays, so the CLI, the executors and the tests use
the same code path. Problems a user can cause (a wrong folder, a broken file, no network) become
one-line `DataError`s; anything else is a bug and may raise.

This module is the front door, `load_cifar10`; each step has a module of its own: `cifar10`
(what the data set is, on disk and in memory: files, sizes, `Dataset`), `locate` (which
folder), `download` (fetch, verify, unpack), `batches` (the safe reader) and `cache` (the
normalized, memory-mapped copy).
"""

from __future__ import annotations

import warnings

import numpy as np

from knn_cli.data.batches import _read_raw
from knn_cli.data.cache import _build_entry, _cache_key, _in_memory, _open_entry
from knn_cli.data.cifar10 import Dataset
from knn_cli.data.locate import cache_dir, find_data_dir
from knn_cli.errors import DataError


def load_cifar10(
    data_dir: str | None = None,
    validation_size: int = 5000,
    *,
    download: bool = True,
    progress: bool | None = None,
) -> Dataset:
    """Load the normalized train/val/test splits, from the cache when it is still valid.

    The last `validation_size` training images form the validation set. All splits are
    normalized with the training split's per-feature mean and std, so no information from the
    validation or test images leaks into the inputs.
    """
    if isinstance(validation_size, bool) or not isinstance(validation_size, (int, np.integer)):
        raise DataError(f"validation_size must be an integer, got {validation_size!r}")
    validation_size = int(validation_size)
    if validation_size < 0:
        raise DataError(f"validation_size must be >= 0, got {validation_size}")
    folder = find_data_dir(data_dir, download=download, progress=progress)
    source = str(folder)
    entry = cache_dir() / "preprocessed" / _cache_key(folder, validation_size)
    cached = _open_entry(entry, source)
    if cached is not None:
        return cached
    raw = _read_raw(folder, validation_size)
    try:
        return _build_entry(entry, raw, source)
    except OSError as exc:
        warnings.warn(
            f"cannot cache preprocessed CIFAR-10 under {entry.parent} ({exc}); "
            "keeping it in memory for this run",
            stacklevel=2,
        )
        return _in_memory(raw, source)
