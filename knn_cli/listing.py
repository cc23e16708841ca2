"""What lies under a runs folder, one row per run, sweep or study, read from their own files.

A row is built from the files each command leaves (summary.json, sweep.json, study.json), never
from a cache of its own, so it is right however the folder came to be: copied, resumed, half
written. A folder whose files cannot be read still gets its row, with the reason as its status:
one damaged folder must not hide the others.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from knn_cli.errors import KnnError, RunFolderError
from knn_cli.locks import holder_alive
from knn_cli.lr_range import SETTINGS_FILE as RANGE_SETTINGS_FILE
from knn_cli.runs import (
    CONFIG_FILE,
    METRICS_FILE,
    SUMMARY_FILE,
    summary_or_empty,
    worker_seconds,
)

STUDY_FILE = "study.json"
RUN, GRADCHECK, STUDY, LR_RANGE = "run", "gradcheck", "study", "lr-range"
DONE = ("finished", "passed")  # a gradcheck part of a study passes rather than finishes
STAMP = re.compile(r"^(\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2})_(.+)$")
STAMP_FORMAT = "%Y-%m-%d_%H-%M-%S"
# Files that mark a folder as derived from runs rather than an experiment: `knn compare`'s.
DERIVED_MARKERS = ("compare.md",)


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


def folder_kind(folder: Path) -> str | None:
    """study, a sweep's recorded kind, gradcheck, run, or None for a folder knn did not make."""
    if (folder / STUDY_FILE).is_file():
        return STUDY
    if (folder / "sweep.json").is_file():
        try:
            return str(json.loads((folder / "sweep.json").read_text())["kind"])
        except (OSError, ValueError, KeyError, TypeError):
            return "sweep"
    if (folder / SUMMARY_FILE).is_file() and summary_or_empty(folder).get("command") == GRADCHECK:
        return GRADCHECK
    if (folder / RANGE_SETTINGS_FILE).is_file():
        return LR_RANGE
    if any((folder / name).is_file() for name in (CONFIG_FILE, METRICS_FILE, SUMMARY_FILE)):
        return RUN
    return None


def list_rows(parent: Path) -> tuple[list[Row], int]:
    """The rows under `parent`, newest first, and how many of its folders are not knn's.

    `parent` itself may be a run (listed alone), a sweep (its trials are the folders under
    it) or a study (its parts, as study.json names them)."""
    if not parent.exists():
        raise RunFolderError(f"folder {parent} does not exist")
    if not parent.is_dir():
        raise RunFolderError(f"{parent} is a file, not a folder of runs")
    if folder_kind(parent) in (RUN, GRADCHECK, LR_RANGE):
        return [read_row(parent)], 0
    if folder_kind(parent) == STUDY:
        return newest_first(_part_rows(parent)), 0
    rows, others = [], 0
    for child in sorted(parent.iterdir()):
        if not child.is_dir() or child.name.startswith("."):
            continue
        if folder_kind(child) is not None:
            rows.append(read_row(child))
        elif not any((child / name).is_file() for name in DERIVED_MARKERS):
            others += 1
    return newest_first(rows), others


def newest_first(rows: Iterable[Row]) -> list[Row]:
    # Rows with no known start go last; names break ties so the order never depends on disk.
    return sorted(rows, key=lambda row: (row.started or "", row.name), reverse=True)


def read_row(folder: Path) -> Row:
    kind = folder_kind(folder)
    if kind is None:
        raise RunFolderError(f"{folder} is not a run, sweep or study folder")
    try:
        if kind == RUN:
            return _run_row(folder)
        if kind == GRADCHECK:
            return _gradcheck_row(folder)
        if kind == LR_RANGE:
            return _range_row(folder)
        if kind == STUDY:
            return _study_row(folder)
        return _sweep_row(folder)
    except KnnError as error:
        return _row(folder, kind, f"unreadable: {error}", "")


