"""`knn report STUDY_DIR`: the study folder as one document, laid out like the study (gradient
check, the four configs, lambda search, init sensitivity), every number beside the published one
and whether ours is inside the published range.

Reading (contents.py) and drawing (figures.py) happen first; `build_report` then turns what was
read into sections (one per experiment in sections.py) without touching a file, and render.py
writes them out as Markdown and HTML.
Every number is printed from the run folders' own values, percentages with 2 decimals, so that a
reader (or a test) can find it again in the CSV it came from.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from knn_cli.formatting import duration
from knn_cli.runs import atomic_write_text
from knn_cli.study.contents import (
    Study,
    first_seed_runs,
    read_study,
)
from knn_cli.study.figures import (
    draw_bn_comparison,
    draw_grid,
    draw_lambda_comparison,
    draw_why_gradients,
    draw_why_landscape,
    draw_why_percentiles,
    save_png,
)
from knn_cli.study.parts import PART_NAMES, TITLES
from knn_cli.study.published import (
    INSIDE,
    WITHIN_SPREAD,
    Published,
    PublishedTable,
    published_numbers,
    published_sources,
)
from knn_cli.study.rates import draw_rates, rates_section
from knn_cli.study.render import (
    Block,
    Document,
    Figure,
    Section,
    Table,
    Text,
    render_html,
    render_markdown,
)
from knn_cli.study.sections import (
    NOT_RUN,
    Comparison,
    Comparisons,
    configs_section,
    gradcheck_section,
    init_section,
    lambda_section,
    status_word,
)
from knn_cli.study.why import (
    DEPTH,
    FIGURE_INITS,
    landscape_rows,
    watched_runs,
    why_section,
)
from knn_cli.sweeps.folder import TrialRecord

REPORT_MD = "report.md"
REPORT_HTML = "report.html"
FIGURES = "figures"


def write_report(study_dir: str | Path) -> tuple[Path, Path]:
    """Write report.md (figures beside it, in figures/) and a self-contained report.html into
    the study folder; return their paths. A folder that is no study is a RunFolderError."""
    study_dir = Path(study_dir)
    study = read_study(study_dir)
    document = build_report(study, draw_figures(study))
    md_path, html_path = study_dir / REPORT_MD, study_dir / REPORT_HTML
    atomic_write_text(md_path, render_markdown(document))
    atomic_write_text(html_path, render_html(document))
    return md_path, html_path


# -- figures --------------------------------------------------------------------------------------


def draw_figures(study: Study) -> dict[str, Figure]:
    """Every figure the study's parts allow so far, saved under figures/, by key."""
    tables = published_numbers()[1]
    figures = {}

    def add(key: str, fig: Any, caption: str) -> None:
        file = f"{FIGURES}/{key}.png"
        figures[key] = Figure(file, caption, save_png(fig, study.folder / file))

    for depth, runs in bn_pairs(study.configs).items():
        add(
            f"bn-{depth}-layers",
            draw_bn_comparison(depth, runs),
            f"{depth} layers: loss and accuracy with batch norm (orange) and without (blue), "
            "training dashed, validation solid.",
        )
    search = study.search
    if search is not None and any(r.finished for r in (*search.search, *search.finals)):
        study_search = tables["lambda-search.trials"].rows
        add(
            "lambda-search",
            draw_lambda_comparison(search, study_search, tables["lambda-search.finals"].rows),
            "Validation accuracy against lambda, coarse and fine trials marked apart, the "
            "chosen lambda and its retrains' test accuracy, the quadratic fit with the lambdas "
            "tied with its peak shaded; the study's own trials in grey.",
        )
    watched = watched_runs(study)
    if watched:
        shown = [w for w in watched if w.init in FIGURE_INITS]
        add(
            "why-gradients",
            draw_why_gradients(shown or watched),
            "9 layers at He init and from sigma 0.001: the norm of each layer's loss gradient "
            "(left) and the spread of its output (right), at step 0 (dashed) and at the end "
            "(solid), on the probe batch; a gradient of exactly 0 (every unit dead) is not drawn "
            "on the log scale. The table above has every init.",
        )
        he = {w.batch_norm: w for w in watched if w.init == "He"}
        if he:
            add(
                "why-percentiles",
                draw_why_percentiles(he, DEPTH - 1),
                f"9 layers at He init: the 15th, 50th and 85th percentiles of layer {DEPTH - 1}'s "
                "pre-activation (its affine output, before BN where there is one) over training, "
                "without and with BN: the picture of Ioffe and Szegedy, 2015, Figure 1.",
            )
    by_bn = landscape_rows(study.configs)
    if by_bn:
        add(
            "why-landscape",
            draw_why_landscape(by_bn),
            "9 layers at He init: stepping along -g from each evaluation point by the schedule's "
            "rates, the range of the loss, the largest change of the gradient and the effective "
            "beta-smoothness (Santurkar et al., 2018, Figure 4), without and with BN.",
        )
    if study.grid is not None and any(r.folder is not None for r in study.grid.records):
        add(
            "init-sensitivity",
            draw_grid(study.grid),
            "Loss curves from a normal(0, sigma) init, rows: depth and batch norm, columns: "
            "sigma; training and validation, the dotted line is chance (ln 10).",
        )
    if study.rates is not None and any(study.rates.tests.values()):
        add(
            "rates-range",
            draw_rates(study.rates),
            "Range tests: the smoothed training loss (top) and the validation accuracy (bottom) "
            "as the rate rises exponentially, each network's two seeds in one colour.",
        )
    return figures


