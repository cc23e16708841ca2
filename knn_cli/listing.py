"""What lies under a runs folder, one row per run, sweep or study, read from their own files.

A row is built from the files each command leaves (summary.json, sweep.json, study.json), never
from a cache of its own, so it is right however the folder came to be: copied, resumed, half
written. Which kind a folder is, its row and what is listed inside it, each kind says itself
(`knn_cli.kinds.rows_in`); here only the order and the output, a table or JSON. A folder whose
files cannot be read still gets its row, with the reason as its status: one damaged folder must
not hide the others.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from knn_cli.errors import RunFolderError
from knn_cli.kinds import rows_in
from knn_cli.kinds.base import Row


def list_rows(parent: Path) -> tuple[list[Row], list[Path]]:
    """The rows under `parent`, newest first, and those of its folders that are not knn's.

    `parent` itself may be a run (listed alone), a sweep (its trials are the folders under
    it) or a study (its parts, as study.json names them)."""
    if not parent.exists():
        raise RunFolderError(f"folder {parent} does not exist")
    if not parent.is_dir():
        raise RunFolderError(f"{parent} is a file, not a folder of runs")
    rows, others = rows_in(parent)
    return newest_first(rows), others


def newest_first(rows: Iterable[Row]) -> list[Row]:
    # Rows with no known start go last; names break ties so the order never depends on disk.
    return sorted(rows, key=lambda row: (row.started or "", row.name), reverse=True)


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
