"""Reading the pickled python-version batches, and splitting them into train, val and test.

The files come from downloads and from other people's disks, so they are unpickled by a loader
that can rebuild numpy arrays and nothing else, and every array is checked before it is used.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from knn_cli.data.cifar10 import META_FILE, N_CLASSES, N_FEATURES, TEST_FILE, TRAIN_FILES
from knn_cli.errors import DataError


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
