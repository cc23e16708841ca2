"""The report's section "The usable rates": each network's learning-rate range test (`knn
lr-range`, 2 seeds), how far batch norm widens the rates at which a network learns, whether the
study's bounds [1e-5, 0.1] lie inside what each test suggests, the 3-layer BN network retrained
at its suggested bounds, and the case section 5 left open: 9 layers without batch norm from
normal(0, 0.1), which stays at chance at the study's eta_max.

Every sentence is computed from the part's folders, as section 5's are.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from knn_cli.formatting import mean_and_spread
from knn_cli.lr_range import COLLAPSE_SHARE, MIN_POINTS, PLATEAU_GAP, RISE_SHARE
from knn_cli.range_plots import DrawnTest, draw_range_tests, read_drawn
from knn_cli.runs import summary_or_empty
from knn_cli.study.parts import (
    ALLOWED,
    RANGE_HIGH,
    RANGE_LOW,
    RANGE_NETWORKS,
    RANGE_POINTS,
    RANGE_SEEDS,
    RATES,
    RETRAIN_FOLDER,
    SIGMA_CASE,
    STUDY_RATIO,
    SUGGESTED,
    TITLES,
)
from knn_cli.study.render import NOT_RUN, Block, Figure, Section, Table, Text
from knn_cli.sweeps.config_runs import read_config_sweep
from knn_cli.sweeps.folder import TrialRecord

STUDY_BOUNDS = (1e-5, 0.1)  # the assignment's eta_min and eta_max, in every config
AT_CHANCE = 0.12  # test accuracy at most this is chance for 10 classes (as section 5 says)
LABELS = {
    "3layer": "3 layers, no BN",
    "3layer_bn": "3 layers, BN",
    "9layer": "9 layers, no BN",
    "9layer_bn": "9 layers, BN",
    SIGMA_CASE: "9 layers, no BN, sigma 0.1",
}


@dataclass(frozen=True)
class Rates:
    """The part's folders as read: each network's range test (None: not run yet) and the
    retrains at the suggested bounds."""

    tests: Mapping[str, DrawnTest | None]
    retrains: tuple[TrialRecord, ...]


def read_rates(folder: Path) -> Rates:
    tests: dict[str, DrawnTest | None] = {}
    for name in RANGE_NETWORKS:
        where = folder / f"range-{name}"
        has_summary = bool(summary_or_empty(where).get("suggested") is not None)
        tests[name] = read_drawn(where, LABELS[name]) if has_summary else None
    retrain = folder / RETRAIN_FOLDER
    retrains = read_config_sweep(retrain) if retrain.is_dir() else ()
    return Rates(tests, tuple(retrains))


def draw_rates(rates: Rates) -> Any:
    tests = [test for test in rates.tests.values() if test is not None]
    return draw_range_tests(tests, "Learning-rate range tests of the study's networks")


def value(test: DrawnTest | None, key: str) -> float | None:
    """A suggestion over the test's seeds (their geometric mean), None where there is none."""
    if test is None:
        return None
    return ((test.summary.get("suggested") or {}).get(key) or {}).get("value")


def spread_text(test: DrawnTest | None, key: str) -> str:
    """'0.53 (0.49-0.57)': the geometric mean over seeds and the seeds' lowest and highest."""
    if test is None:
        return NOT_RUN
    found = (test.summary.get("suggested") or {}).get(key) or {}
    if found.get("value") is None:
        return "-" if key != "collapse" else "never"
    if found["low"] == found["high"]:
        return f"{found['value']:.3g}"
    return f"{found['value']:.3g} ({found['low']:.2g}-{found['high']:.2g})"


def peak_text(test: DrawnTest | None) -> str:
    """Each seed's highest validation accuracy in the test (one point's, unsmoothed)."""
    if test is None:
        return NOT_RUN
    seeds = sorted({row["seed"] for row in test.rows})
    peaks = [
        max(
            (r["val_accuracy"] for r in test.rows if r["seed"] == seed and r["val_accuracy"]),
            default=0.0,
        )
        for seed in seeds
    ]
    return ", ".join(f"{100 * p:.1f}%" for p in peaks) or "-"


