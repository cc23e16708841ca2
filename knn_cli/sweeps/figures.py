"""A sweep's figures, drawn from its trials' records and run folders.

matplotlib is imported inside the functions: a sweep command should not pay for it at start-up.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from knn_cli.errors import RunFolderError
from knn_cli.runs import read_metrics
from knn_cli.sweeps.folder import TrialRecord
from knn_cli.sweeps.lambda_fit import LambdaFit
from knn_cli.sweeps.plan import GridSpec, LambdaSearchSpec, bn_label
from knn_cli.sweeps.tables import by_cell, grid_cell

CHANCE_LOSS = math.log(10)  # cross-entropy of a uniform guess over 10 classes
LOSS_CAP = 1.5 * CHANCE_LOSS  # the grid's shared scale stops here: above it nothing learns
PANEL_SIZE = (4.0, 2.8)  # inches per init-sensitivity cell
# Round values to label a log axis with, coarsest first (see lambda_ticks).
MANTISSAS = ((1.0,), (1.0, 2.0, 5.0), (1.0, 2.0, 3.0, 5.0), tuple(float(m) for m in range(1, 10)))


def lambda_figure(
    sweep_dir: Path,
    spec: LambdaSearchSpec,
    records: Sequence[TrialRecord],
    best: TrialRecord | None,
    finals: Sequence[TrialRecord] = (),
    fit: LambdaFit | None = None,
) -> Path:
    figure = draw_lambda_search(spec, records, best, finals, fit)
    return save_figure(figure, sweep_dir / "lambda_vs_accuracy.png")


def draw_lambda_search(
    spec: LambdaSearchSpec,
    records: Sequence[TrialRecord],
    best: TrialRecord | None,
    finals: Sequence[TrialRecord] = (),
    fit: LambdaFit | None = None,
) -> Any:
    """Validation accuracy of the search trials against lambda, coarse and fine marked apart,
    the best trial, the fit through the trials near it with its peak and the lambdas tied with
    it, and the final retrains' test accuracy at the lambda retrained: the whole search on one
    page. The finals' validation accuracy is left out, as it is on a smaller hold-out."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import PercentFormatter

    from knn_cli.plots import DPI, FIGSIZE

    fig, ax = plt.subplots(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    lambdas = []
    for stage, marker, color in (("coarse", "o", "tab:blue"), ("fine", "^", "tab:orange")):
        points = [(r.trial.lambda_, r.score) for r in records if r.trial.stage == stage and r.score]
        if points:
            xs, ys = zip(*points, strict=True)
            label = f"{stage} search: validation"
            ax.scatter(xs, ys, marker=marker, color=color, label=label, alpha=0.8)
            lambdas += xs
    if best is not None and best.score is not None:
        ax.scatter([best.trial.lambda_], [best.score], s=180, facecolors="none", edgecolors="red")
        chosen = " (retrained)" if spec.choose == "best" and finals else ""
        ax.axvline(
            best.trial.lambda_, color="red", linestyle="--", linewidth=1,
            label=f"best trial: lambda {best.trial.lambda_:.3g}{chosen}",
        )  # fmt: skip
        lambdas.append(best.trial.lambda_)
    if fit is not None:
        draw_fit(ax, fit, retrained=spec.choose == "fit" and bool(finals))
        lambdas += [10.0 ** fit.span[0], 10.0 ** fit.span[1]]
    tested = [
        (r.trial.lambda_, r.get("test_accuracy"))
        for r in finals
        if r.finished and r.get("test_accuracy") is not None
    ]
    if tested:
        xs, ys = zip(*tested, strict=True)
        seeds = f"{len(tested)} seed{'s' if len(tested) > 1 else ''}"
        ax.scatter(
            xs, ys, marker="*", s=200, color="black", zorder=3, gid="final",
            label=f"final retrain ({seeds}, {_schedule(finals)}): test",
        )  # fmt: skip
        lambdas += xs
    ax.set_xscale("log")
    if lambdas:
        set_lambda_axis(ax, min(lambdas), max(lambdas))
    ax.set_xlabel("lambda (L2 penalty)")
    ax.set_ylabel("accuracy")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_title(_search_title(spec, records), fontsize=11)
    if ax.get_legend_handles_labels()[0]:  # nothing to label when every trial failed
        ax.legend(fontsize=9)
    return fig


def draw_fit(ax: Any, fit: LambdaFit, *, retrained: bool = False) -> None:
    """The fitted curve over the trials it was fitted to, its peak, and the lambdas tied with it
    (within the trials' spread) shaded."""
    import numpy as np

    u = np.linspace(*fit.span, 200)
    ax.plot(10.0**u, fit.accuracy(u), color="tab:green", linewidth=1.5,
            label=f"fit (sd {100 * fit.spread:.2f} points about it)")  # fmt: skip
    low, high = fit.tied_lambdas
    ax.axvspan(low, high, color="tab:green", alpha=0.12,
               label=f"tied with the peak: {low:.3g} to {high:.3g}")  # fmt: skip
    ax.axvline(fit.peak_lambda, color="tab:green", linestyle=":", linewidth=1.2,
               label=f"fit's peak: lambda {fit.peak_lambda:.3g}"
               + (" (retrained)" if retrained else ""))  # fmt: skip


def _schedule(records: Sequence[TrialRecord]) -> str:
    from knn_cli.config_diff import training_settings

    n_s = next((r.get("n_s") for r in records if r.get("n_s")), None)
    return ", ".join(training_settings(records[0].trial.config, n_s, lambda_=False))


def _search_title(spec: LambdaSearchSpec, records: Sequence[TrialRecord]) -> str:
    from knn_cli.config_diff import model_settings, training_settings

    config = records[0].trial.config if records else spec.base
    n_s = next((r.get("n_s") for r in records if r.get("n_s")), None)
    settings = [*model_settings(config), *training_settings(config, n_s, lambda_=False)]
    return f"Lambda search: {spec.base['name']}\n{', '.join(settings)}"


def set_lambda_axis(ax: Any, low: float, high: float) -> None:
    """Limits a little past the data, and labels that can be read at any span (see
    lambda_ticks); minor ticks are never labelled, as their labels are what collide."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

    pad = max(0.05 * math.log10(high / low), 0.02)  # decades each side
    low, high = low / 10**pad, high * 10**pad
    ax.set_xlim(low, high)
    ticks = lambda_ticks(low, high)
    if ticks is not None:
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.grid(alpha=0.3)
    else:
        ax.grid(alpha=0.3)
        ax.grid(alpha=0.1, which="minor")
    ax.xaxis.set_minor_formatter(NullFormatter())


def lambda_ticks(low: float, high: float) -> list[float] | None:
    """Where to label a log axis from `low` to `high`: None when whole decades give three labels
    or more (matplotlib's own 10^k ticks then), else the coarsest round values that do, so a
    search within one decade can still be read off the axis; in a span too narrow for even
    those, evenly spaced round values (on so short a log axis, nearly even to the eye)."""
    from matplotlib.ticker import MaxNLocator

    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    for mantissas in MANTISSAS:
        values = [float(f"{m * 10.0**e:.12g}") for e in range(first, last + 1) for m in mantissas]
        ticks = [value for value in values if low <= value <= high]
        if len(ticks) >= 3:
            return None if len(mantissas) == 1 else ticks
    return [float(t) for t in MaxNLocator(nbins=4).tick_values(low, high) if low <= t <= high]


def save_figure(fig: Any, path: Path) -> Path:
    """Laid out (tight, unless the figure has its own layout engine), then written as every
    figure is (`plots.write_figure`)."""
    from knn_cli.plots import write_figure

    if fig.get_layout_engine() is None:
        fig.tight_layout()
    return write_figure(fig, path)


def loss_curves_figure(sweep_dir: Path, spec: GridSpec, records: Sequence[TrialRecord]) -> Path:
    return save_figure(draw_loss_curves(spec, records), sweep_dir / "loss_curves.png")


def draw_loss_curves(spec: GridSpec, records: Sequence[TrialRecord]) -> Any:
    """One panel per cell (rows: depth and BN; columns: sigma) with the loss curves, all on one
    y scale from 0: a cell that never leaves chance (ln 10) must look flat beside one that
    learns, not fill its panel with the noise of its fourth decimal."""
    import matplotlib.pyplot as plt

    from knn_cli.config_diff import training_settings
    from knn_cli.plots import DPI

    cells = by_cell(records)
    rows = [(k, bn) for k in spec.depths for bn in spec.batch_norms]
    width, height = PANEL_SIZE
    fig, axes = plt.subplots(
        len(rows), len(spec.sigmas),
        figsize=(max(width * len(spec.sigmas), 8.0), height * len(rows) + 1.2),
        dpi=DPI, squeeze=False, sharex=True, sharey=True, layout="constrained",
    )  # fmt: skip
    metrics = {key: [trial_metrics(r) for r in found] for key, found in cells.items()}
    finite = [
        m["loss"]
        for runs in metrics.values()
        for ms in runs
        for m in ms
        if math.isfinite(m["loss"])
    ]
    top = min(max(finite, default=CHANCE_LOSS), LOSS_CAP)
    for (depth, batch_norm), row_axes in zip(rows, axes, strict=True):
        for sigma, ax in zip(spec.sigmas, row_axes, strict=True):
            key = (depth, batch_norm, float(sigma))
            _loss_panel(ax, metrics.get(key, []))
            ax.set_title(
                f"k={depth}, {bn_label(batch_norm)}, sigma={sigma:g}\n"
                f"{_outcome(cells.get(key, []))}",
                fontsize=8,
            )
    axes[0][0].set_ylim(0.0, 1.05 * top)
    for ax in axes.flat:
        ax.label_outer()
    labelled: dict[str, Any] = {}  # one entry per label: every seed draws its own lines
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            labelled.setdefault(label, handle)
    if labelled:
        fig.legend(labelled.values(), labelled.keys(), loc="outside lower center",
                   ncols=len(labelled), fontsize=9)  # fmt: skip
    config = records[0].trial.config if records else spec.base
    n_s = next((r.get("n_s") for r in records if r.get("n_s")), None)
    cut = f"; loss above {LOSS_CAP:.2f} is cut off" if max(finite, default=0) > LOSS_CAP else ""
    seeds = f"seed {spec.seed}" if spec.seeds == 1 else (
        f"seeds {spec.seed}-{spec.seed + spec.seeds - 1}, a line each, drawn alike"
    )  # fmt: skip
    fig.suptitle(
        "Init sensitivity: loss from a normal(0, sigma) init, one y scale for all cells"
        f"{cut}\n{', '.join(training_settings(config, n_s))}, {seeds}",
        fontsize=11,
    )
    return fig


def _outcome(records: Sequence[TrialRecord]) -> str:
    shown = grid_cell(records)
    if shown is None:
        return "not run"
    return f"test acc {shown}" if any(r.finished for r in records) else shown


def trial_metrics(record: TrialRecord) -> list[dict[str, Any]]:
    """A trial's metrics.csv rows; none for a trial not started or whose file is gone."""
    if record.folder is None:
        return []
    try:
        return read_metrics(record.folder)
    except RunFolderError:
        return []


def _loss_panel(ax: Any, runs: Sequence[Sequence[dict[str, Any]]]) -> None:
    """Each seed's training and validation loss (the seeds' lines alike, thinner when several)."""
    from knn_cli.plots import draw_curves

    runs = [metrics for metrics in runs if metrics]
    if not runs:
        ax.text(0.5, 0.5, "no metrics", ha="center", va="center", transform=ax.transAxes)
        return
    for metrics in runs:
        draw_curves(ax, metrics, "loss", legend=False, width=1.5 if len(runs) == 1 else 0.9)
    ax.axhline(CHANCE_LOSS, color="gray", linestyle=":", linewidth=1, label="chance (ln 10)")
