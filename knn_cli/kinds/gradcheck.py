"""A gradient check's folder (`knn gradcheck`, or one depth of the study's first part): a
summary.json whose "command" says so, and a CSV row per parameter checked.

`gradcheck_run.py`, which writes the folder, takes these names from here.
"""

from __future__ import annotations

import csv
from pathlib import Path

from knn_cli.kinds.base import Kind, Row, row
from knn_cli.kinds.run import RUN_FILES, SUMMARY_FILE, summary_or_empty

GRADCHECK = "gradcheck"  # summary.json's "command", by which the folder is known
TABLE_FILE, CSV_FILE = "gradcheck.md", "gradcheck.csv"


def recognise(folder: Path) -> bool:
    written = (folder / SUMMARY_FILE).is_file()
    return written and summary_or_empty(folder).get("command") == GRADCHECK


def records(folder: Path) -> tuple[dict[str, str], ...]:
    """The check's rows as written, one per parameter and path; () before any is written."""
    path = folder / CSV_FILE
    if not path.is_file():
        return ()
    with path.open(newline="") as handle:
        return tuple(csv.DictReader(handle))


def summary(folder: Path) -> Row:
    """Passed or failed, on what network, for which variants."""
    found = summary_or_empty(folder)
    parts = [f"k={found['layers']}"] if "layers" in found else []
    if "hidden" in found:
        parts.append(f"hidden {found['hidden']}")
    parts += list(found.get("textbook_passed") or {})  # the variants checked
    status = str(found.get("status", "unfinished"))
    return row(folder, GRADCHECK, status, ", ".join(parts), written=RUN_FILES)


KIND = Kind(
    GRADCHECK,
    recognise,
    summary,
    no_curves="is a gradient check: it has no training curves to compare",
)
