"""The run folder: where every command leaves what it computed.

A run folder is never overwritten. Files that mark completion (summary, model, tables) are
written atomically -- to a temporary file in the same folder, then renamed -- so a crash never
leaves a half-written file that looks complete. Metrics are appended and flushed one record at a
time, so an interrupted run keeps every point it had computed.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

from knn_cli.errors import KnnError, RunFolderError

# What marks a run folder and reads its summary is the run kind's (light, for `knn runs`).
from knn_cli.kinds.run import CONFIG_FILE as CONFIG_FILE
from knn_cli.kinds.run import METRICS_FILE as METRICS_FILE
from knn_cli.kinds.run import SUMMARY_FILE as SUMMARY_FILE
from knn_cli.kinds.run import read_summary as read_summary
from knn_cli.kinds.run import summary_or_empty as summary_or_empty
from knn_cli.kinds.run import worker_seconds as worker_seconds

MODEL_FILE = "model.npz"
CHECKPOINT_FILE = "checkpoint.npz"
_CHECKPOINT_INFO = "checkpoint_info"  # a JSON string among the checkpoint's arrays
METRIC_FIELDS = ("step", "epoch", "eta", "split", "cost", "loss", "accuracy")
DIAGNOSTICS_FILE = "diagnostics.csv"
DIAGNOSTIC_FIELDS = ("step", "layer", "quantity", "value")
SNAPSHOTS_DIR = "snapshots"  # the networks at the ends of cycles, for a snapshot ensemble
MIN_FREE_BYTES = 50 * 1024 * 1024
_UMASK = os.umask(0)
os.umask(_UMASK)


def new_run_dir(parent: str | Path, name: str, now: dt.datetime | None = None) -> Path:
    """Create `parent/<YYYY-MM-DD_HH-MM-SS>_<name>`, adding `-2`, `-3`... if that exists.

    Creating the folder with exist_ok=False is the reservation, so two runs started in the same
    second (even in two processes) get two folders. Fails early, before any long work, when the
    parent is not writable or the disk is nearly full.
    """
    parent = Path(parent)
    stamp = (now or dt.datetime.now()).strftime("%Y-%m-%d_%H-%M-%S")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise KnnError(f"cannot create runs folder {parent}: {error.strerror or error}") from None
    check_writable(parent)
    for attempt in range(1, 10_000):
        candidate = parent / (f"{stamp}_{name}" if attempt == 1 else f"{stamp}_{name}-{attempt}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        except OSError as error:
            raise KnnError(
                f"cannot create run folder {candidate}: {error.strerror or error}"
            ) from None
        return candidate
    raise KnnError(f"cannot find a free run folder name under {parent}")


def check_folder_can_be_made(folder: Path, what: str) -> None:
    """A one-line KnnError now if `folder` cannot become a folder (a file stands where it or a
    parent of it would be), without making anything yet."""
    for path in (folder, *folder.parents):
        if path.exists():
            if not path.is_dir():
                raise KnnError(f"{what}: {path} is a file, not a folder")
            return


def check_writable(folder: Path, min_free_bytes: int = MIN_FREE_BYTES) -> None:
    """Say so now, not after an hour of training, if results could not be saved."""
    if not os.access(folder, os.W_OK | os.X_OK):
        raise KnnError(f"runs folder {folder} is not writable; choose another with --runs-dir")
    free = shutil.disk_usage(folder).free
    if free < min_free_bytes:
        raise KnnError(
            f"only {free // 2**20} MiB free on the disk of {folder}; "
            f"need at least {min_free_bytes // 2**20} MiB (free space or use --runs-dir)"
        )


@contextmanager
def _atomic_file(path: Path, mode: str) -> Iterator[IO[Any]]:
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp_name, 0o666 & ~_UMASK)  # mkstemp makes 0600; others' runs should be readable
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    with _atomic_file(Path(path), "w") as handle:
        handle.write(text)


def atomic_write_json(path: str | Path, data: Mapping[str, Any]) -> None:
    atomic_write_text(
        path, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n"
    )


def atomic_save_npz(path: str | Path, arrays: Mapping[str, np.ndarray]) -> None:
    with _atomic_file(Path(path), "wb") as handle:
        np.savez(handle, **arrays)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


class CsvLog:
    """Append-only CSV of records (one file of a run folder), flushed per evaluation point."""

    def __init__(self, path: Path, fields: Sequence[str]) -> None:
        self.path, self.fields = path, tuple(fields)
        is_new = not self.path.exists()
        self._handle = self.path.open("a", newline="")
        self._writer = csv.DictWriter(self._handle, fieldnames=self.fields)
        if is_new:
            self._writer.writeheader()

    def append(self, records: Sequence[Mapping[str, Any]]) -> None:
        for record in records:
            self._writer.writerow({key: record[key] for key in self.fields})
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


def metrics_log(run_dir: Path) -> CsvLog:
    return CsvLog(run_dir / METRICS_FILE, METRIC_FIELDS)


def diagnostics_log(run_dir: Path) -> CsvLog:
    return CsvLog(run_dir / DIAGNOSTICS_FILE, DIAGNOSTIC_FIELDS)


def read_diagnostics(run_dir: str | Path) -> list[dict[str, Any]]:
    """diagnostics.csv's rows (step, layer, quantity, value); [] for a run without it."""
    path = Path(run_dir) / DIAGNOSTICS_FILE
    if not path.is_file():
        return []
    rows = []
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            try:
                rows.append(
                    {
                        "step": int(row["step"]),
                        "layer": row["layer"],
                        "quantity": row["quantity"],
                        "value": float(row["value"]),
                    }
                )
            except (KeyError, TypeError, ValueError):
                continue  # a line cut short by a crash mid-write
    return rows


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_FILE
    if not Path(run_dir).is_dir():
        raise RunFolderError(f"run folder {run_dir} does not exist")
    if not path.is_file():
        raise RunFolderError(f"{run_dir} is not a run folder: it has no {METRICS_FILE}")
    rows = []
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [f for f in METRIC_FIELDS if f not in (reader.fieldnames or ())]
        if missing:
            raise RunFolderError(
                f"{path} is not a knn metrics file (missing columns: {', '.join(missing)})"
            )
        for row in reader:
            try:
                rows.append(
                    {
                        "step": int(row["step"]),
                        "epoch": float(row["epoch"]),
                        "eta": float(row["eta"]),
                        "split": row["split"],
                        "cost": float(row["cost"]),
                        "loss": float(row["loss"]),
                        "accuracy": float(row["accuracy"]),
                    }
                )
            except (KeyError, TypeError, ValueError):
                # A record cut short by a crash mid-write is the only partial line there can be.
                continue
    return rows


