"""Running a sweep's trials on an executor, with progress, each in its own attempt folder: the
trials that may train together grouped into populations (`populations.py`), each one job."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tqdm import tqdm

from knn_cli.config import RunConfig, config_from_dict
from knn_cli.data import load_cifar10
from knn_cli.data.cifar10 import Dataset
from knn_cli.executors import Executor, error_line
from knn_cli.experiment import open_run, train_population
from knn_cli.locks import folder_lock
from knn_cli.memory import DataSize, check_memory
from knn_cli.runs import summary_or_empty
from knn_cli.sweeps.folder import (
    DONE_STATUSES,
    TrialRecord,
    next_attempt,
    record_plan,
    trial_record,
    write_failure,
)
from knn_cli.sweeps.plan import NEW, RESUME, Trial, TrialJob
from knn_cli.sweeps.populations import AUTO, Populations, plan_populations

T = TypeVar("T")


@dataclass(frozen=True)
class Running:
    """How a sweep's runs are run: on which executor, in which populations, with progress bars
    or not."""

    executor: Executor
    population: Populations = AUTO
    progress: bool = False


def run_sweep_in(
    folder: Path,
    run: Callable[..., T],
    spec: Any,
    running: Running,
    *,
    started: Callable[[], None] | None = None,
) -> T:
    """`run(spec, folder, executor, progress=..., population=...)` -- a lambda search, an init
    grid or a config sweep -- holding the folder's lock, so that a second process given the same
    folder (a `--resume` while it runs) is refused rather than joining it; `started` says so
    once the lock is held."""
    with folder_lock(folder):
        if started is not None:
            started()
        return run(
            spec, folder, running.executor, progress=running.progress, population=running.population
        )


def run_population(jobs: Sequence[TrialJob]) -> list[str]:
    """Train trials side by side into their folders, as one population (the function every
    executor runs, on any worker); each trial's error, "" where it ran.

    A new trial's folder is made here, when the trial starts, so that a sweep stopped early
    leaves no empty folders for the trials it never reached. A trial whose folder cannot be
    opened (a checkpoint that does not fit) fails alone; the others train."""
    configs = [config_from_dict(job.trial.config) for job in jobs]
    dataset = _dataset_for(configs[0])
    errors = [""] * len(jobs)
    runs = []
    check_memory(configs[0], DataSize.of(dataset), members=len(jobs))
    for k, (job, config) in enumerate(zip(jobs, configs, strict=True)):
        if job.start == NEW:  # never share a folder with another attempt, e.g. a stale task
            Path(job.run_dir).mkdir()
        try:
            runs.append(
                open_run(
                    config,
                    Path(job.run_dir),
                    dataset,
                    resume=job.start == RESUME,
                    evaluate_test=job.trial.evaluate_test,
                    population=len(jobs),
                )
            )
        except Exception as error:
            errors[k] = error_line(error)
    if runs:
        in_process = jobs[0].in_process
        train_population(
            runs, dataset, background_evaluation=in_process, stop_between_steps=in_process
        )
    return errors


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
    population: Populations = AUTO,
) -> list[TrialRecord]:
    """Run the trials not done yet, in populations as `population` says; return every trial's
    record in plan order.

    After each population completes, `on_record` sees all the records (plan order) and returns
    the progress bar's note, e.g. the best lambda so far. A failed trial is written down as
    failed and the others go on.
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
    populations = population_jobs(jobs, population, executor.workers)
    stage = ",".join(dict.fromkeys(t.stage for t in trials))
    with tqdm(total=len(jobs), desc=stage, unit="trial", disable=not progress) as bar:
        try:
            for members, outcome in executor.run(populations, run_population):
                errors = outcome.value if outcome.ok else [outcome.error] * len(members)
                for job, error in zip(members, errors, strict=True):
                    ended = summary_or_empty(Path(job.run_dir)).get("status") in DONE_STATUSES
                    if error and not ended:  # a member that diverged before keeps its result
                        write_failure(Path(job.run_dir), job.trial, error)
                    records[job.trial.folder] = trial_record(sweep_dir, job.trial)
                if on_record is not None:
                    bar.set_postfix_str(on_record(list(records.values())), refresh=False)
                bar.update(len(members))
        except KeyboardInterrupt:
            # Tables as the sweep stopped: trials cut short show as interrupted, not pending.
            if on_record is not None:
                with contextlib.suppress(Exception):  # the interrupt is what to report
                    on_record([trial_record(sweep_dir, t) for t in trials])
            raise
    return [records[t.folder] for t in trials]


def population_jobs(
    jobs: Sequence[TrialJob], population: Populations, workers: int
) -> list[tuple[TrialJob, ...]]:
    """The jobs grouped into populations, each one job for the executor."""
    planned = plan_populations(
        jobs,
        lambda job: job.trial.config,
        lambda job: job.trial.evaluate_test,
        population,
        max(1, workers),
    )
    return [tuple(members) for members in planned]
