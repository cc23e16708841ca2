"""BLAS threads: one per thread of ours wherever our threads or processes share the cores.

Two threads each driving a multi-threaded BLAS pool, or two processes each doing so, fight over
the cores and all of them slow down (benchmarks/README.md). This module imports no numpy at the
top: the executors set these variables for spawned workers before numpy loads there.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext

# The variables the BLAS libraries NumPy is built with read; "1" in any of them pins BLAS to one
# thread from the start.
BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
# What a spawned worker gets: those, and the other numeric libraries' own.
WORKER_THREAD_VARIABLES = (*BLAS_THREAD_VARIABLES, "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


def pinned_by_environment() -> bool:
    return any(os.environ.get(name) == "1" for name in BLAS_THREAD_VARIABLES)


def one_thread_limit() -> AbstractContextManager[object] | None:
    """A context keeping this process's BLAS to one thread, or None when that cannot be had.

    Where the environment pins it already (sweep workers) the answer is a no-op context.
    """
    if pinned_by_environment():
        return nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    return threadpool_limits(limits=1, user_api="blas")


def may_use_two_cores(limit: AbstractContextManager[object] | None) -> bool:
    """Whether a second thread of ours may run beside BLAS: only where BLAS is held to one
    thread by `limit` (not by the environment, which sweep workers set, one per core) and this
    process may run on two cores or more."""
    if limit is None or isinstance(limit, nullcontext):
        return False
    try:
        return len(os.sched_getaffinity(0)) >= 2
    except AttributeError:  # not on Linux
        return (os.cpu_count() or 1) >= 2


@contextlib.contextmanager
def one_thread_environment() -> Iterator[None]:
    """One-thread limits in os.environ while worker processes are spawned, then restored.

    A spawned child copies the environment at its start, before it imports numpy; this
    process's numpy is loaded already, so its own thread pool is unaffected.
    """
    saved = {name: os.environ.get(name) for name in WORKER_THREAD_VARIABLES}
    os.environ.update({name: "1" for name in WORKER_THREAD_VARIABLES})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
