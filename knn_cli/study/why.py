"""The report's section "Why batch norm helps: what the layers see": the 9-layer networks with and
without batch norm, at He init (the four configs) and from a normal(0, sigma) init (the init
grid), as their layers measured themselves on the probe batch (diagnostics.csv), and sentences
written from those numbers that test the study's one explanation:

    "When computing the gradients for the 9-layer network without batch normalization the
    gradients started to disappear meaning that we cannot learn, and therefore need batch
    normalization."

Every sentence is computed from the run folders; where a measure disagrees with a paper's
finding, the section says so rather than tuning the measure.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from knn_cli.diagnostics import DEAD, GRAD_NORM, LANDSCAPE, UPDATE_RATIO, WHOLE
from knn_cli.formatting import percent
from knn_cli.plots import profile, series
from knn_cli.runs import read_diagnostics
from knn_cli.study.contents import Study, first_seed_runs
from knn_cli.study.render import NOT_RUN, Block, Figure, Section, Table, Text
from knn_cli.sweeps.folder import TrialRecord
from knn_cli.sweeps.init_grid import CHANCE_MARGIN
from knn_cli.sweeps.tables import by_cell

DEPTH = 9
# Test accuracy at most this is chance for 10 classes (10%, give or take the test set's noise).
AT_CHANCE = 0.12
# A gradient norm below this at step 0 has vanished: even eta_max = 0.1 times it moves a weight
# matrix by less than 1e-7, below float32's resolution of weights of size 1.
VANISHED = 1e-6
# The inits the section's figure draws (the table has them all): four lines, not twelve.
FIGURE_INITS = ("He", "sigma 0.001")
CLAIM = (
    "When computing the gradients for the 9-layer network without batch normalization the "
    "gradients started to disappear meaning that we cannot learn, and therefore need batch "
    "normalization."
)

Row = Mapping[str, Any]


@dataclass(frozen=True)
class Watched:
    """One run of the section: its network, its init, what it reached, what its layers saw."""

    batch_norm: bool
    init: str  # "He" or "sigma 0.001"
    record: TrialRecord
    rows: tuple[Row, ...]

    @property
    def label(self) -> str:
        return f"{'BN' if self.batch_norm else 'no BN'}, {self.init}"

    @property
    def accuracy(self) -> float | None:
        return self.record.get("test_accuracy") if self.record.finished else None

    @property
    def learned(self) -> bool:
        return self.accuracy is not None and self.accuracy > CHANCE_MARGIN

    @property
    def at_chance(self) -> bool:
        return self.accuracy is None or self.accuracy <= AT_CHANCE

    def outcome(self) -> str:
        shown = percent(self.accuracy) or self.record.status
        if self.learned:
            return f"it learns ({shown})"
        return f"it stays at chance ({shown})" if self.at_chance else f"it barely learns ({shown})"

    def at_step(self, quantity: str, step: int | None) -> dict[int, float]:
        """The quantity by layer at `step` (None: the last measured)."""
        return dict(zip(*profile(self.rows, quantity, step), strict=True))

    @property
    def first_gradients(self) -> dict[int, float]:
        return self.at_step(GRAD_NORM, 0)

    @property
    def vanished(self) -> bool:
        gradients = self.first_gradients
        return bool(gradients) and max(gradients.values()) < VANISHED

    @property
    def dead_at_end(self) -> dict[int, float]:
        return self.at_step(DEAD, None)


def watched_runs(study: Study) -> list[Watched]:
    """The 9-layer runs that measured their layers: the configs' lowest seeds (He init), then
    the grid's cells, smallest sigma last; no BN before BN."""
    found: list[Watched] = []
    for record in first_seed_runs(study.configs).values():
        model = record.trial.config["model"]
        if len(model["hidden"]) + 1 == DEPTH and model["init"] == "he":
            found.append(_watched(record, bool(model["batch_norm"]), "He"))
    cells = by_cell(study.grid.records) if study.grid else {}
    for (depth, batch_norm, sigma), records in cells.items():
        if depth == DEPTH:  # a cell's lowest seed, as for the configs
            found.append(_watched(records[0], batch_norm, f"sigma {sigma:g}"))
    return sorted((w for w in found if w.rows), key=lambda w: (-_init_scale(w.init), w.batch_norm))


