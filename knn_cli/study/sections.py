"""The report's parts: one section per experiment of the study (gradient check, the four
configs, lambda search, init sensitivity), each from what `contents.py` read, every number beside
the study's own and the published range, noted in `Comparisons` for the summary at the top.
Built as blocks (render.py), touching no file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from knn_cli.config_diff import training_settings
from knn_cli.formatting import in_points, mean_and_spread, percent, seed_statistics
from knn_cli.study.contents import (
    Gradcheck,
    Study,
)
from knn_cli.study.parts import TITLES
from knn_cli.study.published import (
    PERCENT,
    Published,
    PublishedTable,
    check,
    format_published,
    format_range,
    format_value,
)
from knn_cli.study.render import (
    NOT_RUN,
    Block,
    Figure,
    Section,
    Table,
    Text,
)
from knn_cli.study.why import grid_reason
from knn_cli.sweeps.folder import TrialRecord
from knn_cli.sweeps.init_grid import CHANCE_MARGIN
from knn_cli.sweeps.lambda_fit import LambdaFit
from knn_cli.sweeps.lambda_search import search_fit
from knn_cli.sweeps.plan import bn_label
from knn_cli.sweeps.tables import by_cell

# Our search trial is set beside the study's trial nearest in lambda when that is this close.
NEAREST_FACTOR = 1.5
# Columns every comparison ends with.
PUBLISHED_HEADERS = ("study", "published range", "ours against published")


@dataclass(frozen=True)
class Comparison:
    """One of our numbers against its published one, for the summary at the top."""

    what: str
    ours: str
    published: str
    verdict: str
    category: str = ""  # inside | within the seed spread | outside (published.check)


class Comparisons:
    """Collects the comparisons as the sections are built."""

    def __init__(self, numbers: Mapping[str, Published]) -> None:
        self.numbers = numbers
        self.found: list[Comparison] = []

    def cells(
        self,
        key: str,
        ours: float | None,
        shown: str,
        aside: str = "",
        spread: float | None = None,
        noted: bool = True,
    ) -> list[str]:
        """The study's number, the published range, and the verdict for `ours` (in the entry's
        unit; None when not run; a mean over seeds with standard deviation `spread`, if
        given), noted for the summary unless not `noted` (a second look at a number)."""
        entry = self.numbers.get(key)
        if entry is None:
            return ["-", "-", "-"]
        verdict = NOT_RUN
        if ours is not None:
            found = check(ours, entry, spread)
            verdict = with_aside(found.text(), aside)
            comparison = Comparison(entry.what, shown, format_published(entry), verdict)
            if noted:
                self.found.append(replace(comparison, category=found.verdict))
        study = "-" if entry.value is None else format_value(entry.value, entry.unit)
        return [study, range_text(entry), verdict]


def range_text(entry: Published) -> str:
    """The protocol's range and who spans it, then every solution's where that is wider or
    other: '52.08-53.76% (#1, #2, #5, #7); all 8: 51.45-53.95%', linked to the sources."""
    said = []
    if entry.range is not None:
        said.append(f"{format_published(entry)} ({cited(entry.range_from)})")
    else:
        said.append("none follows the protocol")
    if entry.wider is not None and (entry.wider, entry.wider_from) != (
        entry.range,
        entry.range_from,
    ):
        span = format_range(*entry.wider, entry.unit)
        count = len(entry.wider_from)
        who = f"all {count}" if entry.range is not None else ("one" if count == 1 else f"{count}")
        said.append(f"{who}: {span} ({cited(entry.wider_from)})")
    if entry.note and entry.part != "gradcheck":  # the gradient check's note is its intro
        said.append(entry.note)
    return "; ".join(said)


def cited(keys: Sequence[str]) -> str:
    """Sources as the report cites them, linked to its list of sources."""
    names = ", ".join("the study" if key == "study" else f"#{key}" for key in keys)
    return f"[{names}](#sources)"


def not_run(study: Study, name: str) -> Text:
    """Said where a part has nothing to show yet (or its folder cannot be read)."""
    part = study.parts[name]
    if part.error:
        return Text(f"{NOT_RUN}: its folder cannot be read ({part.error})", "warning")
    why = f"; {part.message}" if part.message else ""
    if part.status == "pending" and not why:
        return Text(f"{TITLES[name]}: {NOT_RUN} yet.")
    return Text(f"{TITLES[name]}: {NOT_RUN} (status: {part.status}{why}).")


def unfinished(study: Study, name: str) -> list[Block]:
    """Said under what a part has shown when it has not finished: it may still change."""
    part = study.parts[name]
    if part.status in ("finished", "pending"):  # pending: nothing shown to qualify
        return []
    why = f": {part.message}" if part.message else ""
    return [
        Text(
            f"This part is {status_word(part.status)}{why}; shown is what it has done so "
            f"far, the rest is marked {NOT_RUN}.",
            "warning",
        )
    ]


def status_word(status: str) -> str:
    return NOT_RUN if status == "pending" else status


def record_word(record: TrialRecord) -> str:
    return percent(record.get("test_accuracy")) if record.finished else status_word(record.status)


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


# -- 1. gradient check ----------------------------------------------------------------------------

GRADCHECK_HEADERS = (
    "layers",
    "hidden",
    "variant",
    "parameters",
    "worst abs error",
    "worst rel error",
    "result",
    "published",
    "ours against published",
)


def gradcheck_section(study: Study, found: Comparisons) -> Section:
    title = f"1. {TITLES['gradcheck']}"
    entry = found.numbers["gradcheck.max_abs_error"]
    intro = Text(
        "Analytic gradients against centred differences (float64) for every parameter, at each "
        "depth, without batch norm and with it before and after the ReLU. The study checked "
        f"every gradient to 6 decimals (an absolute error {format_published(entry)}); our check "
        "also judges each parameter by its relative error (column 'result')."
    )
    if not study.gradchecks:
        return Section(title, "gradcheck", (intro, not_run(study, "gradcheck")))
    rows, worst = [], []
    for gradcheck in study.gradchecks:
        hidden = f"[{', '.join(map(str, gradcheck.hidden))}]"
        variants = _by_variant(gradcheck)
        if not variants:
            rows.append(
                (
                    f"k={gradcheck.layers}",
                    hidden,
                    NOT_RUN,
                    "-",
                    "-",
                    "-",
                    status_word(gradcheck.status),
                    format_published(entry),
                    NOT_RUN,
                )
            )
        for variant, variant_rows in variants.items():
            # The strings as the CSV has them: the report shows the run folder's own numbers.
            worst_abs = max((r["max abs error"] for r in variant_rows), key=float)
            worst_rel = max((r["max rel error"] for r in variant_rows), key=float)
            failed = [r["parameter"] for r in variant_rows if r["result"] != "pass"]
            result = "pass" if not failed else f"FAIL: {', '.join(failed)}"
            rows.append(
                (
                    f"k={gradcheck.layers}",
                    hidden,
                    variant,
                    str(len(variant_rows)),
                    worst_abs,
                    worst_rel,
                    result,
                    format_published(entry),
                    check(float(worst_abs), entry).text(),
                )
            )
            worst.append(worst_abs)
    if worst:  # one line in the summary: the worst of all
        largest = max(worst, key=float)
        found.cells(entry.key, float(largest), largest)
    part = study.parts["gradcheck"]
    folders = ", ".join(f"`{part.folder.name}/{g.name}/gradcheck.md`" for g in study.gradchecks)
    blocks: list[Block] = [
        intro,
        Table(GRADCHECK_HEADERS, tuple(rows), "Worst errors over each variant's parameters"),
        Text(f"Every parameter's errors: {folders}.", "note"),
        Text(
            "The study found the gradients of the 9-layer network without batch norm vanishingly "
            "small, so that it could hardly learn: see its test accuracy in the next section.",
            "note",
        ),
        *unfinished(study, "gradcheck"),
    ]
    return Section(title, "gradcheck", tuple(blocks))


def _by_variant(gradcheck: Gradcheck) -> dict[str, list[dict[str, str]]]:
    variants: dict[str, list[dict[str, str]]] = {}
    for row in gradcheck.rows:
        variants.setdefault(row["variant"], []).append(row)
    return variants


# -- 2. the four configs --------------------------------------------------------------------------

SEED_HEADERS = ("seeds", "each seed", "mean +- sd")


def with_aside(text: str, aside: str) -> str:
    """'inside (2 of 3 seeds inside)'; one pair of brackets where the text ends in its own."""
    if not aside:
        return text
    if text.endswith(")"):
        return f"{text[:-1]}; {aside})"
    return f"{text} ({aside})"


def seed_cells(records: Sequence[TrialRecord], key: str, found: Comparisons) -> list[str]:
    """Seeds, each seed's test accuracy, mean +- sd, and the mean against the published number,
    with how many seeds on their own are inside it."""
    finished = [r for r in records if r.finished and r.get("test_accuracy") is not None]
    seeds = ", ".join(str(r.trial.config["training"]["seed"]) for r in records)
    each = ", ".join(record_word(r) for r in records) or NOT_RUN
    accuracies = [float(100 * r.get("test_accuracy")) for r in finished]
    # The mean of the fractions, as mean_and_spread prints it: the verdict is on what is shown.
    mean = in_points(np.mean([r.get("test_accuracy") for r in finished])) if finished else None
    aside = ""
    entry = found.numbers.get(key)
    if entry is not None and len(accuracies) > 1:
        inside = sum(check(a, entry).inside for a in accuracies)
        aside = f"{inside} of {len(accuracies)} seeds inside"
    shown = mean_and_spread([r.get("test_accuracy") for r in finished])
    stats = seed_statistics([r.get("test_accuracy") for r in finished])
    # Rounded as shown, like the mean: the verdict is about the numbers the reader sees.
    sd = round(100 * stats[1], 2) if stats is not None and stats[2] > 1 else None
    verdict = found.cells(key, mean, shown if mean is not None else "-", aside, spread=sd)
    return [seeds, each, shown, *verdict]


def configs_section(study: Study, figures: Mapping[str, Figure], found: Comparisons) -> Section:
    title = f"2. {TITLES['configs']}"
    if not study.configs:
        return Section(title, "configs", (not_run(study, "configs"),))
    by_config: dict[str, list[TrialRecord]] = {}
    for record in study.configs:
        by_config.setdefault(record.trial.config["name"], []).append(record)
    rows = []
    for name, records in by_config.items():
        model = records[0].trial.config["model"]
        depth = len(model["hidden"]) + 1
        rows.append(
            (
                name,
                str(depth),
                bn_label(bool(model["batch_norm"])),
                *seed_cells(records, f"configs.{name}", found),
            )
        )
    first = study.configs[0]
    settings = ", ".join(training_settings(first.trial.config, first.get("n_s")))
    blocks: list[Block] = [
        Text(
            f"Each config trained with {len(by_config[first.trial.config['name']])} seeds "
            f"({settings}, eta from {first.trial.config['training']['eta_min']:g} to "
            f"{first.trial.config['training']['eta_max']:g}), He init, then tested; the curves "
            "are the lowest seed's. One seed's test accuracy moves by about half a point, as "
            "much as a published range is wide: judge the mean, with the seeds beside it."
        ),
        *(figures[key] for key in figures if key.startswith("bn-")),
        Table(
            ("config", "layers", "batch norm", *SEED_HEADERS, *PUBLISHED_HEADERS),
            tuple(rows),
            "Test accuracy",
        ),
    ]
    blocks += unfinished(study, "configs")
    return Section(title, "configs", tuple(blocks))


# -- 3. lambda search -----------------------------------------------------------------------------


def lambda_section(
    study: Study,
    figures: Mapping[str, Figure],
    found: Comparisons,
    tables: Mapping[str, PublishedTable],
) -> Section:
    title = f"3. {TITLES['lambda-search']}"
    search = study.search
    if search is None:
        blocks: list[Block] = [not_run(study, "lambda-search")]
        retrain = retrain_table(study, found, tables)
        return Section(title, "lambda-search", (*blocks, *retrain))
    spec = search.spec
    low, high = spec.log_range
    schedule = ", ".join(training_settings({"training": {"cycles": spec.cycles}}, spec.n_s))
    fine = ""
    if search.fine_log_range is not None:
        f_low, f_high = search.fine_log_range
        fine = (
            f"; fine: {spec.trials} trials, lambda in [{10**f_low:.3g}, {10**f_high:.3g}] "
            "around the best coarse trials"
        )
    blocks = [
        Text(
            f"{spec.base['name']}: coarse search, {spec.trials} trials of lambda = 10^U, U "
            f"uniform in [{low:g}, {high:g}]{fine}; each trial {schedule or 'as configured'}, "
            "judged on validation accuracy at its end. The best lambda is then retrained "
            f"({plural(spec.final_seeds, 'seed')}, {plural(spec.final_cycles, 'cycle')}, "
            f"{spec.final_validation_size} images held out) and tested, on the 3-layer network "
            "and on the 9-layer one, as the study does. The study searched U in [-4, -1]."
        ),
    ]
    if "lambda-search" in figures:
        blocks.append(figures["lambda-search"])
    blocks.append(search_table(search.search, tables["lambda-search.trials"]))
    best = search.best
    outcome = [
        (
            "best validation accuracy",
            percent(best.score) if best else NOT_RUN,
            *found.cells(
                "lambda-search.best_val_accuracy",
                in_points(best.score) if best else None,
                percent(best.score) if best else "",
            ),
        ),
        (
            "chosen lambda",
            f"{search.chosen_lambda:.3g}" if search.chosen_lambda else NOT_RUN,
            *found.cells(
                "lambda-search.chosen_lambda",
                search.chosen_lambda,
                f"{search.chosen_lambda:.3g}" if search.chosen_lambda else "",
            ),
        ),
    ]
    fit = search_fit(search.search)
    if fit is not None:
        low, high = fit.tied_lambdas
        outcome.append(
            (
                "the fit's peak (lambdas tied with it)",
                f"{fit.peak_lambda:.3g} ({low:.3g} to {high:.3g})",
                *found.cells("lambda-search.chosen_lambda", fit.peak_lambda, "", noted=False),
            )
        )
    blocks.append(Table(("the search", "ours", *PUBLISHED_HEADERS), tuple(outcome)))
    if fit is not None:
        blocks.append(Text(fit_sentence(fit, search.chosen_lambda, spec.choose)))
    blocks += retrain_table(study, found, tables)
    blocks += unfinished(study, "lambda-search")
    return Section(title, "lambda-search", tuple(blocks))


def fit_sentence(fit: LambdaFit, retrained: float | None, choose: str) -> str:
    """Both choices of lambda, and which was retrained."""
    low, high = fit.tied_lambdas
    which = (
        "the fit's peak" if choose == "fit" else "the best trial's lambda (the study's protocol)"
    )
    retrain = f" The retrains below took {which}, {retrained:.3g}." if retrained else ""
    return (
        f"Beside the best single trial, a quadratic through the {fit.trials} trials within a "
        f"decade of it, validation accuracy against log10 lambda, peaks at lambda "
        f"{fit.peak_lambda:.3g} ({100 * fit.peak_accuracy:.2f}%); the trials scatter about it "
        f"by {100 * fit.spread:.2f} points (sd), and every lambda from {low:.3g} to {high:.3g} "
        f"is within that of the peak: tied with it, as far as these trials can tell.{retrain}"
    )


def search_table(records: Sequence[TrialRecord], study_trials: PublishedTable) -> Table:
    """Our trials, best first, each beside the study's trial nearest in lambda."""

    def order(r: TrialRecord) -> tuple[Any, ...]:
        return (r.score is None, -(r.score or 0.0), r.trial.index)

    rows = []
    for record in sorted(records, key=order):
        ours = in_points(record.get("final_val_accuracy")) if record.finished else None
        near = nearest(record.trial.lambda_, study_trials.rows)
        if near is None:
            theirs, verdict = "-", "-"
        else:
            point = Published("", "lambda-search", "", PERCENT, near[1])
            theirs = f"{format_value(near[1], PERCENT)} at lambda {near[0]:g}"
            verdict = NOT_RUN if ours is None else check(ours, point).text()
        shown = percent(record.get("final_val_accuracy")) if record.finished else None
        rows.append(
            (
                str(record.trial.index),
                record.trial.stage,
                f"{record.trial.lambda_:.3g}",
                shown or status_word(record.status),
                theirs,
                verdict,
            )
        )
    headers = (
        "trial",
        "stage",
        "lambda",
        "val accuracy",
        "the study, nearest lambda",
        "ours against the study",
    )
    caption = (
        f"Search trials, best first (the study's trial is shown where one lies within a "
        f"factor of {NEAREST_FACTOR:g} in lambda)"
    )
    return Table(headers, tuple(rows), caption)


