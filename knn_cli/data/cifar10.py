"""What CIFAR-10 is, on disk and in memory: where the official archive lives and its checksum,
the files of the python-version folder, the shape of an image, and the `Dataset` the loader
returns. Every other module of the package reads these from here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"

FOLDER_NAME = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
REQUIRED_FILES = (*TRAIN_FILES, TEST_FILE, META_FILE)
N_FEATURES = 3072  # 3 channels x 32 x 32 pixels
N_CLASSES = 10
TRAIN_IMAGES = 50_000  # in the five training batches; the validation set is held out of these
TEST_IMAGES = 10_000
BATCH_IMAGES = 10_000  # in each batch file, the test batch's included


def missing_files(folder: Path) -> list[str]:
    """What a complete folder holds and this one lacks: checked on a user's folder (locate) and
    on a download (download)."""
    return [name for name in REQUIRED_FILES if not (folder / name).is_file()]


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
