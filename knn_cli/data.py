"""CIFAR-10: find it, fetch it if needed, read it safely, split, normalize and cache it.

Everything here is a plain function returning arrays, so the CLI, the executors and the tests use
the same code path. Problems a user can cause (a wrong folder, a broken file, no network) become
one-line `DataError`s; anything else is a bug and may raise.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import numpy as np
from tqdm import tqdm

from knn_cli.errors import DataError

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"

FOLDER_NAME = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
REQUIRED_FILES = (*TRAIN_FILES, TEST_FILE, META_FILE)
N_FEATURES = 3072
N_CLASSES = 10

# Bump when the preprocessing or the cache layout changes, so old cache entries are ignored.
CACHE_FORMAT_VERSION = 1
_MANIFEST = "manifest.json"
_SPLITS = ("train", "val", "test")
# Rows converted to float64 at a time: a block small enough to stay in the CPU's cache (larger
# blocks were several times slower) and far from a float64 copy of the whole set.
_CHUNK_ROWS = 128
_DOWNLOAD_TIMEOUT_S = 30
_HINT = "point the tool at a local copy with --set data.dir=PATH or export KNN_DATA_DIR=PATH"


@dataclass(frozen=True, eq=False)
class Dataset:
    """The three normalized splits plus where they came from.

    `eq=False` because comparing arrays field by field has no single truth value; identity is the
    only equality that makes sense for a bundle of large arrays. X arrays may be read-only
    memmaps shared between processes: index them (`X[idx]`) to get private copies.
    """

    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    label_names: tuple[str, ...]
    source: str

    @property
    def n_features(self) -> int:
        return int(self.X_train.shape[1])

    @property
    def n_classes(self) -> int:
        return len(self.label_names)


# --------------------------------------------------------------------------------------------
# Where the data lives


def cache_dir() -> Path:
    """Root of everything this tool caches; overridable so tests and clusters can relocate it."""
    explicit = os.environ.get("KNN_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "knn"
    return Path.home() / ".cache" / "knn"


def _missing_files(folder: Path) -> list[str]:
    return [name for name in REQUIRED_FILES if not (folder / name).is_file()]


def _check_data_dir(folder: Path, origin: str) -> Path:
    """Refuse a folder given by the user rather than silently looking elsewhere.

    A user who names a folder expects that folder to be used; quietly falling back to a cached or
    downloaded copy would hide typos and make runs irreproducible.
    """
    if not folder.exists():
        raise DataError(f"{origin}={folder}: folder does not exist; {_HINT}")
    if not folder.is_dir():
        raise DataError(f"{origin}={folder}: not a folder (expected an unpacked {FOLDER_NAME})")
    missing = _missing_files(folder)
    if missing:
        hint = ""
        nested = folder / FOLDER_NAME
        if nested.is_dir() and not _missing_files(nested):
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
    if cached.is_dir() and not _missing_files(cached):
        return cached.resolve()
    tried = f"no data.dir set, KNN_DATA_DIR not set, no complete copy at {cached}"
    if not download:
        raise DataError(f"CIFAR-10 not found ({tried}, download disabled); {_HINT}")
    try:
        # Module globals looked up at call time, so tests can point them at a local file.
        fetched = download_cifar10(cache_dir(), url=CIFAR10_URL, md5=CIFAR10_MD5, progress=progress)
        return fetched.resolve()
    except DataError as exc:
        reason = " ".join(str(exc).split())  # the CLI prints one line
        raise DataError(f"CIFAR-10 not found ({tried}) and {reason}; {_HINT}") from exc


# --------------------------------------------------------------------------------------------
# Safe reading of the pickled batches


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """Stand-in for `_codecs.encode`, which protocol-2 pickles use to store bytes.

    Only the latin-1 round trip that pickle itself emits is allowed, so a crafted file cannot
    reach other codecs through this door.
    """
    if encoding.replace("-", "").lower() != "latin1" or not isinstance(text, str):
        raise DataError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The only callables the CIFAR-10 pickles need, under every name numpy has used for them."""
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2 (and a 1.26 shim)
    except ImportError:  # pragma: no cover - numpy 1.x without the shim
        from numpy.core.multiarray import _reconstruct
    return {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and nothing else.

    A plain `pickle.load` will call any importable function a file names (os.system included),
    and data folders come from downloads and from other people's disks.
    """

    _allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise DataError(f"refusing to load {module}.{name} (not part of CIFAR-10)") from None


def _load_pickle(path: Path) -> Any:
    try:
        with path.open("rb") as f:
            return _SafeUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise DataError(f"{path}: file does not exist") from None
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except Exception as exc:  # any decoding failure means "not the right pickle"
        raise DataError(f"{path}: not a CIFAR-10 pickle ({type(exc).__name__}: {exc})") from None


def _as_str_keys(obj: Any, path: Path) -> dict[str, Any]:
    """Accept both b'data' (encoding='bytes', the original files) and 'data' keys."""
    if not isinstance(obj, dict):
        raise DataError(f"{path}: not a CIFAR-10 pickle (holds {type(obj).__name__}, not dict)")
    return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def _validate_pixels(data: Any, path: Path) -> np.ndarray:
    if not isinstance(data, np.ndarray):
        raise DataError(f"{path}: 'data' is {type(data).__name__}, expected a numpy array")
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != N_FEATURES:
        raise DataError(
            f"{path}: 'data' is {data.dtype} {data.shape}, expected uint8 (n, {N_FEATURES})"
        )
    return np.ascontiguousarray(data)


def _validate_labels(raw: Any, n: int, path: Path) -> np.ndarray:
    try:
        labels = np.asarray(raw)
    except Exception as exc:
        raise DataError(f"{path}: 'labels' cannot be read as an array ({exc})") from None
    if labels.ndim != 1 or labels.shape[0] != n:
        raise DataError(f"{path}: 'labels' has shape {labels.shape}, expected ({n},) like 'data'")
    if n and not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: 'labels' are {labels.dtype}, expected integers")
    labels = labels.astype(np.int64)
    if n and (labels.min() < 0 or labels.max() >= N_CLASSES):
        raise DataError(
            f"{path}: 'labels' range {labels.min()}..{labels.max()}, expected 0..{N_CLASSES - 1}"
        )
    return labels


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one batch file as (uint8 (n, 3072) pixels, int64 labels), refusing anything odd."""
    path = Path(path)
    batch = _as_str_keys(_load_pickle(path), path)
    for key in ("data", "labels"):
        if key not in batch:
            raise DataError(f"{path}: not a CIFAR-10 batch (no '{key}' entry)")
    pixels = _validate_pixels(batch["data"], path)
    labels = _validate_labels(batch["labels"], pixels.shape[0], path)
    return pixels, labels


def read_label_names(path: Path) -> tuple[str, ...]:
    """Read the class names from batches.meta."""
    path = Path(path)
    names = _as_str_keys(_load_pickle(path), path).get("label_names")
    if not isinstance(names, (list, tuple)) or len(names) != N_CLASSES:
        raise DataError(f"{path}: expected 'label_names' to be a list of {N_CLASSES} names")
    if not all(isinstance(n, (bytes, str)) for n in names):
        raise DataError(f"{path}: 'label_names' holds something other than strings")
    return tuple(n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in names)


# --------------------------------------------------------------------------------------------
# Download and safe extraction


def _show_progress(progress: bool | None) -> bool:
    return sys.stderr.isatty() if progress is None else progress


def _fetch(url: str, out: BinaryIO, progress: bool | None) -> str:
    """Stream `url` into `out` and return its MD5, hashing as we go to avoid a second read."""
    digest = hashlib.md5()
    try:
        with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                desc="CIFAR-10",
                disable=not _show_progress(progress),
            ) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    except (OSError, HTTPException, ValueError) as exc:  # URLError and timeouts are OSErrors
        reason = getattr(exc, "reason", None) or exc
        raise DataError(f"download from {url} failed ({reason})") from None
    return digest.hexdigest()


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    """Refuse members that could write outside the target or create surprising file types."""
    name = PurePosixPath(member.name)
    if name.is_absolute() or member.name.startswith(("/", "\\")) or ".." in name.parts:
        raise DataError(f"{archive}: refusing unsafe member path {member.name!r}")
    if not (member.isfile() or member.isdir()):
        raise DataError(f"{archive}: refusing {member.name!r} (links and devices not allowed)")


