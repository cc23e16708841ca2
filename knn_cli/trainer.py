"""Mini-batch training with the cyclical learning rate, and evaluation.

The trainer knows nothing of files, the CLI or progress bars: it reports evaluation points and
steps through callbacks, so the experiment layer can write them as they come and tests can
attach nothing. It raises nothing for a diverging run; it stops and says so in its result.

It trains through an engine of its own over the network (`knn_cli/engine`), and uses both cores
where it may: evaluations run on a second thread (`engine/evaluations.py`), and between them the
step's first layer is shared with a helper thread (`engine/lanes.py`, `engine/split.py`), each
step being told the next batch so that the helper can go on to it without a second hand-over.
Both need BLAS held to one thread per thread of ours (`blas.py`): where that cannot be had,
evaluation stays in line and the step on one thread; where the environment holds BLAS to one
thread (sweep workers, one per core), the step stays on one. What each part gains is measured
by benchmarks/bench_train.py ("1 lane/ours", and --full).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np

from knn_cli.augment import Augmentation, Draws, draw, mirror
from knn_cli.blas import may_use_two_cores, one_thread_limit
from knn_cli.diagnostics import Probe
from knn_cli.diagnostics import rows as diagnostic_rows
from knn_cli.engine import Engine
from knn_cli.engine.batches import AugmentedBatch, Batch
from knn_cli.engine.evaluations import Record, run_evaluations
from knn_cli.layers import cross_entropy, softmax
from knn_cli.network import Network
from knn_cli.optim import SGD, UpdateRule
from knn_cli.schedule import check_batch_size, cyclical_learning_rate, total_steps

# Rows per forward pass in `evaluate`: small enough that a block's activations stay in the
# cache, large enough that the per-block Python cost is nothing beside its matrix product.
EVAL_BLOCK = 1_000
# Streams of random numbers drawn from the schedule's seed, apart from the init's: the batches'
# order, and each step's dropout masks and augmentation, seeded by the step so that a continued
# run draws alike.
BATCH_STREAM, NOISE_STREAM, AUGMENT_STREAM = 1, 2, 3
# Beside them, the rows a training-set curve is measured on where not all of them are (4 is the
# diagnostics' probe, knn_cli/diagnostics.py).
TRAIN_CURVE_STREAM = 5


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
        return total_steps(self.n_s, self.cycles)


@dataclass(frozen=True)
class Splits:
    """Training and validation arrays; samples are rows."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray


@dataclass(frozen=True)
class Checkpointing:
    """How a run is saved between two steps so that it can be continued: `save(steps_done)`
    is called with every evaluation requested so far delivered, every `every_seconds`, and
    when `stop_requested()` turns true, after which training raises KeyboardInterrupt."""

    save: Callable[[int], None]
    every_seconds: float | None = None
    stop_requested: Callable[[], bool] = lambda: False


@dataclass(frozen=True)
class TrainingOutcome:
    status: str  # "finished" or "diverged"
    steps: int
    message: str = ""


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
        smoothing = network.label_smoothing
        total_loss += cross_entropy(scores, labels, smoothing) * len(labels)  # the block's sum
    loss = total_loss / len(X)
    return loss + lambda_ * network.weight_penalty(), loss, correct / len(X)


def accuracy(network: Network, X: np.ndarray, y: np.ndarray, *, mirrored: bool = False) -> float:
    """Accuracy in evaluation mode; with `mirrored`, of the class probabilities averaged over
    each image and its mirror image (test-time augmentation)."""
    if not mirrored:
        return float(np.mean(network.predict(X) == y))
    X = np.asarray(X)
    correct = 0
    for start in range(0, len(X), EVAL_BLOCK):
        block = X[start : start + EVAL_BLOCK]
        probabilities = softmax(network.scores(block)) + softmax(network.scores(mirror(block)))
        correct += int(
            np.count_nonzero(probabilities.argmax(axis=1) == y[start : len(block) + start])
        )
    return correct / len(X)