def _row(folder: Path, kind: str, status: str, settings: str, **values: Any) -> Row:
    name = STAMP.match(folder.name)
    return Row(
        name=folder.name,
        folder=str(folder),
        kind=kind,
        status=status,
        settings=settings,
        test_accuracy=_number(values.get("test_accuracy")),
        val_accuracy=_number(values.get("val_accuracy")),
        wall_seconds=_number(values.get("wall_seconds")),
        started=values.get("started") or _started(folder, name),
        finished=values.get("finished"),
        total=values.get("total"),
        test_accuracy_snapshot_ensemble=_number(values.get("test_accuracy_snapshot_ensemble")),
    )


def _started(folder: Path, stamp: re.Match[str] | None) -> str | None:
    """From the folder's stamp; else (a sweep's trial folder) when its first file was written."""
    if stamp is not None:
        return dt.datetime.strptime(stamp.group(1), STAMP_FORMAT).isoformat()
    for name in (CONFIG_FILE, "sweep.json", METRICS_FILE, SUMMARY_FILE):
        if (folder / name).is_file():
            mtime = (folder / name).stat().st_mtime
            return dt.datetime.fromtimestamp(mtime).replace(microsecond=0).isoformat()
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


# -- runs -----------------------------------------------------------------------------------------


def run_config(run_dir: Path) -> dict[str, Any]:
    """The run's config with every default filled in and n_s as the run resolved it, so two
    configs compare equal exactly when they trained the same way."""
    from knn_cli.config import config_to_dict, load_config

    config = config_to_dict(load_config(run_dir / CONFIG_FILE))
    n_s = summary_or_empty(run_dir).get("n_s")
    if n_s:
        config["training"]["n_s"] = n_s
    return config


def run_status(summary: Mapping[str, Any]) -> str:
    # No summary yet: still training, or stopped before it wrote one (`knn train --resume`).
    return str(summary.get("status") or "unfinished")


def _run_row(folder: Path) -> Row:
    from knn_cli.plots import settings_text

    summary = summary_or_empty(folder)
    try:
        settings = settings_text(run_config(folder))
    except KnnError:
        settings = "(config unreadable)"
    return _row(
        folder,
        RUN,
        run_status(summary),
        settings,
        test_accuracy=summary.get("test_accuracy"),
        val_accuracy=summary.get("final_val_accuracy"),
        wall_seconds=summary.get("wall_seconds"),
        test_accuracy_snapshot_ensemble=summary.get("test_accuracy_snapshot_ensemble"),
    )


def _gradcheck_row(folder: Path) -> Row:
    summary = summary_or_empty(folder)
    parts = [f"k={summary['layers']}"] if "layers" in summary else []
    if "hidden" in summary:
        parts.append(f"hidden {summary['hidden']}")
    parts += list(summary.get("textbook_passed") or {})  # the variants checked
    return _row(folder, GRADCHECK, str(summary.get("status", "unfinished")), ", ".join(parts))


# -- sweeps ---------------------------------------------------------------------------------------


def _range_row(folder: Path) -> Row:
    """A range test: its schedule and suggested bounds; its peak validation accuracy."""
    summary = summary_or_empty(folder)
    schedule = summary.get("schedule") or {}
    parts = [str(summary.get("name", ""))]
    if schedule:
        parts.append(f"{schedule['shape']} {schedule['low']:g} to {schedule['high']:g}")
    suggested = summary.get("suggested") or {}
    low, high = (suggested.get(key, {}).get("value") for key in ("eta_min", "eta_max"))
    if low is not None and high is not None:
        parts.append(f"suggests {low:.2g} to {high:.2g}")
    peaks = [
        seed["suggestions"]["peak_accuracy"]
        for seed in summary.get("seeds", [])
        if "suggestions" in seed
    ]
    status = str(summary.get("status", "unfinished"))
    return _row(
        folder,
        LR_RANGE,
        status,
        ", ".join(p for p in parts if p),
        val_accuracy=max(peaks) if peaks else None,
        wall_seconds=summary.get("wall_seconds"),
    )


