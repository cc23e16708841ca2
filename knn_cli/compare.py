"""`knn compare`: runs side by side -- the settings they differ in, what they reached, and their
cost, loss and accuracy curves in one figure.

Runs are told apart by their differences only: with twenty settings each, a table of all of them
hides the one that matters. The configs are compared with every default filled in, so a run
whose config file left a setting out compares equal to one that spelled the default.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from knn_cli.config_diff import (
    differences_text,
    differing_settings,
    setting_text,
    settings_text,
    short_names,
)
from knn_cli.errors import KnnError, RunFolderError
from knn_cli.kinds import curves_of
from knn_cli.kinds.run import run_config, run_status
from knn_cli.runs import (
    atomic_write_text,
    read_diagnostics,
    read_metrics,
    summary_or_empty,
)

SPLIT_STYLES = (("train", "training", "--"), ("val", "validation", "-"))
# Cost and loss above this many times the largest starting value are cut off: a run that
# diverged, or spiked to 1e5 on its way, must not flatten the others into a line.
SPIKE_FACTOR = 3.0
LONGEST_LABEL = 60  # characters of differences a legend entry may take; else runs go by folder
LEGEND_CHARACTERS = 180  # fit on one legend line of the figure's width at fontsize 9


@dataclass(frozen=True)
class Compared:
    """One run as compared: `shown` is its folder relative to the runs' common parent."""

    folder: Path
    shown: str
    config: dict[str, Any]
    summary: dict[str, Any]
    metrics: list[dict[str, Any]]
    diagnostics: list[dict[str, Any]]  # diagnostics.csv's rows; [] where the run has none


# -- reading --------------------------------------------------------------------------------------


def run_folders(path: Path) -> list[Path]:
    """The run folders `path` stands for: itself, or a sweep's trials that have started."""
    if not path.exists():
        raise RunFolderError(f"{path} does not exist")
    return curves_of(path)


def read_compared(paths: Sequence[Path]) -> list[Compared]:
    """Every run the paths stand for, each once, in the order given."""
    folders: dict[Path, Path] = {}
    for path in paths:
        for folder in run_folders(path):
            folders.setdefault(folder.resolve(), folder)
    parent = common_parent(folders)
    compared = []
    for resolved, folder in folders.items():
        try:
            config = run_config(folder)
        except KnnError as error:
            raise RunFolderError(f"{folder}: {error}") from None
        compared.append(
            Compared(
                folder=folder,
                shown=str(resolved.relative_to(parent)),
                config=config,
                summary=summary_or_empty(folder),
                metrics=read_metrics(folder),
                diagnostics=read_diagnostics(folder),
            )
        )
    return compared


def common_parent(folders: Iterable[Path]) -> Path:
    return Path(os.path.commonpath([folder.parent for folder in folders]))


# -- settings -------------------------------------------------------------------------------------


def difference_labels(runs: Sequence[Compared], keys: Sequence[str]) -> list[str]:
    """Each run named by its values of the differing settings; every run by its folder instead
    when some of those are too long to read in a legend or do not tell two runs apart (one
    naming scheme per figure: a mix of the two reads as two kinds of run)."""
    names = short_names(keys)
    texts = [differences_text(r.config, keys, names) for r in runs]
    readable = all(texts) and max(map(len, texts)) <= LONGEST_LABEL
    return texts if readable and len(set(texts)) == len(texts) else [r.shown for r in runs]


def shared_text(runs: Sequence[Compared], differing: Sequence[str]) -> str:
    """The key settings all the runs have in common, in the words of the run plots' titles."""
    common = {
        section: {k: v for k, v in values.items() if f"{section}.{k}" not in differing}
        for section, values in runs[0].config.items()
        if isinstance(values, Mapping)
    }
    if "model.sigma" in differing:  # the words for a normal init name its sigma
        common.get("model", {}).pop("init", None)
    return settings_text(common)


# -- the table ------------------------------------------------------------------------------------