def _extract_safely(archive: Path, target: Path) -> None:
    """Check every member before writing anything, then copy regular files byte by byte.

    Writing the files ourselves (instead of `extractall`) means permissions, owners and
    timestamps from the archive are never applied.
    """
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member, archive)
            for member in members:
                dest = target.joinpath(*PurePosixPath(member.name).parts)
                if member.isdir():
                    dest.mkdir(parents=True, exist_ok=True)
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None  # regular files always have content
                with source, dest.open("wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"{archive}: cannot unpack ({exc})") from None


def download_cifar10(
    dest_parent: Path,
    *,
    url: str = CIFAR10_URL,
    md5: str = CIFAR10_MD5,
    progress: bool | None = None,
) -> Path:
    """Download, verify and unpack CIFAR-10 into `dest_parent/cifar-10-batches-py`.

    Every step happens in temporary names inside `dest_parent` and the finished folder is renamed
    into place, so an interrupted or concurrent download never leaves a half folder that a later
    run would trust.
    """
    dest_parent = Path(dest_parent)
    final = dest_parent / FOLDER_NAME
    try:
        dest_parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".cifar-10-", suffix=".tar.gz", dir=dest_parent)
    except OSError as exc:
        raise DataError(f"cannot write to {dest_parent} ({exc.strerror or exc})") from None
    archive = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            actual = _fetch(url, out, progress)
        if actual != md5:
            raise DataError(f"download from {url} is corrupt (MD5 {actual}, expected {md5})")
        return _unpack_into_place(archive, final)
    finally:
        archive.unlink(missing_ok=True)


