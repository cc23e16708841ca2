"""`knn lr-range` as a function: a config in, a range-test folder out.

From the config's init, batches, update rule and lambda, the rate rises from `low` to `high`
(`lr_range.RangeSchedule`) while every step's training loss (the data term, without the weight
penalty) and its smoothed value are recorded, and the validation set is measured every
`eval_every` steps; a seed stops once its smoothed loss passes `diverge_factor` times its
lowest. Several seeds train side by side as one population (`knn_cli/engine`), each exactly as
it would alone. With `grid`, a short run at each of a dozen constant rates checks the
suggestions against where constant rates train well (`range_grid.py`).

The folder: `config.yaml`, `lr_range.json` (the test's settings), `lr_range.csv` (a row per seed
and step), `lr_range.png`, `summary.json` (the suggestions of each seed, their spread, the
grid), `grid/` (the constant-rate runs, ordinary run folders). A stop (Ctrl-C, SIGTERM) saves
`checkpoint.npz`, as does every `training.checkpoint_minutes`, from which `resume` continues to
the numbers the uninterrupted test would have reached.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable, Sequence
from contextlib import closing, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from knn_cli.augment import Augmentation
from knn_cli.config import RunConfig, dump_config, with_overrides
from knn_cli.data.cifar10 import Dataset
from knn_cli.engine import Engine
from knn_cli.errors import RunFolderError
from knn_cli.evaluation import evaluate_members
from knn_cli.experiment import (
    OPTIMIZER_PREFIX,
    build_network,
    build_update_rule,
    saved_state,
)
from knn_cli.interrupts import StopRequests
from knn_cli.kinds.range_test import LR_RANGE as RANGE_COMMAND
from knn_cli.kinds.range_test import RANGE_FILE, SETTINGS_FILE, read_range_rows
from knn_cli.lr_range import (
    EXPONENTIAL,
    LINEAR,
    MIN_POINTS,
    RangeSchedule,
    RangeTestError,
    SmoothedLoss,
    Suggestions,
    combined,
    suggest,
)
from knn_cli.network import Network
from knn_cli.optim import UpdateRule
from knn_cli.range_grid import train_grid
from knn_cli.runs import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    SUMMARY_FILE,
    CsvLog,
    atomic_write_json,
    atomic_write_text,
    machine,
    provenance,
    read_checkpoint,
    read_summary,
    write_checkpoint,
)
from knn_cli.trainer import NOISE_STREAM, BatchStream, Checkpointing

ENDED = ("finished", "no suggestion")  # a test with either status has nothing to continue
FIELDS = ("seed", "step", "eta", "loss", "cost", "smoothed_loss", "val_loss", "val_accuracy")
# Smith ran his linear test over several epochs (8 in his CIFAR-10 example); fastai's
# exponential one takes 100 steps by default: ours takes 1,000 (2.2 epochs of 45,000 images at
# batch 100), enough for 100 validation points and a smoothed loss that settles in each decade.
LINEAR_EPOCHS, EXPONENTIAL_STEPS = 8, 1000
POINTS = 100  # validation points over the whole test, by default


@dataclass(frozen=True)
class RangeSettings:
    """What `knn lr-range` is asked for (its options, by the same names)."""

    low: float = 1e-5
    high: float = 10.0
    schedule: str = EXPONENTIAL
    steps: int | None = None  # None: LINEAR_EPOCHS epochs (linear) or EXPONENTIAL_STEPS
    seeds: int = 1
    smoothing: float = 0.98
    diverge_factor: float = 4.0
    eval_every: int | None = None  # None: POINTS points over the test
    grid: bool = False

    def schedule_for(self, n_train: int, batch_size: int) -> RangeSchedule:
        steps = self.steps
        if steps is None:
            per_epoch = n_train // batch_size
            steps = LINEAR_EPOCHS * per_epoch if self.schedule == LINEAR else EXPONENTIAL_STEPS
        return RangeSchedule(self.low, self.high, steps, self.schedule)

    def every(self, steps: int) -> int:
        return self.eval_every or max(1, steps // POINTS)

    def planned(self, n_train: int, batch_size: int) -> RangeSchedule:
        """The schedule for this data, or a one-line error where its validation points are too
        few to suggest anything."""
        schedule = self.schedule_for(n_train, batch_size)
        every = self.every(schedule.steps)
        points = schedule.steps // every
        if points < MIN_POINTS:
            raise RangeTestError(
                f"{schedule.steps} steps with a validation point every {every} give {points} "
                f"points: too few to suggest anything (at least {MIN_POINTS}; a smaller "
                "--eval-every)"
            )
        return schedule

    def check(self) -> None:
        """The settings' own checks, before any data is loaded or folder made."""
        RangeSchedule(self.low, self.high, self.steps or EXPONENTIAL_STEPS, self.schedule)
        SmoothedLoss(self.smoothing)
        if not self.diverge_factor > 1:
            raise RangeTestError(f"--diverge-factor must be above 1, got {self.diverge_factor}")
        if self.seeds < 1:
            raise RangeTestError(f"--seeds must be at least 1, got {self.seeds}")


