"""How long training will take on this machine, said before it starts: a training step (alone and
in a population) and an evaluation row of each network are timed here, on one thread as a
sweep's worker trains, and multiplied by each population's steps and evaluations; populations on
several workers share them, each worker taking the next as it frees.
`knn study` prints its plan with it, and `--dry-run` of `knn train` and the sweeps.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import numpy as np

from knn_cli.blas import one_thread_limit
from knn_cli.config import ModelConfig, RunConfig, config_to_dict
from knn_cli.engine import Engine
from knn_cli.network import Network
from knn_cli.schedule import total_steps
from knn_cli.stack import standard_layers_of

START_SECONDS = 1.0  # a population's start: a worker taking it, opening the cache
FINISH_SECONDS = 0.5  # a run's end: its test accuracy, model, summary and plots
SPEED_REPEATS = 5
TIMED_STEPS = 20
# What the steps and evaluations timed alone leave out (two workers sharing caches and memory,
# tables): with populations, `knn study` took 6.0 min where they predicted 5.5, and `knn
# lambda-search --coarse --fine` 77-86 s where they predicted 78-90 s (2-core AMD EPYC,
# 2026-12-07). Re-measure with `knn study` and compare its plan with study.json's seconds.
UNMODELLED_OVERHEAD = 1.1
# How much faster `knn train` steps on two lanes than on the one thread timed here, its
# evaluations running on the second core meanwhile ("1 lane / ours" of benchmarks/bench_train.py:
# 1.21-1.50 on the four study configs, AMD EPYC, 2026-11-25).
TWO_LANES_SPEEDUP = 1.25


@dataclass(frozen=True)
class PlannedRun:
    """One training run as planned: its config, its schedule's length, and whether it looks at
    the test set (a search trial does not: it trains apart from the runs that do)."""

    config: RunConfig
    n_s: int
    cycles: int
    looks_at_test: bool = True

    @classmethod
    def of(
        cls,
        config: RunConfig,
        n_train: int,
        cycles: int | None = None,
        n_s: int | None = None,
        *,
        looks_at_test: bool = True,
    ) -> PlannedRun:
        """The run `config` describes on `n_train` training images, perhaps with the cycles
        or n_s a sweep sets."""
        n_s = n_s or config.training.resolve_n_s(n_train)
        return cls(config, n_s, cycles or config.training.cycles, looks_at_test)

    @property
    def settings(self) -> dict[str, object]:
        """The config as plain data, with its schedule's length (what populations group by)."""
        settings = config_to_dict(self.config)
        settings["training"] = {**settings["training"], "n_s": self.n_s, "cycles": self.cycles}
        return settings

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
    """(seconds a member's training step takes in a population of P, seconds an evaluated row
    takes) per network shape, timed once each, alone and in a population of TIMED_MEMBERS that
    share their batch: between and beyond, a step is the part that does not shrink with P (its
    products, per member) and the part that does (NumPy's cost per call, paid once for all)."""

    def __init__(self, features: int) -> None:
        self.features = features
        self._found: dict[tuple[object, ...], tuple[float, float, float]] = {}

    def of(self, config: RunConfig, members: int = 1) -> tuple[float, float]:
        model, batch = config.model, config.training.batch_size
        # Timed once per stack of layers: the init and the moving averages' momentum do not
        # change a step's cost.
        widths = (self.features, *model.hidden, 10)
        key = (tuple(standard_layers_of(widths, asdict(model))), batch)
        if key not in self._found:
            self._found[key] = measure_speed(self.features, model, batch)
        alone, together, row = self._found[key]
        shared = max(0.0, (alone - together) * TIMED_MEMBERS / (TIMED_MEMBERS - 1))
        return alone - shared + shared / members, row


TIMED_MEMBERS = 8


def measure_speed(
    features: int, model: ModelConfig, batch_size: int = 100
) -> tuple[float, float, float]:
    """(seconds a training step of `batch_size` rows takes alone, a member's share of a step of
    TIMED_MEMBERS networks sharing the batch, seconds per row of an evaluation), on one thread,
    the medians of a few repeats: the machine's speed jumps from one second to the next."""
    networks = [
        Network(features, n_classes=10, **asdict(model), seed=seed) for seed in range(TIMED_MEMBERS)
    ]
    rng = np.random.default_rng(0)
    rows = max(1000, batch_size)
    X = rng.standard_normal((rows, features)).astype(np.float32)
    y = rng.integers(0, 10, rows)
    batch, labels = X[:batch_size], y[:batch_size]
    limit = one_thread_limit()
    alone, together, evaluations = [], [], []
    with limit if limit is not None else nullcontext():
        lone = Engine(networks[0])
        population = Engine(networks, groups=[0] * TIMED_MEMBERS)
        lone.step(batch, labels, lambda_=0.005, eta=0.01)
        population.step(batch, labels, lambda_=0.005, eta=0.01)
        for _ in range(SPEED_REPEATS):
            alone.append(_seconds_a_step(lambda: lone.step(batch, labels, 0.005, 0.01)))
            step = _seconds_a_step(lambda: population.step(batch, labels, 0.005, 0.01), 4)
            together.append(step / TIMED_MEMBERS)
            lone.write_back()
            started = time.perf_counter()
            networks[0].cost(X, y, lambda_=0.005)
            evaluations.append((time.perf_counter() - started) / len(X))
    return float(np.median(alone)), float(np.median(together)), float(np.median(evaluations))


def _seconds_a_step(step: Callable[[], object], count: int = TIMED_STEPS) -> float:
    started = time.perf_counter()
    for _ in range(count):
        step()
    return (time.perf_counter() - started) / count


def population_seconds(runs: Sequence[PlannedRun], speeds: Speeds) -> float:
    """A population's seconds on one worker (one run alone is a population of one): its steps,
    a step for all members at once; each member's evaluations; its start; each member's
    finish (final measurements, summary, plots)."""
    step_seconds, row_seconds = speeds.of(runs[0].config, len(runs))
    steps = runs[0].steps * len(runs) * step_seconds
    evaluations = sum(run.rows_evaluated for run in runs) * row_seconds
    return START_SECONDS + steps + evaluations + FINISH_SECONDS * len(runs)


def train_seconds(run: PlannedRun, speeds: Speeds) -> float:
    """One run as `knn train` runs it on two cores: its steps on two lanes, its evaluations on
    the second core meanwhile (only the last one, of the training and validation sets, is
    waited for), its start and finish."""
    step_seconds, row_seconds = speeds.of(run.config)
    steps = run.steps * step_seconds / TWO_LANES_SPEEDUP
    last = run.config.data.n_train + run.config.data.validation_size
    return steps + last * row_seconds + START_SECONDS + FINISH_SECONDS


def runs_seconds(
    populations: Sequence[Sequence[PlannedRun]], workers: int, speeds: Speeds
) -> float:
    """Wall seconds of populations shared by `workers`, each taking the next one as it frees
    (the longest first), with the overhead the timings leave out."""
    if not populations:
        return 0.0
    busy = [0.0] * max(1, workers)
    for seconds in sorted((population_seconds(p, speeds) for p in populations), reverse=True):
        busy[busy.index(min(busy))] += seconds
    return max(busy) * UNMODELLED_OVERHEAD


def work_seconds(populations: Sequence[Sequence[PlannedRun]], speeds: Speeds) -> float:
    """The populations' seconds on one worker, added up."""
    return sum(population_seconds(p, speeds) for p in populations)