def _init_scale(init: str) -> float:
    """He first, then the sigmas, largest first."""
    return 1.0 if init == "He" else float(init.split()[-1])


def _watched(record: TrialRecord, batch_norm: bool, init: str) -> Watched:
    rows = tuple(read_diagnostics(record.folder)) if record.folder is not None else ()
    return Watched(batch_norm, init, record, rows)


Cells = tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]  # headers, rows


def gradient_table(watched: Sequence[Watched]) -> Cells:
    """At step 0: the first and last layers' gradient norms, the range over all layers, the
    units dead at the end, and the test accuracy."""
    headers = ("network (9 layers)", "||dL/dW1||", f"||dL/dW{DEPTH}||", "all layers",
               "dead units at the end", "test accuracy")  # fmt: skip
    rows = []
    for w in watched:
        grads = w.first_gradients
        dead = w.dead_at_end
        worst = max(dead.items(), key=lambda item: item[1], default=None)
        rows.append(
            (
                w.label,
                _sci(grads.get(1)),
                _sci(grads.get(DEPTH)),
                f"{_sci(min(grads.values()))} to {_sci(max(grads.values()))}" if grads else "-",
                f"{100 * worst[1]:.0f}% (layer {worst[0]})" if worst and worst[1] > 0 else "none",
                percent(w.accuracy) or w.record.status,
            )
        )
    return headers, tuple(rows)


def claim_sentences(watched: Sequence[Watched]) -> list[str]:
    """What the runs without batch norm say of the study's claim, each from its numbers, then
    the verdict."""
    lines = []
    holds, fails, other, learned_anyway = [], [], [], []
    for w in watched:
        grads = w.first_gradients
        if not grads:
            continue
        span = f"{_sci(min(grads.values()))} to {_sci(max(grads.values()))}"
        outcome = w.outcome()
        if w.batch_norm:
            lines.append(f"With batch norm, {w.init}: gradients {span} at step 0, and {outcome}.")
            continue
        if w.vanished:
            spread = max(grads.values()) / max(min(grads.values()), 1e-300)
            early = grads.get(1, 0.0) < grads.get(DEPTH, 0.0)
            alike = (
                "in every layer alike" if spread < 100
                else f"most in the {'early' if early else 'late'} layers"
            )  # fmt: skip
            lines.append(
                f"Without batch norm, {w.init}: every layer's gradient is {span} at step 0 -- "
                f"vanished {alike} (the largest within a factor of {spread:.0f} of the "
                f"smallest), and {outcome}."
            )
            (holds if w.at_chance else learned_anyway).append(w.init)
        else:
            first, last = grads.get(1), grads.get(DEPTH)
            lines.append(
                f"Without batch norm, {w.init}: the gradients do not vanish (layer 1 "
                f"{_sci(first)}, layer {DEPTH} {_sci(last)} at step 0), and {outcome}."
            )
            (fails if not w.at_chance else other).append(w.init)
    verdict = []
    if holds:
        verdict.append(f"holds at {', '.join(holds)}: the gradients vanish and nothing is learned")
    if fails:
        verdict.append(
            f"does not hold at {', '.join(fails)}: the gradients do not vanish and the network "
            "learns without batch norm"
        )
    if other:
        verdict.append(
            f"does not explain {', '.join(other)}: the gradients did not vanish, yet the network "
            "stayed at chance (its dead units, in the table, tell more)"
        )
    if learned_anyway:
        verdict.append(
            f"does not explain {', '.join(learned_anyway)}: the gradients vanished at step 0, "
            "yet the network learned"
        )
    if verdict:
        lines.append("So the study's explanation " + "; it ".join(verdict) + ".")
    return lines


