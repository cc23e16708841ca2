"""The range test's check (`knn lr-range --grid`): one short run at each of a dozen constant
rates log-spaced over the test's interval, as long as the test, trained side by side as one
population (they differ in their rate alone), in ordinary run folders under the test's `grid/`;
their final validation accuracy is drawn beside the test's curve."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from knn_cli.config import RunConfig, with_overrides
from knn_cli.data.cifar10 import Dataset
from knn_cli.experiment import open_run, train_population
from knn_cli.lr_range import RangeSchedule
from knn_cli.runs import CHECKPOINT_FILE, read_summary, summary_or_empty
from knn_cli.sweeps.folder import DONE_STATUSES

GRID_FOLDER = "grid"
GRID_RATES = 12


def grid_rates(schedule: RangeSchedule) -> list[float]:
    """A dozen constant rates, log-spaced over the range test's interval."""
    return [float(r) for r in np.geomspace(schedule.low, schedule.high, GRID_RATES)]


def train_grid(
    config: RunConfig,
    schedule: RangeSchedule,
    run_dir: Path,
    dataset: Dataset,
    progress: bool,
) -> list[dict[str, Any]]:
    """One run per constant rate, as long as the range test, trained side by side as one
    population (they differ in their rates alone); each one's final validation accuracy. A run
    already finished (a continued test) is read, not trained again."""
    parent = run_dir / GRID_FOLDER
    parent.mkdir(exist_ok=True)
    runs, found = [], []
    for index, rate in enumerate(grid_rates(schedule)):
        folder = parent / f"{index:02d}-eta-{rate:.3g}"
        found.append((rate, folder))
        if summary_or_empty(folder).get("status") in DONE_STATUSES:
            continue
        resume = (folder / CHECKPOINT_FILE).is_file()
        if folder.exists() and not resume:
            shutil.rmtree(folder)  # it stopped before its first checkpoint: start it again
        folder.mkdir(exist_ok=True)
        runs.append(
            open_run(
                constant_rate_config(config, rate, schedule.steps),
                folder,
                dataset,
                resume=resume,
                evaluate_test=False,
                population=GRID_RATES,
            )
        )
    if runs:
        if progress:
            print(f"grid: {len(runs)} runs at constant rates, side by side")
        train_population(runs, dataset, stop_between_steps=True)
    results = []
    for rate, folder in found:
        summary = read_summary(folder)
        results.append(
            {
                "eta": rate,
                "status": summary.get("status"),
                "final_val_accuracy": summary.get("final_val_accuracy"),
                "best_val_accuracy": summary.get("best_val_accuracy"),
                "folder": str(folder.relative_to(run_dir)),
            }
        )
    return results


def constant_rate_config(config: RunConfig, rate: float, steps: int) -> RunConfig:
    """The config trained at one constant rate for about `steps` steps: one cycle whose bounds
    are both `rate`; its training curve and layer diagnostics left out (nothing reads them)."""
    return with_overrides(
        config,
        {
            "name": f"{config.name}-eta-{rate:.3g}",  # a valid run name: no '+' of an exponent
            "training.eta_min": rate,
            "training.eta_max": rate,
            "training.n_s": max(1, steps // 2),
            "training.cycles": 1,
            "evaluation.train_curve_rows": 0,
            "diagnostics.layers": False,
            "diagnostics.landscape": False,
        },
    )