@dataclass
class SeedTest:
    """One seed's range test as it runs: its network, rule, smoothed loss and where it stopped."""

    seed: int
    network: Network
    rule: UpdateRule
    smoothed: SmoothedLoss
    diverged_step: int | None = None
    steps_done: int = 0


def run_range_test(
    config: RunConfig,
    settings: RangeSettings,
    run_dir: Path,
    dataset: Dataset,
    *,
    resume: bool = False,
    progress: bool = False,
    stop_between_steps: bool = False,
) -> dict[str, Any]:
    """Run (or continue) the range test in `run_dir`; its summary. With `stop_between_steps`,
    Ctrl-C and SIGTERM stop it at the next step boundary, where the seeds and the rows so far
    are saved before KeyboardInterrupt goes on up; they are saved every
    `training.checkpoint_minutes` too, and once the test is done (a stop in its grid then
    continues with the grid)."""
    started = time.time()
    n_train = len(dataset.X_train)
    schedule = settings.schedule_for(n_train, config.training.batch_size)
    every = settings.every(schedule.steps)
    tests = [
        _seed_test(config, config.training.seed + i, settings, dataset)
        for i in range(settings.seeds)
    ]
    start_step, earlier_seconds = 0, 0.0
    if resume:
        start_step, earlier_seconds = _restore(run_dir, tests, settings)
    else:
        atomic_write_text(run_dir / CONFIG_FILE, dump_config(config))
    try:
        stop_context = StopRequests() if stop_between_steps else nullcontext(lambda: False)
        minutes = config.training.checkpoint_minutes
        log = CsvLog(run_dir / RANGE_FILE, FIELDS)  # flushed as each step's rows are appended
        with stop_context as stopping, closing(log):

            def save(step: int) -> None:
                _save_checkpoint(run_dir, tests, step, earlier_seconds + time.time() - started)

            saving = Checkpointing(None if minutes is None else 60.0 * minutes, stopping)
            _train(
                config,
                schedule,
                every,
                settings,
                dataset,
                tests,
                log,
                start_step,
                saving,
                save,
                progress,
            )
            # The test done: a stop in the grid that follows continues with the grid.
            save(schedule.steps)
        grid = []
        if settings.grid:
            grid = train_grid(config, schedule, run_dir, dataset, progress)
    except KeyboardInterrupt:
        # Saved between two steps (or by the grid's runs): say so, for knn runs and the user.
        interrupted = {
            "command": RANGE_COMMAND,
            "name": config.name,
            "status": "interrupted",
            "message": "interrupted (Ctrl-C or a stop signal); continue with --resume",
            "schedule": _schedule_facts(schedule, settings),
            "seeds": [],
            "steps": max(t.steps_done for t in tests),
            "wall_seconds": round(earlier_seconds + time.time() - started, 3),
        }
        atomic_write_json(run_dir / SUMMARY_FILE, interrupted)
        raise
    summary = _summary(config, settings, schedule, run_dir, tests, grid)
    summary["wall_seconds"] = round(earlier_seconds + time.time() - started, 3)
    atomic_write_json(run_dir / SUMMARY_FILE, summary)
    (run_dir / CHECKPOINT_FILE).unlink(missing_ok=True)
    from knn_cli.range_plots import plot_range_test

    plot_range_test(run_dir)
    return summary


