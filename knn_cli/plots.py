"""Figures drawn from the files of a run folder, so any run can be re-plotted later."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from knn_cli.runs import read_metrics

CURVES = (("cost", "Cost"), ("loss", "Loss"), ("accuracy", "Accuracy"))
SPLIT_LABELS = {"train": "training", "val": "validation"}


def plot_run(run_dir: str | Path) -> list[Path]:
    """Draw cost.png, loss.png and accuracy.png (training and validation against update step)."""
    run_dir = Path(run_dir)
    metrics = read_metrics(run_dir)
    written = []
    for key, title in CURVES:
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        draw_curves(ax, metrics, key)
        ax.set_title(f"{title} — {run_dir.name}", fontsize=9)
        fig.subplots_adjust(
            left=0.13, right=0.97, top=0.91, bottom=0.12
        )  # tight_layout: slower than the drawing
        path = run_dir / f"{key}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def draw_curves(ax: Any, metrics: Sequence[dict[str, Any]], key: str) -> None:
    for split, label in SPLIT_LABELS.items():
        points = [(m["step"], m[key]) for m in metrics if m["split"] == split]
        if points:
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, label=label)
    ax.set_xlabel("update step")
    ax.set_ylabel(key)
    ax.grid(alpha=0.3)
    ax.legend()
