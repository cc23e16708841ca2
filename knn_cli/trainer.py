"""Mini-batch training with the cyclical learning rate, and evaluation: one network, or a
population of networks of the same shapes trained side by side in one step.

The trainer knows nothing of files, the CLI or progress bars: each member reports its
evaluation points, steps and checkpoints to a `Listener`, so the experiment layer can write them
as they come and tests can attach nothing. It raises nothing for a diverging run; it stops that
member and says so in its outcome.

A `Trainer` is read as a textbook's training loop (CS231n's Solver, nanoGPT's loop): `train`
evaluates at step 0, then steps (`_step`), evaluating every `eval_every` steps (`_evaluate`)
and saving a checkpoint when asked. Each member keeps what makes it its own run -- its network,
update rule, lambda, rates and seed (hence its batches, dropout masks and augmentation) -- and
computes exactly what it would compute alone: the engine never mixes members
(`knn_cli/engine`). Members that share a seed draw the same batches, gathered and multiplied
once.

It uses both cores where it may: evaluations run on a second thread (`engine/evaluations.py`),
and between them the step's first layer is shared with a helper thread (`engine/lanes.py`,
`engine/split.py`), each step being told the next batch so that the helper can go on to it
without a second hand-over. Both need BLAS held to one thread per thread of ours (`blas.py`):
where that cannot be had, evaluation stays in line and the step on one thread; where the
environment holds BLAS to one thread (sweep workers, one per core), the step stays on one. What
each part gains is measured by benchmarks/bench_train.py ("1 lane/ours", and --full).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np

from knn_cli.augment import Augmentation, Draws, draw
from knn_cli.blas import may_use_two_cores, one_thread_limit
from knn_cli.config import TrainingConfig
from knn_cli.diagnostics import Probe
from knn_cli.diagnostics import rows as diagnostic_rows
from knn_cli.engine import Engine
from knn_cli.engine.batches import AugmentedBatch, Batch
from knn_cli.engine.evaluations import Record, run_evaluations
from knn_cli.evaluation import evaluate_members
from knn_cli.network import Network
from knn_cli.optim import SGD, UpdateRule
from knn_cli.schedule import check_batch_size, cyclical_learning_rate, total_steps

# Streams of random numbers drawn from a run's seed, apart from the init's: the batches' order,
# and each step's dropout masks and augmentation, seeded by the step so that a continued run
# draws alike.
BATCH_STREAM, NOISE_STREAM, AUGMENT_STREAM = 1, 2, 3
# Beside them, the rows a training-set curve is measured on where not all of them are (4 is the
# diagnostics' probe, knn_cli/diagnostics.py).
TRAIN_CURVE_STREAM = 5


@dataclass(frozen=True)
class Splits:
    """Training and validation arrays; samples are rows."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray


@dataclass(frozen=True)
class Checkpointing:
    """When a population is saved between two steps so that it can be continued: every
    `every_seconds`, and when `stop_requested()` turns true, after which training raises
    KeyboardInterrupt. Each member saves itself (`Listener.save_checkpoint`), with every
    evaluation requested so far delivered."""

    every_seconds: float | None = None
    stop_requested: Callable[[], bool] = lambda: False


@dataclass(frozen=True)
class TrainingOutcome:
    status: str  # "finished" or "diverged"
    steps: int
    message: str = ""


class Listener:
    """What a member tells as it trains; each method does nothing unless overridden."""

    def on_evaluation(self, records: list[Record]) -> None:
        """The metrics of an evaluation point: one record per split measured."""

    def on_diagnostics(self, rows: list[Record]) -> None:
        """The probe's measurements of the layers at an evaluation point."""

    def on_step(self, step: int, eta: float) -> None:
        """`step` steps are done, the last at rate `eta`."""

    def save_checkpoint(self, step: int) -> None:
        """Save what continuing after `step` steps needs (the network and rule, read now)."""

    def wants_cycle_end(self, cycle: int) -> bool:
        """Whether `on_cycle_end` is to be called at the end of `cycle` (1, 2, ...): only then
        are the network's moving averages written back for it (by default, where the method
        is overridden)."""
        return type(self).on_cycle_end is not Listener.on_cycle_end

    def on_cycle_end(self, step: int, cycle: int) -> None:
        """`step` steps end cycle `cycle`, where the rate is lowest (a snapshot ensemble's
        member); the network is whole, its moving averages current: read it now."""

    def ended(self, outcome: TrainingOutcome) -> None:
        """The member left the population before the end (it diverged); the others go on."""

    @property
    def listening(self) -> bool:
        """Whether anyone reads the evaluations (else they are not computed)."""
        return type(self).on_evaluation is not Listener.on_evaluation