def sweep_records(sweep_dir: Path) -> tuple[str, Any, list[Any]]:
    """The sweep's kind, its spec and a record per trial planned so far (each the attempt that
    counts: the finished one if any, else the latest)."""
    from knn_cli.sweeps.folder import load_sweep, read_sweep_file, trial_record
    from knn_cli.sweeps.plan import Trial

    kind, spec = load_sweep(sweep_dir)
    try:
        trials = [Trial.from_dict(t) for t in read_sweep_file(sweep_dir)["trials"]]
    except (KeyError, TypeError) as error:
        raise RunFolderError(
            f"{sweep_dir}/sweep.json lists trials this knn cannot read: {error}"
        ) from None
    return kind, spec, [trial_record(sweep_dir, trial) for trial in trials]


def planned_total(kind: str, spec: Any, planned: int) -> int:
    """Trials the sweep will have run when done. A lambda search plans its fine and final stages
    only once the stage before has results, so sweep.json alone would undercount them."""
    from knn_cli.sweeps.plan import LAMBDA_SEARCH

    if kind != LAMBDA_SEARCH:
        return planned
    return max(planned, spec.total_trials)


def count_text(statuses: Sequence[str], total: int, *, running: bool = False) -> str:
    """'3/5 finished', then the other ends reached ('1 diverged'); pending ones go unsaid, and
    so do stopped ones while the sweep runs: it is training them."""
    finished = sum(status in DONE for status in statuses)
    unsaid = ("pending", "interrupted") if running else ("pending",)
    others: dict[str, int] = {}
    for status in statuses:
        if status not in DONE and status not in unsaid:
            others[status] = others.get(status, 0) + 1
    counts = [f"{finished}/{total} finished", *(f"{n} {s}" for s, n in others.items())]
    return ", ".join(counts + ["running"] * running)


def _sweep_row(folder: Path) -> Row:
    from knn_cli.sweeps.plan import SEARCH_STAGES
    from knn_cli.sweeps.tables import final_test_summary

    kind, spec, records = sweep_records(folder)
    total = planned_total(kind, spec, len(records))
    # A final retrain holds out a different validation set: only search trials compare.
    scores = [r.get("final_val_accuracy") for r in records if r.finished]
    if any(r.trial.stage in SEARCH_STAGES for r in records):
        scores = [r.score for r in records if r.trial.stage in SEARCH_STAGES and r.finished]
    final = final_test_summary(records)
    # A run trained in a population of P took a P-th of its wall time's worth of a worker.
    seconds = [worker_seconds(r.summary) for r in records if r.folder is not None]
    return _row(
        folder,
        kind,
        count_text([r.status for r in records], total, running=holder_alive(folder)),
        sweep_settings(kind, spec),
        test_accuracy=final[0] if final else None,
        val_accuracy=max((s for s in scores if _number(s) is not None), default=None),
        wall_seconds=_total(seconds),
        finished=sum(r.finished for r in records),
        total=total,
    )


def _total(values: Iterable[Any]) -> float | None:
    numbers = [_number(v) for v in values]
    known = [n for n in numbers if n is not None]
    return sum(known) if known else None


def sweep_settings(kind: str, spec: Any) -> str:
    """What the sweep varies over and on what network, in one line."""
    from knn_cli.plots import model_settings
    from knn_cli.sweeps.plan import CONFIG_SWEEP, INIT_SENSITIVITY, LAMBDA_SEARCH

    if kind == LAMBDA_SEARCH:
        stages = [s for s in ("coarse", "fine", "final") if getattr(spec, s)]
        low, high = spec.log_range
        span = f"lambda {10**low:.2g} to {10**high:.2g}" if spec.coarse else "lambda refined"
        parts = [*model_settings(spec.base), "+".join(stages), f"{spec.trials} trials", span]
    elif kind == INIT_SENSITIVITY:
        batch_norm = {(False,): "no BN", (True,): "BN"}.get(tuple(spec.batch_norms), "BN and no BN")
        parts = [
            f"k {','.join(map(str, spec.depths))}",
            batch_norm,
            f"sigma {','.join(f'{s:g}' for s in spec.sigmas)}",
        ]
    elif kind == CONFIG_SWEEP:
        names = [entry["config"]["name"] for entry in spec.runs]
        listed = ", ".join(names)
        short = f"{len(names)} configs, {names[0]} to {names[-1]}"
        parts = [listed if len(listed) <= 50 else short]
    else:
        parts = []
    return ", ".join(parts)


