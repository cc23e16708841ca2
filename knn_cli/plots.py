"""Figures drawn from the files of a run folder, so any run can be re-plotted later."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from knn_cli.errors import KnnError
from knn_cli.runs import CONFIG_FILE, read_metrics, read_summary

CURVES = (("cost", "Cost"), ("loss", "Loss"), ("accuracy", "Accuracy"))
SPLIT_LABELS = {"train": "training", "val": "validation"}
FIGSIZE = (8.0, 5.0)  # inches; at DPI, 1200 x 750 pixels: readable on a laptop screen
DPI = 150
MIN_RELATIVE_SPAN = 0.1


def plot_run(run_dir: str | Path) -> list[Path]:
    """Draw cost.png, loss.png and accuracy.png (training and validation against update step)."""
    run_dir = Path(run_dir)
    metrics = read_metrics(run_dir)
    name, settings = run_description(run_dir)
    written = []
    for key, title in CURVES:
        fig, ax = plt.subplots(figsize=FIGSIZE, dpi=DPI)
        draw_curves(ax, metrics, key)
        ax.set_title(f"{title}: {name}\n{settings}".rstrip(), fontsize=11)
        fig.subplots_adjust(
            left=0.1, right=0.97, top=0.88, bottom=0.11
        )  # tight_layout: slower than the drawing
        path = run_dir / f"{key}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def run_description(run_dir: Path) -> tuple[str, str]:
    """The run's name and key settings from its own files; the folder's name if they cannot be
    read (a folder copied without its config still plots)."""
    from knn_cli.config import config_to_dict, load_config

    try:
        config = config_to_dict(load_config(run_dir / CONFIG_FILE))
    except KnnError:
        return run_dir.name, ""
    try:
        n_s = read_summary(run_dir).get("n_s")
    except KnnError:  # still training, or cut short before its summary
        n_s = None
    return config["name"], settings_text(config, n_s)


def settings_text(config: Mapping[str, Any], n_s: int | None = None) -> str:
    """The settings that tell the study's runs apart, on one line, defaults left unsaid."""
    return ", ".join([*model_settings(config), *training_settings(config, n_s)])


def model_settings(config: Mapping[str, Any]) -> list[str]:
    model, augment = config.get("model", {}), config.get("augment", {})
    parts = []
    if "hidden" in model:
        parts.append(f"hidden {list(model['hidden'])}")
    if model.get("batch_norm"):
        parts.append("BN after ReLU" if model.get("bn_position") == "after_relu" else "BN")
    elif "batch_norm" in model:
        parts.append("no BN")
    if model.get("init") == "normal":
        parts.append(f"init normal sigma {model.get('sigma', 0):g}")
    dropout = model.get("dropout") or 0
    if any(dropout) if isinstance(dropout, Sequence) else dropout:
        parts.append(f"dropout {dropout}")
    if augment.get("flip"):
        parts.append("flip")
    if augment.get("translate"):
        parts.append(f"translate {augment['translate']}")
    return parts


def training_settings(
    config: Mapping[str, Any], n_s: int | None = None, *, lambda_: bool = True
) -> list[str]:
    """`n_s` is the resolved half cycle (a config may leave it to a factor of the epoch size);
    `lambda_=False` leaves out the one setting a lambda search varies."""
    training = config.get("training", {})
    parts = []
    if lambda_ and "lambda" in training:
        parts.append(f"lambda {training['lambda']:.3g}")
    if training.get("optimizer", "sgd") != "sgd":
        parts.append(str(training["optimizer"]))
    cycles, n_s = training.get("cycles"), n_s or training.get("n_s")
    if cycles:
        parts.append(f"{cycles} cycle{'s' if cycles > 1 else ''}")
    if n_s:
        parts.append(f"n_s {n_s}")
    return parts


def draw_curves(
    ax: Any, metrics: Sequence[dict[str, Any]], key: str, *, legend: bool = True
) -> None:
    """Training and validation curves, on a y scale no narrower than a tenth of their size: a
    loss that stays at ln 10 = 2.3026 to the third decimal must look flat, not fill the axes."""
    for split, label in SPLIT_LABELS.items():
        points = [(m["step"], m[key]) for m in metrics if m["split"] == split]
        if points:
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, label=label)
    finite = [m[key] for m in metrics if math.isfinite(m[key])]
    if finite:
        low, high = min(finite), max(finite)
        least = MIN_RELATIVE_SPAN * max(abs(low), abs(high))
        if high - low < least:
            middle = (low + high) / 2
            ax.set_ylim(middle - least / 2, middle + least / 2)
    ax.set_xlabel("update step")
    ax.set_ylabel(key)
    if key == "accuracy":  # in percent, as the tables and the terminal give it
        from matplotlib.ticker import PercentFormatter

        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.grid(alpha=0.3)
    if legend:
        ax.legend()