@dataclass
class Callbacks(Listener):
    """A Listener made of functions, for a caller that wants one or two of them."""

    evaluation: Callable[[list[Record]], None] | None = None
    diagnostics: Callable[[list[Record]], None] | None = None
    step: Callable[[int, float], None] | None = None

    def on_evaluation(self, records: list[Record]) -> None:
        if self.evaluation is not None:
            self.evaluation(records)

    def on_diagnostics(self, rows: list[Record]) -> None:
        if self.diagnostics is not None:
            self.diagnostics(rows)

    def on_step(self, step: int, eta: float) -> None:
        if self.step is not None:
            self.step(step, eta)

    @property
    def listening(self) -> bool:
        return self.evaluation is not None


@dataclass
class Member:
    """One run of a population: its network and update rule, its own training settings (the
    schedule's length and batch size it shares with the others; its lambda, rates and seed),
    who listens, and the probe its layers are measured on (None: not measured)."""

    network: Network
    training: TrainingConfig
    rule: UpdateRule = field(default_factory=SGD)
    listener: Listener = field(default_factory=Listener)
    probe: Probe | None = None

    def rate(self, step: int, n_s: int) -> float:
        return cyclical_learning_rate(step, self.training.eta_min, self.training.eta_max, n_s)

    @property
    def measuring(self) -> bool:
        return self.probe is not None and self.probe.active


class BatchStream:
    """The mini-batches of one seed, step after step: a new shuffle every epoch from a generator
    seeded by the seed alone (a stream apart from the init's), each batch augmented, where
    augmentation is on, by choices drawn for its whole epoch at once (seeded by the epoch: a
    continued run draws alike), which costs a fraction of drawing per step."""

    def __init__(
        self,
        X: np.ndarray,
        batch_size: int,
        seed: int,
        augmentation: Augmentation | None,
        start_step: int,
    ) -> None:
        self.X, self.batch_size, self.seed = X, batch_size, seed
        self.augmentation = augmentation
        self.per_epoch = len(X) // batch_size
        self.rows = _batches(len(X), batch_size, seed)
        for _ in range(start_step):
            next(self.rows)
        self.step = start_step
        self._draws: dict[int, Draws] = {}

    def next(self) -> Batch:
        """The batch of the next step."""
        rows, step = next(self.rows), self.step
        self.step += 1
        if self.augmentation is None:
            return Batch(self.X, rows)
        epoch, position = divmod(step, self.per_epoch)
        if epoch not in self._draws:
            self._draws.clear()
            rng = np.random.default_rng([self.seed, AUGMENT_STREAM, epoch])
            self._draws[epoch] = draw(self.augmentation, self.per_epoch * self.batch_size, rng)
        size = self.batch_size
        draws = self._draws[epoch].rows(slice(position * size, (position + 1) * size))
        return AugmentedBatch(self.X, rows, self.augmentation, draws)


