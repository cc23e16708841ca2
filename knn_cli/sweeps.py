"""Sweeps: the study's lambda search and init-sensitivity grid as lists of ordinary runs.

A sweep folder holds `sweep.json` (what was asked for, and every trial planned so far) and one
subfolder per trial, each an ordinary `knn train` run folder. Planning is deterministic -- a
trial's lambda and seed follow from the sweep seed, its stage and its index, never from which
worker ran it or when. `--resume` takes the stages already planned from `sweep.json` (a fine
range depends on results, so it is recorded, not recomputed), plans the rest the same way, and
skips every trial whose folder holds a finished (or diverged) summary. A trial cut short or
failed is re-run in a fresh subfolder (`003-coarse.2`), so no run folder is ever overwritten.

Selection looks at validation accuracy only; the test set is evaluated for the `--final` retrain
and the init-sensitivity runs, never for a search trial.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from knn_cli.config import RunConfig, config_from_dict, config_to_dict
from knn_cli.data import Dataset, load_cifar10
from knn_cli.errors import KnnError, RunFolderError
from knn_cli.executors import Executor
from knn_cli.experiment import default_hidden, train_run
from knn_cli.reports import csv_text, markdown_table
from knn_cli.runs import (
    SUMMARY_FILE,
    atomic_write_json,
    atomic_write_text,
    new_run_dir,
    read_metrics,
    read_summary,
)

SWEEP_FILE = "sweep.json"
SWEEP_FORMAT_VERSION = 1
LAMBDA_SEARCH = "lambda-search"
INIT_SENSITIVITY = "init-sensitivity"
DONE_STATUSES = ("finished", "diverged")  # deterministic ends: re-running changes nothing
SELECTION_METRIC = "final_val_accuracy"  # the model a search trial ends with, judged on val
STAGE_CODES = {"coarse": 1, "fine": 2, "final": 3, "grid": 4}
SEARCH_STAGES = ("coarse", "fine")
FINE_TOP = 3
FINE_WIDEN_DECADES = 0.25
CHANCE_MARGIN = 0.2  # test accuracy above which a 10-class run has clearly learned something


# --- trials --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trial:
    """One planned training run: its full config, so a worker needs nothing else."""

    index: int
    stage: str
    label: str
    config: dict[str, Any]
    folder: str
    evaluate_test: bool

    @property
    def lambda_(self) -> float:
        return float(self.config["training"]["lambda"])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Trial:
        return cls(**doc)


@dataclass(frozen=True)
class TrialJob:
    """What travels to a worker: the trial and the folder this attempt is to train in."""

    trial: Trial
    run_dir: str
    background_evaluation: bool = False


@dataclass(frozen=True)
class TrialRecord:
    """A trial as its folder tells it: status, accuracies, where, and why it failed if it did."""

    trial: Trial
    folder: Path | None
    summary: Mapping[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        if self.folder is None:
            return "pending"
        return str(self.summary.get("status", "interrupted"))

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    @property
    def score(self) -> float | None:
        """Validation accuracy used for selection; None unless the trial finished."""
        return self.summary.get(SELECTION_METRIC) if self.finished else None

    def get(self, key: str) -> Any:
        return self.summary.get(key)

    @property
    def message(self) -> str:
        return "" if self.finished else str(self.summary.get("message") or "")


def trial_config(base: Mapping[str, Any], name: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with dotted `settings` applied, validated like any config file, as plain data."""
    doc = {key: dict(value) if isinstance(value, Mapping) else value for key, value in base.items()}
    doc["name"] = name
    for dotted, value in settings.items():
        section, key = dotted.split(".")
        doc[section][key] = value
    return config_to_dict(config_from_dict(doc))


def run_trial(job: TrialJob) -> dict[str, Any]:
    """Train one trial into its folder (the function every executor runs, on any worker).

    The folder is made here, when the trial starts, so that a sweep stopped early leaves no
    empty folders for the trials it never reached."""
    config = config_from_dict(job.trial.config)
    Path(job.run_dir).mkdir()  # never share a folder with another attempt, e.g. a stale task
    return train_run(
        config,
        Path(job.run_dir),
        dataset=_dataset_for(config),
        evaluate_test=job.trial.evaluate_test,
        background_evaluation=job.background_evaluation,
    )


