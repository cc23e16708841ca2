"""The study as a plan of parts, each run into its own folder of the study folder, resumably.

Every part is something `knn` already does -- `knn gradcheck`, `knn sweep`, `knn lambda-search`,
`knn init-sensitivity` -- run through the same functions, so each part's folder can be looked
at, re-plotted and re-evaluated on its own. `study.json` records the settings and each part's
status and wall time as it goes; a resumed study skips finished parts and resumes the sweep of
an unfinished one, which skips its finished trials.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from knn_cli.blas import one_thread_limit
from knn_cli.config import RunConfig, config_from_dict, config_to_dict, load_config
from knn_cli.data import load_cifar10
from knn_cli.engine import Engine
from knn_cli.errors import KnnError, RunFolderError
from knn_cli.executors import Executor
from knn_cli.experiment import (
    default_hidden,
    gradcheck_failures,
    gradcheck_problem,
    gradient_checks,
    write_gradcheck_run,
)
from knn_cli.locks import folder_lock
from knn_cli.memory import check_memory
from knn_cli.network import Network
from knn_cli.runs import (
    SUMMARY_FILE,
    atomic_write_json,
    machine,
    new_run_dir,
    provenance,
    read_summary,
)
from knn_cli.study.contents import PARTS, STUDY_FILE, STUDY_KIND, STUDY_VERSION, read_study_file
from knn_cli.sweeps import (
    CONFIG_SWEEP,
    DONE_STATUSES,
    INIT_SENSITIVITY,
    LAMBDA_SEARCH,
    GridSpec,
    LambdaSearchSpec,
    TrialRecord,
    load_sweep,
    run_config_sweep,
    run_init_sensitivity,
    run_lambda_search,
    start_sweep,
)
from knn_cli.sweeps.folder import kind_mismatch
from knn_cli.sweeps.plan import ConfigSweepSpec

CONFIG_NAMES = ("3layer", "3layer_bn", "9layer", "9layer_bn")
CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs"  # the checkout's configs/
GRADCHECK_DEPTHS = (2, 3, 4, 9)
# The study drew lambda = 10^U with U uniform in [-4, -1] (its section 4).
STUDY_LOG_RANGE = (-4.0, -1.0)
QUICK_N_S = 100  # steps per half cycle of every run of a quick study
TEST_IMAGES = 10_000  # CIFAR-10's test split, beside the training and validation images

GRADCHECK, CONFIGS, SEARCH, SEARCH_9, GRID = (
    "gradcheck",
    "configs",
    "lambda-search",
    "lambda-9layer",
    "init-sensitivity",
)
PART_KINDS = {
    GRADCHECK: "gradcheck",
    CONFIGS: CONFIG_SWEEP,
    SEARCH: LAMBDA_SEARCH,
    SEARCH_9: CONFIG_SWEEP,
    GRID: INIT_SENSITIVITY,
}
assert tuple(PART_KINDS) == PARTS  # the order the study runs and the report tells


@dataclass(frozen=True)
class StudySettings:
    """What a study is asked for; kept in study.json so that a resumed study is the same one."""

    quick: bool = False
    seeds: int = 3
    seed: int = 0
    overrides: tuple[str, ...] = ()  # --set, applied to every config of the study
    configs_dir: str = str(CONFIGS_DIR)

    @property
    def sizes(self) -> Sizes:
        return QUICK if self.quick else FULL


@dataclass(frozen=True)
class Sizes:
    """How long each part trains: the study's protocol, or a quick look at it."""

    search_trials: int
    search_cycles: int
    search_n_s: int | None  # None: the config's (5 epochs a half cycle)
    final_cycles: int
    final_n_s: int | None
    run_overrides: tuple[str, ...]  # on the four configs and the 9-layer retrain
    grid_cycles: int
    grid_n_s: int | None


FULL = Sizes(10, 2, None, 3, None, (), 2, None)
QUICK = Sizes(
    3, 1, QUICK_N_S, 1, QUICK_N_S, (f"training.n_s={QUICK_N_S}", "training.cycles=1"), 1, QUICK_N_S
)


