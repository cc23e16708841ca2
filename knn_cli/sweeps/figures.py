"""A sweep's figures, drawn from its trials' records and run folders."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from knn_cli.errors import RunFolderError
from knn_cli.runs import read_metrics
from knn_cli.sweeps.folder import TrialRecord
from knn_cli.sweeps.plan import GridSpec, bn_label
from knn_cli.sweeps.tables import cell_key, grid_cell


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
    return save_figure(fig, sweep_dir / "lambda_vs_accuracy.png")


def save_figure(fig: Any, path: Path) -> Path:
    """Save beside the target, then rename: a reader never sees a half-written image."""
    import matplotlib.pyplot as plt

    partial = path.with_name(f".{path.stem}.partial{path.suffix}")
    fig.tight_layout()
    fig.savefig(partial)
    plt.close(fig)
    os.replace(partial, path)
    return path


def loss_curves_figure(sweep_dir: Path, spec: GridSpec, records: Sequence[TrialRecord]) -> Path:
    """One panel per cell (rows: depth and BN; columns: sigma) with the loss curves."""
    import matplotlib.pyplot as plt

    by_cell = {cell_key(r.trial): r for r in records}
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
                f"k={depth}, {bn_label(batch_norm)}, sigma={sigma:g}: {grid_cell(record) or '-'}",
                fontsize=8,
            )
    return save_figure(fig, sweep_dir / "loss_curves.png")


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