def _seed_test(config: RunConfig, seed: int, settings: RangeSettings, dataset: Dataset) -> SeedTest:
    seeded = with_overrides(config, {"training.seed": seed})
    return SeedTest(
        seed,
        build_network(seeded, dataset.n_features),
        build_update_rule(seeded),
        SmoothedLoss(settings.smoothing),
    )


def _train(
    config: RunConfig,
    schedule: RangeSchedule,
    every: int,
    settings: RangeSettings,
    dataset: Dataset,
    tests: Sequence[SeedTest],
    log: CsvLog,
    start_step: int,
    checkpointing: Checkpointing,
    save: Callable[[int], None],
    progress: bool,
) -> None:
    """The range test's loop: every seed still running takes a step at the schedule's rate,
    its loss is smoothed and checked for divergence, and every `every` steps the validation
    set is measured. Between two steps, as `checkpointing` says, the seeds are saved (`save`);
    after a stop asked for, KeyboardInterrupt is raised there."""
    training = config.training
    augmentation = Augmentation(**asdict(config.augment))
    X_train, y_train = np.asarray(dataset.X_train), np.asarray(dataset.y_train)
    running = [t for t in tests if t.diverged_step is None]
    if not running:
        return
    streams = {
        t.seed: BatchStream(
            X_train,
            training.batch_size,
            t.seed,
            augmentation if augmentation.active else None,
            start_step,
        )
        for t in running
    }
    bar = tqdm(
        total=schedule.steps,
        initial=start_step,
        desc=f"{config.name} lr-range",
        unit="step",
        disable=not progress,
        dynamic_ncols=True,
    )
    with (
        Engine([t.network for t in running], groups=list(range(len(running)))) as engine,
        np.errstate(over="ignore", invalid="ignore"),  # divergence is what the test looks for
        bar,
    ):
        last_save = time.monotonic()
        for step in range(start_step, schedule.steps):
            eta = schedule.rate(step)
            batches = [streams[t.seed].next() for t in running]
            costs = engine.step(
                batches,
                [y_train[b.rows] for b in batches],
                training.lambda_,
                eta,
                [t.rule for t in running],
                noise=[(t.seed, NOISE_STREAM, step) for t in running],
            )
            losses = np.atleast_1d(engine.last_losses)
            rows = []
            for test, cost, loss in zip(running, np.atleast_1d(costs), losses, strict=True):
                smoothed = test.smoothed.add(float(loss))
                test.steps_done = step + 1
                if test.smoothed.diverged(smoothed, settings.diverge_factor):
                    test.diverged_step = step
                rows.append(_row(test.seed, step, eta, float(loss), float(cost), smoothed))
            if (step + 1) % every == 0:
                engine.write_back()
                _measure(running, rows, dataset, training.lambda_)
            log.append(rows)
            bar.update(1)
            stopped = [k for k, t in enumerate(running) if t.diverged_step is not None]
            if stopped:
                running = [t for t in running if t.diverged_step is None]
                if not running:
                    break
                engine.remove(stopped)
            stop = checkpointing.stop_requested()
            every_seconds = checkpointing.every_seconds
            if stop or (
                every_seconds is not None and time.monotonic() - last_save >= every_seconds
            ):
                engine.write_back()
                save(step + 1)
                last_save = time.monotonic()
                if stop:
                    raise KeyboardInterrupt


def _measure(
    tests: Sequence[SeedTest], rows: list[dict[str, Any]], dataset: Dataset, lambda_: float
) -> None:
    """The validation set's loss and accuracy of each running seed, into its row."""
    found = evaluate_members(
        [t.network for t in tests], dataset.X_val, dataset.y_val, [lambda_] * len(tests)
    )
    for row, (_cost, loss, accuracy) in zip(rows, found, strict=True):
        row["val_loss"], row["val_accuracy"] = loss, accuracy


