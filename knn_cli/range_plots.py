"""Figures of range tests (`knn lr-range`): one test's `lr_range.png`, and the overlay of several
that `knn compare` draws (e.g. a network with batch norm against it without). Both read only a
test folder's files, so any test can be drawn again later."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter, LogLocator

from knn_cli.kinds.range_test import RANGE_FIGURE, read_range_rows
from knn_cli.plots import DPI, write_figure
from knn_cli.runs import SUMMARY_FILE, atomic_write_text, read_summary

FIGSIZE = (9.0, 7.5)
# The loss axis stops at this multiple of a curve's start: past it a diverging loss would
# squash the part worth reading into a line.
LOSS_CEILING = 1.6


@dataclass(frozen=True)
class DrawnTest:
    """One range test as drawn: its label, its rows of lr_range.csv and its summary."""

    label: str
    rows: Sequence[Mapping[str, Any]]
    summary: Mapping[str, Any]


def read_drawn(run_dir: Path, label: str | None = None) -> DrawnTest:

    summary = read_summary(run_dir) if (run_dir / SUMMARY_FILE).is_file() else {}
    return DrawnTest(
        label or str(summary.get("name", run_dir.name)), read_range_rows(run_dir), summary
    )


def plot_range_test(run_dir: Path) -> Path:
    """lr_range.png: the loss and the validation accuracy against the rate, every seed, the
    suggestions marked, and the constant-rate grid where it was run."""

    test = read_drawn(run_dir)
    schedule = test.summary.get("schedule", {})
    title = (
        f"Learning-rate range test: {test.label}\n{schedule.get('shape', '')} rise over "
        f"{schedule.get('steps', '?')} steps, {len(test.summary.get('seeds', []))} seed(s)"
    )
    return write_figure(draw_range_tests([test], title, marks=True), run_dir / RANGE_FIGURE)


def draw_range_tests(tests: Sequence[DrawnTest], title: str, *, marks: bool = False) -> Any:
    """Two panels sharing a log axis of the rate: the smoothed training loss (each step's loss
    faint behind it) and the validation accuracy. With `marks` (one test): its suggested range
    shaded, the steepest descent and the divergence marked, the config's own bounds dashed and
    the grid's constant-rate runs drawn as squares."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=FIGSIZE, dpi=DPI, sharex=True)
    colours = plt.get_cmap("tab10")
    ceiling = 0.0
    for index, test in enumerate(tests):
        colour = colours(index % 10)
        seeds = sorted({row["seed"] for row in test.rows})
        for k, seed in enumerate(seeds):
            rows = [row for row in test.rows if row["seed"] == seed]
            label = test.label if k == 0 else None
            if len(tests) == 1:
                colour = colours(k % 10)
                label = f"seed {seed}"
            etas = [row["eta"] for row in rows]
            if marks:
                top.plot(etas, [row["loss"] for row in rows], color=colour, lw=0.5, alpha=0.25)
            top.plot(
                etas, [row["smoothed_loss"] for row in rows], color=colour, lw=1.6, label=label
            )
            points = [row for row in rows if row["val_accuracy"] is not None]
            bottom.plot(
                [row["eta"] for row in points],
                [row["val_accuracy"] for row in points],
                color=colour,
                lw=1.4,
                marker=".",
                ms=3,
                label=label,
            )
            if rows:
                ceiling = max(ceiling, LOSS_CEILING * rows[0]["smoothed_loss"])
    if marks and tests:
        _mark(top, bottom, tests[0].summary)
    top.set_ylabel("training loss (smoothed)")
    top.set_ylim(bottom=0.0, top=ceiling if math.isfinite(ceiling) and ceiling > 0 else None)
    bottom.set_ylabel("validation accuracy")
    bottom.set_xlabel("learning rate (log scale)")
    bottom.set_xscale("log")
    bottom.xaxis.set_major_locator(LogLocator(base=10.0))
    bottom.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    top.legend(fontsize=8, loc="upper left")
    bottom.legend(fontsize=8, loc="upper left")
    fig.suptitle(title, fontsize=11)
    fig.subplots_adjust(left=0.09, right=0.97, top=0.9, bottom=0.08, hspace=0.08)
    return fig