def comparison_table(runs: Sequence[Compared]) -> str:
    """One row per run: its values of the differing settings, status, accuracies, wall time."""
    from knn_cli.formatting import duration, markdown_table, percent

    keys = differing_settings([r.config for r in runs])
    names = short_names(keys)
    headers = ["run", *(names[k] for k in keys), "status", "test", "val", "best val", "wall time"]
    rows = [
        [
            run.shown,
            *(setting_text(run.config, k) for k in keys),
            run_status(run.summary),
            percent(run.summary.get("test_accuracy")),
            percent(run.summary.get("final_val_accuracy")),
            percent(run.summary.get("best_val_accuracy")),
            duration(run.summary.get("wall_seconds")),
        ]
        for run in runs
    ]
    return markdown_table(headers, rows)


def comparison_text(runs: Sequence[Compared], figure_name: str, layers: bool = False) -> str:
    """compare.md: what was compared, what the runs share, the table and the figure."""
    keys = differing_settings([r.config for r in runs])
    parent = common_parent([run.folder.resolve() for run in runs])
    shared = shared_text(runs, keys)
    notes = [f"Runs under {parent}."]
    if shared:
        notes.append(f"The same in all: {shared}.")
    if not keys:
        notes.append("Their configs are the same, the seed included.")
    text = (
        f"# {len(runs)} runs compared\n\n{' '.join(notes)}\n\n{comparison_table(runs)}\n"
        f"![cost, loss and accuracy of each run]({figure_name})\n"
    )
    if layers:
        name = layers_figure_path(Path(figure_name)).name
        what = "gradient norm and activation scale by layer, at step 0 and at the end"
        text += f"\n![{what}]({name})\n"
    return text


# -- the figure -----------------------------------------------------------------------------------


