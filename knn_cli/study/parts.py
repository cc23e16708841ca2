"""The study's parts, listed once (`PARTS`): each with its name (its folder in the study folder),
the kind of folder it makes, its title in the report, and the function that runs it.

Every part is something `knn` already does -- `knn gradcheck`, `knn sweep`, `knn lambda-search`,
`knn init-sensitivity` -- run through the same functions, so each part's folder can be looked
at, re-plotted and re-evaluated on its own; a part started before resumes (its sweep skips its
finished trials).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from knn_cli.config import RunConfig, config_from_dict, config_to_dict, with_overrides
from knn_cli.data import load_cifar10
from knn_cli.gradcheck_run import GRADCHECK_COMMAND, GradcheckSettings, run_gradcheck
from knn_cli.lr_range import EXPONENTIAL
from knn_cli.range_test import ENDED as RANGE_ENDED
from knn_cli.range_test import RangeSettings, run_range_test, write_settings
from knn_cli.runs import CHECKPOINT_FILE, summary_or_empty
from knn_cli.stack import default_hidden
from knn_cli.study.settings import (
    CONFIG_NAMES,
    GRADCHECK_DEPTHS,
    STUDY_LOG_RANGE,
    STUDY_OVERRIDES,
    StudySettings,
    study_config,
)
from knn_cli.sweeps.config_runs import run_config_sweep
from knn_cli.sweeps.folder import DONE_STATUSES, TrialRecord, resume_or_start
from knn_cli.sweeps.init_grid import run_init_sensitivity
from knn_cli.sweeps.lambda_search import run_lambda_search
from knn_cli.sweeps.plan import (
    CONFIG_SWEEP,
    INIT_SENSITIVITY,
    LAMBDA_SEARCH,
    ConfigSweepSpec,
    GridSpec,
    LambdaSearchSpec,
)
from knn_cli.sweeps.running import Running, run_sweep_in


@dataclass
class PartRun:
    """One part as it ran: its status, and what the next parts need from it."""

    status: str
    message: str = ""
    notes: dict[str, Any] = field(default_factory=dict)


# What runs a part: its folder, the study's settings, how its runs are run, and what the parts
# before it noted in study.json (by part name).
PartRunner = Callable[[Path, StudySettings, Running, Mapping[str, Any]], PartRun]


def run_gradcheck_part(
    folder: Path,
    settings: StudySettings,
    running: Running,
    earlier: Any,
) -> PartRun:
    """The gradient check at each depth, without BN and with it before and after the ReLU, a
    job each on the executor."""
    data_dir = study_config(settings, "3layer_bn").data.dir
    jobs = []
    for depth in GRADCHECK_DEPTHS:
        run_dir = folder / f"k{depth}"
        if summary_or_empty(run_dir).get("status") == "passed":
            continue
        run_dir.mkdir(parents=True, exist_ok=True)
        check = GradcheckSettings(
            layers=depth, bn_position="both", seed=settings.seed, data_dir=data_dir
        )
        jobs.append((check, run_dir))
    failed: list[str] = []
    for (check, _), outcome in running.executor.run(jobs, check_depth):
        found = outcome.value if outcome.ok else [f"did not run: {outcome.error}"]
        failed += [f"k={check.layers} {failure}" for failure in found]
    if failed:
        return PartRun("failed", f"gradient check failed for: {', '.join(failed)}")
    return PartRun("finished")


def check_depth(job: tuple[GradcheckSettings, Path]) -> list[str]:
    """One depth's gradient check into its folder (a job on any worker); what failed."""
    settings, run_dir = job
    return run_gradcheck(settings, run_dir).failures


def _sweep_status(records: Sequence[TrialRecord]) -> PartRun:
    undone = [r for r in records if r.status not in DONE_STATUSES]
    if not undone:
        return PartRun("finished")
    names = ", ".join(f"{r.trial.label} ({r.status})" for r in undone[:3])
    return PartRun("failed", f"{len(undone)} of {len(records)} runs did not finish: {names}")