class Trainer:
    """Trains `members` side by side for the schedule they share (a population of one is a
    network trained alone), evaluating at step 0, every `eval_every` steps and at the end.

    `augmentation` changes each training batch as it is drawn. `train_curve` sets what the
    training-set curve is measured on: every training row (None), a fixed sample of that many
    rows drawn from each member's seed at every evaluation point but the last, which measures
    them all, or nothing at all (0: a search trial, whose training curve nothing reads). The
    validation set is always measured whole. A member with a probe has its layers measured on it
    at every evaluation point too, on the same copy of the network the evaluation reads:
    observation only, nothing training computes changes. So is the end of each cycle, told to
    the listeners that want it (`Listener.on_cycle_end`, a snapshot ensemble's members).

    `background_evaluation=False` evaluates on this thread instead, for measuring the two apart;
    so does the lack of a way to keep BLAS to one thread (see the module's docstring).
    `two_lanes=False` keeps the step to this thread, which changes the speed only: the step
    computes the same numbers either way.
    """

    def __init__(
        self,
        members: Sequence[Member],
        splits: Splits,
        *,
        augmentation: Augmentation | None = None,
        train_curve: int | None = None,
        background_evaluation: bool = True,
        two_lanes: bool = True,
    ) -> None:
        self.members = list(members)
        self.splits = splits
        self.X_train, self.y_train = np.asarray(splits.X_train), np.asarray(splits.y_train)
        n_train = len(self.X_train)
        shared = {_shared_schedule(m.training, n_train) for m in self.members}
        if len(shared) != 1:
            raise ValueError(
                "a population's members must share batch size, n_s, cycles and eval_every"
            )
        self.batch_size, self.n_s, self.cycles, self.eval_every = shared.pop()
        check_batch_size(self.batch_size, n_train, "training rows")  # callers without a config
        self.total_steps = total_steps(self.n_s, self.cycles)
        self.batches_per_epoch = n_train // self.batch_size
        active = augmentation is not None and augmentation.active
        self.augmentation = augmentation if active else None
        self.train_curve = train_curve
        self.background_evaluation = background_evaluation
        self.two_lanes = two_lanes
        # How each member ended; None while it trains.
        self.outcomes: list[TrainingOutcome | None] = [None] * len(self.members)
        self.alive = list(range(len(self.members)))  # the members still training
        self._samples = self._training_samples()
        self._before: dict[int, dict[str, np.ndarray]] = {}

    # -- the loop -----------------------------------------------------------------------------

    def train(
        self, start_step: int = 0, checkpointing: Checkpointing | None = None
    ) -> list[TrainingOutcome]:
        """Train every member from `start_step` (0, or the step its checkpoint was saved after,
        networks and rules restored by the caller: the batches, dropout masks and augmentation
        of the steps that follow are those the uninterrupted run would have drawn, so it ends
        with the same numbers); each member's outcome, in order.

        Every evaluation requested has been handed to the listeners when this returns or
        raises (a KeyboardInterrupt included).
        """
        try:
            return self._train(start_step, checkpointing)
        finally:
            # The evaluations hold this trainer's methods: let that cycle go now, and with it
            # the data and samples the trainer holds, not at the garbage collector's next pass
            # (a sweep's worker that went on to other data held both: 2.5 GB, not 1.0).
            self.engine = self.evaluations = None  # type: ignore[assignment]

    def _train(self, start_step: int, checkpointing: Checkpointing | None) -> list[TrainingOutcome]:
        blas_limit = one_thread_limit()
        background = self.background_evaluation and blas_limit is not None
        two_lanes = self.two_lanes and may_use_two_cores(blas_limit)
        self.alive = list(range(len(self.members)))
        self._seeds = self._group_seeds()
        streams = {
            seed: BatchStream(self.X_train, self.batch_size, seed, self.augmentation, start_step)
            for seed in dict.fromkeys(m.training.seed for m in self.members)
        }
        listening = any(m.listener.listening or m.measuring for m in self.members)
        with (
            blas_limit or nullcontext(),
            Engine(
                [m.network for m in self.members],
                groups=self._groups(),
                two_lanes=two_lanes,
            ) as self.engine,
            np.errstate(over="ignore", invalid="ignore"),  # divergence is reported, not warned
            run_evaluations(
                self._deliver if listening else None, self._evaluation_point, background
            ) as self.evaluations,
        ):
            if start_step == 0:
                self._evaluate(0)
            current = {seed: stream.next() for seed, stream in streams.items()}
            last_save = time.monotonic()
            for step in range(start_step, self.total_steps):
                # The step is told the next batches too: its lanes start on them.
                following = None
                if step + 1 < self.total_steps:
                    following = {seed: stream.next() for seed, stream in streams.items()}
                self._step(step, current, following)
                if not self.alive:
                    break
                done = step + 1
                if done % (2 * self.n_s) == 0:
                    # Before a checkpoint at this step: a run continued from it has been told.
                    self._end_cycle(done)
                if self._evaluates(done):
                    self._evaluate(done)
                else:
                    self.evaluations.deliver_ready()
                if checkpointing is not None and done < self.total_steps:
                    stop = checkpointing.stop_requested()
                    every = checkpointing.every_seconds
                    if stop or (every is not None and time.monotonic() - last_save >= every):
                        self._save_checkpoints(done)
                        last_save = time.monotonic()
                        if stop:
                            raise KeyboardInterrupt
                if following is not None:
                    current = following
        for i in self.alive:
            self.outcomes[i] = TrainingOutcome("finished", self.total_steps)
        return [outcome for outcome in self.outcomes if outcome is not None]

    def _step(
        self, step: int, current: dict[int, Batch], following: dict[int, Batch] | None
    ) -> None:
        """One update of every member still training; a member whose cost is no longer finite
        leaves (diverged)."""
        members = [self.members[i] for i in self.alive]
        seeds = self._seeds
        etas = [m.rate(step, self.n_s) for m in members]
        self.engine.helping = not self.evaluations.in_flight()
        # The weights before the step just before an evaluation point, for its update ratio.
        self._before = {
            i: m.probe.weights(m.network)
            for i, m in zip(self.alive, members, strict=True)
            if m.probe is not None and m.measuring and self._evaluates(step + 1)
        }
        costs = self.engine.step(
            [current[seed] for seed in seeds],
            [self.y_train[current[seed].rows] for seed in seeds],
            [m.training.lambda_ for m in members],
            etas,
            [m.rule for m in members],
            following=None if following is None else [following[seed] for seed in seeds],
            noise=[(seed, NOISE_STREAM, step) for seed in seeds],
        )
        diverged = [k for k, cost in enumerate(costs) if not math.isfinite(cost)]
        if diverged:
            self._leave(diverged, step, etas, costs)
        for k, member in enumerate(members):
            if k not in diverged:
                member.listener.on_step(step + 1, etas[k])

    def _leave(self, positions: list[int], step: int, etas: list[float], costs: np.ndarray) -> None:
        """The members at these positions of the population diverged at `step`: their
        evaluations so far delivered, they leave it, frozen as they are, and are told."""
        self.evaluations.deliver_all()
        leaving = [self.alive[k] for k in positions]
        for k, i in zip(positions, leaving, strict=True):
            self.outcomes[i] = TrainingOutcome(
                "diverged",
                step,
                f"cost became {costs[k]} at step {step} (eta {etas[k]:.3g}); "
                "lower eta_max or check the init",
            )
        self.alive = [i for i in self.alive if i not in leaving]
        self._seeds = self._group_seeds()
        if self.alive:
            self.engine.remove(positions)
        else:
            self.engine.write_back()
        for i in leaving:
            self.members[i].listener.ended(self.outcomes[i])  # type: ignore[arg-type]

    def _evaluates(self, done: int) -> bool:
        return done % self.eval_every == 0 or done == self.total_steps

    def _evaluate(self, done: int) -> None:
        """Ask for an evaluation point after `done` steps (on the second thread, where it may
        run; in line otherwise)."""
        self.engine.write_back()  # the networks whole, for the snapshots the evaluation takes
        members = [self.members[i] for i in self.alive]
        before = [self._before.get(i) if done else None for i in self.alive]
        self.evaluations.request([m.network for m in members], done, (members, before))

    def _end_cycle(self, done: int) -> None:
        """Tell the members that want it that a cycle ended, the networks written back for them
        first; nothing else, so that a listener that wants nothing changes nothing."""
        cycle = done // (2 * self.n_s)
        told = [i for i in self.alive if self.members[i].listener.wants_cycle_end(cycle)]
        if not told:
            return
        self.engine.write_back()
        for i in told:
            self.members[i].listener.on_cycle_end(done, cycle)

    def _save_checkpoints(self, done: int) -> None:
        self.evaluations.deliver_all()
        self.engine.write_back()
        for i in self.alive:
            self.members[i].listener.save_checkpoint(done)

    # -- evaluation ---------------------------------------------------------------------------

    def _evaluation_point(
        self, networks: Sequence[Network], step: int, kept: tuple[list[Member], list]
    ) -> list[tuple[Member, list[Record], list[Record]]]:
        """Each member's metrics of both splits, and its probe's measurements."""
        members, before = kept
        if any(m.listener.listening for m in members):
            metrics = self._records(networks, members, step)
        else:
            metrics = [[] for _ in members]
        found = []
        for network, member, weights, records in zip(
            networks, members, before, metrics, strict=True
        ):
            measured: list[Record] = []
            if member.measuring:
                assert member.probe is not None
                with np.errstate(all="ignore"):  # per thread: a diverging net measures inf
                    measured = diagnostic_rows(step, member.probe.measure(network, weights))
            found.append((member, records, measured))
        return found

    def _deliver(self, point: list[tuple[Member, list[Record], list[Record]]]) -> None:
        for member, records, measured in point:
            if member.listener.listening:
                member.listener.on_evaluation(records)
            if measured:
                member.listener.on_diagnostics(measured)

    def _records(
        self, networks: Sequence[Network], members: Sequence[Member], step: int
    ) -> list[list[Record]]:
        """Each member's records: the training set (or its sample), then the validation set."""
        splits = self.splits
        lambdas = [m.training.lambda_ for m in members]
        by_split: dict[str, list[tuple[float, float, float]]] = {}
        with np.errstate(over="ignore", invalid="ignore"):  # per thread: set it here too
            if self.train_curve != 0:
                if self._samples is None or step == self.total_steps:
                    by_split["train"] = evaluate_members(
                        networks, splits.X_train, splits.y_train, lambdas
                    )
                else:
                    by_split["train"] = self._on_samples(networks, members, lambdas)
            by_split["val"] = evaluate_members(networks, splits.X_val, splits.y_val, lambdas)
        records = []
        for k, member in enumerate(members):
            eta = member.rate(step, self.n_s)
            records.append(
                [
                    {
                        "step": step,
                        "epoch": step / self.batches_per_epoch,
                        "eta": eta,
                        "split": split,
                        "cost": found[k][0],
                        "loss": found[k][1],
                        "accuracy": found[k][2],
                    }
                    for split, found in by_split.items()
                ]
            )
        return records

    def _on_samples(
        self, networks: Sequence[Network], members: Sequence[Member], lambdas: Sequence[float]
    ) -> list[tuple[float, float, float]]:
        """Each member evaluated on its seed's sample of training rows (members of one seed
        together)."""
        assert self._samples is not None
        found: list[tuple[float, float, float] | None] = [None] * len(members)
        for seed, (X, y) in self._samples.items():
            ks = [k for k, m in enumerate(members) if m.training.seed == seed]
            if ks:
                group = evaluate_members([networks[k] for k in ks], X, y, [lambdas[k] for k in ks])
                for k, value in zip(ks, group, strict=True):
                    found[k] = value
        return found  # type: ignore[return-value]

    def _training_samples(self) -> dict[int, tuple[np.ndarray, np.ndarray]] | None:
        """Each seed's fixed sample of training rows for the curve (None: every row), the same
        at every point and in a run continued from a checkpoint."""
        if not self.train_curve:
            return None
        n_train = len(self.X_train)
        samples = {}
        for seed in dict.fromkeys(m.training.seed for m in self.members):
            rng = np.random.default_rng([seed, TRAIN_CURVE_STREAM])
            rows = np.sort(rng.choice(n_train, size=min(self.train_curve, n_train), replace=False))
            samples[seed] = (np.asarray(self.splits.X_train[rows]), self.y_train[rows])
        return samples

    # -- who shares a batch --------------------------------------------------------------------

    def _groups(self) -> list[int]:
        """Each member's batch group: consecutive members of one seed share their batches."""
        seeds = [m.training.seed for m in self.members]
        groups = [0]
        for before, seed in itertools.pairwise(seeds):
            groups.append(groups[-1] + (seed != before))
        return groups

    def _group_seeds(self) -> list[int]:
        """The seed of each of the engine's batch groups, in order (the groups of the members
        still training, as the engine keeps them when some leave)."""
        groups = self._groups()
        alive = dict.fromkeys(groups[i] for i in self.alive)
        seed_of = {groups[i]: self.members[i].training.seed for i in self.alive}
        return [seed_of[group] for group in alive]