def rates_table(rates: Rates) -> Table:
    headers = (
        "network",
        "eta_min",
        "eta_max",
        "learns up to",
        "collapses at",
        "loss diverges after",
        "peak val accuracy",
    )
    rows = tuple(
        (
            LABELS[name],
            spread_text(test, "eta_min"),
            spread_text(test, "eta_max"),
            spread_text(test, "still_learns"),
            spread_text(test, "collapse"),
            spread_text(test, "last_stable"),
            peak_text(test),
        )
        for name, test in rates.tests.items()
    )
    caption = (
        f"Range tests, {RANGE_SEEDS} seeds each: the geometric mean over seeds (lowest-highest)"
    )
    return Table(headers, rows, caption)


def widening_sentence(rates: Rates) -> str | None:
    """How many times larger the largest rate that still learns is with batch norm, per depth."""
    parts, ratios = [], []
    for depth in (3, 9):
        without = value(rates.tests.get(f"{depth}layer"), "still_learns")
        with_bn = value(rates.tests.get(f"{depth}layer_bn"), "still_learns")
        if without is None or with_bn is None:
            continue
        ratios.append(with_bn / without)
        parts.append(
            f"{with_bn / without:.1f} times on {depth} layers ({with_bn:.2g} against {without:.2g})"
        )
    if not parts:
        return None
    if all(r > 1 for r in ratios):
        direction = "the direction Bjorck et al. (2018) report: batch norm allows larger rates"
    elif all(r <= 1 for r in ratios):
        direction = (
            "against the direction Bjorck et al. (2018) report: here it allows no larger rate"
        )
    else:
        direction = "only in part the direction Bjorck et al. (2018) report (larger rates with it)"
    return (
        "The largest rate at which a network still learns, before its validation accuracy "
        "collapses, is " + " and ".join(parts) + f" with batch norm: {direction}."
    )


def collapse_sentence(rates: Rates) -> str | None:
    """For each network, whether it stops learning before its loss diverges, and by how much:
    a network whose units die falls to chance with its loss near ln 10, no blow-up."""
    parts, first = [], True
    for name, test in rates.tests.items():
        collapse, diverges = value(test, "collapse"), value(test, "last_stable")
        if collapse is None:
            continue
        first = first and (diverges is None or collapse < diverges)
        if diverges is None:
            parts.append(f"{LABELS[name]} collapses at {collapse:.2g}, its loss never diverging")
        else:
            parts.append(
                f"{LABELS[name]} collapses at {collapse:.2g}, its loss diverging only after "
                f"{diverges:.2g} ({diverges / collapse:.0f} times higher)"
            )
    if not parts:
        return None
    head = (
        "Each stops learning before its loss blows up, so the loss's divergence test alone "
        "would put the top of the usable rates too high: "
        if first
        else "Where each stops learning, and where its loss blows up: "
    )
    return head + "; ".join(parts) + "."


def bounds_sentence(rates: Rates) -> str | None:
    """Whether the study's [1e-5, 0.1] lies inside each network's suggested range."""
    low, high = STUDY_BOUNDS
    words = []
    for name, test in rates.tests.items():
        eta_min, eta_max = value(test, "eta_min"), value(test, "eta_max")
        if eta_min is None or eta_max is None:
            continue
        learns = value(test, "still_learns")
        top = "above" if high > eta_max else "inside"
        if high > eta_max and learns is not None and high > learns:
            top = "above, and past where it collapses"
        bottom = f"below it by a factor of {eta_min / low:.0f}" if low < eta_min else "inside"
        words.append(
            f"{LABELS[name]}: suggested [{eta_min:.2g}, {eta_max:.2g}], the study's eta_min "
            f"{bottom}, its eta_max {top}"
        )
    if not words:
        return None
    return (
        f"The study's bounds [{low:g}, {high:g}] against each suggested range: "
        + "; ".join(words)
        + ". Its eta_min lies far below where any network starts to learn: the schedule spends "
        "the lower part of each cycle at rates that, in a range test, move nothing."
    )


