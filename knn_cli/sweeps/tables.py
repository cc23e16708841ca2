"""A sweep's tables: CSV with every field for programs, Markdown for people, written atomically."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from knn_cli.formatting import (
    csv_text,
    markdown_table,
    mean_and_spread,
    percent,
    seed_statistics,
)
from knn_cli.runs import atomic_write_text
from knn_cli.sweeps.folder import TrialRecord
from knn_cli.sweeps.lambda_fit import LambdaFit
from knn_cli.sweeps.plan import GridSpec, Trial, bn_label


def final_test_summary(records: Sequence[TrialRecord]) -> tuple[float, float, int] | None:
    """Mean, sample standard deviation and count of the finished final retrains' test
    accuracies (`formatting.seed_statistics`)."""
    finals = [r for r in records if r.trial.stage == "final" and r.finished]
    return seed_statistics([r.get("test_accuracy") for r in finals])


def final_summary_line(summary: tuple[float, float, int]) -> str:
    mean, spread, count = summary
    if count == 1:
        return f"final retrain: test accuracy {percent(mean)} (one seed)"
    return (
        f"final retrain: test accuracy {percent(mean)} +- {100 * spread:.2f} "
        f"(mean +- standard deviation over {count} seeds)"
    )


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


def write_lambda_tables(
    sweep_dir: Path, records: Sequence[TrialRecord], fit: LambdaFit | None = None
) -> str:
    """trials.csv (all fields) and table.md (sorted by validation accuracy, as in the study;
    then the fit's peak and tied range, and the finals' mean +- sd)."""
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
            shown_folder(sweep_dir, r.folder),
            r.message,
        ]
        for r in sorted(records, key=lambda r: r.trial.index)
    ]
    atomic_write_text(sweep_dir / "trials.csv", csv_text(LAMBDA_CSV_HEADERS, rows))
    table = lambda_table(records)
    if fit is not None:
        table += f"\n{fit.summary()}\n"
    summary = final_test_summary(records)
    if summary is not None:
        table += f"\n{final_summary_line(summary)}\n"
    atomic_write_text(sweep_dir / "table.md", table)
    return table


def lambda_table(records: Sequence[TrialRecord]) -> str:
    def order(r: TrialRecord) -> tuple[Any, ...]:
        is_final = r.trial.stage == "final"
        return (is_final, r.score is None, -(r.score or 0.0), r.trial.index)

    rows = [
        [
            f"{r.trial.lambda_:.3g}",
            r.trial.stage,
            percent(r.get("final_val_accuracy")),
            percent(r.get("best_val_accuracy")),
            percent(r.get("test_accuracy")),
            r.status if not r.message else f"{r.status}: {r.message}",
        ]
        for r in sorted(records, key=order)
    ]
    return markdown_table(LAMBDA_TABLE_HEADERS, rows)


def shown_folder(sweep_dir: Path, folder: Path | None) -> str:
    if folder is None:
        return ""
    try:
        return str(folder.relative_to(sweep_dir))
    except ValueError:
        return str(folder)


GRID_CSV_HEADERS = (
    "index",
    "depth",
    "hidden",
    "batch_norm",
    "sigma",
    "seed",
    "status",
    "final_val_accuracy",
    "test_accuracy",
    "seconds",
    "folder",
    "message",
)


def cell_key(trial: Trial) -> tuple[int, bool, float]:
    model = trial.config["model"]
    return len(model["hidden"]) + 1, bool(model["batch_norm"]), float(model["sigma"])


def write_grid_tables(sweep_dir: Path, spec: GridSpec, records: Sequence[TrialRecord]) -> str:
    """results.csv (one row per run) and results.md (test accuracy: depth and BN x sigma)."""
    rows = []
    for r in records:
        depth, batch_norm, sigma = cell_key(r.trial)
        rows.append(
            [
                r.trial.index,
                depth,
                " ".join(map(str, r.trial.config["model"]["hidden"])),
                batch_norm,
                f"{sigma:g}",
                r.trial.config["training"]["seed"],
                r.status,
                r.get("final_val_accuracy"),
                r.get("test_accuracy"),
                r.get("wall_seconds"),
                shown_folder(sweep_dir, r.folder),
                r.message,
            ]
        )
    atomic_write_text(sweep_dir / "results.csv", csv_text(GRID_CSV_HEADERS, rows))
    table = grid_table(spec, records)
    atomic_write_text(sweep_dir / "results.md", table)
    return table


def by_cell(records: Sequence[TrialRecord]) -> dict[tuple[int, bool, float], list[TrialRecord]]:
    """The grid's records by cell (depth, batch norm, sigma), each cell's seeds in order."""
    cells: dict[tuple[int, bool, float], list[TrialRecord]] = {}
    for record in records:
        cells.setdefault(cell_key(record.trial), []).append(record)
    return cells


def grid_table(spec: GridSpec, records: Sequence[TrialRecord]) -> str:
    cells = by_cell(records)
    headers = ["layers", "batch norm", *(f"sigma={s:g}" for s in spec.sigmas)]
    rows = []
    for depth in spec.depths:
        for batch_norm in spec.batch_norms:
            found = [cells.get((depth, batch_norm, float(s)), []) for s in spec.sigmas]
            rows.append([depth, bn_label(batch_norm), *(grid_cell(r) for r in found)])
    return markdown_table(headers, rows)


def grid_cell(records: Sequence[TrialRecord]) -> str | None:
    """A cell's test accuracy: its one seed's, or mean +- sd and each seed's (a seed that did
    not finish by its status)."""
    started = [r for r in records if r.status != "pending"]
    if not started:
        return None
    if len(records) == 1:
        record = records[0]
        return percent(record.get("test_accuracy")) if record.finished else record.status
    each = ", ".join(
        f"{100 * r.get('test_accuracy'):.2f}" if r.finished else r.status for r in records
    )
    finished = [r.get("test_accuracy") for r in records if r.finished]
    return f"{mean_and_spread(finished)} ({each})" if finished else each
