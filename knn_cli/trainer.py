"""Mini-batch gradient descent with the cyclical learning rate, and evaluation.

The trainer knows nothing of files, the CLI or progress bars: it reports evaluation points and
steps through callbacks, so the experiment layer can write them as they come and tests can
attach nothing. It raises nothing for a diverging run; it stops and says so in its result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from knn_cli.network import Network
from knn_cli.schedule import cyclical_learning_rate

EVAL_BLOCK = 10_000


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
    total_loss = 0.0
    correct = 0
    for start in range(0, len(X), EVAL_BLOCK):
        scores = network.scores(X[start : start + EVAL_BLOCK])
        labels = y[start : start + EVAL_BLOCK]
        shifted = scores - scores.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(shifted).sum(axis=1))
        total_loss += float(
            np.sum(log_norm - shifted[np.arange(len(labels)), labels], dtype=np.float64)
        )
        correct += int(np.count_nonzero(scores.argmax(axis=1) == labels))
    loss = total_loss / len(X)
    return loss + lambda_ * network.weight_penalty(), loss, correct / len(X)


def train(
    network: Network,
    splits: Splits,
    schedule: Schedule,
    *,
    on_evaluation: Callable[[list[Record]], None] | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainingOutcome:
    """Train for `schedule.total_steps` updates, evaluating at step 0, every `eval_every` steps and
    at the end. Shuffling draws from a generator seeded by the schedule alone, so the same config
    and seed give the same metrics."""
    n_train = len(splits.X_train)
    batches_per_epoch = n_train // schedule.batch_size
    rng = np.random.default_rng([schedule.seed, 1])  # a stream apart from the init's
    order = rng.permutation(n_train)

    def record(step: int, eta: float) -> None:
        if on_evaluation is None:
            return
        rows: list[Record] = []
        for split, X, y in (
            ("train", splits.X_train, splits.y_train),
            ("val", splits.X_val, splits.y_val),
        ):
            cost, loss, accuracy = evaluate(network, X, y, schedule.lambda_)
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
        on_evaluation(rows)

    def rate(step: int) -> float:
        return cyclical_learning_rate(step, schedule.eta_min, schedule.eta_max, schedule.n_s)

    with np.errstate(over="ignore", invalid="ignore"):  # divergence is reported, not warned
        record(0, rate(0))
        for step in range(schedule.total_steps):
            batch = step % batches_per_epoch
            if batch == 0 and step > 0:
                order = rng.permutation(n_train)
            idx = order[batch * schedule.batch_size : (batch + 1) * schedule.batch_size]
            eta = rate(step)
            cost = network.train_step(
                splits.X_train[idx], splits.y_train[idx], schedule.lambda_, eta
            )
            if not np.isfinite(cost):
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
                record(done, rate(done))
        return TrainingOutcome("finished", schedule.total_steps)
