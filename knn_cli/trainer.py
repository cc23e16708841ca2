"""Mini-batch gradient descent with the cyclical learning rate, and evaluation.

The trainer knows nothing of files, the CLI or progress bars: it reports evaluation points and
steps through callbacks, so the experiment layer can write them as they come and tests can
attach nothing. It raises nothing for a diverging run; it stops and says so in its result.

Speed: one evaluation of the 45,000 training and 5,000 validation rows is as much arithmetic as
250 training steps, and the study evaluates 21 times in 9,000 steps: run in line, evaluation was
about 40% of a `knn train`. Each evaluation therefore runs on a snapshot of the network in a
second thread while training goes on (NumPy releases the GIL inside its matrix products, so a
2-core machine does both at once), and its records are handed to `on_evaluation` on the caller's
thread, in step order, as soon as they are ready; the metrics are those training would have got
by waiting. Both threads then use single-threaded BLAS: two threads each driving a 2-thread
OpenBLAS pool on 2 cores fight over them (measured, a whole 3layer_bn run: 23 s, against 15-19 s
with one BLAS thread each).
The BLAS limit needs threadpoolctl; without it (and without OPENBLAS_NUM_THREADS=1 or the like
in the environment) evaluation stays in line, as fast as before and no slower.

Between evaluations the second core would idle, so the step's first layer is shared between
this thread and a helper (`lanes`, `network._InputSplit`), and each step is told the next batch
so that the helper can go on to it without a second hand-over: an epoch on one thread takes
1.25-1.39 times as long for 3-layer BN, 1.21-1.35 for 9-layer BN (benchmarks/bench_train.py,
"1 lane/ours", medians of three batches of 5 repeats). While an evaluation is in flight the
step keeps to this thread. Where the environment keeps BLAS to one thread (sweep workers, one
per core) the step stays on one.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np

from knn_cli.lanes import Lanes
from knn_cli.network import Network, cross_entropy
from knn_cli.schedule import cyclical_learning_rate

# Rows per forward pass in `evaluate`. Small enough that a block's activations stay in the cache
# (measured ~10% faster than 10,000-row blocks for a 3072-50 first layer), large enough that
# the per-block Python cost is nothing beside the block's matrix product.
EVAL_BLOCK = 1_000


@dataclass(frozen=True)
class Schedule:
    """Everything about the optimization that is a number, resolved against the data size."""

    lambda_: float
    batch_size: int
    eta_min: float
    eta_max: float
    n_s: int
    cycles: int
    eval_every: int
    seed: int

    @property
    def total_steps(self) -> int:
        return 2 * self.n_s * self.cycles


@dataclass(frozen=True)
class Splits:
    """Training and validation arrays; samples are rows."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray


@dataclass(frozen=True)
class TrainingOutcome:
    status: str  # "finished" or "diverged"
    steps: int
    message: str = ""


Record = dict[str, float | int | str]


def evaluate(
    network: Network, X: np.ndarray, y: np.ndarray, lambda_: float
) -> tuple[float, float, float]:
    """(cost, loss, accuracy) in evaluation mode, in blocks so a 45,000-row split stays cheap."""
    X = np.asarray(X)  # a memmap's subclass costs on every slice; its plain view does not
    total_loss = 0.0
    correct = 0
    for start in range(0, len(X), EVAL_BLOCK):
        scores = network.scores(X[start : start + EVAL_BLOCK])
        labels = y[start : start + EVAL_BLOCK]
        correct += int(np.count_nonzero(scores.argmax(axis=1) == labels))
        total_loss += cross_entropy(scores, labels) * len(labels)  # the block's summed loss
    loss = total_loss / len(X)
    return loss + lambda_ * network.weight_penalty(), loss, correct / len(X)


def train(
    network: Network,
    splits: Splits,
    schedule: Schedule,
    *,
    on_evaluation: Callable[[list[Record]], None] | None = None,
    on_step: Callable[[int, float], None] | None = None,
    background_evaluation: bool = True,
    two_lanes: bool = True,
) -> TrainingOutcome:
    """Train for `schedule.total_steps` updates, evaluating at step 0, every `eval_every` steps and
    at the end. Shuffling draws from a generator seeded by the schedule alone, so the same config
    and seed give the same metrics.

    Every evaluation requested has been handed to `on_evaluation` when this returns or raises
    (a KeyboardInterrupt included). `background_evaluation=False` evaluates on this thread
    instead, for measuring the two apart; so does the lack of a way to keep BLAS to one thread
    (see the module's docstring). `two_lanes=False` keeps the step to this thread, which changes
    the speed only: the step computes the same numbers either way.
    """
    n_train = len(splits.X_train)
    batch_size = schedule.batch_size
    if not 1 <= batch_size <= n_train:  # the config check says so first; this is for API callers
        raise ValueError(f"batch size {batch_size} must be 1 to {n_train}, the training rows")
    batches_per_epoch = n_train // batch_size
    X_train, y_train = np.asarray(splits.X_train), np.asarray(splits.y_train)

    def rate(step: int) -> float:
        return cyclical_learning_rate(step, schedule.eta_min, schedule.eta_max, schedule.n_s)

    def records(snapshot: Network, step: int, eta: float) -> list[Record]:
        rows: list[Record] = []
        for split, X, y in (
            ("train", splits.X_train, splits.y_train),
            ("val", splits.X_val, splits.y_val),
        ):
            with np.errstate(over="ignore", invalid="ignore"):  # per thread: set it here too
                cost, loss, accuracy = evaluate(snapshot, X, y, schedule.lambda_)
            rows.append(
                {
                    "step": step,
                    "epoch": step / batches_per_epoch,
                    "eta": eta,
                    "split": split,
                    "cost": cost,
                    "loss": loss,
                    "accuracy": accuracy,
                }
            )
        return rows

    blas_limit = _single_threaded_blas()
    background = background_evaluation and blas_limit is not None
    lanes = Lanes() if two_lanes and _may_use_two_cores(blas_limit) else None
    with (
        blas_limit or nullcontext(),
        lanes or nullcontext(),
        np.errstate(over="ignore", invalid="ignore"),  # divergence is reported, not warned
        _evaluations(on_evaluation, records, background) as evaluations,
    ):
        evaluations.request(network, 0, rate(0))
        batches = _batches(n_train, batch_size, schedule.seed)
        rows = next(batches)
        for step in range(schedule.total_steps):
            # The step is told the next batch too: its lanes start on it (see Network.train_step).
            next_rows = next(batches) if step + 1 < schedule.total_steps else None
            eta = rate(step)
            if lanes is not None:
                lanes.helping = not evaluations.in_flight()
            cost = network.train_step(
                X_train, y_train, schedule.lambda_, eta, lanes, rows=rows, next_rows=next_rows
            )
            if not math.isfinite(cost):
                return TrainingOutcome(
                    "diverged",
                    step,
                    f"cost became {cost} at step {step} (eta {eta:.3g}); "
                    "lower eta_max or check the init",
                )
            done = step + 1
            if on_step is not None:
                on_step(done, eta)
            if done % schedule.eval_every == 0 or done == schedule.total_steps:
                evaluations.request(network, done, rate(done))
            else:
                evaluations.deliver_ready()
            rows = next_rows
        return TrainingOutcome("finished", schedule.total_steps)