def percentile_sentence(pair: Mapping[bool, Watched], layer: int) -> str:
    """How far the layer's 15-85th percentile band and its median moved over training, with
    and without batch norm: Ioffe and Szegedy's picture, in numbers."""
    said = []
    for batch_norm, watched in sorted(pair.items()):
        bands = [series(watched.rows, f"activation_p{p}").get(str(layer)) for p in (15, 50, 85)]
        if not all(bands):
            continue
        (_, low), (_, median), (_, high) = bands  # type: ignore[misc]
        said.append(
            f"{'with' if batch_norm else 'without'} batch norm from [{_sci(low[0])}, "
            f"{_sci(high[0])}] (median {_sci(median[0])}) at step 0 to [{_sci(low[-1])}, "
            f"{_sci(high[-1])}] (median {_sci(median[-1])}) at the end"
        )
    if not said:
        return ""
    return f"Layer {layer}'s 15th-85th percentile band went " + "; ".join(said) + "."


def landscape_rows(records: Sequence[TrialRecord]) -> dict[bool, tuple[Row, ...]]:
    """The landscape measures of the configs' 9-layer runs (lowest seed), by batch norm."""
    found = {}
    for record in first_seed_runs(records).values():
        model = record.trial.config["model"]
        if len(model["hidden"]) + 1 != DEPTH or record.folder is None:
            continue
        rows = tuple(r for r in read_diagnostics(record.folder) if r["layer"] == WHOLE)
        if rows:
            found[bool(model["batch_norm"])] = rows
    return found


def landscape_table(by_bn: Mapping[bool, Sequence[Row]]) -> Cells:
    """Each measure's median over training (and its largest), with and without batch norm."""
    headers = ("measure along -g", "no BN: median (largest)", "BN: median (largest)", "BN / no BN")
    rows = []
    for quantity in LANDSCAPE:
        cells, medians = [], {}
        for bn in (False, True):
            values = series(by_bn.get(bn, ()), quantity).get(WHOLE, ([], []))[1]
            if values:
                medians[bn] = statistics.median(values)
                cells.append(f"{_sci(medians[bn])} ({_sci(max(values))})")
            else:
                cells.append("-")
        ratio = medians[True] / medians[False] if len(medians) == 2 and medians[False] else None
        rows.append((quantity.replace("_", " "), *cells, f"{ratio:.2g}" if ratio else "-"))
    return headers, tuple(rows)


def landscape_sentence(by_bn: Mapping[bool, Sequence[Row]]) -> str:
    """Santurkar et al. (2018) found the loss and its gradient smoother with batch norm; ours,
    measured the same way on a smaller network, against it."""
    medians = {}
    for bn, rows in by_bn.items():
        for quantity in LANDSCAPE:
            values = series(rows, quantity).get(WHOLE, ([], []))[1]
            if values:
                medians[(bn, quantity)] = statistics.median(values)
    both = [q for q in LANDSCAPE if (False, q) in medians and (True, q) in medians]
    smoother = [q.replace("_", " ") for q in both if medians[(True, q)] < medians[(False, q)]]
    rougher = [q.replace("_", " ") for q in both if medians[(True, q)] >= medians[(False, q)]]
    if not both:
        return ""
    said = []
    if smoother:
        said.append(f"with batch norm the median {_listed(smoother)} {_is(smoother)} smaller")
    if rougher:
        said.append(f"the median {_listed(rougher)} {_is(rougher)} not smaller with batch norm")
    agrees = "partly agrees with" if smoother and rougher else "agrees with"
    agrees = agrees if smoother else "disagrees with"
    return (
        f"Along the gradient at each evaluation point, {'; '.join(said)}. This {agrees} "
        "Santurkar et al. (2018), who found the loss and the gradient smoother with batch norm "
        "on VGG networks and deep linear networks; theirs were other networks, trained "
        "otherwise, and they stepped by multiples of their learning rate, where we step by the "
        "rates our cyclical schedule takes."
    )


