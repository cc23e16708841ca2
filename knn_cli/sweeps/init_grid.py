"""The study's init-sensitivity grid: depth x batch norm x sigma, each cell tested at the end."""

from __future__ import annotations

from pathlib import Path

from knn_cli.executors import Executor
from knn_cli.sweeps.figures import loss_curves_figure
from knn_cli.sweeps.folder import TrialRecord
from knn_cli.sweeps.plan import GridSpec, Trial, grid_trials
from knn_cli.sweeps.populations import AUTO, Populations
from knn_cli.sweeps.running import run_trials
from knn_cli.sweeps.tables import write_grid_tables

CHANCE_MARGIN = 0.2  # test accuracy above which a 10-class run has clearly learned something


def grid_plan(spec: GridSpec) -> list[Trial]:
    """The grid's trials, one per cell, as the spec asks for them."""
    return grid_trials(
        spec.base,
        spec.depths,
        spec.batch_norms,
        spec.sigmas,
        seed=spec.seed,
        cycles=spec.cycles,
        n_s=spec.n_s,
        seeds=spec.seeds,
    )


def run_init_sensitivity(
    spec: GridSpec,
    sweep_dir: Path,
    executor: Executor,
    *,
    progress: bool = False,
    population: Populations = AUTO,
) -> list[TrialRecord]:
    trials = grid_plan(spec)

    def note(records: list[TrialRecord]) -> str:
        write_grid_tables(sweep_dir, spec, records)
        learned = [r for r in records if (r.get("test_accuracy") or 0) > CHANCE_MARGIN]
        return f"{len(learned)} cells above chance"

    records = run_trials(
        sweep_dir, trials, executor, progress=progress, on_record=note, population=population
    )
    write_grid_tables(sweep_dir, spec, records)
    loss_curves_figure(sweep_dir, spec, records)
    return records