def _batches(n_train: int, batch_size: int, seed: int) -> Iterator[np.ndarray]:
    """Rows of each mini-batch, a new shuffle every epoch, from a generator seeded by the
    schedule alone (a stream apart from the init's); a last partial batch is dropped."""
    rng = np.random.default_rng([seed, 1])
    while True:
        order = rng.permutation(n_train)
        for start in range(0, n_train - batch_size + 1, batch_size):
            yield order[start : start + batch_size]


class _Evaluations:
    """Evaluation points in flight, delivered in the order they were requested."""

    def __init__(
        self,
        on_evaluation: Callable[[list[Record]], None],
        records: Callable[[Network, int, float], list[Record]],
        executor: ThreadPoolExecutor | None,
    ) -> None:
        self._on_evaluation = on_evaluation
        self._records = records
        self._executor = executor
        self._pending: deque[Future[list[Record]]] = deque()
        self._failed = False

    def request(self, network: Network, step: int, eta: float) -> None:
        if self._executor is None:
            self._deliver(lambda: self._records(network, step, eta))
            return
        # A snapshot, so the evaluation sees the parameters of `step` while training goes on.
        self._pending.append(self._executor.submit(self._records, network.snapshot(), step, eta))
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

    def _deliver(self, rows: Callable[[], list[Record]]) -> None:
        """Once an evaluation or its callback has failed, later ones are not delivered: the
        caller stopped where the failure was, as it would have without the second thread."""
        if self._failed:
            return
        try:
            self._on_evaluation(rows())
        except BaseException:
            self._failed = True
            raise


class _NoEvaluations(_Evaluations):
    """Nobody listens: evaluating would be wasted work."""

    def __init__(self) -> None:
        pass

    def request(self, network: Network, step: int, eta: float) -> None:
        pass

    def deliver_ready(self) -> None:
        pass

    def deliver_all(self) -> None:
        pass

    def in_flight(self) -> bool:
        return False


@contextmanager
def _evaluations(
    on_evaluation: Callable[[list[Record]], None] | None,
    records: Callable[[Network, int, float], list[Record]],
    background: bool,
) -> Iterator[_Evaluations]:
    """Evaluations for one training run; on leaving, however, everything requested is delivered.

    One worker thread: evaluations then run one at a time, in order, and never take more than
    the one core beside the training's.
    """
    if on_evaluation is None:
        yield _NoEvaluations()
        return
    executor = ThreadPoolExecutor(1, thread_name_prefix="knn-eval") if background else None
    evaluations = _Evaluations(on_evaluation, records, executor)
    try:
        yield evaluations
    finally:
        try:
            evaluations.deliver_all()
        finally:
            if executor is not None:
                executor.shutdown(wait=True, cancel_futures=True)


def _may_use_two_cores(blas_limit: AbstractContextManager[object] | None) -> bool:
    """Two lanes only where BLAS is held to one thread by us (a threadpoolctl limit) and this
    process may run on two cores or more. A no-op limit means the environment asked for one
    thread -- sweep workers do, one per core -- and None that BLAS may run its own threads."""
    if blas_limit is None or isinstance(blas_limit, nullcontext):
        return False
    try:
        return len(os.sched_getaffinity(0)) >= 2
    except AttributeError:  # not on Linux
        return (os.cpu_count() or 1) >= 2


_SINGLE_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _single_threaded_blas() -> AbstractContextManager[object] | None:
    """A context keeping BLAS to one thread, or None when that cannot be had.

    Sweep workers already get one-thread BLAS through their environment (see executors), which
    is honoured here too: then nothing needs changing and the answer is a no-op context.
    """
    if any(os.environ.get(name) == "1" for name in _SINGLE_THREAD_VARIABLES):
        return nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    return threadpool_limits(limits=1, user_api="blas")