@dataclass
class PartRun:
    """One part as it ran: its status, and what the next parts need from it."""

    status: str
    message: str = ""
    notes: dict[str, Any] = field(default_factory=dict)


# --- the study folder ----------------------------------------------------------------------------


def start_study(runs_dir: str | Path, settings: StudySettings, data: str) -> Path:
    """A new study folder with study.json: the settings (all a resume needs), what runs it, and
    every part pending."""
    found = provenance()
    versions = {k: v for k, v in found.items() if k not in ("git_commit", "platform")}
    study_dir = new_run_dir(runs_dir, "quick-study" if settings.quick else "study")
    doc = {
        "kind": STUDY_KIND,
        "version": STUDY_VERSION,
        "quick": settings.quick,
        "seeds": settings.seeds,
        "seed": settings.seed,
        "settings": asdict(settings),
        "started": _now(),
        "finished": None,
        "provenance": {
            "commit": found["git_commit"],
            "versions": versions,
            "machine": f"{machine()}; {found['platform']}",
            "data": data,
        },
        "parts": {
            name: {
                "folder": name,
                "kind": kind,
                "status": "pending",
                "seconds": None,
                "message": "",
            }
            for name, kind in PART_KINDS.items()
        },
    }
    atomic_write_json(study_dir / STUDY_FILE, doc)
    return study_dir


def study_settings(doc: dict[str, Any]) -> StudySettings:
    try:
        raw = dict(doc["settings"])
        raw["overrides"] = tuple(raw["overrides"])
        return StudySettings(**raw)
    except (KeyError, TypeError) as error:
        raise RunFolderError(f"{STUDY_FILE} has no valid settings: {error}") from None


def _now() -> str:
    return dt.datetime.now().isoformat(timespec="seconds")


# --- the parts -----------------------------------------------------------------------------------


def study_config(settings: StudySettings, name: str, *extra: str) -> RunConfig:
    """One of the study's configs as the checkout ships it, with the study's overrides."""
    path = Path(settings.configs_dir) / f"{name}.yaml"
    if not path.is_file():
        raise KnnError(f"the study's config {path} is missing: run knn study from a checkout")
    overrides = [*settings.overrides, *settings.sizes.run_overrides, *extra]
    return load_config(path, [*overrides, f"training.seed={settings.seed}"])


def run_gradcheck_part(folder: Path, settings: StudySettings) -> PartRun:
    """The gradient check at each depth, without BN and with it before and after the ReLU."""
    data_dir = study_config(settings, "3layer_bn").data.dir
    failed: list[str] = []
    for depth in GRADCHECK_DEPTHS:
        run_dir = folder / f"k{depth}"
        if (run_dir / SUMMARY_FILE).is_file() and read_summary(run_dir).get("status") == "passed":
            continue
        run_dir.mkdir(parents=True, exist_ok=True)
        X, y, source = gradcheck_problem(20, 20, settings.seed, data_dir)
        hidden = default_hidden(depth)
        options = {"lambda_": 0.005, "h": 1e-5, "tolerance": 1e-6, "seed": settings.seed}
        checks = gradient_checks(X, y, hidden, batch_norm=None, bn_position="both", **options)
        write_gradcheck_run(
            run_dir,
            checks,
            {"layers": depth, "hidden": list(hidden), "bn_position": "both", "dims": 20,
             "batch": 20, "lambda": 0.005, "h": 1e-5, "tolerance": 1e-6,
             "seed": settings.seed, "data": source},
        )  # fmt: skip
        failed += [f"k={depth} {failure}" for failure in gradcheck_failures(checks)]
    if failed:
        return PartRun("failed", f"gradient check failed for: {', '.join(failed)}")
    return PartRun("finished")


def _sweep_folder(folder: Path, kind: str, spec: Any) -> tuple[Path, Any]:
    """The part's sweep folder and its plan: resumed from disk if it was started before."""
    if folder.exists():
        found, recorded = load_sweep(folder)
        if found != kind:
            raise RunFolderError(kind_mismatch(folder, found, kind))
        return folder, recorded
    return start_sweep(folder.parent, kind, spec, folder.name, exact=True), spec


