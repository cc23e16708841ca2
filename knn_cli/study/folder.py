"""The study folder's own file, study.json: the settings (all a resume needs), what ran it, and
each part's status and wall time, written atomically as the study goes."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict
from pathlib import Path
from typing import Any

from knn_cli.errors import RunFolderError
from knn_cli.kinds.study import STUDY, STUDY_FILE, STUDY_VERSION
from knn_cli.runs import atomic_write_json, machine, new_run_dir, provenance
from knn_cli.study.parts import PARTS, Part
from knn_cli.study.settings import StudySettings


def start_study(runs_dir: str | Path, settings: StudySettings, data: str) -> Path:
    """A new study folder with study.json: the settings, what runs it, and every part
    pending."""
    found = provenance()
    versions = {k: v for k, v in found.items() if k not in ("git_commit", "platform")}
    study_dir = new_run_dir(runs_dir, "quick-study" if settings.quick else "study")
    doc = {
        "kind": STUDY,
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
