"""`knn sweep PLAN`: a list of configs, each trained with a few seeds, and a table of how each
differs from the one above it and what it reached -- an ablation, or any comparison of configs.

A plan is a YAML file:

    name: ablation            # the sweep folder's name
    seeds: 3                  # runs per config (seeds from the config's training.seed up)
    runs:
      - ablation/01-study.yaml                      # paths relative to the plan
      - {config: ablation/09-long.yaml, seeds: 1}   # its own number of seeds
      - {config: base.yaml, set: [training.lambda=0.01], against: other}

`against` names the config (by its name) the table compares a row with; by default the row
above it, so that a variation of an earlier config reads as the one change it is.

The configs are read (and validated) once, when the sweep starts, and kept whole in sweep.json:
a resumed sweep runs what was planned, whatever became of the files since.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from knn_cli.config import config_to_dict, load_config
from knn_cli.config_diff import differences_text, differing_settings
from knn_cli.errors import ConfigError
from knn_cli.executors import Executor
from knn_cli.formatting import csv_text, duration, markdown_table, mean_and_spread, percent
from knn_cli.runs import atomic_write_text, worker_seconds
from knn_cli.sweeps.folder import TrialRecord, load_sweep_of_kind, trial_record
from knn_cli.sweeps.plan import CONFIG_SWEEP, ConfigSweepSpec, Trial, trial_config
from knn_cli.sweeps.populations import AUTO, Populations
from knn_cli.sweeps.running import run_trials
from knn_cli.sweeps.tables import shown_folder


def read_plan(path: Path) -> ConfigSweepSpec:
    """The plan file's configs, each loaded as `knn train` loads it; a one-line ConfigError for
    anything wrong, naming the entry."""
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"sweep plan not found: {str(path)!r}") from None
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"sweep plan {str(path)!r} cannot be read: {error}") from None
    if not isinstance(doc, Mapping) or not isinstance(doc.get("runs"), list) or not doc["runs"]:
        raise ConfigError(f"sweep plan {str(path)!r} needs a list of configs under 'runs'")
    unknown = set(doc) - {"name", "seeds", "runs"}
    if unknown:
        raise ConfigError(f"sweep plan {str(path)!r}: unknown key {sorted(unknown)[0]!r}")
    seeds = _seeds(doc.get("seeds", 1), "seeds")
    runs = []
    for number, entry in enumerate(doc["runs"], start=1):
        if isinstance(entry, str):
            entry = {"config": entry}
        if not isinstance(entry, Mapping) or not isinstance(entry.get("config"), str):
            raise ConfigError(f"sweep plan run {number} must be a config path or {{config: ...}}")
        overrides = entry.get("set", [])
        if not isinstance(overrides, list):
            raise ConfigError(f"sweep plan run {number}: 'set' must be a list of key=value")
        config = load_config(path.parent / entry["config"], overrides)
        against = entry.get("against")
        names = [run["config"]["name"] for run in runs]
        if against is not None and against not in names:
            raise ConfigError(f"sweep plan run {number}: 'against' names no config above it")
        if config.name in names:
            raise ConfigError(f"sweep plan run {number}: a config named {config.name!r} is above")
        runs.append(
            {
                "config": config_to_dict(config),
                "seeds": _seeds(entry.get("seeds", seeds), f"runs[{number}].seeds"),
                "against": against,
            }
        )
    name = doc.get("name", path.stem)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"sweep plan {str(path)!r}: name must be a text")
    return ConfigSweepSpec(name=name, runs=tuple(runs), source=str(path))


def _seeds(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"sweep plan {key} must be a whole number >= 1, got {value!r}")
    return value


def config_trials(spec: ConfigSweepSpec) -> list[Trial]:
    """One trial per config and seed, in plan order."""
    trials = []
    for entry in spec.runs:
        config = entry["config"]
        first_seed = config["training"]["seed"]
        for seed in range(first_seed, first_seed + entry["seeds"]):
            index = len(trials)
            folder = f"{index:03d}-{config['name']}-s{seed}"
            trials.append(
                Trial(
                    index=index,
                    stage="runs",
                    label=f"{config['name']} seed {seed}",
                    config=trial_config(config, config["name"], {"training.seed": seed}),
                    folder=folder,
                    evaluate_test=True,
                )
            )
    return trials


def read_config_sweep(folder: Path) -> tuple[TrialRecord, ...]:
    """A config sweep's trials, each with its done (else latest) attempt's record."""
    spec = load_sweep_of_kind(folder, CONFIG_SWEEP)
    return tuple(trial_record(folder, trial) for trial in config_trials(spec))


def run_config_sweep(
    spec: ConfigSweepSpec,
    sweep_dir: Path,
    executor: Executor,
    *,
    progress: bool = False,
    population: Populations = AUTO,
) -> list[TrialRecord]:
    def note(records: list[TrialRecord]) -> str:
        write_config_tables(sweep_dir, spec, records)
        return f"{sum(r.finished for r in records)} of {len(records)} runs finished"

    records = run_trials(
        sweep_dir,
        config_trials(spec),
        executor,
        progress=progress,
        on_record=note,
        population=population,
    )
    write_config_tables(sweep_dir, spec, records)
    return records


# -- tables ---------------------------------------------------------------------------------------

CSV_HEADERS = (
    "index",
    "config",
    "seed",
    "status",
    "final_val_accuracy",
    "test_accuracy",
    "test_accuracy_flip",
    "test_accuracy_moving_averages",
    "test_accuracy_snapshot_ensemble",
    "test_accuracy_snapshot_ensemble_flip",
    "seconds",
    "peak_memory_mb",
    "folder",
    "message",
)
# Accuracies a run may report beside its test accuracy, and their column in results.md.
EXTRA_COLUMNS = {
    "test_accuracy_moving_averages": "test, moving averages",
    "test_accuracy_flip": "test, mirror-averaged",
    "test_accuracy_snapshot_ensemble": "test, snapshot ensemble",
    "test_accuracy_snapshot_ensemble_flip": "test, snapshot ensemble mirror-averaged",
}


def write_config_tables(
    sweep_dir: Path, spec: ConfigSweepSpec, records: Sequence[TrialRecord]
) -> str:
    """results.csv (one row per run) and results.md (one row per config, in plan order: what
    changed from the row above, each seed's test accuracy, their mean +- sd, wall time)."""
    rows = [
        [
            r.trial.index,
            r.trial.config["name"],
            r.trial.config["training"]["seed"],
            r.status,
            r.get("final_val_accuracy"),
            r.get("test_accuracy"),
            r.get("test_accuracy_flip"),
            r.get("test_accuracy_moving_averages"),
            r.get("test_accuracy_snapshot_ensemble"),
            r.get("test_accuracy_snapshot_ensemble_flip"),
            r.get("wall_seconds"),
            r.get("peak_memory_mb"),
            shown_folder(sweep_dir, r.folder),
            r.message,
        ]
        for r in records
    ]
    atomic_write_text(sweep_dir / "results.csv", csv_text(CSV_HEADERS, rows))
    table = config_table(spec, records)
    atomic_write_text(sweep_dir / "results.md", table)
    return table


def config_table(spec: ConfigSweepSpec, records: Sequence[TrialRecord]) -> str:
    by_config: dict[str, list[TrialRecord]] = {}
    for record in records:
        by_config.setdefault(record.trial.config["name"], []).append(record)
    extras = [key for key in EXTRA_COLUMNS if any(r.get(key) is not None for r in records)]
    headers = ["config", "changed (from the row above)", "test accuracy", "each seed",
               "val accuracy", *(EXTRA_COLUMNS[key] for key in extras), "time per run"]  # fmt: skip
    rows, previous = [], None
    configs = {entry["config"]["name"]: entry["config"] for entry in spec.runs}
    for entry in spec.runs:
        config = entry["config"]
        if entry.get("against"):
            previous = configs[entry["against"]]
        runs = by_config.get(config["name"], [])
        finished = [r for r in runs if r.finished]
        rows.append(
            [
                config["name"],
                changes(previous, config, entry.get("against")),
                mean_and_spread([r.get("test_accuracy") for r in finished]),
                " ".join(percent(r.get("test_accuracy")) or r.status for r in runs) or "-",
                mean_and_spread([r.get("final_val_accuracy") for r in finished]),
                *(mean_and_spread([r.get(key) for r in finished]) for key in extras),
                # A run's share of its worker: a population's wall time over its runs.
                mean_duration([worker_seconds(r.summary) for r in finished]),
            ]
        )
        previous = config
    return markdown_table(headers, rows)


def changes(
    previous: Mapping[str, Any] | None, config: Mapping[str, Any], against: str | None = None
) -> str:
    """`section.key=value` for every setting that differs from the previous config (the seed
    and the name aside), and which config that is when it is not the row above."""
    if previous is None:
        return "(the start)"
    changed = differing_settings([previous, config], ignored=("training.seed",))
    text = differences_text(config, changed) or "(nothing)"
    return text if against is None else f"{text} (from {against})"


def mean_duration(values: Sequence[float | None]) -> str:
    """The runs' mean wall time ('-' if none was measured)."""
    numbers = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return (duration(float(np.mean(numbers))) if numbers else None) or "-"