def _row(
    seed: int, step: int, eta: float, loss: float, cost: float, smoothed: float
) -> dict[str, Any]:
    return {
        "seed": seed,
        "step": step,
        "eta": eta,
        "loss": loss,
        "cost": cost,
        "smoothed_loss": smoothed,
        "val_loss": "",
        "val_accuracy": "",
    }


# -- stop and continue ---------------------------------------------------------------------------


def _save_checkpoint(run_dir: Path, tests: Sequence[SeedTest], step: int, seconds: float) -> None:
    """Every running seed's network and rule, and the step they stopped after (the test's
    length once it is done). The rows up to it are in lr_range.csv, from which the smoothed
    losses are replayed on `resume`."""
    running = [t for t in tests if t.diverged_step is None]
    arrays = {
        f"seed{t.seed}.{key}": value
        for t in running
        for key, value in saved_state(t.network, t.rule).items()
    }
    write_checkpoint(run_dir, arrays, {"step": step, "seconds": seconds})


def _restore(
    run_dir: Path, tests: Sequence[SeedTest], settings: RangeSettings
) -> tuple[int, float]:
    """The seeds as the checkpoint left them, their smoothed losses replayed from the rows up to
    it (the later rows dropped: the continued test writes them again); the step to start at and
    the seconds spent before."""
    state, info = read_checkpoint(run_dir)
    step, seconds = int(info["step"]), float(info["seconds"])
    rows = [r for r in read_range_rows(run_dir) if r["step"] < step]
    for test in tests:
        for row in (r for r in rows if r["seed"] == test.seed):
            smoothed = test.smoothed.add(row["loss"])
            test.steps_done = row["step"] + 1
            if test.smoothed.diverged(smoothed, settings.diverge_factor):
                test.diverged_step = row["step"]
        prefix = f"seed{test.seed}."
        if test.diverged_step is None:
            own = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
            try:
                test.network.load_state(own)
                test.rule.load_state_dict(
                    {
                        k.removeprefix(OPTIMIZER_PREFIX): v
                        for k, v in own.items()
                        if k.startswith(OPTIMIZER_PREFIX)
                    },
                    test.network.params,
                )
            except (KeyError, ValueError) as error:
                raise RunFolderError(
                    f"{run_dir / CHECKPOINT_FILE} does not fit this test: {error}"
                ) from None
    _rewrite_rows(run_dir / RANGE_FILE, rows)
    return step, seconds


