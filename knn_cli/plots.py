"""Figures drawn from the files of a run folder, so any run can be re-plotted later: the curves
of metrics.csv (cost.png, loss.png, accuracy.png), and of diagnostics.csv what the layers saw:
layers.png (gradient norm, activation scale and update ratio per layer against the step, and
the 15/50/85th percentiles of one layer's pre-activation, the picture of Ioffe and Szegedy,
2015, Figure 1) and landscape.png (Santurkar et al., 2018, Figure 4's three measures)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from knn_cli.config_diff import settings_text
from knn_cli.diagnostics import ACTIVATION, GRAD_NORM, LANDSCAPE, UPDATE_RATIO, WHOLE
from knn_cli.errors import KnnError
from knn_cli.runs import CONFIG_FILE, read_diagnostics, read_metrics, read_summary

CURVES = (("cost", "Cost"), ("loss", "Loss"), ("accuracy", "Accuracy"))
SPLIT_LABELS = {"train": "training", "val": "validation"}
SPLIT_COLOURS = {"train": "tab:blue", "val": "tab:orange"}
FIGSIZE = (8.0, 5.0)  # inches; at DPI, 1200 x 750 pixels: readable on a laptop screen
DPI = 150
MIN_RELATIVE_SPAN = 0.1


def plot_run(run_dir: str | Path) -> list[Path]:
    """Draw cost.png, loss.png and accuracy.png (training and validation against update step),
    and layers.png and landscape.png where the run measured its layers."""
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
        written.append(write_figure(fig, run_dir / f"{key}.png"))
    return written + plot_layers(run_dir, f"{name}\n{settings}".rstrip())


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


def draw_curves(
    ax: Any, metrics: Sequence[dict[str, Any]], key: str, *, legend: bool = True, width: float = 1.5
) -> None:
    """Training and validation curves, on a y scale no narrower than a tenth of their size: a
    loss that stays at ln 10 = 2.3026 to the third decimal must look flat, not fill the axes."""
    for split, label in SPLIT_LABELS.items():
        points = [(m["step"], m[key]) for m in metrics if m["split"] == split]
        if points:
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, label=label, color=SPLIT_COLOURS[split], lw=width)
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


Row = Mapping[str, Any]
Series = dict[str, tuple[list[int], list[float]]]  # layer -> (steps, values)

LAYER_PANELS = (
    (GRAD_NORM, "Gradient norm ||dL/dW_l|| (loss, no L2)"),
    ("activation_std", "Activation scale: std of layer l's output"),
    (UPDATE_RATIO, "Update ratio ||W_l change|| / ||W_l|| over the last step"),
)
# What practitioners call healthy; a dead layer's weight decay alone can sit there too.
RULE_OF_THUMB_UPDATE_RATIO = 1e-3
LANDSCAPE_TITLES = {
    "loss_range": "Loss range along -g",
    "grad_change": "Largest gradient change ||g(w - t g) - g||",
    "beta_smoothness": "Effective beta-smoothness",
}


def series(rows: Sequence[Row], quantity: str) -> Series:
    """One quantity's values by layer, in step order; layers numbered in their order."""
    found: Series = {}
    for row in rows:
        if row["quantity"] == quantity:
            steps, values = found.setdefault(str(row["layer"]), ([], []))
            steps.append(int(row["step"]))
            values.append(float(row["value"]))
    return dict(sorted(found.items(), key=lambda item: _layer_order(item[0])))


def _layer_order(layer: str) -> tuple[int, str]:
    return (int(layer), "") if layer.isdigit() else (10**9, layer)


def layer_colours(layers: Sequence[str]) -> dict[str, Any]:
    """A colour scale from the first layer (dark) to the last (light)."""
    cmap = plt.get_cmap("viridis")
    count = max(1, len(layers) - 1)
    return {layer: cmap(0.9 * index / count) for index, layer in enumerate(layers)}


def hidden_layers(rows: Sequence[Row]) -> list[str]:
    """The hidden layers measured (those with a ReLU: a dead fraction)."""
    return list(series(rows, "dead_fraction"))


