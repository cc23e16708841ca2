"""The local process launcher: jobs on a pool of this machine's worker processes (`workers.py`
keeps their lifecycle), handed over no more than the pool can run at once -- the pool's own
queue is first come, first served, and would run a long list asked for early before an urgent
job asked for later; the queue (`queue.py`) decides the order instead."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from knn_cli.executors.jobs import Outcome, default_workers, guarded
from knn_cli.executors.queue import QueuedExecutor
from knn_cli.executors.workers import WorkerPool


class ProcessLauncher:
    """`workers` local processes, started when the queue opens and ended when it closes."""

    failure = "worker process failed"

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._size = workers
        self._pool: WorkerPool | None = None

    def check(self) -> None:
        pass

    def open(self, at_most: int | None) -> int:
        self._size = min(self.workers, at_most) if at_most else self.workers
        self._pool = WorkerPool(self._size)
        return self._size

    def start(self, fn: Callable[[Any], Any], item: Any, priority: int) -> Future[Outcome]:
        assert self._pool is not None, "start() before open()"
        try:
            return self._pool.submit(guarded, fn, item)
        except BrokenProcessPool:
            # A worker died (killed, out of memory) and broke the pool: the jobs it held have
            # failed; the ones still to come run on a fresh pool rather than failing unrun.
            self._pool.end(terminate=True)
            self._pool = WorkerPool(self._size)
            return self._pool.submit(guarded, fn, item)

    def close(self, *, terminate: bool) -> None:
        if self._pool is not None:
            self._pool.end(terminate=terminate)


class ProcessExecutor(QueuedExecutor):
    """Jobs in `workers` local processes (default one per core): the process launcher behind
    the queue, which a sweep uses through one view and a study's parts share."""

    def __init__(self, workers: int | None = None) -> None:
        super().__init__(ProcessLauncher(workers or default_workers()))