def _mark(top: Any, bottom: Any, summary: Mapping[str, Any]) -> None:
    suggested = summary.get("suggested") or {}
    low = (suggested.get("eta_min") or {}).get("value")
    high = (suggested.get("eta_max") or {}).get("value")
    if low is not None and high is not None:
        top.axvspan(low, high, color="tab:green", alpha=0.12, lw=0)
        bottom.axvspan(
            low,
            high,
            color="tab:green",
            alpha=0.12,
            lw=0,
            label=f"suggested {low:.2g} to {high:.2g}",
        )
    steepest = (suggested.get("steepest") or {}).get("value")
    if steepest is not None:
        top.axvline(
            steepest, color="tab:purple", ls=":", lw=1.2, label=f"steepest descent {steepest:.2g}"
        )
    for seed in summary.get("seeds", []):
        if seed.get("diverged_eta") is not None:
            top.axvline(seed["diverged_eta"], color="tab:red", ls=":", lw=1.0)
    stops = [s["diverged_eta"] for s in summary.get("seeds", []) if s.get("diverged_eta")]
    if stops:
        top.axvline(
            min(stops), color="tab:red", ls=":", lw=1.0, label=f"diverged at {min(stops):.2g}"
        )
    collapses = [
        s["suggestions"]["collapse"]
        for s in summary.get("seeds", [])
        if (s.get("suggestions") or {}).get("collapse")
    ]
    over_seeds = (suggested.get("collapse") or {}).get("value")
    for k, rate in enumerate(collapses):
        label = f"accuracy collapses (over seeds: {over_seeds:.2g})" if k == 0 else None
        bottom.axvline(rate, color="tab:red", ls=":", lw=1.0, label=label)
    bounds = summary.get("config_bounds") or {}
    for key in ("eta_min", "eta_max"):
        value = bounds.get(key)
        if value:
            bottom.axvline(value, color="0.4", ls="--", lw=1.0)
    if bounds.get("eta_max"):
        bottom.plot(
            [],
            [],
            color="0.4",
            ls="--",
            label=f"config's bounds {bounds['eta_min']:g} to {bounds['eta_max']:g}",
        )
    grid = [g for g in summary.get("grid", []) if g.get("final_val_accuracy") is not None]
    if grid:
        bottom.plot(
            [g["eta"] for g in grid],
            [g["final_val_accuracy"] for g in grid],
            color="black",
            marker="s",
            ms=5,
            lw=0.8,
            label="constant rate, same steps (final)",
        )


def compare_range_tests(folders: Sequence[Path], figure: Path) -> tuple[str, list[Path]]:
    """`knn compare` of range tests: their curves in one figure, each test labelled by the
    settings that tell it apart (e.g. batch_norm=true against false), and a table of what each
    suggests."""
    from knn_cli.config_diff import differences_text, differing_settings, short_names
    from knn_cli.formatting import markdown_table
    from knn_cli.kinds.run import run_config

    configs = [run_config(folder) for folder in folders]
    keys = differing_settings(configs)
    names = short_names(keys)
    labels = [
        differences_text(c, keys, names) or folder.name
        for c, folder in zip(configs, folders, strict=True)
    ]
    if len(set(labels)) < len(labels):
        labels = [folder.name for folder in folders]
    tests = [read_drawn(folder, label) for folder, label in zip(folders, labels, strict=True)]
    title = "Learning-rate range tests: " + (
        ", ".join(sorted({t.summary.get("name", "") for t in tests}))
    )
    figure.parent.mkdir(parents=True, exist_ok=True)
    written = [write_figure(draw_range_tests(tests, title), figure)]
    keys = ("eta_min", "eta_max", "still_learns", "collapse", "last_stable")
    rows = [
        [test.label, str(test.summary.get("status", "unfinished"))]
        + [suggested_text(test.summary, key) for key in keys]
        for test in tests
    ]
    table = markdown_table(
        [
            "test",
            "status",
            "eta_min",
            "eta_max",
            "learns up to",
            "collapses at",
            "loss diverges after",
        ],
        rows,
    )
    markdown = figure.with_suffix(".md")
    shown = "\n".join(f"- {t.label}: `{f}`" for t, f in zip(tests, folders, strict=True))
    atomic_write_text(markdown, f"# {title}\n\n![]({figure.name})\n\n{table}\n{shown}\n")
    return table, [*written, markdown]


def suggested_text(summary: Mapping[str, Any], key: str) -> str:
    """A suggestion over seeds, as a table shows it ("-" where there is none)."""
    value = ((summary.get("suggested") or {}).get(key) or {}).get("value")
    return "-" if value is None else f"{value:.3g}"