def _shared_schedule(training: TrainingConfig, n_train: int) -> tuple[int, int, int, int]:
    """What members of one population must share: batch size, n_s, cycles, eval_every."""
    n_s = training.resolve_n_s(n_train)
    return training.batch_size, n_s, training.cycles, training.resolve_eval_every(n_s)


def train(
    network: Network,
    splits: Splits,
    training: TrainingConfig,
    *,
    rule: UpdateRule | None = None,
    listener: Listener | None = None,
    probe: Probe | None = None,
    start_step: int = 0,
    checkpointing: Checkpointing | None = None,
    **options: object,
) -> TrainingOutcome:
    """One network trained alone (a population of one): `training` gives its schedule, lambda,
    rates and seed; `rule` the update rule (plain SGD when None), which keeps its state, so a
    caller can save it with the network; `options` those of `Trainer`."""
    member = Member(network, training, rule or SGD(), listener or Listener(), probe)
    trainer = Trainer([member], splits, **options)  # type: ignore[arg-type]
    return trainer.train(start_step, checkpointing)[0]


def _batches(n_train: int, batch_size: int, seed: int) -> Iterator[np.ndarray]:
    """Rows of each mini-batch, a new shuffle every epoch, from a generator seeded by the
    seed alone (a stream apart from the init's); a last partial batch is dropped."""
    rng = np.random.default_rng([seed, BATCH_STREAM])
    while True:
        order = rng.permutation(n_train)
        for start in range(0, n_train - batch_size + 1, batch_size):
            yield order[start : start + batch_size]
