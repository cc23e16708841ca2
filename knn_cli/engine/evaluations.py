"""Evaluation on a second thread while training goes on.

One evaluation of the study's training and validation sets is as much arithmetic as a few
hundred training steps, and the study evaluates 21 times; so each runs on a snapshot of the
networks (a population's members, or one) in a second thread (NumPy releases the GIL inside
its matrix products, so a 2-core machine does both at once), and its records are handed to
the callback on the training thread, in step order, as soon as they are ready: the metrics are
those training would have got by waiting. What it saves is measured by
benchmarks/bench_train.py --full against `background_evaluation=False`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from knn_cli.network import Network

Record = dict[str, float | int | str]
# What an evaluation point computes, from the networks at that step (snapshots), the step and
# what the trainer kept for it (who the members are, the weights before the step); and who
# receives it.
Compute = Callable[[Sequence[Network], int, Any], Any]
Deliver = Callable[[Any], None]


class Evaluations:
    """Evaluation points in flight, delivered in the order they were requested."""

    def __init__(
        self, deliver: Deliver, compute: Compute, executor: ThreadPoolExecutor | None
    ) -> None:
        self._on_evaluation = deliver
        self._compute = compute
        self._executor = executor
        self._pending: deque[Future[Any]] = deque()
        self._failed = False

    def request(self, networks: Sequence[Network], step: int, kept: Any = None) -> None:
        if self._executor is None:
            self._deliver(lambda: self._compute(networks, step, kept))
            return
        # Snapshots, so the evaluation sees the parameters of `step` while training goes on.
        snapshots = [network.snapshot() for network in networks]
        self._pending.append(self._executor.submit(self._compute, snapshots, step, kept))
        self.deliver_ready()

    def deliver_ready(self) -> None:
        while self._pending and self._pending[0].done():
            self._deliver(self._pending.popleft().result)

    def in_flight(self) -> bool:
        """Whether an evaluation is (or may be) running on the other core right now; they run
        in request order, so the last one requested tells."""
        return bool(self._pending) and not self._pending[-1].done()

    def deliver_all(self) -> None:
        while self._pending:
            self._deliver(self._pending.popleft().result)

    def _deliver(self, rows: Callable[[], Any]) -> None:
        """Once an evaluation or its callback has failed, later ones are not delivered: the
        caller stopped where the failure was, as it would have without the second thread."""
        if self._failed:
            return
        try:
            self._on_evaluation(rows())
        except BaseException:
            self._failed = True
            raise


class NoEvaluations(Evaluations):
    """Nobody listens: evaluating would be wasted work."""

    def __init__(self) -> None:
        pass

    def request(self, networks: Sequence[Network], step: int, kept: Any = None) -> None:
        pass

    def deliver_ready(self) -> None:
        pass

    def deliver_all(self) -> None:
        pass

    def in_flight(self) -> bool:
        return False


@contextmanager
def run_evaluations(
    on_evaluation: Deliver | None, compute: Compute, background: bool
) -> Iterator[Evaluations]:
    """Evaluations for one training run; on leaving, however, everything requested is delivered.

    One worker thread: evaluations then run one at a time, in order, and never take more than
    the one core beside the training's.
    """
    if on_evaluation is None:
        yield NoEvaluations()
        return
    executor = ThreadPoolExecutor(1, thread_name_prefix="knn-eval") if background else None
    pending = Evaluations(on_evaluation, compute, executor)
    try:
        yield pending
    finally:
        try:
            pending.deliver_all()
        finally:
            if executor is not None:
                executor.shutdown(wait=True, cancel_futures=True)
