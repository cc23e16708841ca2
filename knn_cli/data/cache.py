"""The preprocessed cache: the normalized splits, written once per source folder and validation
size, then memory-mapped, so later runs and worker processes share one read-only copy instead of
normalizing CIFAR-10 again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from knn_cli.data.batches import _Raw
from knn_cli.data.cifar10 import REQUIRED_FILES, Dataset

# Bump when the preprocessing or the cache layout changes, so old cache entries are ignored.
CACHE_FORMAT_VERSION = 1
_MANIFEST = "manifest.json"
_SPLITS = ("train", "val", "test")
# Rows converted to float64 at a time: a block small enough to stay in the CPU's cache (larger
# blocks were several times slower) and far from a float64 copy of the whole set.
_CHUNK_ROWS = 128


def _cache_key(folder: Path, validation_size: int) -> str:
    """Identify a preprocessed result by everything that could change it."""
    files = []
    for name in REQUIRED_FILES:
        st = (folder / name).stat()
        files.append([name, st.st_size, st.st_mtime_ns])
    blob = json.dumps(
        {
            "version": CACHE_FORMAT_VERSION,
            "source": str(folder.resolve()),
            "files": files,
            "validation_size": validation_size,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _row_chunks(n: int) -> Iterator[slice]:
    for start in range(0, n, _CHUNK_ROWS):
        yield slice(start, min(start + _CHUNK_ROWS, n))


def _train_statistics(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std in float64 without materializing a float64 copy of the set.

    Two passes (mean, then squared deviations) avoid the cancellation of sum-of-squares.
    A constant feature gets std 1 so it maps to 0 instead of NaN.
    """
    n = pixels.shape[0]
    total = np.zeros(pixels.shape[1], dtype=np.float64)
    for rows in _row_chunks(n):
        total += pixels[rows].sum(axis=0, dtype=np.float64)
    mean = total / n
    sq = np.zeros(pixels.shape[1], dtype=np.float64)
    for rows in _row_chunks(n):
        dev = pixels[rows].astype(np.float64)
        dev -= mean
        dev *= dev
        sq += dev.sum(axis=0)
    std = np.sqrt(sq / n)
    std[std == 0] = 1.0
    return mean, std


def _normalized_chunks(
    pixels: np.ndarray, mean: np.ndarray, std: np.ndarray
) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield float32 row blocks of (pixels - mean) / std, computed in float64."""
    inv_std = 1.0 / std
    for rows in _row_chunks(pixels.shape[0]):
        chunk = pixels[rows].astype(np.float64)
        chunk -= mean
        chunk *= inv_std
        yield rows, chunk.astype(np.float32)


def _write_npy(path: Path, pixels: np.ndarray, mean: np.ndarray, std: np.ndarray) -> None:
    """Stream the normalized split into a .npy file block by block.

    Plain sequential writes, not a writable memmap: faster on a cold disk, and the float32
    training split (over 500 MB) never sits in this process's memory.
    """
    header = {"descr": "<f4", "fortran_order": False, "shape": pixels.shape}
    with path.open("wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        for _, block in _normalized_chunks(pixels, mean, std):
            f.write(block.astype("<f4", copy=False).tobytes())


def _write_entry(staging: Path, raw: _Raw) -> None:
    """Fill a staging folder with one .npy per array, then the manifest that vouches for them."""
    mean, std = _train_statistics(raw.train)
    files = {}
    for split in _SPLITS:
        pixels: np.ndarray = getattr(raw, split)
        labels: np.ndarray = getattr(raw, f"y_{split}")
        _write_npy(staging / f"X_{split}.npy", pixels, mean, std)
        np.save(staging / f"y_{split}.npy", labels)
        files[f"X_{split}"] = {"shape": list(pixels.shape), "dtype": "<f4"}
        files[f"y_{split}"] = {"shape": list(labels.shape), "dtype": labels.dtype.str}
    for name, meta in files.items():
        meta["bytes"] = (staging / f"{name}.npy").stat().st_size
    manifest = {
        "version": CACHE_FORMAT_VERSION,
        "label_names": list(raw.label_names),
        "files": files,
    }
    # The manifest is written last: an entry without it is unfinished and is never trusted.
    (staging / _MANIFEST).write_text(json.dumps(manifest, indent=1))


def _read_manifest(entry: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((entry / _MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("version") != CACHE_FORMAT_VERSION:
        return None
    return manifest


def _open_entry(entry: Path, source: str, *, mmap: bool = True) -> Dataset | None:
    """Open a cache entry, or return None if anything about it is off (it is then rebuilt)."""
    manifest = _read_manifest(entry)
    if manifest is None:
        return None
    try:
        arrays = {}
        for split in _SPLITS:
            for name, mode in ((f"X_{split}", "r" if mmap else None), (f"y_{split}", None)):
                meta = manifest["files"][name]
                path = entry / f"{name}.npy"
                if path.stat().st_size != meta["bytes"]:
                    return None
                array = np.load(path, mmap_mode=mode, allow_pickle=False)
                if list(array.shape) != meta["shape"] or array.dtype.str != meta["dtype"]:
                    return None
                arrays[name] = array
        return Dataset(**arrays, label_names=tuple(manifest["label_names"]), source=source)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _build_entry(entry: Path, raw: _Raw, source: str) -> Dataset:
    """Write a new cache entry atomically and open it; the loser of a race uses the winner's."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=entry.parent))
    try:
        _write_entry(staging, raw)
        winner = _open_entry(entry, source)  # another process may have finished meanwhile
        if winner is not None:
            return winner
        shutil.rmtree(entry, ignore_errors=True)  # unfinished or damaged: never trusted
        with contextlib.suppress(OSError):  # fails only if a concurrent writer got there first
            staging.rename(entry)
        dataset = _open_entry(entry, source)
        if dataset is None:  # the entry in place is unusable; use our own copy, in memory
            dataset = _open_entry(staging, source, mmap=False)
        if dataset is None:
            raise RuntimeError(f"freshly written cache entry {staging} cannot be read back")
        return dataset
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _in_memory(raw: _Raw, source: str) -> Dataset:
    """The same arrays as a cache entry holds, for when the cache cannot be written."""
    mean, std = _train_statistics(raw.train)
    arrays: dict[str, np.ndarray] = {}
    for split in _SPLITS:
        pixels: np.ndarray = getattr(raw, split)
        X = np.empty(pixels.shape, dtype=np.float32)
        for rows, block in _normalized_chunks(pixels, mean, std):
            X[rows] = block
        arrays[f"X_{split}"] = X
        arrays[f"y_{split}"] = getattr(raw, f"y_{split}")
    return Dataset(**arrays, label_names=raw.label_names, source=source)