def train(
    network: Network,
    splits: Splits,
    schedule: Schedule,
    *,
    on_evaluation: Callable[[list[Record]], None] | None = None,
    on_step: Callable[[int, float], None] | None = None,
    probe: Probe | None = None,
    on_diagnostics: Callable[[list[Record]], None] | None = None,
    optimizer: UpdateRule | None = None,
    augmentation: Augmentation | None = None,
    start_step: int = 0,
    checkpointing: Checkpointing | None = None,
    background_evaluation: bool = True,
    two_lanes: bool = True,
    train_curve: int | None = None,
) -> TrainingOutcome:
    """Train for `schedule.total_steps` updates, evaluating at step 0, every `eval_every` steps and
    at the end. Shuffling draws from a generator seeded by the schedule alone, so the same config
    and seed give the same metrics. `optimizer` is the update rule (plain SGD when None); it
    keeps its state, so a caller can save it with the network. `augmentation` changes each
    training batch as it is drawn, with choices seeded by the schedule's seed and the step.

    With a `probe`, the layers are measured on it at every evaluation point too (on the same
    copy of the network the evaluation reads, `knn_cli/diagnostics.py`), and the rows handed to
    `on_diagnostics`: observation only, nothing training computes changes.

    `train_curve` sets what the training-set curve is measured on: every training row (None),
    a fixed sample of that many rows drawn from the schedule's seed at every evaluation point
    but the last, which measures them all, or nothing at all (0: a search trial, whose
    training curve nothing reads). The validation set is always measured whole.

    `start_step` continues a run saved by `checkpointing` after that many steps (network and
    optimizer restored by the caller): the batches, dropout masks and augmentation of the
    steps that follow are those the uninterrupted run would have drawn, so it ends with the
    same numbers.

    Every evaluation requested has been handed to `on_evaluation` when this returns or raises
    (a KeyboardInterrupt included). `background_evaluation=False` evaluates on this thread
    instead, for measuring the two apart; so does the lack of a way to keep BLAS to one thread
    (see the module's docstring). `two_lanes=False` keeps the step to this thread, which changes
    the speed only: the step computes the same numbers either way.
    """
    n_train = len(splits.X_train)
    batch_size = schedule.batch_size
    check_batch_size(batch_size, n_train, "training rows")  # for callers without a config
    batches_per_epoch = n_train // batch_size
    X_train, y_train = np.asarray(splits.X_train), np.asarray(splits.y_train)

    def rate(step: int) -> float:
        return cyclical_learning_rate(step, schedule.eta_min, schedule.eta_max, schedule.n_s)

    augmenting = augmentation is not None and augmentation.active
    epoch_draws: dict[int, Draws] = {}

    def batch(step: int, rows: np.ndarray) -> Batch:
        """The step's batch, augmented by choices drawn for its whole epoch at once (seeded by
        the epoch: a continued run draws alike), which costs a fraction of drawing per step."""
        if not augmenting:
            return Batch(X_train, rows)
        assert augmentation is not None
        epoch, position = divmod(step, batches_per_epoch)
        if epoch not in epoch_draws:
            epoch_draws.clear()
            rng = np.random.default_rng([schedule.seed, AUGMENT_STREAM, epoch])
            epoch_draws[epoch] = draw(augmentation, batches_per_epoch * batch_size, rng)
        draws = epoch_draws[epoch].rows(slice(position * batch_size, (position + 1) * batch_size))
        return AugmentedBatch(X_train, rows, augmentation, draws)

    def evaluation_point(
        snapshot: Network, step: int, eta: float, before: dict[str, np.ndarray] | None
    ) -> tuple[list[Record], list[Record]]:
        """The metrics of both splits, and the probe's measurements."""
        measured = []
        if measuring:
            assert probe is not None
            with np.errstate(all="ignore"):  # per thread: a diverging net measures inf, not warns
                measured = diagnostic_rows(step, probe.measure(snapshot, before))
        return (records(snapshot, step, eta) if on_evaluation is not None else []), measured

    def deliver(point: tuple[list[Record], list[Record]]) -> None:
        metrics, measured = point
        if on_evaluation is not None:
            on_evaluation(metrics)
        if measured and on_diagnostics is not None:
            on_diagnostics(measured)

    sample = None
    if train_curve:  # the same rows at every point, and in a run continued from a checkpoint
        rng = np.random.default_rng([schedule.seed, TRAIN_CURVE_STREAM])
        rows = np.sort(rng.choice(n_train, size=min(train_curve, n_train), replace=False))
        sample = (np.asarray(splits.X_train[rows]), np.asarray(splits.y_train[rows]))

    def records(snapshot: Network, step: int, eta: float) -> list[Record]:
        rows: list[Record] = []
        measured = [("val", splits.X_val, splits.y_val)]
        if train_curve != 0:
            whole = sample is None or step == schedule.total_steps
            X, y = (splits.X_train, splits.y_train) if whole else sample
            measured.insert(0, ("train", X, y))
        for split, X, y in measured:
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

    rule = optimizer or SGD()
    blas_limit = one_thread_limit()
    background = background_evaluation and blas_limit is not None
    measuring = probe is not None and probe.active and on_diagnostics is not None
    listening = deliver if on_evaluation is not None or measuring else None
    with (
        blas_limit or nullcontext(),
        Engine(network, two_lanes=two_lanes and may_use_two_cores(blas_limit)) as engine,
        np.errstate(over="ignore", invalid="ignore"),  # divergence is reported, not warned
        run_evaluations(listening, evaluation_point, background) as evaluations,
    ):

        def evaluates(done: int) -> bool:
            return done % schedule.eval_every == 0 or done == schedule.total_steps

        def evaluate_after(done: int, before: dict[str, np.ndarray] | None = None) -> None:
            engine.write_back()  # the network whole, for the snapshot the evaluation takes
            evaluations.request(network, done, rate(done), before)

        if start_step == 0:
            evaluate_after(0)
        batches = _batches(n_train, batch_size, schedule.seed)
        for _ in range(start_step):
            next(batches)
        current = batch(start_step, next(batches))
        last_save = time.monotonic()
        for step in range(start_step, schedule.total_steps):
            # The step is told the next batch too: its lanes start on it (see Engine.step).
            following = batch(step + 1, next(batches)) if step + 1 < schedule.total_steps else None
            eta = rate(step)
            engine.helping = not evaluations.in_flight()
            # The weights before the step just before an evaluation point, for its update ratio.
            before = None
            if measuring and evaluates(step + 1):
                assert probe is not None
                before = probe.weights(network)
            cost = engine.step(
                current,
                y_train[current.rows],
                schedule.lambda_,
                eta,
                rule,
                following=following,
                noise=(schedule.seed, NOISE_STREAM, step),
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
            if evaluates(done):
                evaluate_after(done, before)
            else:
                evaluations.deliver_ready()
            if checkpointing is not None and done < schedule.total_steps:
                stop = checkpointing.stop_requested()
                every = checkpointing.every_seconds
                if stop or (every is not None and time.monotonic() - last_save >= every):
                    evaluations.deliver_all()
                    engine.write_back()
                    checkpointing.save(done)
                    last_save = time.monotonic()
                    if stop:
                        raise KeyboardInterrupt
            if following is not None:
                current = following
        return TrainingOutcome("finished", schedule.total_steps)


def _batches(n_train: int, batch_size: int, seed: int) -> Iterator[np.ndarray]:
    """Rows of each mini-batch, a new shuffle every epoch, from a generator seeded by the
    schedule alone (a stream apart from the init's); a last partial batch is dropped."""
    rng = np.random.default_rng([seed, BATCH_STREAM])
    while True:
        order = rng.permutation(n_train)
        for start in range(0, n_train - batch_size + 1, batch_size):
            yield order[start : start + batch_size]