def _rewrite_rows(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    kept = [
        {**r, "val_loss": _blank(r["val_loss"]), "val_accuracy": _blank(r["val_accuracy"])}
        for r in rows
    ]
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(kept)
    tmp.replace(path)


def _blank(value: float | None) -> Any:
    return "" if value is None else value


def resumable_range_test(run_dir: Path) -> RangeSettings:
    """The settings of a range test that can be continued; a one-line error otherwise."""
    settings_file = run_dir / SETTINGS_FILE
    if not (run_dir / CONFIG_FILE).is_file() or not settings_file.is_file():
        raise RunFolderError(f"{run_dir} is not a range-test folder (no {SETTINGS_FILE})")
    status = read_summary(run_dir).get("status") if (run_dir / SUMMARY_FILE).is_file() else None
    if status in ENDED:
        raise RunFolderError(f"{run_dir} has finished: there is nothing to continue")
    if not (run_dir / CHECKPOINT_FILE).is_file():
        raise RunFolderError(
            f"{run_dir} has no {CHECKPOINT_FILE}: it stopped before saving one (start it again)"
        )
    try:
        return RangeSettings(**json.loads(settings_file.read_text()))
    except (OSError, ValueError, TypeError) as error:
        raise RunFolderError(f"{settings_file} cannot be read: {error}") from None


def write_settings(run_dir: Path, settings: RangeSettings) -> None:
    """The test's own settings beside its config, so `--resume` continues it as it was."""
    atomic_write_json(run_dir / SETTINGS_FILE, asdict(settings))


# -- the summary ---------------------------------------------------------------------------------


def _summary(
    config: RunConfig,
    settings: RangeSettings,
    schedule: RangeSchedule,
    run_dir: Path,
    tests: Sequence[SeedTest],
    grid: list[dict[str, Any]],
) -> dict[str, Any]:
    """summary.json: each seed's suggestions (or why it has none), their spread, the grid."""
    rows = read_range_rows(run_dir)
    per_seed, found = [], []
    for test in tests:
        mine = [r for r in rows if r["seed"] == test.seed]
        entry: dict[str, Any] = {
            "seed": test.seed,
            "steps": test.steps_done,
            "diverged_step": test.diverged_step,
            "diverged_eta": None
            if test.diverged_step is None
            else schedule.rate(test.diverged_step),
        }
        try:
            memory = round(1 / (1 - settings.smoothing))
            suggestions = suggestions_of(mine, test.diverged_step, memory)
        except RangeTestError as error:
            entry["error"] = str(error)
        else:
            entry["suggestions"] = suggestions.as_dict()
            found.append(suggestions)
        per_seed.append(entry)
    errors = [e["error"] for e in per_seed if "error" in e]
    status = "finished" if found else "no suggestion"
    return {
        "command": RANGE_COMMAND,
        "name": config.name,
        "status": status,
        "message": errors[0] if errors and not found else "",
        "schedule": _schedule_facts(schedule, settings),
        "config_bounds": {"eta_min": config.training.eta_min, "eta_max": config.training.eta_max},
        "seeds": per_seed,
        "suggested": combined(found) if found else {},
        "grid": grid,
        "machine": machine(),
        "versions": provenance(),
    }


def _schedule_facts(schedule: RangeSchedule, settings: RangeSettings) -> dict[str, Any]:
    return {
        "shape": schedule.shape,
        "low": schedule.low,
        "high": schedule.high,
        "steps": schedule.steps,
        "eval_every": settings.every(schedule.steps),
        "smoothing": settings.smoothing,
        "diverge_factor": settings.diverge_factor,
    }


def suggestions_of(
    rows: Sequence[dict[str, Any]], diverged_step: int | None, memory: int = 1
) -> Suggestions:
    """One seed's suggestions from its rows of lr_range.csv (up to the step it stopped at: the
    step that diverged is not a rate it trained at)."""
    kept = [r for r in rows if diverged_step is None or r["step"] < diverged_step]
    points = [r for r in kept if r["val_accuracy"] is not None and math.isfinite(r["val_accuracy"])]
    if not kept:
        raise RangeTestError("the loss diverged at the first step: --low is too high")
    return suggest(
        [r["eta"] for r in kept],
        [r["smoothed_loss"] for r in kept],
        [r["eta"] for r in points],
        [r["val_accuracy"] for r in points],
        None if diverged_step is None else len(kept),
        memory=memory,
    )


def as_planned_run(config: RunConfig, steps: int, every: int) -> RunConfig:
    """A range test of `steps` steps as the time and memory estimates see it: a run of one
    cycle, measuring the validation set alone every `every` steps."""
    return with_overrides(
        config,
        {
            "training.n_s": max(1, steps // 2),
            "training.cycles": 1,
            "training.eval_every": every,
            "evaluation.train_curve_rows": 0,
        },
    )


def suggested_config(config: RunConfig, summary: dict[str, Any]) -> RunConfig:
    """The config with the range test's suggested bounds (over seeds, their geometric mean)."""
    suggested = summary.get("suggested") or {}
    eta_min = suggested.get("eta_min", {}).get("value")
    eta_max = suggested.get("eta_max", {}).get("value")
    if eta_min is None or eta_max is None:
        raise RangeTestError("the range test suggested no bounds: nothing to write")
    bounds = {
        "training.eta_min": float(f"{eta_min:.3g}"),
        "training.eta_max": float(f"{eta_max:.3g}"),
    }
    return with_overrides(config, bounds)


__all__ = [
    "EXPONENTIAL",
    "LINEAR",
    "RANGE_COMMAND",
    "RangeSettings",
    "run_range_test",
]