def _unpack_into_place(archive: Path, final: Path) -> Path:
    staging = Path(tempfile.mkdtemp(prefix=".cifar-10-unpack-", dir=final.parent))
    try:
        _extract_safely(archive, staging)
        unpacked = staging / FOLDER_NAME
        missing = _missing_files(unpacked)
        if missing:
            raise DataError(f"archive {archive.name} lacks {FOLDER_NAME}/{', '.join(missing)}")
        try:
            unpacked.rename(final)
        except OSError as exc:
            if _missing_files(final):  # not a concurrent download that finished first
                raise DataError(
                    f"cannot move the unpacked data to {final} ({exc.strerror or exc});"
                    " remove that folder and retry"
                ) from None
        return final
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Preprocessing and the on-disk cache


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


@dataclass(frozen=True, eq=False)
class _Raw:
    """Validated uint8 pixels before normalization."""

    train: np.ndarray
    y_train: np.ndarray
    val: np.ndarray
    y_val: np.ndarray
    test: np.ndarray
    y_test: np.ndarray
    label_names: tuple[str, ...]


def _read_raw(folder: Path, validation_size: int) -> _Raw:
    batches = [read_batch(folder / name) for name in TRAIN_FILES]
    pixels = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    del batches
    n = pixels.shape[0]
    if validation_size >= n:
        raise DataError(
            f"validation_size={validation_size} leaves no training images ({folder} has {n})"
        )
    test, y_test = read_batch(folder / TEST_FILE)
    split = n - validation_size
    return _Raw(
        train=pixels[:split],
        y_train=labels[:split],
        val=pixels[split:],
        y_val=labels[split:],
        test=test,
        y_test=y_test,
        label_names=read_label_names(folder / META_FILE),
    )


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
