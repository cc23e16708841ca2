"""Local worker processes' lifecycle, apart from what runs on them: spawned with one BLAS thread,
leaving Ctrl-C to their parent, dying with it however it ends, and ended at once (SIGTERM, then
SIGKILL) when a sweep is interrupted -- written once, for every pool of workers.

This module imports no numpy at the top: a spawned worker imports it, and the BLAS thread limits
must be in its environment before numpy is first imported there.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

from knn_cli.blas import one_thread_environment
from knn_cli.interrupts import GROUP_SIGNALS

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
PARENT_POLL_SECONDS = 1.0
END_SECONDS = 5.0  # how long a worker has to end after SIGTERM, and after SIGKILL


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
    for number in GROUP_SIGNALS:  # the sweep's process hears them and ends its workers itself
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


class WorkerPool:
    """`size` local processes started with spawn (fork is unsafe with BLAS threads), each
    loading its own data (from the memory-mapped cache, which the caller builds first), so no
    large array is pickled to it."""

    def __init__(self, size: int) -> None:
        self._before = set(multiprocessing.active_children())  # not ours: never ended by us
        self._pool = ProcessPoolExecutor(
            max_workers=size,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_start,
            initargs=(os.getpid(),),
        )

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        # The pool spawns its workers during submit, so each submit is made with one-thread
        # limits in the environment the worker copies.
        with one_thread_environment():
            return self._pool.submit(fn, *args)

    def end(self, *, terminate: bool) -> None:
        """Take no more jobs; after the running ones finish, or (`terminate`: an interrupt) at
        once, the jobs not started cancelled and the workers ended."""
        if not terminate:
            self._pool.shutdown(wait=True, cancel_futures=True)
            return
        self._pool.shutdown(wait=False, cancel_futures=True)
        end_processes(set(multiprocessing.active_children()) - self._before)
        self._pool.shutdown(wait=True)  # the pool's own thread, now that its workers are gone


def end_processes(processes: set[Any]) -> None:
    """End processes now: SIGTERM to all, then SIGKILL to any still there after END_SECONDS --
    a busy machine or a stuck worker must not be left behind."""
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(timeout=END_SECONDS)
        if process.is_alive():
            process.kill()
            process.join(timeout=END_SECONDS)
