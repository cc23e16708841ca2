"""The Dask launcher: jobs on an existing Dask distributed cluster, for sweeps that outgrow one
machine. Every job is handed over as soon as it is asked for, with its priority: Dask's own
scheduler runs the most urgent first and sees workers come and go.

Workers must have knn-cli installed and see the same runs folder (a shared file system) and a
CIFAR-10 copy of their own. Dask's nanny already starts workers with one BLAS thread.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable
from typing import Any

from knn_cli.errors import KnnError
from knn_cli.executors.jobs import error_line, guarded
from knn_cli.executors.queue import QueuedExecutor

DASK_EXTRA_HINT = "install the extra from the checkout: pip install -e '.[dask]'"
DASK_SCHEMES = ("tcp", "tls")
DASK_DEFAULT_PORT = 8786


class DaskLauncher:
    """A client of the scheduler at `address`, connected when the queue opens."""

    failure = "dask task failed"  # the worker died (KilledWorker) or the task was lost

    def __init__(self, address: str, *, timeout: float = 10.0) -> None:
        self.address = address
        self.timeout = timeout
        self.workers = 0  # known once connected
        self._client: Any = None
        self._futures: list[Any] = []  # held: Dask forgets a task whose future is dropped

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
        # How many workers there are, now: a sweep plans its populations (how its trials are
        # grouped into jobs) for them before the queue opens.
        with self._client_of(_import_distributed()) as client:
            self.workers = _worker_count(client)

    def _client_of(self, distributed: Any) -> Any:
        try:
            return distributed.Client(self.address, timeout=self.timeout, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as error:
            raise KnnError(
                f"cannot reach the Dask scheduler at {self.address}: {error_line(error)}"
            ) from None

    def open(self, at_most: int | None) -> None:
        self._client = self._client_of(_import_distributed())
        self.workers = _worker_count(self._client)
        return None  # every job at once: the scheduler orders them by priority

    def start(self, fn: Callable[[Any], Any], item: Any, priority: int) -> Any:
        # Dask runs the highest priority first; the queue's most urgent has the lowest number.
        future = self._client.submit(guarded, fn, item, pure=False, priority=-priority)
        self._futures.append(future)
        return future

    def close(self, *, terminate: bool) -> None:
        if self._client is None:
            return
        if terminate:
            with contextlib.suppress(Exception):
                self._client.cancel(self._futures)
        self._client.close()
        self._client, self._futures = None, []


def _worker_count(client: Any) -> int:
    return len(client.scheduler_info().get("workers", {}))


class DaskExecutor(QueuedExecutor):
    """Jobs on the Dask cluster at `address`: the Dask launcher behind the queue."""

    def __init__(self, address: str, *, timeout: float = 10.0) -> None:
        super().__init__(DaskLauncher(address, timeout=timeout))


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


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise KnnError(f"--scheduler needs dask.distributed; {DASK_EXTRA_HINT}") from None
    return distributed
