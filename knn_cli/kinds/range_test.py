"""A learning-rate range test's folder (`knn lr-range`): marked by lr_range.json, its settings,
written as it starts; lr_range.csv holds every step's rows, and its summary.json a record per
seed, with what it suggests.

`range_test.py`, which writes the folder, takes these names from here.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from knn_cli.errors import RunFolderError
from knn_cli.kinds.base import Kind, Row, row
from knn_cli.kinds.run import RUN_FILES, summary_or_empty

LR_RANGE = "lr-range"  # summary.json's "command"
# A range test's own settings, written as it starts: what marks its folder as one.
SETTINGS_FILE = "lr_range.json"
RANGE_FILE, RANGE_FIGURE = "lr_range.csv", "lr_range.png"  # every step's rows; their figure


def recognise(folder: Path) -> bool:
    return (folder / SETTINGS_FILE).is_file()


def records(folder: Path) -> list[dict[str, Any]]:
    """A record per seed tested so far: its curves' ends and, where it got that far, its
    suggestions."""
    return _seeds(summary_or_empty(folder))


def read_range_rows(run_dir: Path) -> list[dict[str, Any]]:
    """lr_range.csv's rows, typed; a line cut short by a crash mid-write is left out."""
    path = run_dir / RANGE_FILE
    if not path.is_file():
        raise RunFolderError(f"{run_dir} is not a range test: it has no {RANGE_FILE}")
    rows = []
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            try:
                rows.append(
                    {
                        "seed": int(row["seed"]),
                        "step": int(row["step"]),
                        "eta": float(row["eta"]),
                        "loss": float(row["loss"]),
                        "cost": float(row["cost"]),
                        "smoothed_loss": float(row["smoothed_loss"]),
                        "val_loss": float(row["val_loss"]) if row["val_loss"] else None,
                        "val_accuracy": float(row["val_accuracy"]) if row["val_accuracy"] else None,
                    }
                )
            except (KeyError, TypeError, ValueError):
                continue
    return rows


def _seeds(found: dict[str, Any]) -> list[dict[str, Any]]:
    seeds = found.get("seeds")
    return [seed for seed in seeds if isinstance(seed, dict)] if isinstance(seeds, list) else []


def summary(folder: Path) -> Row:
    """Its schedule and suggested bounds; its peak validation accuracy."""
    found = summary_or_empty(folder)
    schedule = found.get("schedule") or {}
    parts = [str(found.get("name", ""))]
    if schedule:
        parts.append(f"{schedule['shape']} {schedule['low']:g} to {schedule['high']:g}")
    suggested = found.get("suggested") or {}
    low, high = (suggested.get(key, {}).get("value") for key in ("eta_min", "eta_max"))
    if low is not None and high is not None:
        parts.append(f"suggests {low:.2g} to {high:.2g}")
    peaks = [
        seed["suggestions"]["peak_accuracy"] for seed in _seeds(found) if "suggestions" in seed
    ]
    return row(
        folder,
        LR_RANGE,
        str(found.get("status", "unfinished")),
        ", ".join(p for p in parts if p),
        written=RUN_FILES,
        val_accuracy=max(peaks) if peaks else None,
        wall_seconds=found.get("wall_seconds"),
    )


KIND = Kind(
    LR_RANGE,
    recognise,
    summary,
    no_curves="is a range test: compare it with range tests alone (its curves are against the "
    "rate, not the step)",
)