def nearest(lambda_: float, rows: Sequence[Sequence[float]]) -> tuple[float, float] | None:
    if not rows or lambda_ <= 0:
        return None
    best = min(rows, key=lambda row: abs(math.log(row[0] / lambda_)))
    if abs(math.log(best[0] / lambda_)) > math.log(NEAREST_FACTOR):
        return None
    return float(best[0]), float(best[1])


def retrain_table(
    study: Study, found: Comparisons, tables: Mapping[str, PublishedTable]
) -> list[Block]:
    """The chosen lambda retrained: 3 layers (the search's own final stage) and 9 layers (the
    lambda-9layer part)."""
    search = study.search
    finals = list(search.finals) if search is not None else []
    rows = []
    for label, records, key, part in (
        ("3 layers, BN", finals, "lambda-search.final", "lambda-search"),
        ("9 layers, BN", list(study.retrain_9layer), "lambda-9layer.final", "lambda-9layer"),
    ):
        if not records:
            rows.append(
                (
                    label,
                    "-",
                    "-",
                    status_word(study.parts[part].status),
                    "-",
                    *found.cells(key, None, ""),
                )
            )
            continue
        lambdas = sorted({f"{r.trial.lambda_:.3g}" for r in records})
        rows.append((label, ", ".join(lambdas), *seed_cells(records, key, found)))
    theirs = "; ".join(
        f"{network} " + ", ".join(f"{acc:.1f}% at lambda {lam:g}" for lam, acc in table.rows)
        for network, table in (
            ("3 layers", tables["lambda-search.finals"]),
            ("9 layers", tables["lambda-9layer.finals"]),
        )
    )
    blocks: list[Block] = [
        Table(
            ("network", "lambda", *SEED_HEADERS, *PUBLISHED_HEADERS),
            tuple(rows),
            "The chosen lambda retrained and tested",
        ),
        Text(f"The study's own retrains: {theirs}; the column 'study' shows its best.", "note"),
    ]
    blocks += unfinished(study, "lambda-9layer")
    return blocks


