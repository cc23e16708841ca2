"""The queue between callers and a launcher: jobs wait in one heap, the most urgent first (lowest
priority number, then in the order asked), and no more are handed to the launcher than it can
run at once, so that an urgent job asked for late never waits behind a long list asked for
early. Each caller runs its jobs on a view, an Executor at one priority.

A sweep's executor is such a queue with a single view; a study's parts, each on a thread of its
own, share one queue, so that no worker waits while any part has a job ready.
"""

from __future__ import annotations

import heapq
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

from knn_cli.executors.jobs import Executor, Outcome, error_line

T = TypeVar("T")


class JobFuture(Protocol):
    """What a launcher hands back for a job: a concurrent or a Dask future."""

    def add_done_callback(self, fn: Callable[[Any], Any]) -> None: ...

    def result(self) -> Any: ...

    def cancelled(self) -> bool: ...


class Launcher(Protocol):
    """Where jobs run, apart from when: the queue decides the order."""

    workers: int
    failure: str  # how a job lost with its worker is named in its error

    def check(self) -> None:
        """Raise a one-line KnnError now if no job can run (before any folder is made)."""
        ...

    def open(self, at_most: int | None) -> int | None:
        """Get ready (start the workers, connect), for at most `at_most` jobs at a time if
        given; return how many to hand over at once, None for every job as it is asked for
        (a launcher that orders them by priority itself)."""
        ...

    def start(self, fn: Callable[[Any], Any], item: Any, priority: int) -> JobFuture:
        """Start `guarded(fn, item)`."""
        ...

    def close(self, *, terminate: bool) -> None:
        """Take no more jobs; with `terminate` (an interrupt), drop the running ones now."""
        ...


class Stopped(Exception):
    """Handed to a caller waiting on the queue when the queue stops (an interrupt)."""


_Entry = tuple[int, int, Any, Callable[[Any], Any], "queue.SimpleQueue[tuple[Any, Any]]"]


class JobQueue:
    """One queue of jobs on one launcher, shared by any number of callers, each on a thread of
    its own; used as a context: the launcher is opened on entry and closed on exit (at once if
    the exit is an exception)."""

    def __init__(self, launcher: Launcher, at_most: int | None = None) -> None:
        self.launcher = launcher
        self._at_most = at_most
        self._capacity: int | None = None
        self._waiting: list[_Entry] = []
        self._asked = 0
        self._running = 0
        self._stopped = False
        self._terminated = False
        self._condition = threading.Condition()

    @property
    def workers(self) -> int:
        return self.launcher.workers

    def __enter__(self) -> JobQueue:
        self._capacity = self.launcher.open(self._at_most)
        threading.Thread(target=self._dispatch, name="knn-queue", daemon=True).start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: Any, trace: Any) -> None:
        self.stop(terminate=kind is not None)

    def view(self, priority: int) -> QueueView:
        """The Executor one caller runs its jobs on, at `priority` (lowest first)."""
        return QueueView(self, priority)

    def submit(self, priority: int, item: Any, fn: Callable[[Any], Any], results: Any) -> None:
        with self._condition:
            if self._stopped:
                results.put((item, Stopped()))
                return
            heapq.heappush(self._waiting, (priority, self._asked, item, fn, results))
            self._asked += 1
            self._condition.notify_all()

    def _full(self) -> bool:
        return self._capacity is not None and self._running >= self._capacity

    def _dispatch(self) -> None:
        while True:
            with self._condition:
                while not self._stopped and (not self._waiting or self._full()):
                    self._condition.wait()
                if self._stopped:
                    return
                priority, _, item, fn, results = heapq.heappop(self._waiting)
                self._running += 1
            try:
                future = self.launcher.start(fn, item, priority)
            except Exception as error:  # a pool broken by a dead worker, or stopped meanwhile
                self._deliver(item, results, self._failed(error))
                continue
            future.add_done_callback(
                lambda done, item=item, results=results: self._deliver(
                    item, results, self._outcome(done)
                )
            )

    def _outcome(self, future: JobFuture) -> Outcome | Stopped:
        if future.cancelled():
            return Stopped()
        try:
            return future.result()  # type: ignore[no-any-return]
        # The worker died (killed, out of memory) or was lost; or, past `guarded`, a job ended
        # its worker's interpreter (SystemExit): either way its caller must hear, and its slot
        # be freed, or both would wait for ever.
        except BaseException as error:
            return self._failed(error)

    def _failed(self, error: BaseException) -> Outcome | Stopped:
        if self._stopped:
            return Stopped()
        return Outcome(False, error=f"{self.launcher.failure}: {error_line(error)}")

    def _deliver(self, item: Any, results: Any, outcome: Outcome | Stopped) -> None:
        # Once the queue is ended by an interrupt, a job cut short is stopped, not failed: its
        # folder is kept as it is, to continue on --resume.
        results.put((item, Stopped() if self._terminated else outcome))
        with self._condition:
            self._running -= 1
            self._condition.notify_all()

    def stop(self, *, terminate: bool = False) -> None:
        """Stop taking jobs; tell every caller still waiting; with `terminate` (an interrupt),
        end the running jobs now rather than after they finish."""
        with self._condition:
            self._stopped = True
            self._terminated = self._terminated or terminate
            waiting, self._waiting = self._waiting, []
            self._condition.notify_all()
        for _, _, item, _, results in waiting:
            results.put((item, Stopped()))
        self.launcher.close(terminate=terminate)


@runtime_checkable
class SharedExecutor(Executor, Protocol):
    """An executor whose jobs run elsewhere (worker processes, a cluster): several callers at
    once -- a study's parts, each on a thread -- share it through one queue, the most urgent
    job first."""

    def shared(self, at_most: int | None = None) -> JobQueue: ...


class QueueView:
    """The Executor one caller of a JobQueue runs its jobs on, at one priority."""

    in_process = False

    def __init__(self, shared: JobQueue, priority: int) -> None:
        self.shared, self.priority = shared, priority
        self.workers = shared.workers

    def check(self) -> None:
        pass

    def run(self, items: Sequence[T], fn: Callable[[T], Any]) -> Iterator[tuple[T, Outcome]]:
        results: queue.SimpleQueue[tuple[T, Any]] = queue.SimpleQueue()
        for item in items:
            self.shared.submit(self.priority, item, fn, results)
        for _ in items:
            item, outcome = results.get()
            if isinstance(outcome, Stopped):
                raise KeyboardInterrupt  # the queue stopped under us: as if interrupted here
            yield item, outcome


class QueuedExecutor:
    """A launcher behind the queue: a sweep runs its jobs on the queue's one view; a study's
    parts share `shared()`. The launcher holds one queue's workers at a time: callers that run
    at once share one queue rather than each calling `run`."""

    in_process = False

    def __init__(self, launcher: Launcher) -> None:
        self.launcher = launcher

    @property
    def workers(self) -> int:
        return self.launcher.workers

    def check(self) -> None:
        self.launcher.check()

    def shared(self, at_most: int | None = None) -> JobQueue:
        """A queue for several callers at once (open it with `with`)."""
        return JobQueue(self.launcher, at_most)

    def run(self, items: Sequence[T], fn: Callable[[T], Any]) -> Iterator[tuple[T, Outcome]]:
        if not items:
            return
        # An interrupt, or the consumer closing this iterator, leaves the `with` by an exception:
        # the queue then ends its workers at once, and none outlives the sweep.
        with self.shared(at_most=len(items)) as jobs:
            yield from jobs.view(0).run(items, fn)
