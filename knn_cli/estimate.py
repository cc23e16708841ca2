"""How long training will take on this machine, said before it starts: a training step and an
evaluation row of each network are timed here, on one thread as a sweep's worker trains, and
multiplied by each run's steps and evaluations; runs on several workers share them in rounds.
`knn study` prints its plan with it, and `--dry-run` of `knn train` and the sweeps.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np

from knn_cli.blas import one_thread_limit
from knn_cli.config import RunConfig
from knn_cli.engine import Engine
from knn_cli.network import Network
from knn_cli.schedule import total_steps

START_SECONDS = 1.5  # a run's own start: building the network, opening the cache, plotting
SPEED_REPEATS = 5
TIMED_STEPS = 20
# What the steps and evaluations timed alone leave out (two workers sharing caches and memory,
# plots, tables): the whole study took 550 s where they predicted 440 s (2-core Xeon,
# 2026-12-01). Re-measure with `knn study` and compare its plan with study.json's seconds.
UNMODELLED_OVERHEAD = 1.25
# How much faster `knn train` steps on two lanes than on the one thread timed here, its
# evaluations running on the second core meanwhile ("1 lane / ours" of benchmarks/bench_train.py:
# 1.21-1.50 on the four study configs, AMD EPYC, 2026-11-25).
TWO_LANES_SPEEDUP = 1.25


@dataclass(frozen=True)
class PlannedRun:
    """One training run as planned: its config and its schedule's length."""

    config: RunConfig
    n_s: int
    cycles: int

    @classmethod
    def of(
        cls, config: RunConfig, n_train: int, cycles: int | None = None, n_s: int | None = None
    ) -> PlannedRun:
        """The run `config` describes on `n_train` training images, perhaps with the cycles
        or n_s a sweep sets."""
        return cls(
            config, n_s or config.training.resolve_n_s(n_train), cycles or config.training.cycles
        )

    @property
    def steps(self) -> int:
        return total_steps(self.n_s, self.cycles)

    @property
    def evaluations(self) -> int:
        """Evaluation points: step 0, every eval_every steps, and the end."""
        every = self.config.training.resolve_eval_every(self.n_s)
        return 1 + math.ceil(self.steps / every)

    @property
    def rows_evaluated(self) -> int:
        """Rows the evaluations pass forward in all: the validation set at every point, and
        the training set (or its sample, all of it at the last point) where it is measured."""
        data, curve = self.config.data, self.config.evaluation.train_curve_rows
        n_train, n_val = data.n_train, data.validation_size
        if curve == 0:
            return self.evaluations * n_val
        if curve is None:
            return self.evaluations * (n_train + n_val)
        return (self.evaluations - 1) * (min(curve, n_train) + n_val) + n_train + n_val


class Speeds:
    """(seconds a training step takes, seconds an evaluated row takes) per network shape,
    timed once each."""

    def __init__(self, features: int) -> None:
        self.features = features
        self._found: dict[tuple[object, ...], tuple[float, float]] = {}

    def of(self, config: RunConfig) -> tuple[float, float]:
        model = config.model
        key = (model.hidden, model.batch_norm, config.training.batch_size)
        if key not in self._found:
            self._found[key] = measure_speed(self.features, *key)
        return self._found[key]


def measure_speed(
    features: int, hidden: tuple[int, ...], batch_norm: bool, batch_size: int = 100
) -> tuple[float, float]:
    """(seconds a training step of `batch_size` rows takes, seconds per row of an
    evaluation), on one thread, the medians of a few repeats: the machine's speed jumps from
    one second to the next."""
    network = Network(features, hidden, 10, batch_norm=batch_norm, seed=0)
    rng = np.random.default_rng(0)
    rows = max(1000, batch_size)
    X = rng.standard_normal((rows, features)).astype(np.float32)
    y = rng.integers(0, 10, rows)
    batch, labels = X[:batch_size], y[:batch_size]
    limit = one_thread_limit()
    steps, evaluations = [], []
    with limit if limit is not None else nullcontext(), Engine(network) as engine:
        engine.step(batch, labels, lambda_=0.005, eta=0.01)
        for _ in range(SPEED_REPEATS):
            started = time.perf_counter()
            for _ in range(TIMED_STEPS):
                engine.step(batch, labels, lambda_=0.005, eta=0.01)
            steps.append((time.perf_counter() - started) / TIMED_STEPS)
            engine.write_back()
            started = time.perf_counter()
            network.cost(X, y, lambda_=0.005)
            evaluations.append((time.perf_counter() - started) / len(X))
    return float(np.median(steps)), float(np.median(evaluations))


def run_seconds(run: PlannedRun, speeds: Speeds) -> float:
    """One run's seconds on one worker: its steps, its evaluations, and its start."""
    step_seconds, row_seconds = speeds.of(run.config)
    return run.steps * step_seconds + run.rows_evaluated * row_seconds + START_SECONDS


def train_seconds(run: PlannedRun, speeds: Speeds) -> float:
    """One run as `knn train` runs it on two cores: its steps on two lanes, its evaluations on
    the second core meanwhile (only the last one, of the training and validation sets, is
    waited for), and its start."""
    step_seconds, row_seconds = speeds.of(run.config)
    steps = run.steps * step_seconds / TWO_LANES_SPEEDUP
    last = run.config.data.n_train + run.config.data.validation_size
    return steps + last * row_seconds + START_SECONDS


def runs_seconds(runs: Sequence[PlannedRun], workers: int, speeds: Speeds) -> float:
    """Wall seconds of runs shared by `workers` in rounds (3 runs on 2 workers take two runs'
    time), with the overhead the timings leave out."""
    if not runs:
        return 0.0
    total = sum(run_seconds(run, speeds) for run in runs)
    rounds = math.ceil(len(runs) / max(1, workers))
    return total / len(runs) * rounds * UNMODELLED_OVERHEAD
