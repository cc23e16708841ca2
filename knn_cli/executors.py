"""Executors: hand a list of independent jobs to this process, local processes or a Dask cluster.

All three share one interface, `run(items, fn) -> iterator of (item, Outcome)` in completion
order, so a sweep never knows where its trials ran. `fn` must be a module-level function (it is
pickled by reference) and must not depend on which worker runs it: seeds live in the items.

Every exception a job raises is caught on the worker side (`guarded`) and comes back as a failed
`Outcome` with a one-line message, so one broken trial never stops a sweep; only
KeyboardInterrupt (Ctrl-C, or SIGTERM via the CLI) does, after stopping the workers.

This module imports no numpy at the top: a spawned worker imports it, and the BLAS thread limits
must be in its environment before numpy is first imported there.
"""

from __future__ import annotations

import contextlib
import ctypes
import heapq
import multiprocessing
import os
import queue
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from knn_cli import formatting
from knn_cli.blas import one_thread_environment
from knn_cli.errors import KnnError
from knn_cli.interrupts import STOP_SIGNALS

T = TypeVar("T")

DASK_EXTRA_HINT = "install the extra from the checkout: pip install -e '.[dask]'"
_ERROR_LIMIT = 300


@dataclass(frozen=True)
class Outcome:
    """What became of one job: its return value, or the one-line error it failed with."""

    ok: bool
    value: Any = None
    error: str = ""


def one_line(error: BaseException) -> str:
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
        return Outcome(False, error=one_line(error))


class Executor(Protocol):
    workers: int
    # True when jobs run in this process one at a time: a job may then use every core (training
    # evaluates on a second thread); otherwise jobs share the cores and each keeps to one.
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
    """Jobs one after another in this process: no start-up cost, plain tracebacks in a debugger."""

    workers = 1
    in_process = True

    def check(self) -> None:
        pass

    def run(self, items: Sequence[T], fn: Callable[[T], Any]) -> Iterator[tuple[T, Outcome]]:
        for item in items:
            yield item, guarded(fn, item)


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
PARENT_POLL_SECONDS = 1.0


def _worker_start(parent: int) -> None:
    """Leave Ctrl-C and a closed terminal to the parent: it stops the workers itself after the
    terminal's SIGINT or SIGHUP reaches the whole process group, so a worker never dies half-way
    through reporting a result.

    And die with the parent however it ends: a sweep killed with -9 (or by the OOM killer, or
    with its terminal) must not leave workers holding a gigabyte each, nor let them write into
    a sweep folder that a `--resume` has taken over. On Linux the kernel sends SIGKILL when the
    parent dies; a thread polling the parent's pid covers the other platforms and the instant
    before the signal was asked for.
    """
    for number in STOP_SIGNALS[::2]:  # SIGINT and SIGHUP reach the whole process group
        signal.signal(number, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True).start()
    # tqdm's default lock is a named semaphore, which a worker stopped with SIGTERM never
    # unlinks (a "leaked semaphore" warning at the sweep's exit); workers draw no bars anyway.
    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())


def _exit_when_orphaned(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_SECONDS)
    os._exit(1)


class ProcessExecutor:
    """Jobs in `workers` local processes started with spawn (fork is unsafe with BLAS threads).

    Each worker loads its own data (from the memory-mapped cache, which the caller builds first),
    so no large array is pickled to it.
    """

    in_process = False

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or default_workers()

    def check(self) -> None:
        pass

    def run(self, items: Sequence[T], fn: Callable[[T], Any]) -> Iterator[tuple[T, Outcome]]:
        if not items:
            return
        pool = ProcessPoolExecutor(
            max_workers=min(self.workers, len(items)),
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_start,
            initargs=(os.getpid(),),
        )
        before = set(multiprocessing.active_children())
        try:
            # ProcessPoolExecutor spawns its workers during submit(), so all submits happen here.
            with one_thread_environment():
                futures = {pool.submit(guarded, fn, item): item for item in items}
            for future in as_completed(futures):
                yield futures[future], _outcome_of(future)
        except BaseException:
            # An interrupt (or the consumer closing the iterator): no worker may outlive us.
            pool.shutdown(wait=False, cancel_futures=True)
            end_workers(set(multiprocessing.active_children()) - before)
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def end_workers(workers: set[Any]) -> None:
    """End worker processes now (an interrupt): SIGTERM to all, then SIGKILL to any still there
    after 5 s -- a busy machine or a stuck worker must not be left behind."""
    for process in workers:
        process.terminate()
    for process in workers:
        process.join(timeout=5)
        if process.is_alive():
            process.kill()
            process.join(timeout=5)