def _run_configs(folder: Path, spec: ConfigSweepSpec, running: Running) -> PartRun:
    spec = resume_or_start(folder, CONFIG_SWEEP, spec)
    return _sweep_status(run_sweep_in(folder, run_config_sweep, spec, running))


def run_configs_part(
    folder: Path,
    settings: StudySettings,
    running: Running,
    earlier: Any,
) -> PartRun:
    """The four configs, each with the study's seeds; the 9-layer ones measure the landscape
    along the gradient too, for the report's section on what batch norm does."""
    runs = tuple(
        {
            "config": config_to_dict(study_config(settings, name, *watched(name))),
            "seeds": settings.seeds,
        }
        for name in CONFIG_NAMES
    )
    spec = ConfigSweepSpec(name=CONFIGS, runs=runs)
    return _run_configs(folder, spec, running)


LANDSCAPE_CONFIGS = ("9layer", "9layer_bn")


def watched(name: str) -> tuple[str, ...]:
    """The overrides that make a config's runs measure the landscape (observation only)."""
    return ("diagnostics.landscape=true",) if name in LANDSCAPE_CONFIGS else ()


def search_spec(settings: StudySettings) -> LambdaSearchSpec:
    sizes = settings.sizes
    return LambdaSearchSpec.plan(
        config_to_dict(study_config(settings, "3layer_bn")),
        coarse=True,
        fine=True,
        final=True,
        log_range=STUDY_LOG_RANGE,
        trials=sizes.search_trials,
        cycles=sizes.search_cycles,
        n_s=sizes.search_n_s,
        final_cycles=sizes.final_cycles,
        final_seeds=settings.seeds,
        final_n_s=sizes.final_n_s,
        seed=settings.seed,
        # Three uniform draws can bunch together; the study's own ten are left uniform.
        stratified=settings.quick,
    )


def run_search_part(
    folder: Path,
    settings: StudySettings,
    running: Running,
    earlier: Any,
) -> PartRun:
    """The coarse and fine search on the 3-layer BN network, and the best lambda retrained."""
    spec = resume_or_start(folder, LAMBDA_SEARCH, search_spec(settings))
    result = run_sweep_in(folder, run_lambda_search, spec, running)
    run = _sweep_status([*result.records, *result.finals])
    if result.best is not None and result.finals:
        seeds = [r.trial.config["training"]["seed"] for r in result.finals]
        run.notes = {
            "chosen_lambda": result.finals[0].trial.lambda_,
            "final_seeds": seeds,
            "final_validation_size": spec.final_validation_size,
            "final_cycles": spec.final_cycles,
        }
        if run.status == "failed" and any(r.finished for r in result.finals):
            run.status = "finished"  # a lambda was chosen and retrained: the part did its job
    return run


def run_search_9layer_part(
    folder: Path,
    settings: StudySettings,
    running: Running,
    earlier: Mapping[str, Any],
) -> PartRun:
    """The chosen lambda on the 9-layer BN network, as the 3-layer one was retrained: the same
    cycles, hold-out and seeds (the study's section 4 reports both networks)."""
    search = earlier.get(SEARCH) or {}
    if "chosen_lambda" not in search:
        return PartRun("failed", "the lambda search chose no lambda")
    config = study_config(
        settings,
        "9layer_bn",
        f"training.lambda={search['chosen_lambda']!r}",
        f"training.cycles={search['final_cycles']}",
        f"data.validation_size={search['final_validation_size']}",
        seed=search["final_seeds"][0],
    )
    runs = ({"config": config_to_dict(config), "seeds": len(search["final_seeds"])},)
    spec = ConfigSweepSpec(name=SEARCH_9, runs=runs)
    return _run_configs(folder, spec, running)


def run_grid_part(
    folder: Path,
    settings: StudySettings,
    running: Running,
    earlier: Any,
) -> PartRun:
    """Depth x batch norm x sigma from a normal(0, sigma) init."""
    sizes = settings.sizes
    spec = GridSpec.plan(
        [*STUDY_OVERRIDES, *settings.overrides],
        cycles=sizes.grid_cycles,
        n_s=sizes.grid_n_s,
        seed=settings.seed,
        seeds=settings.seeds,
    )
    spec = resume_or_start(folder, INIT_SENSITIVITY, spec)
    return _sweep_status(run_sweep_in(folder, run_init_sensitivity, spec, running))