def _listed(words: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def _is(words: Sequence[str]) -> str:
    return "is" if len(words) == 1 else "are"


def grid_reason(record: TrialRecord) -> str:
    """Why an init-grid cell learned or stayed at chance, from its layers' measurements."""
    if record.folder is None or not record.finished:
        return "-"
    watched = _watched(record, bool(record.trial.config["model"]["batch_norm"]), "")
    grads = watched.first_gradients
    if not grads:
        return "-"
    span = f"gradients {_sci(min(grads.values()))} to {_sci(max(grads.values()))} at step 0"
    if not watched.at_chance:
        return f"{'learned' if watched.learned else 'barely learned'}: {span}"
    if watched.vanished:
        return f"chance: {span} -- vanished"
    dead = watched.dead_at_end
    gone = [layer for layer, share in dead.items() if share >= 1.0]
    if gone:
        return f"chance: {span}; every unit of layer {gone[0]} dead at the end"
    moved = series(watched.rows, UPDATE_RATIO)
    ratios = [v for _, values in moved.values() for v in values]
    if ratios:
        return (
            f"chance: {span}, not vanished; a step moved the weights by {_sci(min(ratios))} to "
            f"{_sci(max(ratios))} of their norm"
        )
    return f"chance: {span}, not vanished"


def _sci(value: float | None) -> str:
    return "-" if value is None else f"{value:.2g}"


def why_section(study: Study, figures: Mapping[str, Figure], number: int) -> Section:
    """The section: the claim, the step-0 gradients, the figures, and what they say."""
    title = f"{number}. Why batch norm helps: what the layers see"
    intro = Text(
        "Every run measures its layers on a probe batch of training images (the same images "
        "throughout the run; `diagnostics.csv` in each run folder) at every evaluation point: "
        "the norm of each weight matrix's loss gradient, the spread of each affine layer's "
        "output (the pre-activation that batch norm or the ReLU receives), the "
        "share of ReLU units that are shut on every probe image. The study's one explanation "
        f'of why the 9-layer network needs batch norm: "{CLAIM}" Here it is tested on the '
        "9-layer networks of the four configs (He init) and of the init grid."
    )
    watched = watched_runs(study)
    if not watched:
        return Section(
            title, "why", (intro, Text(f"{NOT_RUN}: no 9-layer run measured its layers yet."))
        )
    headers, rows = gradient_table(watched)
    blocks: list[Block] = [
        intro,
        Table(headers, rows, "9 layers: gradient norms at step 0, dead units at the end"),
        *(Text(line) for line in claim_sentences(watched)),
    ]
    blocks += [figures[key] for key in ("why-gradients", "why-percentiles") if key in figures]
    he = {w.batch_norm: w for w in watched if w.init == "He"}
    sentence = percentile_sentence(he, DEPTH - 1)
    if sentence:
        blocks.append(Text(sentence))
    by_bn = landscape_rows(study.configs)
    if by_bn:
        headers, rows = landscape_table(by_bn)
        blocks.append(Table(headers, rows, "The landscape along the gradient, over training"))
        if "why-landscape" in figures:
            blocks.append(figures["why-landscape"])
        sentence = landscape_sentence(by_bn)
        if sentence:
            blocks.append(Text(sentence))
    blocks.append(
        Text(
            f"A gradient counts as vanished below {VANISHED:g}: even the largest rate, 0.1, "
            "times it would move a weight by less than float32 resolves. The percentiles are "
            "of a whole affine layer's outputs, all units pooled, before batch norm where "
            "there is one (so with it their scale does not reach the ReLU), where Ioffe and "
            "Szegedy (2015) followed the normalized input of one typical unit of a sigmoid "
            "network on MNIST.",
            "note",
        )
    )
    return Section(title, "why", tuple(blocks))
