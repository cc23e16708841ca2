"""`--dry-run`: what a command would run, said before anything runs -- the resolved config as
config.yaml would hold it (every default and override filled in), each run's steps and epochs,
the memory estimate and the time on this machine.

The text is YAML, the plan written as comments, so that `knn train CONFIG --set ... --dry-run >
resolved.yaml` gives a config file that trains the same run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from knn_cli import memory
from knn_cli.config import RunConfig, commented_yaml, config_from_dict
from knn_cli.data.cifar10 import N_FEATURES
from knn_cli.estimate import PlannedRun, Speeds, population_seconds, runs_seconds, train_seconds
from knn_cli.formatting import byte_size, duration
from knn_cli.memory import check_memory
from knn_cli.range_grid import GRID_RATES, constant_rate_config, grid_rates
from knn_cli.range_test import RangeSettings, as_planned_run
from knn_cli.runs import machine
from knn_cli.sweeps.lambda_search import FINE_TOP, fine_range, source_records
from knn_cli.sweeps.plan import LambdaSearchSpec, Trial
from knn_cli.sweeps.populations import AUTO, Populations, plan_populations

NOTHING_RAN = "nothing was trained and no folder was made"


@dataclass(frozen=True)
class PlannedTrial:
    """One run of a sweep as planned: how the table names it, its folder, and its run."""

    label: str
    run: PlannedRun
    folder: str = ""


def comment(text: str) -> str:
    return "\n".join(f"# {line}" if line else "#" for line in text.splitlines())


def schedule_line(run: PlannedRun, *, short: bool = False) -> str:
    """'9,000 steps (2 cycles of 2 x 2,250) in batches of 100: 20.0 epochs of 45,000 training
    images, 21 evaluations'; short: '9,000 steps, 20.0 epochs of 45,000 images, 21
    evaluations'."""
    training = run.config.training
    n_train = run.config.data.n_train
    epochs = f"{run.steps * training.batch_size / n_train:.1f} epochs of {n_train:,}"
    if short:
        return f"{run.steps:,} steps, {epochs} images, {run.evaluations} evaluations"
    return (
        f"{run.steps:,} steps ({run.cycles} cycle{'s' if run.cycles != 1 else ''} of 2 x "
        f"{run.n_s:,}) in batches of {training.batch_size}: {epochs} training images, "
        f"{run.evaluations} evaluations"
    )


def memory_line(config: RunConfig, members: int = 1) -> str:
    """The run's memory need (a population's, of `members` runs), and what is available."""
    estimate = check_memory(config, members=members)  # an impossible size: refused, one line
    parts = ", ".join(
        f"{name} {byte_size(value * 2**20)}"
        for name, value in estimate.to_dict().items()
        if name != "total"
    )
    available = memory.available_memory()
    free = f"; {byte_size(available)} available" if available is not None else ""
    what = "a run" if members == 1 else f"for {members} runs side by side"
    return f"memory: about {byte_size(estimate.total)} {what} ({parts}){free}"


def train_plan(config: RunConfig) -> str:
    """`knn train --dry-run`: the resolved config, then the run as planned."""
    run = PlannedRun.of(config, config.data.n_train)
    seconds = train_seconds(run, Speeds(N_FEATURES))
    plan = [
        f"the run as planned ({NOTHING_RAN}):",
        f"schedule: {schedule_line(run)}",
        memory_line(config),
        f"time: about {duration(seconds)} on this machine ({machine()}), from a training step "
        "and an evaluation timed here",
    ]
    return commented_yaml(config) + comment("\n".join(plan)) + "\n"


def range_plan(config: RunConfig, settings: RangeSettings) -> str:
    """`knn lr-range --dry-run`: the resolved config, then the test as planned -- the rate's
    rise, its validation points, the seeds side by side, and the constant-rate grid if asked."""
    n_train, batch = config.data.n_train, config.training.batch_size
    schedule = settings.planned(n_train, batch)
    every = settings.every(schedule.steps)
    seeds = [
        PlannedRun.of(as_planned_run(config, schedule.steps, every), n_train, looks_at_test=False)
    ] * settings.seeds
    populations = [seeds]
    epochs = schedule.steps * batch / n_train
    plan = [
        f"the range test as planned ({NOTHING_RAN}):",
        f"rate {schedule.low:g} to {schedule.high:g}, {schedule.shape}, {schedule.steps:,} "
        f"steps in batches of {batch}: {epochs:.1f} epochs of {n_train:,} training images",
        f"validation every {every} step{'s' * (every > 1)}: {schedule.steps // every} points"
        + (f"; {settings.seeds} seeds side by side" if settings.seeds > 1 else ""),
    ]
    if settings.grid:
        rates = grid_rates(schedule)
        grid = [
            PlannedRun.of(constant_rate_config(config, r, schedule.steps), n_train) for r in rates
        ]
        populations.append(grid)
        plan.append(f"then {len(rates)} runs at constant rates over the range, side by side")
    plan.append(memory_line(config, members=max(settings.seeds, GRID_RATES * settings.grid)))
    seconds = sum(population_seconds(p, Speeds(N_FEATURES)) for p in populations)
    plan.append(
        f"time: about {duration(seconds)} on this machine ({machine()}), from a training step "
        "and an evaluation timed here"
    )
    return commented_yaml(config) + comment("\n".join(plan)) + "\n"


