"""What each part of a study will train, for the plan `knn study` prints first, with an estimate
of each part's time on this machine (`knn_cli/estimate.py`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from knn_cli.estimate import UNMODELLED_OVERHEAD, PlannedRun, Speeds, run_seconds, runs_seconds
from knn_cli.memory import check_memory
from knn_cli.study.parts import CONFIGS, GRADCHECK, GRID, SEARCH, SEARCH_9, watched
from knn_cli.study.settings import CONFIG_NAMES, GRADCHECK_DEPTHS, StudySettings, study_config
from knn_cli.sweeps.plan import FINAL_HOLD_OUT

TEST_IMAGES = 10_000  # CIFAR-10's test split, beside the training and validation images
# 4 depths x 3 variants in float64 (9 s measured, 2-core Xeon, 2026-12-01).
GRADCHECK_SECONDS = 10.0


@dataclass(frozen=True)
class PlannedPart:
    name: str
    description: str
    runs: list[PlannedRun]


def plan_study(settings: StudySettings, n_images: int) -> list[PlannedPart]:
    """What each part will train, given the images of the training and validation splits."""
    sizes = settings.sizes

    def run(config, cycles=None, n_s=None) -> PlannedRun:  # type: ignore[no-untyped-def]
        return PlannedRun.of(config, n_images - config.data.validation_size, cycles, n_s)

    four = [study_config(settings, name, *watched(name)) for name in CONFIG_NAMES]
    search = study_config(settings, "3layer_bn")
    hold_out = f"data.validation_size={FINAL_HOLD_OUT}"
    final = study_config(settings, "3layer_bn", hold_out)
    nine = study_config(settings, "9layer_bn", hold_out)
    for config in four:  # an impossible size (--set model.hidden=...) stops here, in one line
        check_memory(config, images=n_images + TEST_IMAGES)
    trials = 2 * sizes.search_trials
    seeds = settings.seeds
    return [
        PlannedPart(GRADCHECK, f"gradient check, {len(GRADCHECK_DEPTHS)} depths x 3 variants", []),
        PlannedPart(
            CONFIGS,
            f"the four configs, {seeds} seeds each",
            [run(c) for c in four for _ in range(seeds)],
        ),
        PlannedPart(
            SEARCH,
            f"lambda search: {trials} trials (coarse, fine), then {seeds} final retrains",
            [run(search, sizes.search_cycles, sizes.search_n_s)] * trials
            + [run(final, sizes.final_cycles, sizes.final_n_s)] * seeds,
        ),
        PlannedPart(
            SEARCH_9,
            f"the chosen lambda on 9 layers with BN, {seeds} seeds",
            [run(nine, sizes.final_cycles, sizes.final_n_s)] * seeds,
        ),
        PlannedPart(
            GRID,
            f"init sensitivity: 3 and 9 layers, BN on and off, 3 sigmas, {seeds} seeds each",
            [run(c, sizes.grid_cycles, sizes.grid_n_s) for c in four for _ in range(3 * seeds)],
        ),
    ]


def estimate_seconds(
    parts: Sequence[PlannedPart], workers: int, n_images: int, features: int
) -> dict[str, float]:
    """Seconds per part on this machine, were it alone: each run's steps and its evaluations,
    shared by the workers."""
    return estimate_plan(parts, workers, features, together=False)[0]


def estimate_plan(
    parts: Sequence[PlannedPart], workers: int, features: int, *, together: bool
) -> tuple[dict[str, float], float]:
    """Seconds per part (were it alone), and for the whole study: the parts one after another,
    or `together` on local workers (their work shared by the workers, but no less than the
    lambda search's chain of parts, which wait for one another)."""
    speeds = Speeds(features)
    each = {
        part.name: runs_seconds(part.runs, workers, speeds) if part.runs else GRADCHECK_SECONDS
        for part in parts
    }
    if not together or workers <= 1:
        return each, sum(each.values())
    work = sum(run_seconds(run, speeds) for part in parts for run in part.runs)
    shared = (work + GRADCHECK_SECONDS) / workers * UNMODELLED_OVERHEAD
    chain = each.get(SEARCH, 0.0) + each.get(SEARCH_9, 0.0)
    return each, max(shared, chain)
