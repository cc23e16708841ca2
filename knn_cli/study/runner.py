"""Running a study: every part not finished yet, each into its own folder of the study folder,
its status and wall time recorded in study.json as it goes, so that an interrupted study resumes
where it stopped (a finished part is skipped; an unfinished part's sweep skips its finished
trials).

On the executor the user chose. Where its jobs run elsewhere (local worker processes, Dask) the
parts run together, each on a thread of its own, their jobs in the executor's one shared queue
(`executors.JobQueue`): a part that needs another's result (the 9-layer retrain, the lambda
search's choice) waits for it, the lambda search's chain of stages goes first, and the other
parts fill the workers whenever a stage waits for its last trial. In this process (one worker)
the parts run one after another.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from knn_cli.data import load_cifar10
from knn_cli.errors import KnnError
from knn_cli.executors import Executor, JobQueue, SharedExecutor
from knn_cli.kinds.study import read_study_file
from knn_cli.study.folder import (
    now,
    pending_entry,
    study_settings,
    write_study_file,
)
from knn_cli.study.parts import PARTS, Part, PartRun, Running
from knn_cli.study.settings import StudySettings, study_config
from knn_cli.sweeps.populations import AUTO, Populations

JOIN_SECONDS = 0.2  # how often the main thread wakes while the parts run (to take Ctrl-C)


class StudyRun:
    """One run of a study's unfinished parts: study.json kept up to date from every part's
    thread, one at a time."""

    def __init__(self, study_dir: Path, say: Callable[[str], None]) -> None:
        self.study_dir = study_dir
        self.doc = read_study_file(study_dir)
        for part in PARTS:  # a study begun by an earlier version runs the parts added since
            self.doc["parts"].setdefault(part.name, pending_entry(part))
        self.settings = study_settings(self.doc)
        self.say = say
        self._lock = threading.Lock()

    def pending(self) -> list[Part]:
        return [part for part in PARTS if self.entry(part)["status"] != "finished"]

    def entry(self, part: Part) -> dict[str, Any]:
        return self.doc["parts"][part.name]

    def heading(self, part: Part) -> str:
        return f"[{PARTS.index(part) + 1}/{len(PARTS)}] {part.name}"

    def run_part(self, part: Part, running: Running) -> None:
        """Run one part, recording its start, end, status, wall time and notes."""
        entry = self.entry(part)
        with self._lock:
            self.say(self.heading(part))
            entry.update(status="running", message="", started=now(), ended=None)
            write_study_file(self.study_dir, self.doc)
        started = time.time()
        earlier = entry.get("seconds") or 0.0
        try:
            run = part.run(
                self.study_dir / entry["folder"], self.settings, running, self.doc["parts"]
            )
        except KeyboardInterrupt:
            with self._lock:
                seconds = round(earlier + time.time() - started, 1)
                entry.update(status="interrupted", seconds=seconds, ended=now())
                write_study_file(self.study_dir, self.doc)
            raise
        except KnnError as error:
            run = PartRun("failed", str(error))
        with self._lock:
            entry.update(status=run.status, message=run.message, ended=now(), **run.notes)
            entry["seconds"] = round(earlier + time.time() - started, 1)
            write_study_file(self.study_dir, self.doc)
            detail = f": {run.message}" if run.message else ""
            self.say(f"    {self.heading(part)}: {run.status} in {entry['seconds']:.0f} s{detail}")

    def finish(self) -> dict[str, Any]:
        if all(self.entry(part)["status"] == "finished" for part in PARTS):
            self.doc["finished"] = self.doc["finished"] or now()
            write_study_file(self.study_dir, self.doc)
        return self.doc


def run_study(
    study_dir: Path,
    executor: Executor,
    *,
    progress: bool = False,
    say: Callable[[str], None] = print,
    population: Populations = AUTO,
) -> dict[str, Any]:
    """Run every part not finished yet, recording each in study.json, their runs grouped into
    populations as `population` says; return the study document. An interrupt marks the
    running parts and goes on up; a part that fails is recorded as failed and the others still
    run."""
    study = StudyRun(study_dir, say)
    for part in PARTS:
        if part not in study.pending():
            say(f"{study.heading(part)}: finished before, skipped")
    if isinstance(executor, SharedExecutor) and not executor.in_process:
        run_together(study, executor, population)  # the parts side by side on its queue
    else:  # one job at a time here: the parts take turns
        for part in study.pending():
            study.run_part(part, Running(executor, population, progress))
    return study.finish()


def chains(parts: list[Part]) -> list[list[Part]]:
    """The parts in chains that run one after another: a part with `after` joins the chain of
    the part it needs (or runs alone where that one is finished already)."""
    found: list[list[Part]] = []
    for part in parts:
        chain = next((c for c in found if part.after in (p.name for p in c)), None)
        if chain is None:
            found.append([part])
        else:
            chain.append(part)
    return found


def run_together(study: StudyRun, executor: SharedExecutor, population: Populations = AUTO) -> None:
    """Every chain of pending parts on a thread of its own, their jobs in the executor's one
    shared queue, each part at its urgency. The parts' own progress bars are off: several
    would fight over the terminal; each part says when it starts and ends."""
    errors: list[BaseException] = []

    def run_chain(chain: list[Part], shared: JobQueue) -> None:
        try:
            for part in chain:
                study.run_part(part, Running(shared.view(part.urgency), population))
        except BaseException as error:  # handed to the main thread, which raises the first
            errors.append(error)

    with executor.shared() as shared:
        threads = [
            threading.Thread(target=run_chain, args=(chain, shared), name=chain[0].name)
            for chain in chains(study.pending())
        ]
        for thread in threads:
            thread.start()
        try:
            while any(thread.is_alive() for thread in threads):
                for thread in threads:
                    thread.join(JOIN_SECONDS)
        except KeyboardInterrupt:
            shared.stop(terminate=True)  # the parts' threads raise KeyboardInterrupt in turn
            for thread in threads:
                thread.join()
            raise
    interrupts = [e for e in errors if isinstance(e, KeyboardInterrupt)]
    others = [e for e in errors if not isinstance(e, KeyboardInterrupt)]
    if others:
        raise others[0]
    if interrupts:
        raise interrupts[0]


def study_data(settings: StudySettings) -> tuple[int, int, str]:
    """(images in the training and validation splits, features, where they come from), from
    the data itself: loads (and caches) it, as every part will."""
    config = study_config(settings, "3layer_bn")
    dataset = load_cifar10(config.data.dir, config.data.validation_size)
    return len(dataset.X_train) + len(dataset.X_val), dataset.X_train.shape[1], dataset.source
