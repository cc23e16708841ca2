"""Two lanes for the step's large first layer: the caller's thread and one helper thread.

Why not OpenBLAS's own threads: beside an evaluation on the second core, or another busy
process, their spin-waiting fights for both cores and a step becomes several times slower
(benchmarks/README.md). Here a splittable job is two halves with fixed bounds; the caller runs
the first, and the second goes to whichever thread is free first, so when the helper is late
(its core busy) the caller takes the half back and a step is never much slower than on one core.
Which thread ran a half never changes its result: the halves are the same products either way,
so runs stay bit-for-bit reproducible whether or not the helper was used.

Waking a sleeping helper costs a fair part of a half (benchmarks/step_timeline.py), so callers
hand over few, long jobs, and give the caller work of its own to do `meanwhile`.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

import numpy as np

Half = Callable[[int], None]  # called with 0, then (perhaps on the helper) with 1


class _Job:
    """One split job: `claim` decides who runs the second half, `running` is held until it is
    done (plain locks: an Event's condition variable costs more to wait on and to wake)."""

    __slots__ = ("claim", "error", "floating_point_errors", "running", "second_half")

    def __init__(self, second_half: Callable[[], None]) -> None:
        self.second_half = second_half
        self.claim = threading.Lock()
        self.running = threading.Lock()
        self.running.acquire()
        self.error: BaseException | None = None
        # NumPy's error handling is per thread: the helper must treat an overflow as the caller
        # would (the trainer silences it and reports divergence), not warn or raise its own way.
        self.floating_point_errors = np.geterr()

    def run_unless_taken(self) -> bool:
        if not self.claim.acquire(blocking=False):
            return False
        try:
            self.second_half()
        except BaseException as error:  # handed to the caller, who re-raises it
            self.error = error
        finally:
            self.running.release()
        return True

    def wait(self) -> None:
        """Until the helper is done, even through Ctrl-C: it writes into the caller's buffers,
        which the caller must not reuse (or save) half-written. The interrupt is raised after."""
        interrupted: BaseException | None = None
        while True:
            try:
                self.running.acquire()
                break
            except BaseException as error:  # KeyboardInterrupt from a signal handler
                interrupted = error
        if interrupted is not None:
            raise interrupted


class Lanes:
    """Runs both halves of a job; with `helping` on, the second may run on the helper thread.

    `helping` can change between jobs (the trainer turns it off while an evaluation occupies
    the other core). Use as a context manager, or call `close`, to end the helper thread.
    """

    def __init__(self, helping: bool = True) -> None:
        self.helping = helping
        # Jobs in the order posted; the helper skips those the caller has taken back.
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._closed = False
        self._helper: threading.Thread | None = None

    def split(self, half: Half, meanwhile: Callable[[], None] | None = None) -> None:
        """half(0) and half(1), perhaps at once, and `meanwhile()` on this thread; returns when
        all are done, raising the first error raised.

        `meanwhile` is work of the caller's that is independent of the halves: run while the
        helper wakes up and works, it costs no time where it would have cost its own.
        """
        if not self.helping:
            half(0)
            half(1)
            if meanwhile is not None:
                meanwhile()
            return
        job = _Job(lambda: half(1))
        self._post(job)
        try:
            half(0)  # first: its products release the GIL at once, which the helper needs to start
            if meanwhile is not None:
                meanwhile()
        finally:
            # Never leave the helper writing into buffers the caller is about to reuse.
            if not job.run_unless_taken():
                job.wait()
        if job.error is not None:
            raise job.error

    def close(self) -> None:
        self._closed = True
        if self._helper is not None:
            self._jobs.put(None)
            self._helper.join()
            self._helper = None

    def __enter__(self) -> Lanes:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _post(self, job: _Job) -> None:
        if self._closed:
            raise RuntimeError("Lanes used after close()")
        if self._helper is None:
            self._helper = threading.Thread(target=self._serve, name="knn-lane", daemon=True)
            self._helper.start()
        self._jobs.put(job)

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            if np.geterr() != job.floating_point_errors:
                np.seterr(**job.floating_point_errors)
            job.run_unless_taken()


_HERE = Lanes(helping=False)  # never starts its helper thread


def run_halves(
    half: Half, lanes: Lanes | None, meanwhile: Callable[[], None] | None = None
) -> None:
    """Both halves, on the lanes when there are some, else here: callers split the same way
    whether or not lanes exist, so that the numbers never depend on them."""
    (lanes or _HERE).split(half, meanwhile)