# -- the usable rates: range tests, and retrains at the bounds they suggest -----------------------

SIGMA_CASE = "9layer-sigma0.1"  # the init grid's cell that stays at chance (section 5)
RANGE_NETWORKS = (*CONFIG_NAMES, SIGMA_CASE)
RANGE_SEEDS = 2
# From below where any of the study's networks learns to past where each diverges (measured:
# the loss of all four runs away above 50): exponential, as `knn lr-range` by default.
RANGE_LOW, RANGE_HIGH = 1e-5, 100.0
RANGE_STEPS, QUICK_RANGE_STEPS = 1000, 200
# Validation points of each test: the measurements of 5,000 images cost more than its steps, and
# 50 over seven decades still place a bound to within a seventh of a decade.
RANGE_POINTS = 50
RETRAINED = ("3layer_bn", SIGMA_CASE)


def range_config(settings: StudySettings, name: str) -> RunConfig:
    """A network of the part: one of the four configs, or the init grid's 9-layer network
    without batch norm from normal(0, 0.1), built as the grid builds it."""
    if name != SIGMA_CASE:
        return study_config(settings, name)
    sizes = settings.sizes
    cell = {
        "name": SIGMA_CASE,
        "model": {
            "hidden": list(default_hidden(9)),
            "batch_norm": False,
            "init": "normal",
            "sigma": 0.1,
        },
        "training": {"cycles": sizes.grid_cycles, "n_s": sizes.grid_n_s, "seed": settings.seed},
    }
    return config_from_dict(cell, [*STUDY_OVERRIDES, *settings.overrides])


def range_settings(settings: StudySettings) -> RangeSettings:
    steps = QUICK_RANGE_STEPS if settings.quick else RANGE_STEPS
    return RangeSettings(
        low=RANGE_LOW,
        high=RANGE_HIGH,
        schedule=EXPONENTIAL,
        steps=steps,
        seeds=RANGE_SEEDS,
        eval_every=steps // RANGE_POINTS,
    )


def range_test_job(job: tuple[dict[str, Any], RangeSettings, Path]) -> dict[str, Any]:
    """One network's range test into its folder (a job on any worker); its summary. A test
    stopped before continues from its checkpoint; one that never saved starts again."""
    raw, test_settings, folder = job
    config = config_from_dict(raw)
    resume = (folder / CHECKPOINT_FILE).is_file()
    if folder.exists() and not resume:
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_settings(folder, test_settings)
    dataset = load_cifar10(config.data.dir, config.data.validation_size)
    return run_range_test(config, test_settings, folder, dataset, resume=resume)


def suggested_bounds(summary: Mapping[str, Any]) -> tuple[float, float] | None:
    """A test's suggested (eta_min, eta_max), over its seeds, to three figures; None if none."""
    suggested = summary.get("suggested") or {}
    low = (suggested.get("eta_min") or {}).get("value")
    high = (suggested.get("eta_max") or {}).get("value")
    if low is None or high is None:
        return None
    return float(f"{low:.3g}"), float(f"{high:.3g}")


def allowed_bounds(summary: Mapping[str, Any]) -> tuple[float, float] | None:
    """Where a test suggests nothing (its loss never fell) but its loss diverged: a peak rate a
    decade below the lowest rate at which any seed's loss diverged, and the study's ratio of
    eta_max to eta_min (1e4) below it; None where it did not diverge either."""
    stops = [seed["diverged_eta"] for seed in summary.get("seeds", []) if seed.get("diverged_eta")]
    if not stops:
        return None
    peak = float(f"{min(stops) / ALLOWED_BELOW_DIVERGENCE:.3g}")
    return float(f"{peak / STUDY_RATIO:.3g}"), peak


