"""Running a study: every part not finished yet, in order, each into its own folder of the study
folder, its status and wall time recorded in study.json as it goes, so that an interrupted study
resumes where it stopped (a finished part is skipped; an unfinished part's sweep skips its
finished trials)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from knn_cli.data import load_cifar10
from knn_cli.errors import KnnError
from knn_cli.executors import Executor
from knn_cli.study.folder import now, read_study_file, study_settings, write_study_file
from knn_cli.study.parts import PARTS, PartRun
from knn_cli.study.settings import StudySettings, study_config


def run_study(
    study_dir: Path,
    executor: Executor,
    *,
    progress: bool = False,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every part not finished yet, in order, recording each in study.json; return the
    study document. An interrupt marks the running part and goes on up; a part that fails
    is recorded as failed and the others still run."""
    doc = read_study_file(study_dir)
    settings = study_settings(doc)
    for number, part in enumerate(PARTS, start=1):
        entry = doc["parts"][part.name]
        heading = f"[{number}/{len(PARTS)}] {part.name}"
        if entry["status"] == "finished":
            say(f"{heading}: finished before, skipped")
            continue
        say(heading)
        entry.update(status="running", message="")
        write_study_file(study_dir, doc)
        started = time.time()
        earlier = entry.get("seconds") or 0.0
        try:
            run = part.run(study_dir / entry["folder"], settings, executor, progress, doc["parts"])
        except KeyboardInterrupt:
            entry.update(status="interrupted", seconds=round(earlier + time.time() - started, 1))
            write_study_file(study_dir, doc)
            raise
        except KnnError as error:
            run = PartRun("failed", str(error))
        entry.update(status=run.status, message=run.message, **run.notes)
        entry["seconds"] = round(earlier + time.time() - started, 1)
        write_study_file(study_dir, doc)
        detail = f": {run.message}" if run.message else ""
        say(f"    {run.status} in {entry['seconds']:.0f} s{detail}")
    if all(doc["parts"][part.name]["status"] == "finished" for part in PARTS):
        doc["finished"] = doc["finished"] or now()
        write_study_file(study_dir, doc)
    return doc


def study_data(settings: StudySettings) -> tuple[int, int, str]:
    """(images in the training and validation splits, features, where they come from), from
    the data itself: loads (and caches) it, as every part will."""
    config = study_config(settings, "3layer_bn")
    dataset = load_cifar10(config.data.dir, config.data.validation_size)
    return len(dataset.X_train) + len(dataset.X_val), dataset.X_train.shape[1], dataset.source
