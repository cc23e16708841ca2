"""What a job is and what every executor promises: `run(items, fn) -> iterator of (item,
Outcome)` in completion order, so a sweep never knows where its trials ran; and the simplest
executor, this process.

`fn` must be a module-level function (it is pickled by reference) and must not depend on which
worker runs it: seeds live in the items. Every exception a job raises is caught where it runs
(`guarded`) and comes back as a failed `Outcome` with a one-line message, so one broken trial
never stops a sweep; only KeyboardInterrupt (Ctrl-C, or SIGTERM via the CLI) does.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from knn_cli import formatting

T = TypeVar("T")

_ERROR_LIMIT = 300


@dataclass(frozen=True)
class Outcome:
    """What became of one job: its return value, or the one-line error it failed with."""

    ok: bool
    value: Any = None
    error: str = ""


def error_line(error: BaseException) -> str:
    """`Type: message` on one line, short enough for a table cell and a terminal."""
    return formatting.one_line(f"{type(error).__name__}: {error}", _ERROR_LIMIT)


def guarded(fn: Callable[[T], Any], item: T) -> Outcome:
    """Run one job, turning any exception (not an interrupt) into a failed Outcome.

    Runs on the worker, so the message is made where the traceback is, and nothing unpicklable
    (an exception object holding a frame, say) has to travel back.
    """
    try:
        return Outcome(True, fn(item))
    except Exception as error:
        return Outcome(False, error=error_line(error))


class Executor(Protocol):
    workers: int
    # True when jobs run in this process one at a time: a job may then use every core (training
    # evaluates on a second thread), and callers that would share the executor take turns;
    # otherwise jobs share the cores, each keeps to one, and `shared()` gives the queue that
    # several callers can fill at once (`queue.SharedExecutor`).
    in_process: bool

    def check(self) -> None:
        """Raise a one-line KnnError now if the executor cannot run jobs (before any folder is
        made for them)."""
        ...

    def run(self, items: Sequence[T], fn: Callable[[T], Any]) -> Iterator[tuple[T, Outcome]]: ...


def default_workers() -> int:
    """One worker per core this process may use (not per core of the machine)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class SerialExecutor:
    """Jobs one after another in this process, in the caller's thread: no start-up cost, plain
    tracebacks in a debugger, and Ctrl-C reaches the training itself, which stops between two
    steps."""

    workers = 1
    in_process = True

    def check(self) -> None:
        pass

    def run(self, items: Sequence[T], fn: Callable[[T], Any]) -> Iterator[tuple[T, Outcome]]:
        for item in items:
            yield item, guarded(fn, item)