def _sweep_status(records: Sequence[TrialRecord]) -> PartRun:
    undone = [r for r in records if r.status not in DONE_STATUSES]
    if not undone:
        return PartRun("finished")
    names = ", ".join(f"{r.trial.label} ({r.status})" for r in undone[:3])
    return PartRun("failed", f"{len(undone)} of {len(records)} runs did not finish: {names}")


def run_configs_part(
    folder: Path, settings: StudySettings, executor: Executor, progress: bool
) -> PartRun:
    runs = tuple(
        {"config": config_to_dict(study_config(settings, name)), "seeds": settings.seeds}
        for name in CONFIG_NAMES
    )
    sweep_dir, spec = _sweep_folder(folder, CONFIG_SWEEP, ConfigSweepSpec(name=CONFIGS, runs=runs))
    with folder_lock(sweep_dir):  # a `--resume` of the part's own sweep must wait for the study
        return _sweep_status(run_config_sweep(spec, sweep_dir, executor, progress=progress))


def search_spec(settings: StudySettings) -> LambdaSearchSpec:
    sizes = settings.sizes
    base = config_to_dict(study_config(settings, "3layer_bn"))
    return LambdaSearchSpec(
        base=base,
        coarse=True,
        fine=True,
        final=True,
        log_range=STUDY_LOG_RANGE,
        trials=sizes.search_trials,
        cycles=sizes.search_cycles,
        n_s=sizes.search_n_s,
        final_cycles=sizes.final_cycles,
        final_seeds=settings.seeds,
        final_validation_size=min(1000, base["data"]["validation_size"]),
        final_n_s=sizes.final_n_s,
        seed=settings.seed,
    )


def run_search_part(
    folder: Path, settings: StudySettings, executor: Executor, progress: bool
) -> PartRun:
    sweep_dir, spec = _sweep_folder(folder, LAMBDA_SEARCH, search_spec(settings))
    with folder_lock(sweep_dir):
        result = run_lambda_search(spec, sweep_dir, executor, progress=progress)
    run = _sweep_status([*result.records, *result.finals])
    if result.best is not None and result.finals:
        seeds = [r.trial.config["training"]["seed"] for r in result.finals]
        run.notes = {
            "chosen_lambda": result.best.trial.lambda_,
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
    executor: Executor,
    progress: bool,
    search: dict[str, Any],
) -> PartRun:
    """The chosen lambda on the 9-layer BN network, as the 3-layer one was retrained: the same
    cycles, hold-out and seeds (the study's section 4 reports both networks)."""
    if "chosen_lambda" not in search:
        return PartRun("failed", "the lambda search chose no lambda")
    config = study_config(
        settings,
        "9layer_bn",
        f"training.lambda={search['chosen_lambda']!r}",
        f"training.cycles={search['final_cycles']}",
        f"data.validation_size={search['final_validation_size']}",
    )
    entry = config_to_dict(config)
    entry["training"]["seed"] = search["final_seeds"][0]
    runs = ({"config": entry, "seeds": len(search["final_seeds"])},)
    sweep_dir, spec = _sweep_folder(folder, CONFIG_SWEEP, ConfigSweepSpec(name=SEARCH_9, runs=runs))
    with folder_lock(sweep_dir):  # a `--resume` of the part's own sweep must wait for the study
        return _sweep_status(run_config_sweep(spec, sweep_dir, executor, progress=progress))


def run_grid_part(
    folder: Path, settings: StudySettings, executor: Executor, progress: bool
) -> PartRun:
    base = config_to_dict(config_from_dict({"name": "init"}, settings.overrides))
    sizes = settings.sizes
    spec = GridSpec(base=base, cycles=sizes.grid_cycles, n_s=sizes.grid_n_s, seed=settings.seed)
    sweep_dir, spec = _sweep_folder(folder, INIT_SENSITIVITY, spec)
    with folder_lock(sweep_dir):
        return _sweep_status(run_init_sensitivity(spec, sweep_dir, executor, progress=progress))