def write_checkpoint(
    run_dir: Path, arrays: Mapping[str, np.ndarray], info: Mapping[str, Any]
) -> None:
    """What continuing the run needs, atomically: a crash while writing leaves the last one."""
    text = json.dumps(dict(info), default=_json_default)
    atomic_save_npz(run_dir / CHECKPOINT_FILE, {**arrays, _CHECKPOINT_INFO: np.array(text)})


def read_checkpoint(run_dir: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays and the info of a run's checkpoint (never unpickling anything)."""
    path = run_dir / CHECKPOINT_FILE
    if not path.is_file():
        raise RunFolderError(f"{run_dir} has no {CHECKPOINT_FILE} to continue from")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
        info = json.loads(str(arrays.pop(_CHECKPOINT_INFO)))
    except (OSError, ValueError, KeyError) as error:
        raise RunFolderError(f"{path} is not a valid checkpoint ({error})") from None
    return arrays, info


def snapshot_path(run_dir: Path, cycle: int) -> Path:
    """Where the network at the end of `cycle` is kept: snapshots/cycle-<cycle>.npz."""
    return run_dir / SNAPSHOTS_DIR / f"cycle-{cycle}.npz"


def write_snapshot(run_dir: Path, cycle: int, arrays: Mapping[str, np.ndarray]) -> None:
    """The network's state at the end of `cycle`, atomically; a run continued from an earlier
    checkpoint writes it again, with the same bits."""
    path = snapshot_path(run_dir, cycle)
    path.parent.mkdir(exist_ok=True)
    atomic_save_npz(path, arrays)


def read_snapshot(run_dir: Path, cycle: int) -> dict[str, np.ndarray]:
    """The arrays of the snapshot at the end of `cycle` (never unpickling anything)."""
    path = snapshot_path(run_dir, cycle)
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except FileNotFoundError:
        raise RunFolderError(f"{path} is missing: the snapshot ensemble needs it") from None
    except (OSError, ValueError) as error:
        raise RunFolderError(f"{path} is not a valid snapshot ({error})") from None


def keep_metrics_through(run_dir: Path, last_step: int) -> list[dict[str, Any]]:
    """Rewrite metrics.csv and diagnostics.csv (atomically) without the records after
    `last_step`, which a run continued from a checkpoint at that step computes again; the lines
    kept are kept as they were, byte for byte. Returns the metrics records kept."""
    for path in (run_dir / METRICS_FILE, run_dir / DIAGNOSTICS_FILE):
        if not path.is_file():
            continue
        with path.open(newline="") as handle:  # "\r\n" as the csv module wrote it
            header, *lines = handle.read().splitlines(keepends=True)
        kept = [
            line for line in lines if (step := _step_of(line)) is not None and step <= last_step
        ]
        with _atomic_file(path, "w") as handle:
            handle.write(header + "".join(kept))
    return [record for record in read_metrics(run_dir) if record["step"] <= last_step]


def _step_of(line: str) -> int | None:
    try:
        return int(line.split(",", 1)[0])
    except ValueError:  # a record cut short by a crash mid-write
        return None


def require_run_dir(run_dir: str | Path, *files: str) -> Path:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunFolderError(f"run folder {run_dir} does not exist")
    missing = [name for name in files if not (run_dir / name).is_file()]
    if missing:
        raise RunFolderError(
            f"{run_dir} is not a complete run folder: missing {', '.join(missing)}"
        )
    return run_dir


def machine() -> str:
    """CPU model and the cores this process may use: every figure is named with its machine."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return f"{model}, {cores} cores"


def provenance() -> dict[str, Any]:
    """What is needed to reproduce a run beyond its config: versions and the code's commit."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(package: str) -> str | None:
        try:
            return version(package)
        except PackageNotFoundError:
            return None

    return {
        "knn_cli": installed("knn-cli"),
        "python": platform.python_version(),
        "numpy": np.__version__,
        **{package: installed(package) for package in ("click", "pyyaml", "matplotlib")},
        "platform": platform.platform(),
        "git_commit": _git_commit(),
    }


def _git_commit() -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None
