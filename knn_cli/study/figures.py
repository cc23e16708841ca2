"""The report's comparison figures, drawn from the study's run folders: BN against no BN on the
same axes, the lambda search beside the study's own search, and the init-sensitivity grid.

The look follows knn_cli.plots and knn_cli.sweeps.figures (150 dpi, titles that say what the
figure is), and the lambda and grid figures are theirs, so a part's own figure and the report's
cannot drift apart.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from knn_cli.config_diff import training_settings
from knn_cli.plots import DPI, SPLIT_LABELS
from knn_cli.study.contents import Grid, LambdaSearch
from knn_cli.study.why import Watched
from knn_cli.sweeps.figures import (
    draw_lambda_search,
    draw_loss_curves,
    save_figure,
    set_lambda_axis,
    trial_metrics,
)
from knn_cli.sweeps.folder import TrialRecord
from knn_cli.sweeps.lambda_search import search_fit

BN_FIGSIZE = (12.0, 5.0)  # two panels side by side, each about as wide as a run's own figure
BN_COLORS = {False: "tab:blue", True: "tab:orange"}
SPLIT_STYLES = {"train": "--", "val": "-"}
PANELS = (("loss", "Loss (cross-entropy, no penalty)"), ("accuracy", "Accuracy"))


def draw_bn_comparison(depth: int, runs: Mapping[bool, TrialRecord]) -> Any:
    """Loss and accuracy of the run without BN and the run with it (keyed by batch_norm),
    training dashed, validation solid, on shared axes: the study's figures 1-12 on one page."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import PercentFormatter

    fig, axes = plt.subplots(1, 2, figsize=BN_FIGSIZE, dpi=DPI, layout="constrained")
    for batch_norm, record in sorted(runs.items()):
        metrics = trial_metrics(record)
        for (key, _), ax in zip(PANELS, axes, strict=True):
            for split, label in SPLIT_LABELS.items():
                points = [(m["step"], m[key]) for m in metrics if m["split"] == split]
                if not points:
                    continue
                steps, values = zip(*points, strict=True)
                ax.plot(
                    steps,
                    [v if math.isfinite(v) else math.nan for v in values],
                    color=BN_COLORS[batch_norm],
                    linestyle=SPLIT_STYLES[split],
                    label=f"{'BN' if batch_norm else 'no BN'}, {label}",
                )
    for (key, title), ax in zip(PANELS, axes, strict=True):
        ax.set_title(title, fontsize=12)
        ax.set_xlabel("update step")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        if key == "accuracy":
            ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=10)
    first = next(iter(runs.values()))
    seed = first.trial.config["training"]["seed"]
    settings = ", ".join(training_settings(first.trial.config, first.get("n_s")))
    fig.suptitle(
        f"{depth} layers, with and without batch norm (seed {seed})\n{settings}", fontsize=13
    )
    return fig


def draw_lambda_comparison(
    search: LambdaSearch,
    study_search: Sequence[Sequence[float]],
    study_finals: Sequence[Sequence[float]] = (),
) -> Any:
    """The search's own figure, with the study's search trials (validation) and its final
    retrains (test) drawn in grey: where our curve of accuracy against lambda lies beside
    theirs. The study's numbers are in percent, the figure's axis in fractions."""
    from matplotlib.ticker import LogFormatterSciNotation, LogLocator

    fit = search_fit(search.search)
    fig = draw_lambda_search(search.spec, search.search, search.best, search.finals, fit)
    ax = fig.axes[0]
    lambdas = [r.trial.lambda_ for r in (*search.search, *search.finals) if r.finished]
    theirs = (
        (study_search, {"marker": "x", "color": "dimgray"}, "the study's search: validation"),
        (
            study_finals,
            {"marker": "*", "s": 160, "facecolors": "none", "edgecolors": "dimgray"},
            "the study's final retrains: test",
        ),
    )
    for points, style, label in theirs:
        if points:
            xs, ys = zip(*points, strict=True)
            ax.scatter(xs, [y / 100 for y in ys], label=label, **style)
            lambdas += xs
    if lambdas:
        # Back to matplotlib's own ticks first: the search alone may have fixed a few round
        # values for its narrow span, which the study's wider one would leave in a heap.
        ax.xaxis.set_major_locator(LogLocator())
        ax.xaxis.set_major_formatter(LogFormatterSciNotation())
        ax.xaxis.set_minor_locator(LogLocator(subs="auto"))
        set_lambda_axis(ax, min(lambdas), max(lambdas))
    ax.legend(fontsize=9)
    return fig


def draw_why_gradients(watched: Sequence[Watched]) -> Any:
    """Gradient norm and activation scale by layer, at step 0 (dashed) and at the end, for the
    9-layer runs with and without batch norm."""
    from knn_cli.plots import draw_layer_profiles

    colours = {("He", False): "tab:blue", ("He", True): "tab:orange"}
    spare = iter(["tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray"])
    runs = [
        (w.label, colours.get((w.init, w.batch_norm)) or next(spare, "black"), w.rows)
        for w in watched
    ]
    return draw_layer_profiles(
        runs, "9 layers: what each layer sees, with and without BN", (0, None)
    )


def draw_why_percentiles(pair: Mapping[bool, Watched], layer: int) -> Any:
    """The percentile picture of one hidden layer over training, without and with BN."""
    import matplotlib.pyplot as plt

    from knn_cli.plots import draw_percentiles

    fig, axes = plt.subplots(1, len(pair), figsize=BN_FIGSIZE, dpi=DPI, squeeze=False)
    for ax, (_, watched) in zip(axes[0], sorted(pair.items()), strict=True):
        draw_percentiles(ax, watched.rows, str(layer))
        ax.set_title(
            f"{watched.label}: layer {layer}'s pre-activation, 15th-85th band, median",
            fontsize=10,
        )
    fig.subplots_adjust(left=0.07, right=0.98, top=0.88, bottom=0.12, wspace=0.2)
    return fig


def draw_why_landscape(by_bn: Mapping[bool, Sequence[Mapping[str, Any]]]) -> Any:
    """The three landscape measures against the step, without and with BN."""
    import matplotlib.pyplot as plt

    from knn_cli.diagnostics import LANDSCAPE, WHOLE
    from knn_cli.plots import LANDSCAPE_TITLES, series

    fig, axes = plt.subplots(1, 3, figsize=(13.0, 4.2), dpi=DPI)
    for ax, quantity in zip(axes, LANDSCAPE, strict=True):
        for batch_norm, rows in sorted(by_bn.items()):
            found = series(rows, quantity).get(WHOLE)
            if found:
                label = "BN" if batch_norm else "no BN"
                ax.plot(*found, color=BN_COLORS[batch_norm], label=label, lw=1.5)
        ax.set_yscale("log")
        ax.set_title(LANDSCAPE_TITLES[quantity], fontsize=10)
        ax.set_xlabel("update step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("9 layers, He init: along the gradient, with and without BN", fontsize=11)
    fig.subplots_adjust(left=0.06, right=0.98, top=0.82, bottom=0.13, wspace=0.25)
    return fig


def draw_grid(grid: Grid) -> Any:
    return draw_loss_curves(grid.spec, grid.records)


def save_png(fig: Any, path: Path) -> bytes:
    """Write the figure (atomically) and return its bytes, for the HTML to embed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, path).read_bytes()