# --- the plan and its estimate -------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedPart:
    name: str
    description: str
    runs: list[tuple[RunConfig, int, int]]  # each run's config, update steps and cycles


def plan_study(settings: StudySettings, n_images: int) -> list[PlannedPart]:
    """What each part will train, for the plan printed first and the time estimate."""
    sizes = settings.sizes

    def run(config: RunConfig, cycles: int | None = None, n_s: int | None = None) -> tuple:
        n_train = n_images - config.data.validation_size
        cycles = cycles or config.training.cycles
        return config, 2 * (n_s or config.training.resolve_n_s(n_train)) * cycles, cycles

    four = [study_config(settings, name) for name in CONFIG_NAMES]
    search = study_config(settings, "3layer_bn")
    final = study_config(settings, "3layer_bn", "data.validation_size=1000")
    nine = study_config(settings, "9layer_bn", "data.validation_size=1000")
    for config in four:  # an impossible size (--set model.hidden=...) stops here, in one line
        check_memory(config, images=n_images + TEST_IMAGES)
    trials = 2 * sizes.search_trials
    return [
        PlannedPart(GRADCHECK, f"gradient check, {len(GRADCHECK_DEPTHS)} depths x 3 variants", []),
        PlannedPart(
            CONFIGS,
            f"the four configs, {settings.seeds} seeds each",
            [run(c) for c in four for _ in range(settings.seeds)],
        ),
        PlannedPart(
            SEARCH,
            f"lambda search: {trials} trials (coarse, fine), then {settings.seeds} final retrains",
            [run(search, sizes.search_cycles, sizes.search_n_s)] * trials
            + [run(final, sizes.final_cycles, sizes.final_n_s)] * settings.seeds,
        ),
        PlannedPart(
            SEARCH_9,
            f"the chosen lambda on 9 layers with BN, {settings.seeds} seeds",
            [run(nine, sizes.final_cycles, sizes.final_n_s)] * settings.seeds,
        ),
        PlannedPart(
            GRID,
            "init sensitivity: 3 and 9 layers, BN on and off, 3 sigmas",
            [run(c, sizes.grid_cycles, sizes.grid_n_s) for c in four for _ in range(3)],
        ),
    ]


EVALUATIONS_PER_CYCLE = 10  # the configs' default
START_SECONDS = 1.5  # a run's own start: building the network, opening the cache, plotting
SPEED_REPEATS = 5
GRADCHECK_SECONDS = 10.0
# What the steps and evaluations timed alone leave out (two workers sharing caches and memory,
# plots, tables): the whole study took 550 s where they predicted 440 s (2-core Xeon,
# 2026-12-01). Re-measure with `knn study` and compare its plan with study.json's seconds.
UNMODELLED_OVERHEAD = 1.25  # 4 depths x 3 variants in float64 (9 s measured, 2-core Xeon)


def estimate_seconds(
    parts: Sequence[PlannedPart], workers: int, n_images: int, features: int
) -> dict[str, float]:
    """Seconds per part on this machine: each run's steps and its evaluations (a forward pass
    over the training and validation images at every evaluation point), at speeds measured
    here on one thread as a worker trains, shared by the workers in rounds (3 runs on 2
    workers take two runs' time)."""
    speeds: dict[tuple[Any, ...], tuple[float, float]] = {}
    estimates = {}
    for part in parts:
        total = 0.0
        for config, steps, cycles in part.runs:
            key = (config.model.hidden, config.model.batch_norm)
            if key not in speeds:
                speeds[key] = measure_speed(features, *key)
            step_seconds, row_seconds = speeds[key]
            evaluations = EVALUATIONS_PER_CYCLE * cycles + 1
            total += steps * step_seconds + evaluations * n_images * row_seconds + START_SECONDS
        runs = len(part.runs)
        rounds = math.ceil(runs / max(1, workers))
        estimated = total / runs * rounds * UNMODELLED_OVERHEAD if runs else GRADCHECK_SECONDS
        estimates[part.name] = estimated
    return estimates