_DATASETS: dict[tuple[Any, ...], Dataset] = {}


def _dataset_for(config: RunConfig) -> Dataset:
    """The data, loaded once per worker process (memory-mapped from the cache, ~0.2 s), never
    downloaded by a worker: the sweep fetched and cached it before starting any."""
    key = (
        config.data.dir,
        config.data.validation_size,
        os.environ.get("KNN_DATA_DIR"),
        os.environ.get("KNN_CACHE_DIR"),
    )
    if key not in _DATASETS:
        _DATASETS.clear()
        _DATASETS[key] = load_cifar10(config.data.dir, config.data.validation_size, download=False)
    return _DATASETS[key]


def prepare_data(trials: Iterable[Trial], *, progress: bool = False) -> None:
    """Fetch and cache the data in this process first, so workers only open the cache rather
    than racing to build it, and a missing data folder is reported before any worker starts."""
    settings = {(t.config["data"]["dir"], t.config["data"]["validation_size"]) for t in trials}
    for data_dir, validation_size in sorted(settings, key=str):
        load_cifar10(data_dir, validation_size, progress=progress)


# --- lambda sampling and coarse-to-fine ----------------------------------------------------------


def sample_log_lambda(seed: int, stage: str, index: int, low: float, high: float) -> float:
    """lambda = 10^u, u ~ Uniform(low, high), from a generator seeded by (seed, stage, index).

    Seeding by index alone means trial 7 gets the same lambda whether the sweep has 8 trials or
    80, whichever worker runs it, and in whatever order trials complete.
    """
    rng = np.random.default_rng([seed, STAGE_CODES[stage], index])
    return float(10.0 ** rng.uniform(low, high))


def fine_range(
    records: Sequence[TrialRecord], top: int = FINE_TOP, widen: float = FINE_WIDEN_DECADES
) -> tuple[float, float]:
    """log10 range spanning the `top` best trials by validation accuracy, widened each side.

    Widening keeps the fine search from collapsing onto one point when the best trials agree,
    and lets it look a little past the best if that sits at the edge of what was tried.
    """
    ranked = ranked_records(records)[:top]
    if not ranked:
        raise KnnError("no search trial finished, so there is nothing to refine")
    logs = [math.log10(r.trial.lambda_) for r in ranked]
    return min(logs) - widen, max(logs) + widen


def ranked_records(records: Iterable[TrialRecord]) -> list[TrialRecord]:
    """Finished trials, best validation accuracy first (ties: smaller index first)."""
    finished = [r for r in records if r.score is not None]
    return sorted(finished, key=lambda r: (-r.score, r.trial.index))


def lambda_trials(
    base: Mapping[str, Any],
    stage: str,
    log_range: tuple[float, float],
    indices: Iterable[int],
    *,
    seed: int,
    cycles: int,
    n_s: int | None,
) -> list[Trial]:
    """Search trials of one stage: a sampled lambda each, on the short search schedule."""
    trials = []
    for index in indices:
        value = sample_log_lambda(seed, stage, index, *log_range)
        trials.append(_lambda_trial(base, stage, index, value, seed=seed, cycles=cycles, n_s=n_s))
    return trials


def final_trials(
    base: Mapping[str, Any],
    indices: Iterable[int],
    lambda_: float,
    *,
    seed: int,
    cycles: int,
    validation_size: int,
) -> list[Trial]:
    """The chosen lambda retrained for longer, once per index (so once per seed), then tested.

    The retrain holds out only `validation_size` images, as the course protocol trains its final
    model on all the training data but 1,000: lambda is chosen by then, so the rest of the
    validation set is worth more as training data. The schedule is the base config's own n_s
    (a factor of epochs unless the config fixes it), not the search's.
    """
    n_s = base["training"]["n_s"]
    extra = {"data.validation_size": validation_size}
    options = {"seed": seed, "cycles": cycles, "n_s": n_s, "evaluate_test": True, "extra": extra}
    return [_lambda_trial(base, "final", index, lambda_, **options) for index in indices]


