"""Executors: hand a list of independent jobs to this process, local processes or a Dask cluster,
by concern:

    jobs.py       what a job and its Outcome are, the Executor interface, this process (serial)
    queue.py      the queue: the most urgent job first, no more handed over than can run;
                  callers run on its views (a sweep on one, a study's parts on one each)
    processes.py  the local process launcher
    workers.py    local worker processes' lifecycle: spawned, dying with the sweep, ended
    dask.py       the Dask launcher

No module here imports numpy at the top: a spawned worker imports it, and the BLAS thread limits
must be in its environment before numpy is first imported there.
"""

from __future__ import annotations

from knn_cli.executors.dask import DaskExecutor
from knn_cli.executors.jobs import (
    Executor,
    Outcome,
    SerialExecutor,
    default_workers,
    error_line,
    guarded,
)
from knn_cli.executors.processes import ProcessExecutor
from knn_cli.executors.queue import JobQueue, Launcher, QueuedExecutor, SharedExecutor

__all__ = [
    "DaskExecutor",
    "Executor",
    "JobQueue",
    "Launcher",
    "Outcome",
    "ProcessExecutor",
    "QueuedExecutor",
    "SerialExecutor",
    "SharedExecutor",
    "default_workers",
    "error_line",
    "guarded",
    "make_executor",
]


def make_executor(workers: int | None, scheduler: str | None) -> Executor:
    """The executor the CLI options ask for: a Dask cluster, local processes, or this process."""
    if scheduler:
        return DaskExecutor(scheduler)
    workers = workers or default_workers()
    return SerialExecutor() if workers == 1 else ProcessExecutor(workers)