def measure_speed(features: int, hidden: tuple[int, ...], batch_norm: bool) -> tuple[float, float]:
    """(seconds a training step of 100 rows takes, seconds per row of an evaluation), on one
    thread."""
    network = Network(features, hidden, 10, batch_norm=batch_norm, seed=0)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((1000, features)).astype(np.float32)
    y = rng.integers(0, 10, 1000)
    limit = one_thread_limit()
    steps, evaluations = [], []
    with limit if limit is not None else nullcontext(), Engine(network) as engine:
        engine.step(X[:100], y[:100], lambda_=0.005, eta=0.01)
        for _ in range(SPEED_REPEATS):  # the median: the machine's speed jumps second to second
            started = time.perf_counter()
            for _ in range(20):
                engine.step(X[:100], y[:100], lambda_=0.005, eta=0.01)
            steps.append((time.perf_counter() - started) / 20)
            started = time.perf_counter()
            network.cost(X, y, lambda_=0.005)
            evaluations.append((time.perf_counter() - started) / len(X))
    step, row = float(np.median(steps)), float(np.median(evaluations))
    return step, row


# --- running it ----------------------------------------------------------------------------------


def run_study(
    study_dir: Path,
    executor: Executor,
    *,
    progress: bool = False,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every part not finished yet, in order, recording each in study.json; return the
    study document. An interrupt marks the running part and goes on up."""
    doc = read_study_file(study_dir)
    settings = study_settings(doc)
    names = list(PART_KINDS)
    for number, name in enumerate(names, start=1):
        part = doc["parts"][name]
        if part["status"] == "finished":
            say(f"[{number}/{len(names)}] {name}: finished before, skipped")
            continue
        say(f"[{number}/{len(names)}] {name}")
        part.update(status="running", message="")
        atomic_write_json(study_dir / STUDY_FILE, doc)
        started = time.time()
        earlier = part.get("seconds") or 0.0
        try:
            run = _run_part(name, study_dir / part["folder"], settings, executor, progress, doc)
        except KeyboardInterrupt:
            part.update(status="interrupted", seconds=round(earlier + time.time() - started, 1))
            atomic_write_json(study_dir / STUDY_FILE, doc)
            raise
        except KnnError as error:
            run = PartRun("failed", str(error))
        part.update(status=run.status, message=run.message, **run.notes)
        part["seconds"] = round(earlier + time.time() - started, 1)
        atomic_write_json(study_dir / STUDY_FILE, doc)
        detail = f": {run.message}" if run.message else ""
        say(f"    {run.status} in {part['seconds']:.0f} s{detail}")
    if all(doc["parts"][name]["status"] == "finished" for name in names):
        doc["finished"] = doc["finished"] or _now()
        atomic_write_json(study_dir / STUDY_FILE, doc)
    return doc


def _run_part(
    name: str,
    folder: Path,
    settings: StudySettings,
    executor: Executor,
    progress: bool,
    doc: dict[str, Any],
) -> PartRun:
    if name == GRADCHECK:
        return run_gradcheck_part(folder, settings)
    if name == CONFIGS:
        return run_configs_part(folder, settings, executor, progress)
    if name == SEARCH:
        return run_search_part(folder, settings, executor, progress)
    if name == SEARCH_9:
        return run_search_9layer_part(folder, settings, executor, progress, doc["parts"][SEARCH])
    return run_grid_part(folder, settings, executor, progress)


def study_data(settings: StudySettings) -> tuple[int, int, str]:
    """(images in the training and validation splits, features, where they come from), from
    the data itself: loads (and caches) it, as every part will."""
    config = study_config(settings, "3layer_bn")
    dataset = load_cifar10(config.data.dir, config.data.validation_size)
    return len(dataset.X_train) + len(dataset.X_val), dataset.X_train.shape[1], dataset.source


def format_minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{math.ceil(seconds)} s"
