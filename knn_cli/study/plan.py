"""What each part of a study will train, for the plan `knn study` prints first, with an estimate
of each part's time on this machine (`knn_cli/estimate.py`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from knn_cli.config import RunConfig, with_overrides
from knn_cli.data.cifar10 import TEST_IMAGES
from knn_cli.estimate import (
    UNMODELLED_OVERHEAD,
    PlannedRun,
    Speeds,
    runs_seconds,
    work_seconds,
)
from knn_cli.memory import DataSize, check_memory
from knn_cli.range_test import as_planned_run
from knn_cli.study.parts import (
    CONFIGS,
    GRADCHECK,
    GRID,
    RANGE_NETWORKS,
    RANGE_POINTS,
    RANGE_SEEDS,
    RATES,
    RETRAINED,
    SEARCH,
    SEARCH_9,
    range_config,
    range_settings,
    watched,
)
from knn_cli.study.settings import CONFIG_NAMES, GRADCHECK_DEPTHS, StudySettings, study_config
from knn_cli.sweeps.plan import FINAL_HOLD_OUT
from knn_cli.sweeps.populations import AUTO, Populations, plan_populations

# 4 depths x 3 variants in float64 (9 s measured, 2-core Xeon, 2026-12-01).
GRADCHECK_SECONDS = 10.0


@dataclass(frozen=True)
class PlannedPart:
    """A part's runs in stages that run one after another (the lambda search's coarse, fine and
    final; one stage elsewhere)."""

    name: str
    description: str
    stages: list[list[PlannedRun]]

    @property
    def runs(self) -> list[PlannedRun]:
        return [run for stage in self.stages for run in stage]

    def populations(self, policy: Populations, workers: int) -> list[list[list[PlannedRun]]]:
        """Each stage's runs grouped into populations as its sweep will group them."""
        return [grouped(stage, policy, workers) for stage in self.stages]


def grouped(runs: list[PlannedRun], policy: Populations, workers: int) -> list[list[PlannedRun]]:
    settings = {id(run): run.settings for run in runs}
    return plan_populations(
        runs, lambda run: settings[id(run)], lambda run: run.looks_at_test, policy, workers
    )


def plan_study(settings: StudySettings, n_images: int) -> list[PlannedPart]:
    """What each part will train, given the images of the training and validation splits."""
    sizes = settings.sizes

    def run(config, cycles=None, n_s=None, seed=0, test=True) -> PlannedRun:  # type: ignore[no-untyped-def]
        config = with_overrides(config, {"training.seed": seed})
        n_train = n_images - config.data.validation_size
        return PlannedRun.of(config, n_train, cycles, n_s, looks_at_test=test)

    four = [study_config(settings, name, *watched(name)) for name in CONFIG_NAMES]
    search = study_config(settings, "3layer_bn", "evaluation.train_curve_rows=0")
    hold_out = f"data.validation_size={FINAL_HOLD_OUT}"
    final = study_config(settings, "3layer_bn", hold_out)
    nine = study_config(settings, "9layer_bn", hold_out)
    for config in four:  # an impossible size (--set model.hidden=...) stops here, in one line
        check_memory(config, DataSize(images=n_images + TEST_IMAGES))
    trials, seeds = sizes.search_trials, settings.seeds
    # A range test trains like one cycle of its steps, measuring the validation set alone at
    # its points.
    steps = range_settings(settings).steps or 0
    range_tests = [study_config_of(range_config(settings, name), steps) for name in RANGE_NETWORKS]
    retrained = [range_config(settings, name) for name in RETRAINED]
    stage = [run(search, sizes.search_cycles, sizes.search_n_s, k, False) for k in range(trials)]
    retrain = [run(final, sizes.final_cycles, sizes.final_n_s, k) for k in range(seeds)]
    return [
        PlannedPart(GRADCHECK, f"gradient check, {len(GRADCHECK_DEPTHS)} depths x 3 variants", []),
        PlannedPart(
            CONFIGS,
            f"the four configs, {seeds} seeds each",
            [[run(c, seed=k) for c in four for k in range(seeds)]],
        ),
        PlannedPart(
            SEARCH,
            f"lambda search: {2 * trials} trials (coarse, fine), then {seeds} final retrains",
            [stage, stage, retrain],
        ),
        PlannedPart(
            SEARCH_9,
            f"the chosen lambda on 9 layers with BN, {seeds} seeds",
            [[run(nine, sizes.final_cycles, sizes.final_n_s, k) for k in range(seeds)]],
        ),
        PlannedPart(
            GRID,
            f"init sensitivity: 3 and 9 layers, BN on and off, 3 sigmas, {seeds} seeds each",
            [
                [
                    run(c, sizes.grid_cycles, sizes.grid_n_s, k)
                    for c in four
                    for _ in range(3)
                    for k in range(seeds)
                ]
            ],
        ),
        PlannedPart(
            RATES,
            f"usable rates: range tests of {len(RANGE_NETWORKS)} networks, {RANGE_SEEDS} seeds "
            f"each, then {', '.join(RETRAINED)} at the bounds their tests suggest (or allow), "
            f"{seeds} seeds each",
            [
                [run(c, 1, c.training.n_s, k) for c in range_tests for k in range(RANGE_SEEDS)],
                [run(c, seed=k) for c in retrained for k in range(seeds)],
            ],
        ),
    ]


def study_config_of(config: RunConfig, steps: int) -> RunConfig:
    """A range test of the study's as the estimate sees it: a run of one cycle."""
    return as_planned_run(config, steps, max(1, steps // RANGE_POINTS))


def estimate_seconds(
    parts: Sequence[PlannedPart],
    workers: int,
    n_images: int,
    features: int,
    population: Populations = AUTO,
) -> dict[str, float]:
    """Seconds per part on this machine, were it alone: each population's steps and its
    members' evaluations, stage after stage, shared by the workers."""
    return estimate_plan(parts, workers, features, together=False, population=population)[0]


def estimate_plan(
    parts: Sequence[PlannedPart],
    workers: int,
    features: int,
    *,
    together: bool,
    population: Populations = AUTO,
) -> tuple[dict[str, float], float]:
    """Seconds per part (were it alone), and for the whole study: the parts one after another,
    or `together` on local workers (their work shared by the workers, but no less than the
    lambda search's chain of parts, which wait for one another)."""
    speeds = Speeds(features)
    each = {}
    work = GRADCHECK_SECONDS
    for part in parts:
        stages = part.populations(population, workers)
        each[part.name] = (
            sum(runs_seconds(stage, workers, speeds) for stage in stages)
            if part.stages
            else GRADCHECK_SECONDS
        )
        work += sum(work_seconds(stage, speeds) for stage in stages)
    if not together or workers <= 1:
        return each, sum(each.values())
    shared = work / workers * UNMODELLED_OVERHEAD
    chain = each.get(SEARCH, 0.0) + each.get(SEARCH_9, 0.0)
    return each, max(shared, chain)