ALLOWED_BELOW_DIVERGENCE = 10.0
STUDY_RATIO = 1e4  # eta_max / eta_min in every config of the study: 0.1 / 1e-5


def run_rates_part(
    folder: Path,
    settings: StudySettings,
    running: Running,
    earlier: Any,
) -> PartRun:
    """The range test of each network (2 seeds each, a job each), then `RETRAINED` trained
    with the study's seeds at the bounds its test suggests."""
    test_settings = range_settings(settings)
    jobs = []
    for name in RANGE_NETWORKS:
        where = folder / f"range-{name}"
        if summary_or_empty(where).get("status") in RANGE_ENDED:
            continue
        jobs.append((config_to_dict(range_config(settings, name)), test_settings, where))
    failed = [
        f"{job[2].name}: {outcome.error}"
        for job, outcome in running.executor.run(jobs, range_test_job)
        if not outcome.ok
    ]
    if failed:
        return PartRun("failed", f"range tests did not run: {'; '.join(failed)}")
    runs, bounds = [], {}
    for name in RETRAINED:
        summary = summary_or_empty(folder / f"range-{name}")
        found, how = suggested_bounds(summary), SUGGESTED
        if found is None:
            found, how = allowed_bounds(summary), ALLOWED
        if found is None:
            continue  # nothing suggested and nothing diverged: the report says so
        bounds[name] = found
        retrained = with_overrides(
            range_config(settings, name),
            {"name": f"{name}-{how}", "training.eta_min": found[0], "training.eta_max": found[1]},
        )
        entry = config_to_dict(retrained)
        runs.append({"config": entry, "seeds": settings.seeds})
    notes = {"suggested_bounds": {name: list(b) for name, b in bounds.items()}}
    if not runs:
        return PartRun("finished", "no range test suggested bounds to retrain with", notes)
    spec = ConfigSweepSpec(name=RATES, runs=tuple(runs))
    run = _run_configs(folder / RETRAIN_FOLDER, spec, running)
    run.notes = notes
    return run


RETRAIN_FOLDER = "retrain"
# How a retrain's bounds were found, in its name: suggested by its range test, or (nothing
# suggested) the largest its test allows (`allowed_bounds`).
SUGGESTED, ALLOWED = "suggested", "allowed"


@dataclass(frozen=True)
class Part:
    """One part of the study: `name` is also its folder."""

    name: str
    kind: str  # the kind of folder it makes: a sweep's kind, or the gradient check's command
    title: str  # its section's title in the report
    run: PartRunner
    after: str | None = None  # the part whose result it needs (it runs once that one has)
    # Where its jobs stand in a shared queue (lowest first): the lambda search's chain of
    # stages is the longest, so its jobs go first and the independent parts fill the gaps.
    urgency: int = 2


GRADCHECK, CONFIGS, SEARCH, SEARCH_9, GRID, RATES = (
    "gradcheck",
    "configs",
    "lambda-search",
    "lambda-9layer",
    "init-sensitivity",
    "usable-rates",
)
RATES_KIND = "usable-rates"  # range tests and a config sweep, in one folder
# In the order the study runs them and the report tells them.
PARTS = (
    Part(GRADCHECK, GRADCHECK_COMMAND, "Gradient check", run_gradcheck_part, urgency=1),
    Part(
        CONFIGS,
        CONFIG_SWEEP,
        "The four configs: 3 and 9 layers, with and without batch norm",
        run_configs_part,
    ),
    Part(SEARCH, LAMBDA_SEARCH, "Lambda search", run_search_part, urgency=0),
    Part(
        SEARCH_9,
        CONFIG_SWEEP,
        "Lambda search: the 9-layer retrain",
        run_search_9layer_part,
        after=SEARCH,
        urgency=0,
    ),
    Part(GRID, INIT_SENSITIVITY, "Sensitivity to initialization", run_grid_part, urgency=3),
    Part(RATES, RATES_KIND, "The usable rates: what batch norm widens", run_rates_part, urgency=3),
)
PART_NAMES = tuple(part.name for part in PARTS)
TITLES = {part.name: part.title for part in PARTS}