def _outcome_of(future: Future[Outcome]) -> Outcome:
    """The job's Outcome; a worker that died (killed, out of memory) fails just its jobs."""
    try:
        return future.result()
    except Exception as error:
        return Outcome(False, error=f"worker process failed: {one_line(error)}")


class DaskExecutor:
    """Jobs on an existing Dask distributed cluster, for sweeps that outgrow one machine.

    Workers must have knn-cli installed and see the same runs folder (a shared file system) and a
    CIFAR-10 copy of their own. Dask's nanny already starts workers with one BLAS thread.
    """

    in_process = False

    def __init__(self, address: str, *, timeout: float = 10.0) -> None:
        self.address = address
        self.timeout = timeout
        self.workers = 0  # known once connected

    def check(self) -> None:
        """The extra installed, the address well formed and something listening there.

        A plain socket first: Dask's client retries an unreachable address until its timeout
        and, having failed, hangs again on exit closing itself.
        """
        _import_distributed()
        host, port = scheduler_host_port(self.address)
        try:
            socket.create_connection((host, port), timeout=self.timeout).close()
        except OSError as error:
            reason = error.strerror or str(error) or type(error).__name__
            raise KnnError(f"cannot reach the Dask scheduler at {self.address}: {reason}") from None

    def run(self, items: Sequence[T], fn: Callable[[T], Any]) -> Iterator[tuple[T, Outcome]]:
        if not items:
            return
        distributed = _import_distributed()
        client = self._connect(distributed)
        futures: list[Any] = []
        try:
            self.workers = len(client.scheduler_info().get("workers", {}))
            futures = [client.submit(guarded, fn, item, pure=False) for item in items]
            by_key = {future.key: item for future, item in zip(futures, items, strict=True)}
            for future in distributed.as_completed(futures, loop=client.loop):
                yield by_key[future.key], _dask_outcome(future)
        except BaseException:
            with contextlib.suppress(Exception):
                client.cancel(futures)
            raise
        finally:
            client.close()

    def _connect(self, distributed: Any) -> Any:
        try:
            return distributed.Client(self.address, timeout=self.timeout, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as error:
            raise KnnError(
                f"cannot reach the Dask scheduler at {self.address}: {one_line(error)}"
            ) from None


DASK_SCHEMES = ("tcp", "tls")
DASK_DEFAULT_PORT = 8786


def scheduler_host_port(address: str) -> tuple[str, int]:
    """(host, port) of a `tcp://HOST:PORT` address (scheme and port optional, as in Dask)."""
    scheme, separator, rest = address.partition("://")
    if not separator:
        scheme, rest = "tcp", address
    host, colon, port = rest.rpartition(":") if ":" in rest else (rest, "", "")
    host = host.strip("[]")  # an IPv6 address in brackets
    valid_port = not colon or (port.isdigit() and 0 < int(port) < 65536)
    if scheme not in DASK_SCHEMES or not host or "/" in host or not valid_port:
        raise KnnError(
            f"--scheduler {address!r} is not a scheduler address; expected tcp://HOST:PORT"
        )
    return host, int(port) if colon else DASK_DEFAULT_PORT


def _dask_outcome(future: Any) -> Outcome:
    try:
        return future.result()
    except Exception as error:  # the worker died (KilledWorker) or the task was lost
        return Outcome(False, error=f"dask task failed: {one_line(error)}")


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise KnnError(f"--scheduler needs dask.distributed; {DASK_EXTRA_HINT}") from None
    return distributed


def make_executor(workers: int | None, scheduler: str | None) -> Executor:
    """The executor the CLI options ask for: a Dask cluster, local processes, or this process."""
    if scheduler:
        return DaskExecutor(scheduler)
    workers = workers or default_workers()
    return SerialExecutor() if workers == 1 else ProcessExecutor(workers)


class _Stopped(Exception):
    """Handed to a part waiting on the shared pool when the pool stops (an interrupt)."""


class SharedProcesses:
    """One pool of local worker processes shared by several callers at once -- the parts of a
    study, each on a thread of its own: their jobs wait in one queue, the most urgent first
    (lowest priority number, then in the order asked), and `workers` run at a time, so that no
    core waits while any part has a job ready. `view(priority)` is the Executor one caller
    runs its jobs on.

    Only `workers` jobs are handed to the process pool at any time: the pool's own queue is
    first come, first served, and would run a long list asked for early before an urgent job
    asked for later.
    """

    in_process = False

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None
        self._waiting: list[tuple[int, int, Any, Callable[[Any], Any], Any]] = []
        self._asked = 0
        self._running = 0
        self._stopped = False
        self._condition = threading.Condition()
        self._dispatcher: threading.Thread | None = None
        self._before: set[Any] = set()

    def check(self) -> None:
        pass

    def __enter__(self) -> SharedProcesses:
        self._before = set(multiprocessing.active_children())
        self._pool = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_start,
            initargs=(os.getpid(),),
        )
        self._dispatcher = threading.Thread(target=self._dispatch, name="knn-queue", daemon=True)
        self._dispatcher.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: Any, trace: Any) -> None:
        self.stop(terminate=kind is not None)

    def view(self, priority: int) -> _SharedView:
        return _SharedView(self, priority)

    def submit(self, priority: int, item: Any, fn: Callable[[Any], Any], results: Any) -> None:
        with self._condition:
            if self._stopped:
                results.put((item, _Stopped()))
                return
            heapq.heappush(self._waiting, (priority, self._asked, item, fn, results))
            self._asked += 1
            self._condition.notify_all()

    def _dispatch(self) -> None:
        while True:
            with self._condition:
                while not self._stopped and (not self._waiting or self._running >= self.workers):
                    self._condition.wait()
                if self._stopped:
                    return
                _, _, item, fn, results = heapq.heappop(self._waiting)
                self._running += 1
            assert self._pool is not None
            with one_thread_environment():  # the pool spawns its workers during submit
                future = self._pool.submit(guarded, fn, item)
            future.add_done_callback(
                lambda done, item=item, results=results: self._done(done, item, results)
            )

    def _done(self, future: Future[Outcome], item: Any, results: Any) -> None:
        if future.cancelled():
            results.put((item, _Stopped()))
        else:
            results.put((item, _outcome_of(future)))
        with self._condition:
            self._running -= 1
            self._condition.notify_all()

    def stop(self, *, terminate: bool = False) -> None:
        """Stop taking jobs; tell every caller still waiting; with `terminate` (an interrupt),
        end the workers now rather than after their jobs."""
        with self._condition:
            self._stopped = True
            waiting, self._waiting = self._waiting, []
            self._condition.notify_all()
        for _, _, item, _, results in waiting:
            results.put((item, _Stopped()))
        if self._pool is None:
            return
        self._pool.shutdown(wait=not terminate, cancel_futures=True)
        if terminate:
            end_workers(set(multiprocessing.active_children()) - self._before)


class _SharedView:
    """The Executor one caller of a SharedProcesses pool runs its jobs on, at one priority."""

    in_process = False

    def __init__(self, shared: SharedProcesses, priority: int) -> None:
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
            if isinstance(outcome, _Stopped):
                raise KeyboardInterrupt  # the pool stopped under us: as if interrupted here
            yield item, outcome