def draw_layers(rows: Sequence[Row], title: str, percentile_layer: int | None = None) -> Any:
    """layers.png: three quantities per layer against the step (log scales), and the
    percentiles of one hidden layer's pre-activation (the last unless set). The panels share
    the step axis and one legend of the layers' colours: every run draws this figure, and its
    text (tick labels, legend entries) is most of the drawing time."""
    fig, axes = plt.subplots(2, 2, figsize=(12.0, 8.0), dpi=DPI, sharex=True)
    legend: dict[str, Any] = {}  # label -> line
    for ax, (quantity, panel_title) in zip(axes.flat, LAYER_PANELS, strict=False):
        found = series(rows, quantity)
        colours = layer_colours(list(found))
        for layer, (steps, values) in found.items():
            (line,) = ax.plot(steps, values, color=colours[layer], lw=1.3)
            legend.setdefault(f"layer {layer}", line)
        if quantity == UPDATE_RATIO and found:
            line = ax.axhline(RULE_OF_THUMB_UPDATE_RATIO, color="grey", ls=":", lw=1)
            legend[f"{RULE_OF_THUMB_UPDATE_RATIO:g} (rule of thumb)"] = line
        values = [v for _, values in found.values() for v in values]
        _log_axis(ax, values)
        if ax.get_yscale() == "log" and 0.0 in values:  # say so, or a dead layer looks unplotted
            ax.text(0.01, 0.02, "exactly 0 at some steps: not drawn on the log scale",
                    transform=ax.transAxes, fontsize=8, color="0.3")  # fmt: skip
        ax.set_title(panel_title, fontsize=10)
        ax.grid(alpha=0.3)
    hidden = hidden_layers(rows)
    layer = (
        str(percentile_layer) if percentile_layer is not None else (hidden[-1] if hidden else "1")
    )
    draw_percentiles(axes.flat[3], rows, layer)
    axes[1, 0].set_xlabel("update step")  # the percentiles' panel labels its own
    if legend:
        fig.legend(list(legend.values()), list(legend), loc="center right", fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.subplots_adjust(left=0.07, right=0.86, top=0.9, bottom=0.07, hspace=0.22, wspace=0.18)
    return fig


def draw_percentiles(ax: Any, rows: Sequence[Row], layer: str) -> None:
    """15th, 50th and 85th percentiles of one layer's output over training, as Ioffe and
    Szegedy draw a layer's input distribution."""
    p15, p50, p85 = (series(rows, f"activation_p{p}").get(layer) for p in (15, 50, 85))
    if p15 and p50 and p85:
        ax.fill_between(p15[0], p15[1], p85[1], alpha=0.25, color="tab:blue")
        ax.plot(p50[0], p50[1], color="tab:blue", lw=1.5)
        for steps, values in (p15, p85):
            ax.plot(steps, values, color="tab:blue", lw=0.8)
    # The title says what band and line are: a legend would sit on the band at some steps.
    title = f"Layer {layer}'s pre-activation: median, 15th-85th percentiles"
    ax.set_title(title, fontsize=10, pad=14)  # room for a "1e-8" scale above the axis
    ax.set_xlabel("update step")
    ax.grid(alpha=0.3)


def draw_landscape(rows: Sequence[Row], title: str) -> Any:
    """landscape.png: each of the three measures along the gradient against the step."""
    fig, axes = plt.subplots(1, 3, figsize=(13.0, 4.2), dpi=DPI)
    for ax, quantity in zip(axes, LANDSCAPE, strict=True):
        found = series(rows, quantity).get(WHOLE)
        if found:
            ax.plot(*found, color="tab:purple", lw=1.5)
            _log_axis(ax, found[1])
        ax.set_title(LANDSCAPE_TITLES[quantity], fontsize=10)
        ax.set_xlabel("update step")
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=11)
    fig.subplots_adjust(left=0.06, right=0.98, top=0.8, bottom=0.13, wspace=0.25)
    return fig