def retrain_sentence(rates: Rates, configs: Sequence[TrialRecord]) -> str | None:
    """3layer_bn at its suggested bounds against the study's bounds (the four configs' part)."""
    ours = [r for r in rates.retrains if r.trial.config["name"] == f"3layer_bn-{SUGGESTED}"]
    theirs = [r for r in configs if r.trial.config["name"] == "3layer_bn"]
    a, b = _accuracies(ours), _accuracies(theirs)
    if not a:
        return None
    bounds = ours[0].trial.config["training"]
    sentence = (
        f"Retrained at its suggested bounds [{bounds['eta_min']:.3g}, {bounds['eta_max']:.3g}], "
        f"the 3-layer BN network reaches {mean_and_spread(a)} test accuracy ({len(a)} seeds)"
    )
    if not b:
        return sentence + "; the four configs' part has not run, so there is nothing to compare."
    return (
        f"{sentence}, against {mean_and_spread(b)} with the study's bounds ({len(b)} seeds): "
        f"{_verdict(a, b)}."
    )


def _accuracies(records: Sequence[TrialRecord]) -> list[float]:
    return [
        float(r.get("test_accuracy"))
        for r in records
        if r.finished and r.get("test_accuracy") is not None
    ]


def _verdict(a: Sequence[float], b: Sequence[float]) -> str:
    """The difference of the means, and whether it exceeds two standard deviations of it."""
    difference = 100 * (statistics.fmean(a) - statistics.fmean(b))
    if len(a) < 2 or len(b) < 2:
        return f"{difference:+.2f} points (too few seeds to tell apart)"
    sd = 100 * math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
    two_sd = f"two standard deviations of the difference ({2 * sd:.2f})"
    if abs(difference) <= 2 * sd:
        return f"{difference:+.2f} points, within {two_sd}: not told apart"
    better = "better" if difference > 0 else "worse"
    return f"{difference:+.2f} points, {better} by more than {two_sd}"


def sigma_sentence(rates: Rates, grid: Sequence[TrialRecord]) -> str | None:
    """The case section 5 left open: its range test, and its retrain at the rates it allows."""
    test = rates.tests.get(SIGMA_CASE)
    if test is None:
        return None
    learns, peak = value(test, "still_learns"), peak_text(test)
    high = STUDY_BOUNDS[1]
    if learns is None:
        stops = [s["diverged_eta"] for s in test.summary.get("seeds", []) if s.get("diverged_eta")]
        lowest = min((row["smoothed_loss"] for row in test.rows), default=math.nan)
        until = f"up to where its loss diverged ({min(stops):.2g})" if stops else "to the end"
        head = (
            "9 layers without batch norm from normal(0, 0.1): its range test suggests nothing. "
            f"At every rate from {RANGE_LOW:g} {until} its smoothed loss stays at "
            f"{lowest:.3f} or above, ln 10 = 2.303 being chance, and its validation accuracy "
            f"peaks at {peak}: no rate moves it within the test's steps"
        )
    else:
        where = "below" if learns < high else "above"
        head = (
            f"9 layers without batch norm from normal(0, 0.1): its range test learns up to "
            f"{learns:.2g} (peak validation accuracy {peak}), {where} the study's eta_max {high:g}"
        )
    ours = [
        r
        for r in rates.retrains
        if r.trial.config["name"] in (f"{SIGMA_CASE}-{SUGGESTED}", f"{SIGMA_CASE}-{ALLOWED}")
    ]
    accuracies = _accuracies(ours)
    cell = [
        r
        for r in grid
        if len(r.trial.config["model"]["hidden"]) == 8
        and not r.trial.config["model"]["batch_norm"]
        and r.trial.config["model"]["sigma"] == 0.1
    ]
    theirs = _accuracies(cell)
    if not accuracies:
        return head + "; it was not retrained (its test allowed no rate: nothing diverged)."
    bounds = ours[0].trial.config["training"]
    learned = statistics.fmean(accuracies) > AT_CHANCE
    verdict = "it learns" if learned else "it stays at chance"
    grid_text = (
        f", against {mean_and_spread(theirs)} at the study's bounds (section 4)" if theirs else ""
    )
    how = (
        "its suggested bounds"
        if ours[0].trial.config["name"].endswith(SUGGESTED)
        else "a peak a decade below the lowest rate at which its loss diverged, and the study's "
        f"ratio of {STUDY_RATIO:,.0f} below it"
    )
    return (
        f"{head}. Retrained at {how}, [{bounds['eta_min']:.3g}, "
        f"{bounds['eta_max']:.3g}]: {mean_and_spread(accuracies)} test accuracy "
        f"({len(accuracies)} seeds){grid_text}: {verdict} at a peak rate the test allows."
    )