# -- studies --------------------------------------------------------------------------------------


def _study_file(folder: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """study.json and its parts by name."""
    path = folder / STUDY_FILE
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise RunFolderError(f"{path} cannot be read: {error}") from None
    is_study = isinstance(doc, dict) and doc.get("kind") == STUDY
    if not is_study or not isinstance(doc.get("parts"), dict):
        raise RunFolderError(f"{path} is not a study record")
    return doc, {name: part for name, part in doc["parts"].items() if isinstance(part, dict)}


def _part_rows(folder: Path) -> list[Row]:
    """A row per part: the part's folder's own when it is a run or sweep, else what study.json
    says of it (a part not started, or one that is a folder of gradient checks)."""
    rows = []
    for name, part in _study_file(folder)[1].items():
        where = folder / str(part.get("folder") or name)
        if where.is_dir() and folder_kind(where) is not None:
            rows.append(read_row(where))
            continue
        kind, status = str(part.get("kind") or "part"), str(part.get("status") or "pending")
        rows.append(_row(where, kind, status, "", wall_seconds=part.get("seconds")))
    return rows


def _study_row(folder: Path) -> Row:
    doc, parts = _study_file(folder)
    statuses = [str(part.get("status", "pending")) for part in parts.values()]
    settings = ("quick: " if doc.get("quick") else "") + ", ".join(parts)
    started = doc.get("started")
    return _row(
        folder,
        STUDY,
        count_text(statuses, len(parts)),
        settings,
        wall_seconds=_total(part.get("seconds") for part in parts.values()),
        started=_iso(started) if isinstance(started, str) else None,
        finished=sum(status in DONE for status in statuses),
        total=len(parts),
    )


def _iso(text: str) -> str | None:
    """A study's own start time in the folders' terms: local time, to the second."""
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is not None:
        moment = moment.astimezone().replace(tzinfo=None)
    return moment.replace(microsecond=0).isoformat()


# -- output ---------------------------------------------------------------------------------------

# A run's time is its wall time; a sweep's or a study's is the sum of its runs' (or parts'),
# more than the wall time where workers ran side by side: hence not "wall time".
TABLE_HEADERS = ("name", "kind", "status", "settings", "test", "val", "time", "started")
# Beside "test" where some run has one: the test accuracy of its snapshot ensemble.
ENSEMBLE_HEADER = "test, snapshot ensemble"


def rows_table(rows: Sequence[Row]) -> str:
    from knn_cli.formatting import duration, markdown_table, percent

    ensemble = any(row.test_accuracy_snapshot_ensemble is not None for row in rows)
    test = TABLE_HEADERS.index("test") + 1
    headers = list(TABLE_HEADERS)
    if ensemble:
        headers.insert(test, ENSEMBLE_HEADER)
    table = []
    for row in rows:
        cells = [
            row.name,
            row.kind,
            row.status,
            row.settings or None,
            percent(row.test_accuracy),
            percent(row.val_accuracy),
            duration(row.wall_seconds),
            row.started.replace("T", " ")[:16] if row.started else None,
        ]
        if ensemble:
            cells.insert(test, percent(row.test_accuracy_snapshot_ensemble))
        table.append(cells)
    return markdown_table(headers, table)


def rows_json(rows: Sequence[Row]) -> str:
    return json.dumps([row.as_dict() for row in rows], indent=2)
