"""Running a sweep's trials on an executor, with progress, each in its own attempt folder."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from knn_cli.config import RunConfig, config_from_dict
from knn_cli.data import load_cifar10
from knn_cli.data.cifar10 import Dataset
from knn_cli.executors import Executor
from knn_cli.experiment import train_run
from knn_cli.sweeps.folder import (
    DONE_STATUSES,
    TrialRecord,
    next_attempt,
    record_plan,
    trial_record,
    write_failure,
)
from knn_cli.sweeps.plan import NEW, RESUME, Trial, TrialJob


def run_trial(job: TrialJob) -> dict[str, Any]:
    """Train one trial into its folder (the function every executor runs, on any worker).

    A new trial's folder is made here, when the trial starts, so that a sweep stopped early
    leaves no empty folders for the trials it never reached."""
    config = config_from_dict(job.trial.config)
    if job.start == NEW:
        Path(job.run_dir).mkdir()  # never share a folder with another attempt, e.g. a stale task
    return train_run(
        config,
        Path(job.run_dir),
        dataset=_dataset_for(config),
        evaluate_test=job.trial.evaluate_test,
        background_evaluation=job.in_process,
        stop_between_steps=job.in_process,
        resume=job.start == RESUME,
    )


_DATASETS: dict[tuple[Any, ...], Dataset] = {}


def _dataset_for(config: RunConfig) -> Dataset:
    """The data, loaded once per worker process (memory-mapped from the cache: quick), never
    downloaded by a worker: the sweep fetched and cached it before starting any."""
    key = (
        config.data.dir,
        config.data.validation_size,
        os.environ.get("KNN_DATA_DIR"),
        os.environ.get("KNN_CACHE_DIR"),
    )
    if key not in _DATASETS:
        _DATASETS.clear()
        _DATASETS[key] = load_cifar10(config.data.dir, config.data.validation_size, download=False)
    return _DATASETS[key]


def prepare_data(trials: Iterable[Trial], *, progress: bool = False) -> None:
    """Fetch and cache the data in this process first, so workers only open the cache rather
    than racing to build it, and a missing data folder is reported before any worker starts."""
    settings = {(t.config["data"]["dir"], t.config["data"]["validation_size"]) for t in trials}
    for data_dir, validation_size in sorted(settings, key=str):
        load_cifar10(data_dir, validation_size, progress=progress)


def run_trials(
    sweep_dir: Path,
    trials: Sequence[Trial],
    executor: Executor,
    *,
    progress: bool = False,
    on_record: Callable[[list[TrialRecord]], str] | None = None,
) -> list[TrialRecord]:
    """Run the trials not done yet; return every trial's record in plan order.

    After each trial completes, `on_record` sees all the records (plan order) and returns the
    progress bar's note, e.g. the best lambda so far. A failed trial is written down as failed
    and the others go on.
    """
    record_plan(sweep_dir, trials)
    records = {t.folder: trial_record(sweep_dir, t) for t in trials}
    todo = [t for t in trials if records[t.folder].status not in DONE_STATUSES]
    if todo:
        prepare_data(todo, progress=progress)
    jobs = []
    for trial in todo:
        run_dir, start = next_attempt(sweep_dir, trial)
        jobs.append(TrialJob(trial, str(run_dir), executor.in_process, start))
    stage = ",".join(dict.fromkeys(t.stage for t in trials))
    with tqdm(total=len(jobs), desc=stage, unit="trial", disable=not progress) as bar:
        try:
            for job, outcome in executor.run(jobs, run_trial):
                if not outcome.ok:
                    write_failure(Path(job.run_dir), job.trial, outcome.error)
                records[job.trial.folder] = trial_record(sweep_dir, job.trial)
                if on_record is not None:
                    bar.set_postfix_str(on_record(list(records.values())), refresh=False)
                bar.update(1)
        except KeyboardInterrupt:
            # Tables as the sweep stopped: trials cut short show as interrupted, not pending.
            if on_record is not None:
                with contextlib.suppress(Exception):  # the interrupt is what to report
                    on_record([trial_record(sweep_dir, t) for t in trials])
            raise
    return [records[t.folder] for t in trials]