def draw_comparison(runs: Sequence[Compared]) -> Any:
    """Cost, loss and accuracy against update step, a colour per run, training dashed and
    validation solid, the shared settings in the title and the differing ones in the legend."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    from knn_cli.plots import CURVES, DPI, FIGSIZE

    keys = differing_settings([r.config for r in runs])
    labels = difference_labels(runs, keys)
    colours = [_colour(index, len(runs)) for index in range(len(runs))]
    # curves[key][run][split]: (step, value) points
    curves = {
        key: [{split: _points(run, split, key) for split, _, _ in SPLIT_STYLES} for run in runs]
        for key, _ in CURVES
    }
    ends = {  # where a curve that ends at inf or nan (a diverged run) was last seen
        (key, index, split): _last_finite(points)
        for key, by_run in curves.items()
        for index, by_split in enumerate(by_run)
        for split, points in by_split.items()
        if points and not math.isfinite(points[-1][1])
    }
    # The legend: a colour per run, then a line style per split (not on the axes, so that the
    # axes hold one line per run and split, and nothing else).
    handles = [Line2D([], [], color=c, label=t) for c, t in zip(colours, labels, strict=True)]
    handles += [Line2D([], [], color="0.4", linestyle=ls, label=n) for _, n, ls in SPLIT_STYLES]
    if any(end is not None for end in ends.values()):
        handles.append(Line2D([], [], color="0.4", marker="x", linestyle="", label="diverged"))
    longest = max(len(label) for label in labels) + 8  # the line sample and the gap
    columns = max(1, min(len(handles), 4, LEGEND_CHARACTERS // longest))
    fig, axes = plt.subplots(
        1, len(CURVES),
        figsize=(1.8 * FIGSIZE[0], 0.85 * FIGSIZE[1] + 0.25 * math.ceil(len(handles) / columns)),
        dpi=DPI, layout="constrained",
    )  # fmt: skip
    for ax, (key, title) in zip(axes, CURVES, strict=True):
        for index, (label, colour) in enumerate(zip(labels, colours, strict=True)):
            for split, name, style in SPLIT_STYLES:
                points = curves[key][index][split]
                if not points:
                    continue
                steps, values = zip(*points, strict=True)
                ax.plot(steps, values, color=colour, linestyle=style, label=f"{label}, {name}")
                end = ends.get((key, index, split))
                if end is not None:  # a scatter, not a line: the axes' lines stay the curves
                    ax.scatter(*end, color=colour, marker="x", s=40, zorder=3)
        cut = _limit_y(ax, runs, key, cap=key != "accuracy")
        note = f" (above {cut:.3g} cut off)" if cut is not None else ""
        ax.set_title(title + note, fontsize=11)
        ax.set_xlabel("update step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(key)
        if key == "accuracy":  # as every other figure and table shows it
            ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.grid(alpha=0.3)
    fig.legend(handles=handles, loc="outside lower center", ncols=columns, fontsize=9)
    shared = shared_text(runs, keys)
    fig.suptitle(f"{len(runs)} runs compared" + (f"; all: {shared}" if shared else ""), fontsize=11)
    return fig


def _points(run: Compared, split: str, key: str) -> list[tuple[int, float]]:
    return [(m["step"], m[key]) for m in run.metrics if m["split"] == split]


def _last_finite(points: Sequence[tuple[int, float]]) -> tuple[int, float] | None:
    finite = [point for point in points if math.isfinite(point[1])]
    return finite[-1] if finite else None


def _colour(index: int, count: int) -> Any:
    import matplotlib

    if count <= 10:
        return matplotlib.colormaps["tab10"](index)
    # tab20 pairs a strong and a light shade of each hue: all strong ones first, then the light.
    return matplotlib.colormaps["tab20"]((2 * index) % 20 + (index % 20) // 10)


def _limit_y(ax: Any, runs: Sequence[Compared], key: str, *, cap: bool) -> float | None:
    """Cut off values above SPIKE_FACTOR times the largest start (returning where), and widen a
    flat range to a tenth of its size, as the run plots do: a loss steady at 2.3026 must look
    flat, not fill the panel."""
    from knn_cli.plots import MIN_RELATIVE_SPAN

    values = [m[key] for r in runs for m in r.metrics if math.isfinite(m[key])]
    if not values:
        return None
    low, high = min(values), max(values)
    starts = [r.metrics[0][key] for r in runs if r.metrics and math.isfinite(r.metrics[0][key])]
    top = SPIKE_FACTOR * max(starts) if cap and starts and max(starts) > 0 else math.inf
    cut = top if high > top > low else None
    high = min(high, top)
    least = MIN_RELATIVE_SPAN * max(abs(low), abs(high))
    narrow = high - low < least
    if narrow:
        low, high = (low + high - least) / 2, (low + high + least) / 2
    if narrow or cut is not None:
        margin = 0.05 * (high - low)
        ax.set_ylim(low - margin, high + margin)
    return cut


def layers_figure_path(figure: Path) -> Path:
    """Where the layers' comparison goes, beside the curves' figure."""
    return figure.with_name(f"{figure.stem}_layers{figure.suffix}")


def draw_layer_comparison(runs: Sequence[Compared]) -> Any | None:
    """Gradient norm and activation scale by layer, at step 0 and at the end, a colour per run,
    for the runs that measured their layers (None if none did): for instance 9 layers with
    batch norm against 9 without."""
    from knn_cli.plots import draw_layer_profiles, has_activations

    keys = differing_settings([r.config for r in runs])
    labels = difference_labels(runs, keys)
    measured = [
        (label, _colour(index, len(runs)), run.diagnostics)
        for index, (label, run) in enumerate(zip(labels, runs, strict=True))
        if has_activations(run.diagnostics)
    ]
    if not measured:
        return None
    shared = shared_text(runs, keys)
    title = f"What the layers see, {len(measured)} runs" + (f"; all: {shared}" if shared else "")
    return draw_layer_profiles(measured, title, steps=(0, None))


def write_comparison(runs: Sequence[Compared], figure: Path) -> tuple[str, list[Path]]:
    """The figure at `figure`, the layers' figure beside it where the runs measured their
    layers, and the table (same name, .md); returns the table and the files written."""
    from knn_cli.sweeps.figures import save_figure

    figure.parent.mkdir(parents=True, exist_ok=True)
    save_figure(draw_comparison(runs), figure)
    written = [figure]
    layers = draw_layer_comparison(runs)
    if layers is not None:
        written.append(save_figure(layers, layers_figure_path(figure)))
    markdown = figure.with_suffix(".md")
    atomic_write_text(markdown, comparison_text(runs, figure.name, layers is not None))
    return comparison_table(runs), [*written, markdown]
