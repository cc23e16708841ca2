"""One process at a time per folder: a sweep, or a resumed run, holds its folder's lock.

Two processes on one sweep folder would train the same trials into the same folders. The lock is
an `fcntl.flock` on `.lock` in the folder: the kernel drops it when its holder exits however it
exits (kill -9 included), so a lock left by a dead process is simply taken over; the pid written
into the file is only there to name the holder in the error.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path

from knn_cli.errors import RunFolderError

LOCK_FILE = ".lock"
# The line a holder writes into the lock file, and how `holder_alive` reads it back.
HOLDER = "process {pid} on {host}\n"
HOLDER_PATTERN = re.compile(r"process (\d+) on (\S+)")

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
        handle.write(HOLDER.format(pid=os.getpid(), host=socket.gethostname()))
        handle.flush()
        yield
    finally:
        handle.close()  # releases the lock; the file stays, naming the last holder


def holder_alive(folder: Path) -> bool:
    """Whether the process named in the folder's lock file (the last to hold it) still lives on
    this machine: a look at the file, never at the lock, which a probe could steal for a moment
    from a `--resume` starting just then."""
    try:
        holder = HOLDER_PATTERN.match((folder / LOCK_FILE).read_text())
    except OSError:
        return False
    if holder is None or holder.group(2) != socket.gethostname():
        return False
    pid = int(holder.group(1))
    try:
        os.kill(pid, 0)
    except PermissionError:  # alive, another user's
        pass
    except (OSError, OverflowError):
        return False
    if not Path("/proc/self").is_dir():
        return True
    try:  # the pid may have been reused since by another program
        return b"knn" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
