"""Which CIFAR-10 folder to use: the one the user names, else $KNN_DATA_DIR, else the cached
copy, else a fresh download. A folder the user names is checked and never silently replaced.
"""

from __future__ import annotations

import os
from pathlib import Path

from knn_cli.data import cifar10
from knn_cli.data.cifar10 import FOLDER_NAME, missing_files
from knn_cli.data.download import download_cifar10
from knn_cli.errors import DataError
from knn_cli.formatting import one_line

_HINT = "point the tool at a local copy with --set data.dir=PATH or export KNN_DATA_DIR=PATH"


def cache_dir() -> Path:
    """Root of everything this tool caches; overridable so tests and clusters can relocate it."""
    explicit = os.environ.get("KNN_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "knn"
    return Path.home() / ".cache" / "knn"


def _check_data_dir(folder: Path, origin: str) -> Path:
    """Refuse a folder given by the user rather than silently looking elsewhere.

    A user who names a folder expects that folder to be used; quietly falling back to a cached or
    downloaded copy would hide typos and make runs irreproducible.
    """
    if not folder.exists():
        raise DataError(f"{origin}={folder}: folder does not exist; {_HINT}")
    if not folder.is_dir():
        raise DataError(f"{origin}={folder}: not a folder (expected an unpacked {FOLDER_NAME})")
    missing = missing_files(folder)
    if missing:
        hint = ""
        nested = folder / FOLDER_NAME
        if nested.is_dir() and not missing_files(nested):
            hint = f" (did you mean {nested}?)"
        raise DataError(
            f"{origin}={folder}: not a CIFAR-10 python folder, missing {', '.join(missing)}"
            f" (expected data_batch_1..5, test_batch, batches.meta){hint}"
        )
    return folder.resolve()


def find_data_dir(
    explicit: str | None, *, download: bool = True, progress: bool | None = None
) -> Path:
    """Resolve the CIFAR-10 folder: explicit setting, then $KNN_DATA_DIR, then cache, then fetch."""
    if explicit:
        return _check_data_dir(Path(explicit).expanduser(), "data.dir")
    from_env = os.environ.get("KNN_DATA_DIR")
    if from_env:
        return _check_data_dir(Path(from_env).expanduser(), "KNN_DATA_DIR")
    cached = cache_dir() / FOLDER_NAME
    if cached.is_dir() and not missing_files(cached):
        return cached.resolve()
    tried = f"no data.dir set, KNN_DATA_DIR not set, no complete copy at {cached}"
    if not download:
        raise DataError(f"CIFAR-10 not found ({tried}, download disabled); {_HINT}")
    # Looked up at call time, so tests can point them at a local file.
    url, md5 = cifar10.CIFAR10_URL, cifar10.CIFAR10_MD5
    try:
        fetched = download_cifar10(cache_dir(), url=url, md5=md5, progress=progress)
        return fetched.resolve()
    except DataError as exc:
        raise DataError(f"CIFAR-10 not found ({tried}) and {one_line(str(exc))}; {_HINT}") from exc