def _log_axis(ax: Any, values: Sequence[float]) -> None:
    """Log scale where the values allow one (positive, finite), its ticks in plain text (1e-05,
    0.1, 10): the default's typeset powers of ten took most of a figure's drawing time, which
    every run pays."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

    positive = [v for v in values if 0 < v < float("inf")]
    if positive:
        ax.set_yscale("log")
        # Under two decades whole powers of ten label one or two ticks at most: add 2 and 5.
        narrow = math.log10(max(positive) / min(positive)) < 2
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0) if narrow else (1.0,)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.yaxis.set_minor_locator(NullLocator())


def has_activations(rows: Sequence[Row]) -> bool:
    return any(row["quantity"] == ACTIVATION[0] for row in rows)


def has_landscape(rows: Sequence[Row]) -> bool:
    return any(row["quantity"] in LANDSCAPE for row in rows)


def plot_layers(run_dir: Path, title: str) -> list[Path]:
    """layers.png and landscape.png from diagnostics.csv, where the run has them."""
    rows = read_diagnostics(run_dir)
    written = []
    if has_activations(rows):
        figure = draw_layers(rows, title, percentile_layer(run_dir))
        written.append(write_figure(figure, run_dir / "layers.png"))
    if has_landscape(rows):
        written.append(write_figure(draw_landscape(rows, title), run_dir / "landscape.png"))
    return written


def percentile_layer(run_dir: Path) -> int | None:
    from knn_cli.config import load_config

    try:
        return load_config(run_dir / CONFIG_FILE).diagnostics.percentile_layer
    except KnnError:
        return None


def write_figure(fig: Any, path: Path) -> Path:
    """Every figure the project draws is written here: beside the target, then renamed, so a
    reader never sees a half-written image; a PNG at zlib's fastest level (a sixth of a
    figure's drawing time at the default level, for 10% more bytes)."""
    partial = path.with_name(f".{path.stem}.partial{path.suffix}")
    png = {"pil_kwargs": {"compress_level": 1}} if path.suffix.lower() == ".png" else {}
    fig.savefig(partial, **png)
    plt.close(fig)
    os.replace(partial, path)
    return path


PROFILE_LEGEND_CHARACTERS = 150  # characters across the figure's width at fontsize 8
PROFILE_PANELS = (
    (GRAD_NORM, "Gradient norm ||dL/dW_l|| by layer"),
    ("activation_std", "Activation scale (std of layer l's output) by layer"),
)


def profile(rows: Sequence[Row], quantity: str, step: int | None) -> tuple[list[int], list[float]]:
    """A quantity by layer at one step (None: the last step measured)."""
    found = series(rows, quantity)
    layers, values = [], []
    for layer, (steps, measured) in found.items():
        if not layer.isdigit() or not steps:
            continue
        at = len(steps) - 1 if step is None else (steps.index(step) if step in steps else None)
        if at is not None:
            layers.append(int(layer))
            values.append(measured[at])
    return layers, values


def draw_layer_profiles(
    runs: Sequence[tuple[str, Any, Sequence[Row]]], title: str, steps: Sequence[int | None]
) -> Any:
    """Gradient norm and activation scale against the layer, a colour per run (label, colour,
    rows), a line style per step of `steps` (None: the end): what depth does to each run, side
    by side. A value of exactly 0 (a layer whose units all died) has no place on the log scale
    and is left out."""
    from matplotlib.lines import Line2D

    styles = dict(zip(steps, ("--", "-", ":"), strict=False))
    handles = [Line2D([], [], color=colour, label=label) for label, colour, _ in runs]
    handles += [
        Line2D([], [], color="0.4", ls=styles[step],
               label="at the end" if step is None else f"at step {step}")
        for step in steps
    ]  # fmt: skip
    # As many legend columns as the longest label lets fit across the figure, the legend
    # outside the axes (a constrained layout makes room for it, whatever its rows).
    longest = max(len(str(handle.get_label())) for handle in handles) + 8  # sample and gap
    columns = max(1, min(len(handles), 4, PROFILE_LEGEND_CHARACTERS // longest))
    legend_rows = math.ceil(len(handles) / columns)
    fig, axes = plt.subplots(
        1, 2, figsize=(12.0, 4.6 + 0.22 * legend_rows), dpi=DPI, layout="constrained"
    )
    for ax, (quantity, panel_title) in zip(axes, PROFILE_PANELS, strict=True):
        drawn = []
        for _, colour, rows in runs:
            for step in steps:
                layers, values = profile(rows, quantity, step)
                ax.plot(layers, values, styles[step], color=colour, marker="o", ms=3)
                drawn += values
        _log_axis(ax, drawn)
        ax.set_title(panel_title, fontsize=10)
        ax.set_xlabel("layer l")
        ax.grid(alpha=0.3)
    fig.legend(handles=handles, loc="outside lower center", ncols=columns, fontsize=8)
    fig.suptitle(title, fontsize=11)
    return fig