GRID_HEADERS = ("layers", "batch norm", "sigma", *SEED_HEADERS, *PUBLISHED_HEADERS,
                "what the layers say (lowest seed)")  # fmt: skip

# -- 4. init sensitivity --------------------------------------------------------------------------


def init_section(study: Study, figures: Mapping[str, Figure], found: Comparisons) -> Section:
    title = f"4. {TITLES['init-sensitivity']}"
    grid = study.grid
    if grid is None:
        return Section(title, "init-sensitivity", (not_run(study, "init-sensitivity"),))
    spec = grid.spec
    rows = []
    for (depth, batch_norm, sigma), records in by_cell(grid.records).items():
        key = f"init-sensitivity.k{depth}.{'bn' if batch_norm else 'no-bn'}.sigma{sigma:g}"
        rows.append(
            (
                str(depth),
                bn_label(batch_norm),
                f"{sigma:g}",
                *seed_cells(records, key, found),
                grid_reason(records[0]),
            )
        )
    schedule = ", ".join(
        training_settings(
            spec.base | {"training": {**spec.base["training"], "cycles": spec.cycles}}, spec.n_s
        )
    )
    seeds = (
        f"the same seed ({spec.seed}) for every cell" if spec.seeds == 1
        else f"the same {spec.seeds} seeds ({spec.seed}-{spec.seed + spec.seeds - 1}) for "
        "every cell, its curves the seeds' lines"
    )  # fmt: skip
    blocks: list[Block] = [
        Text(
            "Each cell trains from a normal(0, sigma) init at every layer instead of He's, "
            f"{seeds} ({schedule}), and is tested at its end. "
            "The study: without batch norm only sigma = 0.1 learns, and at 9 layers not even "
            "that; with batch norm every sigma learns."
        ),
    ]
    if "init-sensitivity" in figures:
        blocks.append(figures["init-sensitivity"])
    blocks.append(
        Table(
            GRID_HEADERS,
            tuple(rows),
            "Final test accuracy per cell",
        )
    )
    blocks.append(Text(init_claims(grid.records), "note"))
    blocks += unfinished(study, "init-sensitivity")
    return Section(title, "init-sensitivity", tuple(blocks))


def init_claims(records: Sequence[TrialRecord]) -> str:
    """The study's two claims, counted over our cells (a cell: the mean of its finished
    seeds)."""
    learned: dict[bool, list[bool]] = {False: [], True: []}
    for (_, batch_norm, sigma), cell in by_cell(records).items():
        accuracies = [r.get("test_accuracy") for r in cell if r.finished]
        if not accuracies or (not batch_norm and sigma >= 0.1):
            continue
        learned[batch_norm].append(float(np.mean(accuracies)) > CHANCE_MARGIN)
    chance = learned[False].count(False)
    return (
        f"Without batch norm, sigma below 0.1: {chance} of {len(learned[False])} finished cells "
        f"stayed near chance (mean test accuracy at most {100 * CHANCE_MARGIN:.0f}%). With "
        f"batch norm: {sum(learned[True])} of {len(learned[True])} finished cells learned "
        f"(above {100 * CHANCE_MARGIN:.0f}%). The study: all of them, both times."
    )