def sweep_plan(
    resolved: dict[str, object],
    stages: Sequence[Sequence[PlannedTrial]],
    workers: int,
    population: Populations = AUTO,
    notes: Sequence[str] = (),
) -> str:
    """A sweep's `--dry-run`: what it trains from (`resolved`, as YAML), then each planned
    trial, its schedule, the populations each stage's trials train in, the memory of its
    largest run, and the time on `workers` (stage after stage)."""
    trials = [trial for stage in stages for trial in stage]
    configs = {id(trial.run.config): trial.run.config for trial in trials}
    for config in configs.values():
        check_memory(config)
    largest = max(configs.values(), key=lambda c: check_memory(c).total, default=None)
    speeds = Speeds(N_FEATURES)
    grouped = [_populations(stage, population, workers) for stage in stages]
    seconds = sum(
        runs_seconds([[t.run for t in p] for p in stage], workers, speeds) for stage in grouped
    )
    count = sum(len(stage) for stage in grouped)
    lines = [f"the sweep as planned ({NOTHING_RAN}): {len(trials)} runs in {count} populations"]
    lines += [f"  {trial.label}: {schedule_line(trial.run, short=True)}" for trial in trials]
    lines.append(
        f"populations (--population {population}: the runs of one train side by side, a step "
        "for all, each into its own folder):"
    )
    for stage in grouped:
        lines += [f"  {', '.join(t.folder or t.label for t in members)}" for members in stage]
    lines += list(notes)
    if largest is not None:
        lines.append(memory_line(largest))
    lines.append(
        f"time: about {duration(seconds)} on this machine ({machine()}) with {workers} "
        f"worker{'s' if workers != 1 else ''}, from a training step and an evaluation timed here"
    )
    text = yaml.safe_dump(resolved, sort_keys=False, default_flow_style=None, width=100)
    return text + comment("\n".join(lines)) + "\n"


def _populations(
    trials: Sequence[PlannedTrial], population: Populations, workers: int
) -> list[list[PlannedTrial]]:
    settings = {id(trial): trial.run.settings for trial in trials}
    return plan_populations(
        trials,
        lambda trial: settings[id(trial)],
        lambda trial: trial.run.looks_at_test,
        population,
        workers,
    )


def _planned(trial: Trial, label: str | None = None) -> PlannedTrial:
    config = config_from_dict(trial.config)
    run = PlannedRun.of(config, config.data.n_train, looks_at_test=trial.evaluate_test)
    return PlannedTrial(trial.label if label is None else label, run, trial.folder)


def lambda_search_plan(spec: LambdaSearchSpec, workers: int, population: Populations = AUTO) -> str:
    """The search's trials, stage by stage as the search plans them: the coarse lambdas are
    known before it runs (drawn from the seed), the fine ones once the coarse have run (unless
    refining an earlier sweep's), the final retrains' lambda at the end."""
    stages: list[list[PlannedTrial]] = []
    notes = []
    refined = source_records(Path(spec.source)) if spec.source else []
    index = 1 + max((r.trial.index for r in refined), default=-1)
    for stage in spec.stages:
        known = stage == "coarse" or (stage == "fine" and bool(refined))
        log_range = fine_range(refined) if stage == "fine" and refined else None
        trials = spec.stage_trials(
            stage, index, log_range=log_range, lambda_=spec.base["training"]["lambda"]
        )
        if stage == "final":
            named = [
                f"{t.folder} the best lambda, seed {t.config['training']['seed']}" for t in trials
            ]
        else:
            named = [f"{t.folder} {t.label}" if known else t.folder for t in trials]
        stages.append([_planned(t, label) for t, label in zip(trials, named, strict=True)])
        if stage == "fine" and not known:
            notes.append(
                f"the fine trials' lambdas are drawn around the {FINE_TOP} best coarse trials, "
                "once those have run"
            )
        index += len(trials)
    return sweep_plan({"spec": asdict(spec)}, stages, workers, population, notes)


def planned_sweep(
    resolved: dict[str, object],
    trials: Sequence[Trial],
    workers: int,
    population: Populations = AUTO,
) -> str:
    """A sweep whose every trial is known before it runs (the grid, a plan of configs)."""
    named = [_planned(trial, trial.folder) for trial in trials]
    return sweep_plan(resolved, [named], workers, population)
