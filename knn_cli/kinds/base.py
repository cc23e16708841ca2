"""What every kind of folder shares: the row `knn runs` shows for it, and the `Kind` that says
how to recognise a folder and summarise it in that row.

Light on purpose, as every module of `knn_cli.kinds`: json and the standard library only, so that
listing a folder of hundreds of runs starts at once.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from knn_cli.errors import RunFolderError

STAMP = re.compile(r"^(\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2})_(.+)$")
STAMP_FORMAT = "%Y-%m-%d_%H-%M-%S"
DONE = ("finished", "passed")  # a gradcheck part of a study passes rather than finishes


@dataclass(frozen=True)
class Row:
    """One run, sweep or study as `knn runs` shows it. Accuracies are fractions; for a sweep
    `val_accuracy` is its best trial's and `test_accuracy` the final retrain's mean, if any;
    `test_accuracy_snapshot_ensemble` a run's snapshot ensemble's, where it has one."""

    name: str
    folder: str
    kind: str
    status: str
    settings: str
    test_accuracy: float | None
    val_accuracy: float | None
    wall_seconds: float | None
    started: str | None  # ISO 8601, local time as the folder stamp records it
    finished: int | None = None  # trials or parts, for sweeps and studies
    total: int | None = None
    test_accuracy_snapshot_ensemble: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Kind:
    """A kind of folder knn leaves, described by its own module: `recognise` looks only at
    which files are there (and at most one small file's content), `summary` reads the folder
    into its row. `shown` names a folder whose kind is recorded inside it (a sweep's).

    What `knn runs FOLDER` lists for it: `contents` where the kind says (a study: its parts,
    as study.json names them); else the folders knn made under it where `holds_folders` (a
    sweep's trials); else its own row. What `knn compare` draws of it: `curves`, the run
    folders with training curves it stands for; where None, `no_curves` says why not."""

    name: str
    recognise: Callable[[Path], bool]
    summary: Callable[[Path], Row]
    shown: Callable[[Path], str] | None = None
    contents: Callable[[Path], list[Row]] | None = None
    holds_folders: bool = False
    curves: Callable[[Path], list[Path]] | None = None
    no_curves: str = "has no training curves to compare"

    def shown_as(self, folder: Path) -> str:
        return self.shown(folder) if self.shown is not None else self.name


def read_own_file(folder: Path, name: str, what: str) -> Any:
    """The JSON file that marks `folder` as a `what` (study.json for a study), or a one-line
    RunFolderError saying why it cannot be read."""
    path = folder / name
    if not folder.is_dir():
        raise RunFolderError(f"{what} folder {folder} does not exist")
    if not path.is_file():
        raise RunFolderError(f"{folder} is not a {what} folder: it has no {name}")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise RunFolderError(f"{path} cannot be read: {error}") from None


def row(
    folder: Path,
    kind: str,
    status: str,
    settings: str,
    *,
    written: Sequence[str] = (),
    **values: Any,
) -> Row:
    """A row with its numbers checked (None where not a finite number) and its start from the
    folder's stamp, else from the first of the `written` files there (a sweep's trial folder)."""
    return Row(
        name=folder.name,
        folder=str(folder),
        kind=kind,
        status=status,
        settings=settings,
        test_accuracy=number(values.get("test_accuracy")),
        val_accuracy=number(values.get("val_accuracy")),
        wall_seconds=number(values.get("wall_seconds")),
        started=values.get("started") or _started(folder, written),
        finished=values.get("finished"),
        total=values.get("total"),
        test_accuracy_snapshot_ensemble=number(values.get("test_accuracy_snapshot_ensemble")),
    )


def _started(folder: Path, written: Sequence[str]) -> str | None:
    stamp = STAMP.match(folder.name)
    if stamp is not None:
        return dt.datetime.strptime(stamp.group(1), STAMP_FORMAT).isoformat()
    for name in written:
        if (folder / name).is_file():
            mtime = (folder / name).stat().st_mtime
            return dt.datetime.fromtimestamp(mtime).replace(microsecond=0).isoformat()
    return None


def number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def total(values: Iterable[Any]) -> float | None:
    """The sum of the values that are numbers; None where none is."""
    known = [n for n in map(number, values) if n is not None]
    return sum(known) if known else None


def count_text(statuses: Sequence[str], planned: int, *, running: bool = False) -> str:
    """'3/5 finished', then the other ends reached ('1 diverged'); pending ones go unsaid, and
    so do stopped ones while the sweep runs: it is training them."""
    finished = sum(status in DONE for status in statuses)
    unsaid = ("pending", "interrupted") if running else ("pending",)
    others: dict[str, int] = {}
    for status in statuses:
        if status not in DONE and status not in unsaid:
            others[status] = others.get(status, 0) + 1
    counts = [f"{finished}/{planned} finished", *(f"{n} {s}" for s, n in others.items())]
    return ", ".join(counts + ["running"] * running)
