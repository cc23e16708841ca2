"""The study folder's own file, study.json: the settings (all a resume needs), what ran it, and
each part's status and wall time, written atomically as the study goes."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from knn_cli.errors import RunFolderError
from knn_cli.runs import atomic_write_json, machine, new_run_dir, provenance
from knn_cli.study.parts import PARTS, Part
from knn_cli.study.settings import StudySettings

STUDY_FILE = "study.json"
STUDY_KIND = "study"
STUDY_VERSION = 1


def start_study(runs_dir: str | Path, settings: StudySettings, data: str) -> Path:
    """A new study folder with study.json: the settings, what runs it, and every part
    pending."""
    found = provenance()
    versions = {k: v for k, v in found.items() if k not in ("git_commit", "platform")}
    study_dir = new_run_dir(runs_dir, "quick-study" if settings.quick else "study")
    doc = {
        "kind": STUDY_KIND,
        "version": STUDY_VERSION,
        "quick": settings.quick,
        "seeds": settings.seeds,
        "seed": settings.seed,
        "settings": asdict(settings),
        "started": now(),
        "finished": None,
        "provenance": {
            "commit": found["git_commit"],
            "versions": versions,
            "machine": f"{machine()}; {found['platform']}",
            "data": data,
        },
        "parts": {part.name: pending_entry(part) for part in PARTS},
    }
    write_study_file(study_dir, doc)
    return study_dir


def pending_entry(part: Part) -> dict[str, Any]:
    """A part's entry in study.json before it has run."""
    return {
        "folder": part.name,
        "kind": part.kind,
        "status": "pending",
        "seconds": None,
        "message": "",
    }


def read_study_file(study_dir: Path) -> dict[str, Any]:
    """study.json, or a one-line RunFolderError saying why the folder is no study."""
    path = study_dir / STUDY_FILE
    if not study_dir.is_dir():
        raise RunFolderError(f"study folder {study_dir} does not exist")
    if not path.is_file():
        raise RunFolderError(f"{study_dir} is not a study folder: it has no {STUDY_FILE}")
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise RunFolderError(f"{path} cannot be read: {error}") from None
    if not isinstance(doc, dict) or doc.get("kind") != STUDY_KIND:
        found = doc.get("kind") if isinstance(doc, dict) else None
        raise RunFolderError(f"{study_dir} is not a study folder ({STUDY_FILE} of kind {found!r})")
    if doc.get("version") != STUDY_VERSION:
        raise RunFolderError(f"{path} is not a study this version of knn can read")
    return doc


def write_study_file(study_dir: Path, doc: dict[str, Any]) -> None:
    atomic_write_json(study_dir / STUDY_FILE, doc)


def study_settings(doc: dict[str, Any]) -> StudySettings:
    try:
        raw = dict(doc["settings"])
        raw["overrides"] = tuple(raw["overrides"])
        return StudySettings(**raw)
    except (KeyError, TypeError) as error:
        raise RunFolderError(f"{STUDY_FILE} has no valid settings: {error}") from None


def now() -> str:
    return dt.datetime.now().isoformat(timespec="milliseconds")