def bn_pairs(records: Sequence[TrialRecord]) -> dict[int, dict[bool, TrialRecord]]:
    """Per depth, the lowest-seed run without BN and with it, where it has metrics to draw."""
    pairs: dict[int, dict[bool, TrialRecord]] = {}
    for record in first_seed_runs(records).values():
        if record.folder is None:
            continue
        model = record.trial.config["model"]
        depth = len(model["hidden"]) + 1
        pairs.setdefault(depth, {})[bool(model["batch_norm"])] = record
    return dict(sorted(pairs.items()))


# -- the document ---------------------------------------------------------------------------------


def build_report(
    study: Study,
    figures: Mapping[str, Figure],
    published: tuple[Mapping[str, Published], Mapping[str, PublishedTable]] | None = None,
) -> Document:
    """The report's sections from what was read, touching no file."""
    numbers, tables = published or published_numbers()
    found = Comparisons(numbers)
    sections = [
        gradcheck_section(study, found),
        configs_section(study, figures, found),
        lambda_section(study, figures, found, tables),
        init_section(study, figures, found),
        why_section(study, figures, 5),
        rates_section(study, figures, 6),
    ]
    return Document(
        title="Study report: k-layer networks with and without batch normalization on CIFAR-10"
        + (" (quick study)" if study.quick else ""),
        preface=tuple(preface(study)),
        sections=(
            summary_section(found.found),
            *sections,
            what_ran_section(study),
            sources_section(),
        ),
    )


def preface(study: Study) -> list[Block]:
    blocks: list[Block] = []
    if study.quick:
        blocks.append(
            Text(
                "Quick study (knn study --quick): short schedules and few trials, to see that "
                "everything runs. Its numbers are not the study's and are not expected to match "
                "the published ones.",
                "warning",
            )
        )
    open_parts = [p for p in study.parts.values() if p.status != "finished"]
    if open_parts:
        names = ", ".join(f"{p.name} ({status_word(p.status)})" for p in open_parts)
        blocks.append(Text(f"This study is not finished: {names}.", "warning"))
    blocks.append(
        Text(
            "A reproduction of L. McCarren's study of k-layer networks with and without batch "
            "normalization on CIFAR-10 (KTH, 2022), one section per experiment as the study "
            f"lays them out; study folder `{study.folder.name}`. Beside every number is the "
            "study's own and the range of the public solutions that follow the study's protocol "
            "(each range cites them; they are listed, with where their protocols differ, under "
            "Sources at the end); 'ours against published' says whether ours is inside that "
            "range (or equal to the study's number where no two solutions follow the protocol) "
            "and, if not, by how much it misses: for a mean over seeds, whether by more than two "
            "standard deviations of its seeds. Accuracies are test accuracies unless the column "
            "says otherwise."
        )
    )
    return blocks


def summary_section(found: Sequence[Comparison]) -> Section:
    if not found:
        blocks: list[Block] = [Text(f"Nothing to compare yet: no part has results ({NOT_RUN}).")]
    else:
        counts = Counter(c.category for c in found)
        said = f"{counts[INSIDE]} of {len(found)} numbers are inside their published range"
        if counts[WITHIN_SPREAD]:
            said += (
                f"; {counts[WITHIN_SPREAD]} more are outside it by no more than two standard "
                "deviations of their seeds"
            )
        blocks = [
            Text(f"{said}."),
            Table(
                ("what", "ours", "published", "ours against published"),
                tuple((c.what, c.ours, c.published, c.verdict) for c in found),
            ),
        ]
    return Section("Where the reproduction agrees, and where not", "summary", tuple(blocks))


def sources_section() -> Section:
    """Who published the numbers compared with: the study, and public solutions of the same
    assignment, each with where its protocol differs."""
    rows = tuple(
        ("the study" if s.key == "study" else f"#{s.key}", s.who, f"`{s.file}`", s.differs)
        for s in published_sources().values()
    )
    return Section(
        "Sources",
        "sources",
        (
            Text(
                "The published ranges span the solutions that follow the study's protocol (45,000 "
                "training and 5,000 validation images, batch 100, eta 1e-5 to 1e-1, n_s 2250, 2 "
                "cycles, lambda 0.005, He or Xavier init), where at least two do; where one or "
                "none does, a result is judged against the study's own number, and the other "
                "solutions' range is shown beside it. Compiled from the solutions' own files on "
                "2026-12-06."
            ),
            Table(("", "who", "file", "where its protocol differs"), rows),
        ),
    )


def what_ran_section(study: Study) -> Section:
    rows = []
    for name in PART_NAMES:
        part = study.parts[name]
        present = part.folder.is_dir()
        rows.append(
            (
                TITLES[name],
                f"`{part.folder.name}`" if present else "-",
                status_word(part.status),
                duration(part.seconds) or "-",
                part.error or part.message or "",
            )
        )
    doc = study.doc
    provenance = doc.get("provenance") or {}
    versions = ", ".join(f"{k} {v}" for k, v in (provenance.get("versions") or {}).items() if v)
    total = [p.seconds for p in study.parts.values() if p.seconds is not None]
    facts = [
        ("quick study", "yes: its numbers are not the study's" if study.quick else "no"),
        ("seeds per config", str(doc.get("seeds", "-"))),
        ("study seed", str(doc.get("seed", "-"))),
        ("started", str(doc.get("started") or "-")),
        ("finished", str(doc.get("finished") or "not finished")),
        ("wall time of the parts", duration(sum(total)) if total else "-"),
        ("commit", str(provenance.get("commit") or "-")),
        ("versions", versions or "-"),
        ("machine", str(provenance.get("machine") or "-")),
        ("data", str(provenance.get("data") or "-")),
    ]
    return Section(
        "What ran",
        "what-ran",
        (
            Table(("part", "folder", "status", "wall time", "message"), tuple(rows)),
            Table(("", "this study"), tuple(facts)),
        ),
    )
