"""A training run's folder (`knn train`, or a sweep's trial): known by its config, metrics or
summary, whichever it has got to; its record is summary.json, written as it ends.

`runs.py`, which writes the folder, takes these file names and the summary's reader from here.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from knn_cli.errors import RunFolderError
from knn_cli.kinds.base import Kind, Row, row

RUN = "run"
METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.yaml"
# What a run folder holds from its start on, in the order they are written.
RUN_FILES = (CONFIG_FILE, METRICS_FILE, SUMMARY_FILE)


def recognise(folder: Path) -> bool:
    return any((folder / name).is_file() for name in RUN_FILES)


def read_summary(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / SUMMARY_FILE
    if not path.is_file():
        raise RunFolderError(f"{run_dir} is not a finished run folder: it has no {SUMMARY_FILE}")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise RunFolderError(f"{path} cannot be read: {error}") from None


def summary_or_empty(run_dir: str | Path) -> dict[str, Any]:
    """A run folder's summary.json, or {} where it has none (yet) or it cannot be read."""
    try:
        return read_summary(run_dir)
    except RunFolderError:
        return {}


def records(run_dir: Path) -> dict[str, Any]:
    """A run's record: its summary, {} while it trains (or if it stopped before writing one)."""
    return summary_or_empty(run_dir)


def worker_seconds(summary: Mapping[str, Any]) -> float | None:
    """A run's share of a worker's time: its wall time over the runs of its population (a run
    trained alone, or before populations, is a population of one)."""
    seconds, members = summary.get("wall_seconds"), summary.get("population") or 1
    if not isinstance(seconds, int | float) or not isinstance(members, int | float):
        return None
    return float(seconds) / max(1.0, float(members))


def run_config(run_dir: Path) -> dict[str, Any]:
    """The run's config with every default filled in and n_s as the run resolved it, so two
    configs compare equal exactly when they trained the same way."""
    from knn_cli.config import config_to_dict, load_config

    config = config_to_dict(load_config(run_dir / CONFIG_FILE))
    n_s = summary_or_empty(run_dir).get("n_s")
    if n_s:
        config["training"]["n_s"] = n_s
    return config


def run_status(summary: Mapping[str, Any]) -> str:
    # No summary yet: still training, or stopped before it wrote one (`knn train --resume`).
    return str(summary.get("status") or "unfinished")


def written_config(folder: Path) -> dict[str, Any] | None:
    """config.yaml as written (every key, as the version that ran it wrote them), read without
    the config machinery: a row's words need no defaults filled in, and `knn runs` stays light.
    None where it cannot be read."""
    import yaml

    try:
        config = yaml.safe_load((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return None
    return config if isinstance(config, dict) else None


def summary(folder: Path) -> Row:
    """Its status, settings in words, accuracies and wall time."""
    from knn_cli.config_diff import settings_text

    found = records(folder)
    config = written_config(folder)
    settings = "(config unreadable)"
    # A section or value of another shape than knn writes leaves the words unsaid.
    with contextlib.suppress(AttributeError, TypeError, ValueError):
        settings = settings_text(config, found.get("n_s")) if config is not None else settings
    return row(
        folder,
        RUN,
        run_status(found),
        settings,
        written=RUN_FILES,
        test_accuracy=found.get("test_accuracy"),
        val_accuracy=found.get("final_val_accuracy"),
        wall_seconds=found.get("wall_seconds"),
        test_accuracy_snapshot_ensemble=found.get("test_accuracy_snapshot_ensemble"),
    )


KIND = Kind(RUN, recognise, summary, curves=lambda folder: [folder])