def rates_section(study: Any, figures: Mapping[str, Figure], number: int) -> Section:
    """The section: what was run, the figure, the table, and what they say."""
    title = f"{number}. {TITLES[RATES]}"
    intro = Text(
        "Each network's learning-rate range test (Smith, 2017, section 3.3; `knn lr-range`): "
        f"from its init, the rate rises exponentially from {RANGE_LOW:g} to {RANGE_HIGH:g} over "
        "1,000 steps (2.2 epochs; 200 in a quick study) while each step's training loss is "
        "smoothed (an exponential moving average, beta 0.98, bias-corrected) and the "
        f"validation set measured at {RANGE_POINTS} points; {RANGE_SEEDS} seeds each, side by "
        "side. Bjorck "
        "et al. (2018) argue that batch norm helps mainly because it lets a network train at "
        "larger rates; this section measures how far it widens them here."
    )
    rates: Rates | None = study.rates
    if rates is None or not any(rates.tests.values()):
        return Section(title, "rates", (intro, Text(f"{NOT_RUN}: no range test has finished yet.")))
    blocks: list[Block] = [intro]
    if "rates-range" in figures:
        blocks.append(figures["rates-range"])
    blocks.append(rates_table(rates))
    grid = study.grid.records if study.grid is not None else ()
    for sentence in (
        widening_sentence(rates),
        collapse_sentence(rates),
        bounds_sentence(rates),
        retrain_sentence(rates, study.configs),
        sigma_sentence(rates, grid),
    ):
        if sentence:
            blocks.append(Text(sentence))
    blocks.append(
        Text(
            "Measured here on fully connected networks of 3 and 9 layers trained with plain "
            "SGD and a cyclical rate; Bjorck et al. measured a 110-layer residual network on "
            "CIFAR-10 trained with momentum, weight decay and augmentation, so the two agree or "
            "disagree in direction only.",
            "note",
        )
    )
    blocks.append(
        Text(
            f"The rules, on each seed's curves: eta_min is the first rate at which the validation "
            f"accuracy (a centred average of 5 points) has climbed {RISE_SHARE:.0%} of the way "
            f"from its start to its peak; eta_max the first at which it comes within "
            f"{100 * PLATEAU_GAP:.0f} point of its peak; the collapse the first rate past the "
            f"peak at which it falls back below {COLLAPSE_SHARE:.0%} of its climb ('learns up "
            "to' is the point before); the loss diverges once its smoothed value passes 4 times "
            f"its lowest. A test needs at least {MIN_POINTS} validation points to suggest "
            "anything.",
            "note",
        )
    )
    return Section(title, "rates", tuple(blocks))