def final_test_summary(records: Sequence[TrialRecord]) -> tuple[float, float, int] | None:
    """Mean and sample standard deviation of the finished final retrains' test accuracy, and
    how many there were (0 deviation for one): one seed alone can be half a point off or more."""
    accuracies = [
        float(r.get("test_accuracy"))
        for r in records
        if r.trial.stage == "final" and r.finished and r.get("test_accuracy") is not None
    ]
    if not accuracies:
        return None
    spread = float(np.std(accuracies, ddof=1)) if len(accuracies) > 1 else 0.0
    return float(np.mean(accuracies)), spread, len(accuracies)


def _lambda_trial(
    base: Mapping[str, Any],
    stage: str,
    index: int,
    lambda_: float,
    *,
    seed: int,
    cycles: int,
    n_s: int | None,
    evaluate_test: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> Trial:
    folder = f"{index:03d}-{stage}"
    settings = {
        "training.lambda": lambda_,
        "training.cycles": cycles,
        "training.n_s": n_s,
        "training.seed": seed + index,
        **(extra or {}),
    }
    return Trial(
        index=index,
        stage=stage,
        label=f"lambda={lambda_:.3g}",
        config=trial_config(base, f"{base['name']}-{folder}", settings),
        folder=folder,
        evaluate_test=evaluate_test,
    )


# --- the init-sensitivity grid -------------------------------------------------------------------


def grid_trials(
    base: Mapping[str, Any],
    depths: Sequence[int],
    batch_norms: Sequence[bool],
    sigmas: Sequence[float],
    *,
    seed: int,
    cycles: int,
    n_s: int | None,
) -> list[Trial]:
    """depth x batch norm x sigma, each from a normal(0, sigma) init, tested at the end."""
    trials = []
    cells = [(k, bn, s) for k in depths for bn in batch_norms for s in sigmas]
    for index, (depth, batch_norm, sigma) in enumerate(cells):
        folder = f"{index:03d}-k{depth}-{'bn' if batch_norm else 'nobn'}-sigma{sigma:g}"
        settings = {
            "model.hidden": list(default_hidden(depth)),
            "model.batch_norm": batch_norm,
            "model.init": "normal",
            "model.sigma": sigma,
            "training.cycles": cycles,
            "training.n_s": n_s,
            # One seed for every cell: the cells then differ by depth, BN and sigma alone (a
            # paired comparison), not also by their draw of the initial weights and batches.
            "training.seed": seed,
        }
        trials.append(
            Trial(
                index=index,
                stage="grid",
                label=f"k={depth} {bn_label(batch_norm)} sigma={sigma:g}",
                config=trial_config(base, f"init-{folder}", settings),
                folder=folder,
                evaluate_test=True,
            )
        )
    return trials


def bn_label(batch_norm: bool) -> str:
    return "BN" if batch_norm else "no BN"


# --- sweep folders -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LambdaSearchSpec:
    """Everything `--resume` needs to rebuild a lambda search (the executor is chosen anew)."""

    base: dict[str, Any]
    coarse: bool = True
    fine: bool = True
    final: bool = False
    log_range: tuple[float, float] = (-5.0, -1.0)
    trials: int = 10
    cycles: int = 2
    n_s: int | None = None
    final_cycles: int = 3
    final_seeds: int = 3
    final_validation_size: int = 1000
    seed: int = 0
    source: str | None = None  # an earlier sweep whose trials --fine refines


@dataclass(frozen=True)
class GridSpec:
    """Everything `--resume` needs to rebuild an init-sensitivity grid."""

    base: dict[str, Any]
    depths: tuple[int, ...] = (3, 9)
    batch_norms: tuple[bool, ...] = (False, True)
    sigmas: tuple[float, ...] = (1e-1, 1e-3, 1e-4)
    cycles: int = 2
    n_s: int | None = None
    seed: int = 0


_SPECS: dict[str, type] = {LAMBDA_SEARCH: LambdaSearchSpec, INIT_SENSITIVITY: GridSpec}


def start_sweep(runs_dir: str | Path, kind: str, spec: LambdaSearchSpec | GridSpec) -> Path:
    """A new sweep folder with its plan written (atomically) before any trial starts."""
    sweep_dir = new_run_dir(runs_dir, kind)
    doc = {"kind": kind, "version": SWEEP_FORMAT_VERSION, "spec": asdict(spec), "trials": []}
    atomic_write_json(sweep_dir / SWEEP_FILE, doc)
    return sweep_dir


def load_sweep(sweep_dir: str | Path) -> tuple[str, LambdaSearchSpec | GridSpec]:
    """The kind and spec of an existing sweep folder, or a one-line RunFolderError."""
    doc = _read_sweep_file(Path(sweep_dir))
    try:
        cls = _SPECS[doc["kind"]]
        spec = {
            key: tuple(value) if isinstance(value, list) and key != "base" else value
            for key, value in doc["spec"].items()
        }
        if cls is LambdaSearchSpec:
            # Sweeps planned before the final retrain had seeds and a hold-out of its own
            # resume as they were planned: one retrain, on the base config's split.
            spec.setdefault("final_seeds", 1)
            spec.setdefault("final_validation_size", spec["base"]["data"]["validation_size"])
        return doc["kind"], cls(**spec)
    except (KeyError, TypeError) as error:
        raise RunFolderError(
            f"{sweep_dir}/{SWEEP_FILE} is not a valid sweep plan: {error}"
        ) from None


def _read_sweep_file(sweep_dir: Path) -> dict[str, Any]:
    path = sweep_dir / SWEEP_FILE
    if not sweep_dir.is_dir():
        raise RunFolderError(f"sweep folder {sweep_dir} does not exist")
    if not path.is_file():
        raise RunFolderError(f"{sweep_dir} is not a sweep folder: it has no {SWEEP_FILE}")
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise RunFolderError(f"{path} cannot be read: {error}") from None
    if not isinstance(doc, dict) or doc.get("version") != SWEEP_FORMAT_VERSION:
        raise RunFolderError(f"{path} is not a sweep plan this version of knn can read")
    return doc


def _record_plan(sweep_dir: Path, trials: Sequence[Trial], **notes: Any) -> None:
    """Add a stage's trials (and notes such as the fine range) to sweep.json, refusing a plan
    that disagrees with the one on disk: resuming it would mix two different sweeps."""
    doc = _read_sweep_file(sweep_dir)
    planned = {t["folder"]: t for t in doc["trials"]}
    for trial in trials:
        known = planned.get(trial.folder)
        if known is not None and known != trial.to_dict():
            raise RunFolderError(
                f"{sweep_dir}: trial {trial.folder} would differ from the recorded plan; "
                "start a new sweep instead of resuming this one"
            )
        planned[trial.folder] = trial.to_dict()
    doc["trials"] = sorted(planned.values(), key=lambda t: t["index"])
    doc.update(notes)
    atomic_write_json(sweep_dir / SWEEP_FILE, doc)


def _recorded_stage(sweep_dir: Path, stage: str) -> list[Trial]:
    """A stage's trials as first planned. The fine and final stages depend on earlier results,
    which a resume may change (a failed trial re-run); the plan on record is the sweep's."""
    doc = _read_sweep_file(sweep_dir)
    return [Trial.from_dict(t) for t in doc["trials"] if t["stage"] == stage]


def attempt_dirs(sweep_dir: Path, trial: Trial) -> list[Path]:
    """The trial's folders, oldest first: `003-coarse`, then `003-coarse.2`, `.3`... for re-runs."""
    found = []
    for attempt in range(1, 1000):
        path = sweep_dir / (trial.folder if attempt == 1 else f"{trial.folder}.{attempt}")
        if not path.is_dir():
            return found
        found.append(path)
    return found


def _summary_or_empty(run_dir: Path) -> dict[str, Any]:
    try:
        return read_summary(run_dir)
    except RunFolderError:
        return {}


def trial_record(sweep_dir: Path, trial: Trial) -> TrialRecord:
    """The trial's done attempt if it has one, else its latest (failed, interrupted) attempt."""
    attempts = [(path, _summary_or_empty(path)) for path in attempt_dirs(sweep_dir, trial)]
    for path, summary in attempts:
        if summary.get("status") in DONE_STATUSES:
            return TrialRecord(trial, path, summary)
    if attempts:
        return TrialRecord(trial, *attempts[-1])
    return TrialRecord(trial, None)


def _next_attempt(sweep_dir: Path, trial: Trial) -> Path:
    """The folder the trial's next attempt will train in (made by the worker, see run_trial)."""
    attempts = len(attempt_dirs(sweep_dir, trial))
    name = trial.folder if attempts == 0 else f"{trial.folder}.{attempts + 1}"
    return sweep_dir / name


def run_trials(
    sweep_dir: Path,
    trials: Sequence[Trial],
    executor: Executor,
    *,
    progress: bool = False,
    on_record: Callable[[list[TrialRecord]], str] | None = None,
) -> list[TrialRecord]:
    """Run the trials not done yet; return every trial's record in plan order.

    After each trial completes, `on_record` sees all the records (plan order) and returns the
    progress bar's note, e.g. the best lambda so far. A failed trial is written down as failed
    and the others go on.
    """
    _record_plan(sweep_dir, trials)
    records = {t.folder: trial_record(sweep_dir, t) for t in trials}
    todo = [t for t in trials if records[t.folder].status not in DONE_STATUSES]
    if todo:
        prepare_data(todo, progress=progress)
    jobs = [
        TrialJob(t, str(_next_attempt(sweep_dir, t)), background_evaluation=executor.in_process)
        for t in todo
    ]
    stage = ",".join(dict.fromkeys(t.stage for t in trials))
    with tqdm(total=len(jobs), desc=stage, unit="trial", disable=not progress) as bar:
        try:
            for job, outcome in executor.run(jobs, run_trial):
                if not outcome.ok:
                    _write_failure(Path(job.run_dir), job.trial, outcome.error)
                records[job.trial.folder] = trial_record(sweep_dir, job.trial)
                if on_record is not None:
                    bar.set_postfix_str(on_record(list(records.values())), refresh=False)
                bar.update(1)
        except KeyboardInterrupt:
            # Tables as the sweep stopped: trials cut short show as interrupted, not pending.
            if on_record is not None:
                with contextlib.suppress(Exception):  # the interrupt is what to report
                    on_record([trial_record(sweep_dir, t) for t in trials])
            raise
    return [records[t.folder] for t in trials]


def _write_failure(run_dir: Path, trial: Trial, error: str) -> None:
    summary = {
        **_summary_or_empty(run_dir),
        "name": trial.config["name"],
        "status": "failed",
        "message": error,
    }
    run_dir.mkdir(exist_ok=True)  # the trial may have failed before it made its folder
    atomic_write_json(run_dir / SUMMARY_FILE, summary)


# --- the lambda search ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LambdaSearchResult:
    records: list[TrialRecord]  # every search trial (those refined --from included), plan order
    best: TrialRecord | None  # best search trial by validation accuracy
    finals: list[TrialRecord]  # the best lambda retrained, one per seed; empty without --final
    fine_log_range: tuple[float, float] | None


def run_lambda_search(
    spec: LambdaSearchSpec, sweep_dir: Path, executor: Executor, *, progress: bool = False
) -> LambdaSearchResult:
    """Coarse, then fine around the best coarse trials, then the final retrain, as asked."""
    records = source_records(Path(spec.source)) if spec.source else []
    next_index = 1 + max((r.trial.index for r in records), default=-1)
    fine: tuple[float, float] | None = None

    def run_stage(trials: Sequence[Trial]) -> list[TrialRecord]:
        def note(stage_records: list[TrialRecord]) -> str:
            write_lambda_tables(sweep_dir, [*records, *stage_records])
            return best_note([*records, *stage_records])

        return run_trials(sweep_dir, trials, executor, progress=progress, on_record=note)

    for stage in [
        name for name, wanted in (("coarse", spec.coarse), ("fine", spec.fine)) if wanted
    ]:
        if stage == "fine":
            fine = _fine_log_range(sweep_dir, records)
        trials = _recorded_stage(sweep_dir, stage) or lambda_trials(
            spec.base,
            stage,
            fine or spec.log_range,
            range(next_index, next_index + spec.trials),
            seed=spec.seed,
            cycles=spec.cycles,
            n_s=spec.n_s,
        )
        records += run_stage(trials)
        next_index += len(trials)

    ranked = ranked_records(records)
    best = ranked[0] if ranked else None
    finals = run_stage(_final_plan(spec, sweep_dir, best, next_index)) if spec.final else []
    write_lambda_tables(sweep_dir, [*records, *finals])
    lambda_figure(sweep_dir, records, best)
    return LambdaSearchResult(records, best, finals, fine)


def _fine_log_range(sweep_dir: Path, records: Sequence[TrialRecord]) -> tuple[float, float]:
    """The fine range on record, else the one the search results give (then recorded)."""
    recorded = _read_sweep_file(sweep_dir).get("fine_log_range")
    if recorded:
        return recorded[0], recorded[1]
    low, high = fine_range(records)
    _record_plan(sweep_dir, [], fine_log_range=[low, high])
    return low, high


def _final_plan(
    spec: LambdaSearchSpec, sweep_dir: Path, best: TrialRecord | None, index: int
) -> list[Trial]:
    recorded = _recorded_stage(sweep_dir, "final")
    if recorded:
        return recorded
    if best is None:
        raise KnnError("no search trial finished, so there is no lambda to retrain")
    return final_trials(
        spec.base,
        range(index, index + spec.final_seeds),
        best.trial.lambda_,
        seed=spec.seed,
        cycles=spec.final_cycles,
        validation_size=spec.final_validation_size,
    )


def source_records(source: Path) -> list[TrialRecord]:
    """The search trials of an earlier sweep, for `--fine --from` to refine."""
    kind, _ = load_sweep(source)
    if kind != LAMBDA_SEARCH:
        raise RunFolderError(f"{source} is a {kind} sweep, not a lambda search")
    trials = [Trial.from_dict(t) for t in _read_sweep_file(source)["trials"]]
    records = [trial_record(source, t) for t in trials if t.stage in SEARCH_STAGES]
    if not any(r.finished for r in records):
        raise RunFolderError(f"{source} has no finished search trial to refine")
    return records


def best_note(records: Sequence[TrialRecord]) -> str:
    ranked = ranked_records(r for r in records if r.trial.stage in SEARCH_STAGES)
    if not ranked:
        return "no finished trial yet"
    best = ranked[0]
    return f"best lambda {best.trial.lambda_:.3g} (val {best.score:.3f})"


LAMBDA_CSV_HEADERS = (
    "index",
    "stage",
    "lambda",
    "status",
    "best_val_accuracy",
    "final_val_accuracy",
    "test_accuracy",
    "seconds",
    "folder",
    "message",
)
LAMBDA_TABLE_HEADERS = ("lambda", "stage", "val accuracy", "best val accuracy", "test", "status")


def write_lambda_tables(sweep_dir: Path, records: Sequence[TrialRecord]) -> str:
    """trials.csv (all fields) and table.md (sorted by validation accuracy, as in the study)."""
    rows = [
        [
            r.trial.index,
            r.trial.stage,
            f"{r.trial.lambda_:.6g}",
            r.status,
            r.get("best_val_accuracy"),
            r.get("final_val_accuracy"),
            r.get("test_accuracy"),
            r.get("wall_seconds"),
            _shown_folder(sweep_dir, r.folder),
            r.message,
        ]
        for r in sorted(records, key=lambda r: r.trial.index)
    ]
    atomic_write_text(sweep_dir / "trials.csv", csv_text(LAMBDA_CSV_HEADERS, rows))
    table = lambda_table(records)
    summary = final_test_summary(records)
    if summary is not None:
        table += f"\n{final_summary_line(summary)}\n"
    atomic_write_text(sweep_dir / "table.md", table)
    return table


def final_summary_line(summary: tuple[float, float, int]) -> str:
    mean, spread, count = summary
    if count == 1:
        return f"final retrain: test accuracy {100 * mean:.2f}% (one seed)"
    return (
        f"final retrain: test accuracy {100 * mean:.2f}% +- {100 * spread:.2f} "
        f"(mean +- standard deviation over {count} seeds)"
    )


def lambda_table(records: Sequence[TrialRecord]) -> str:
    def order(r: TrialRecord) -> tuple[Any, ...]:
        is_final = r.trial.stage == "final"
        return (is_final, r.score is None, -(r.score or 0.0), r.trial.index)

    rows = [
        [
            f"{r.trial.lambda_:.3g}",
            r.trial.stage,
            _percent(r.get("final_val_accuracy")),
            _percent(r.get("best_val_accuracy")),
            _percent(r.get("test_accuracy")),
            r.status if not r.message else f"{r.status}: {r.message}",
        ]
        for r in sorted(records, key=order)
    ]
    return markdown_table(LAMBDA_TABLE_HEADERS, rows)


def _percent(value: float | None) -> str | None:
    return None if value is None else f"{100 * value:.2f}%"


def _shown_folder(sweep_dir: Path, folder: Path | None) -> str:
    if folder is None:
        return ""
    try:
        return str(folder.relative_to(sweep_dir))
    except ValueError:
        return str(folder)


def lambda_figure(
    sweep_dir: Path, records: Sequence[TrialRecord], best: TrialRecord | None
) -> Path:
    """Validation accuracy against lambda on a log axis, coarse and fine trials marked apart."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for stage, marker in (("coarse", "o"), ("fine", "^")):
        points = [(r.trial.lambda_, r.score) for r in records if r.trial.stage == stage and r.score]
        if points:
            ax.scatter(*zip(*points, strict=True), marker=marker, label=stage, alpha=0.8)
    if best is not None and best.score is not None:
        ax.scatter(
            [best.trial.lambda_],
            [best.score],
            s=160,
            facecolors="none",
            edgecolors="red",
            label=f"best: {best.trial.lambda_:.3g}",
        )
    ax.set_xscale("log")
    ax.set_xlabel("lambda")
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"Lambda search — {sweep_dir.name}", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    if ax.get_legend_handles_labels()[0]:  # nothing to label when every trial failed
        ax.legend()
    return _save_figure(fig, sweep_dir / "lambda_vs_accuracy.png")


def _save_figure(fig: Any, path: Path) -> Path:
    """Save beside the target, then rename: a reader never sees a half-written image."""
    import matplotlib.pyplot as plt

    partial = path.with_name(f".{path.stem}.partial{path.suffix}")
    fig.tight_layout()
    fig.savefig(partial)
    plt.close(fig)
    os.replace(partial, path)
    return path


# --- the init-sensitivity grid, run and summarized -----------------------------------------------


def run_init_sensitivity(
    spec: GridSpec, sweep_dir: Path, executor: Executor, *, progress: bool = False
) -> list[TrialRecord]:
    trials = grid_trials(
        spec.base,
        spec.depths,
        spec.batch_norms,
        spec.sigmas,
        seed=spec.seed,
        cycles=spec.cycles,
        n_s=spec.n_s,
    )

    def note(records: list[TrialRecord]) -> str:
        write_grid_tables(sweep_dir, spec, records)
        learned = [r for r in records if (r.get("test_accuracy") or 0) > CHANCE_MARGIN]
        return f"{len(learned)} cells above chance"

    records = run_trials(sweep_dir, trials, executor, progress=progress, on_record=note)
    write_grid_tables(sweep_dir, spec, records)
    loss_curves_figure(sweep_dir, spec, records)
    return records


GRID_CSV_HEADERS = (
    "index",
    "depth",
    "hidden",
    "batch_norm",
    "sigma",
    "status",
    "final_val_accuracy",
    "test_accuracy",
    "seconds",
    "folder",
    "message",
)


def _cell_key(trial: Trial) -> tuple[int, bool, float]:
    model = trial.config["model"]
    return len(model["hidden"]) + 1, bool(model["batch_norm"]), float(model["sigma"])


def write_grid_tables(sweep_dir: Path, spec: GridSpec, records: Sequence[TrialRecord]) -> str:
    """results.csv (one row per run) and results.md (test accuracy: depth and BN x sigma)."""
    rows = []
    for r in records:
        depth, batch_norm, sigma = _cell_key(r.trial)
        rows.append(
            [
                r.trial.index,
                depth,
                " ".join(map(str, r.trial.config["model"]["hidden"])),
                batch_norm,
                f"{sigma:g}",
                r.status,
                r.get("final_val_accuracy"),
                r.get("test_accuracy"),
                r.get("wall_seconds"),
                _shown_folder(sweep_dir, r.folder),
                r.message,
            ]
        )
    atomic_write_text(sweep_dir / "results.csv", csv_text(GRID_CSV_HEADERS, rows))
    table = grid_table(spec, records)
    atomic_write_text(sweep_dir / "results.md", table)
    return table


def grid_table(spec: GridSpec, records: Sequence[TrialRecord]) -> str:
    by_cell = {_cell_key(r.trial): r for r in records}
    headers = ["layers", "batch norm", *(f"sigma={s:g}" for s in spec.sigmas)]
    rows = []
    for depth in spec.depths:
        for batch_norm in spec.batch_norms:
            cells = [by_cell.get((depth, batch_norm, float(s))) for s in spec.sigmas]
            rows.append([depth, bn_label(batch_norm), *(_grid_cell(r) for r in cells)])
    return markdown_table(headers, rows)


def _grid_cell(record: TrialRecord | None) -> str | None:
    if record is None or record.status == "pending":
        return None
    if record.finished:
        return _percent(record.get("test_accuracy"))
    return record.status


def loss_curves_figure(sweep_dir: Path, spec: GridSpec, records: Sequence[TrialRecord]) -> Path:
    """One panel per cell (rows: depth and BN; columns: sigma) with the loss curves."""
    import matplotlib.pyplot as plt

    by_cell = {_cell_key(r.trial): r for r in records}
    rows = [(k, bn) for k in spec.depths for bn in spec.batch_norms]
    fig, axes = plt.subplots(
        len(rows),
        len(spec.sigmas),
        figsize=(3.6 * len(spec.sigmas), 2.8 * len(rows)),
        dpi=100,
        squeeze=False,
    )
    for (depth, batch_norm), row_axes in zip(rows, axes, strict=True):
        for sigma, ax in zip(spec.sigmas, row_axes, strict=True):
            record = by_cell.get((depth, batch_norm, float(sigma)))
            _loss_panel(ax, record)
            ax.set_title(
                f"k={depth}, {bn_label(batch_norm)}, sigma={sigma:g}: {_grid_cell(record) or '-'}",
                fontsize=8,
            )
    return _save_figure(fig, sweep_dir / "loss_curves.png")


def _loss_panel(ax: Any, record: TrialRecord | None) -> None:
    from knn_cli.plots import draw_curves

    metrics = []
    if record is not None and record.folder is not None:
        try:
            metrics = read_metrics(record.folder)
        except RunFolderError:
            metrics = []
    if not metrics:
        ax.text(0.5, 0.5, "no metrics", ha="center", va="center", transform=ax.transAxes)
        return
    draw_curves(ax, metrics, "loss")
    ax.legend(fontsize=7)
