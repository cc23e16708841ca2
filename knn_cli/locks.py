"""One process at a time per folder: a sweep, or a resumed run, holds its folder's lock.

Two processes on one sweep folder would train the same trials into the same folders. The lock is
an `fcntl.flock` on `.lock` in the folder: the kernel drops it when its holder exits however it
exits (kill -9 included), so a lock left by a dead process is simply taken over; the pid written
into the file is only there to name the holder in the error.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from knn_cli.errors import RunFolderError

LOCK_FILE = ".lock"

try:
    import fcntl
except ImportError:  # not on Unix: no lock, as before
    fcntl = None  # type: ignore[assignment]


class FolderBusy(RunFolderError):
    """Another live process holds the folder."""


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold `folder`'s lock for the block, or raise FolderBusy naming the process that holds it."""
    if fcntl is None:
        yield
        return
    path = folder / LOCK_FILE
    handle = open(path, "a+")  # noqa: SIM115 -- held open for the whole block on purpose
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise FolderBusy(
                f"{folder} is in use by {holder}; wait for it to end or stop it first"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        yield
    finally:
        handle.close()  # releases the lock; the file stays, naming the last holder
