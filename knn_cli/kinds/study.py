"""A study's folder (`knn study`): study.json -- the settings, what ran it, each part's status
and wall time -- and a folder per part.

`study/folder.py`, which writes study.json, and the report, which reads it, take its name and
reader from here.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from knn_cli.errors import RunFolderError
from knn_cli.kinds.base import DONE, Kind, Row, count_text, read_own_file, row, total

STUDY = "study"  # study.json's "kind"
STUDY_FILE = "study.json"
STUDY_VERSION = 1


def recognise(folder: Path) -> bool:
    return (folder / STUDY_FILE).is_file()


def read_study_file(study_dir: Path) -> dict[str, Any]:
    """study.json, or a one-line RunFolderError saying why the folder is no study."""
    doc = read_own_file(study_dir, STUDY_FILE, "study")
    if not isinstance(doc, dict) or doc.get("kind") != STUDY:
        found = doc.get("kind") if isinstance(doc, dict) else None
        raise RunFolderError(f"{study_dir} is not a study folder ({STUDY_FILE} of kind {found!r})")
    if doc.get("version") != STUDY_VERSION:
        path = study_dir / STUDY_FILE
        raise RunFolderError(f"{path} is not a study this version of knn can read")
    return doc


def parts_of(doc: dict[str, Any], study_dir: Path) -> dict[str, dict[str, Any]]:
    """study.json's parts by name (folder, kind, status, seconds, message)."""
    parts = doc.get("parts")
    if not isinstance(parts, dict):
        raise RunFolderError(f"{study_dir / STUDY_FILE} lists no parts")
    return {name: part for name, part in parts.items() if isinstance(part, dict)}


def records(study_dir: Path) -> dict[str, dict[str, Any]]:
    """A record per part, as study.json keeps it."""
    return parts_of(read_study_file(study_dir), study_dir)


def summary(folder: Path) -> Row:
    """Its parts counted by how they ended, and the time they took together."""
    doc = read_study_file(folder)
    parts = parts_of(doc, folder)
    statuses = [str(part.get("status", "pending")) for part in parts.values()]
    settings = ("quick: " if doc.get("quick") else "") + ", ".join(parts)
    started = doc.get("started")
    return row(
        folder,
        STUDY,
        count_text(statuses, len(parts)),
        settings,
        wall_seconds=total(part.get("seconds") for part in parts.values()),
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


def part_rows(folder: Path) -> list[Row]:
    """A row per part: the part's folder's own when it is a folder of a kind (a run, a sweep),
    else what study.json says of it (a part not started, or a folder of gradient checks)."""
    from knn_cli.kinds import kind_of
    from knn_cli.kinds import summary as summary_of

    rows = []
    for name, part in records(folder).items():
        where = folder / str(part.get("folder") or name)
        if where.is_dir() and kind_of(where) is not None:
            rows.append(summary_of(where))
            continue
        kind, status = str(part.get("kind") or "part"), str(part.get("status") or "pending")
        rows.append(row(where, kind, status, "", wall_seconds=part.get("seconds")))
    return rows


KIND = Kind(
    STUDY,
    recognise,
    summary,
    contents=part_rows,
    no_curves="is a study; compare the runs or sweeps in it (`knn runs {folder}` lists them)",
)
