"""Shared test helpers: a tiny fake CIFAR-10 folder and an isolated cache for every test.

Other test modules can `from conftest import REAL_DATA_DIR, requires_real_data, write_fake_cifar`:
pytest puts this folder on sys.path when it imports this conftest (tests/ is not a package).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

LABEL_NAMES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


def _real_data_dir() -> Path | None:
    value = os.environ.get("KNN_DATA_DIR")
    if value and Path(value).expanduser().is_dir():
        return Path(value).expanduser()
    return None


# Read before any fixture clears KNN_DATA_DIR, so real-data tests can still find the real files.
REAL_DATA_DIR: Path | None = _real_data_dir()
requires_real_data = pytest.mark.skipif(
    REAL_DATA_DIR is None,
    reason="real CIFAR-10 not found: set KNN_DATA_DIR to a cifar-10-batches-py folder",
)

# Each class gets its own brightness per channel: 10 levels 17 apart, permuted differently per
# channel, so any two classes differ by >= 17 (of 255) in every channel and a tiny net separates
# them after a few steps, while single pixels stay noisy.
_LEVELS = 40 + 17 * np.arange(10)
_CLASS_MEANS = np.stack(
    [_LEVELS, _LEVELS[(3 * np.arange(10)) % 10], _LEVELS[(7 * np.arange(10)) % 10]], axis=1
)
_NOISE_STD = 25.0


def _fake_pixels(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    means = np.repeat(_CLASS_MEANS[labels], 1024, axis=1)  # (n, 3072): R block, G block, B block
    noisy = means + rng.normal(0.0, _NOISE_STD, size=means.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def _write_pickle(path: Path, obj: dict[bytes, object]) -> None:
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=2)


def _write_batch(path: Path, n: int, title: str, rng: np.random.Generator, offset: int) -> None:
    labels = rng.permutation(np.arange(n) % 10)  # every class present when n >= 10
    batch = {
        b"batch_label": title.encode(),
        b"labels": [int(c) for c in labels],
        b"data": _fake_pixels(labels, rng),
        b"filenames": [f"fake_{offset + i:05d}.png".encode() for i in range(n)],
    }
    _write_pickle(path, batch)


def write_fake_cifar(folder: Path, n_per_batch: int = 30, seed: int = 0) -> Path:
    """Write a tiny CIFAR-10 folder in the real on-disk format, with learnable classes."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(1, 6):
        title = f"training batch {i} of 5"
        _write_batch(folder / f"data_batch_{i}", n_per_batch, title, rng, (i - 1) * n_per_batch)
    _write_batch(folder / "test_batch", n_per_batch, "testing batch 1 of 1", rng, 0)
    meta = {
        b"num_cases_per_batch": n_per_batch,
        b"label_names": [name.encode() for name in LABEL_NAMES],
        b"num_vis": 3072,
    }
    _write_pickle(folder / "batches.meta", meta)
    return folder


def interrupt_at(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """Send this process SIGINT once `step` steps are done, as Ctrl-C would: when a run's
    folder hears of that step (its recorder is the trainer's listener)."""
    import os
    import signal

    from knn_cli.recorder import RunRecorder

    real_on_step = RunRecorder.on_step
    sent: list[int] = []  # once, as a person presses Ctrl-C once: each member hears the step

    def on_step(self: RunRecorder, done: int, eta: float) -> None:
        real_on_step(self, done, eta)
        if done == step and not sent:
            sent.append(done)
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(RunRecorder, "on_step", on_step)


@pytest.fixture
def fake_cifar_dir(tmp_path: Path) -> Path:
    """A fresh fake CIFAR-10 folder (5 x 30 train images, 30 test images)."""
    return write_fake_cifar(tmp_path / "cifar-10-batches-py")


@pytest.fixture(autouse=True)
def _isolated_data_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep every test away from ~/.cache and from the user's real data folder."""
    cache = tmp_path / "knn-cache"
    monkeypatch.setenv("KNN_CACHE_DIR", str(cache))
    monkeypatch.delenv("KNN_DATA_DIR", raising=False)
    return cache


@pytest.fixture(autouse=True, scope="session")
def _one_blas_thread_per_test_process():
    """The tests' tiny matrices gain nothing from BLAS threads, and lose a great deal (measured:
    50x on a busy 2-core machine) when those threads wait for cores."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


@pytest.fixture(autouse=True, scope="session")
def _ctrl_c_raises_as_in_a_terminal():
    """Tests send SIGINT to themselves as Ctrl-C would; a shell that starts the suite in the
    background (nohup, `&`) has it ignored, which the code rightly respects (sweep workers ignore
    it on purpose). Give the suite a terminal's SIGINT whatever started it."""
    import signal

    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)
