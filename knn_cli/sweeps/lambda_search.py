"""The study's lambda search: coarse, then fine around the best coarse trials, then the chosen
lambda retrained on several seeds and tested. Selection looks at validation accuracy only."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from knn_cli.errors import KnnError, RunFolderError
from knn_cli.executors import Executor
from knn_cli.kinds import sweep
from knn_cli.sweeps.figures import lambda_figure
from knn_cli.sweeps.folder import (
    SWEEP_COMMANDS,
    TrialRecord,
    read_sweep_file,
    record_plan,
    recorded_stage,
)
from knn_cli.sweeps.lambda_fit import LambdaFit, fit_lambda
from knn_cli.sweeps.plan import (
    LAMBDA_SEARCH,
    SEARCH_STAGES,
    LambdaSearchSpec,
    Trial,
)
from knn_cli.sweeps.populations import AUTO, Populations
from knn_cli.sweeps.running import run_trials
from knn_cli.sweeps.tables import write_lambda_tables

FINE_TOP = 3


FINE_WIDEN_DECADES = 0.25


def fine_range(
    records: Sequence[TrialRecord], top: int = FINE_TOP, widen: float = FINE_WIDEN_DECADES
) -> tuple[float, float]:
    """log10 range spanning the `top` best trials by validation accuracy, widened each side.

    Widening keeps the fine search from collapsing onto one point when the best trials agree,
    and lets it look a little past the best if that sits at the edge of what was tried.
    """
    ranked = ranked_records(records)[:top]
    if not ranked:
        raise KnnError("no search trial finished, so there is nothing to refine")
    logs = [math.log10(r.trial.lambda_) for r in ranked]
    return min(logs) - widen, max(logs) + widen


def ranked_records(records: Iterable[TrialRecord]) -> list[TrialRecord]:
    """Finished trials, best validation accuracy first (ties: smaller index first)."""
    finished = [r for r in records if r.score is not None]
    return sorted(finished, key=lambda r: (-r.score, r.trial.index))


@dataclass(frozen=True)
class LambdaSearchResult:
    records: list[TrialRecord]  # every search trial (those refined --from included), plan order
    best: TrialRecord | None  # best search trial by validation accuracy
    finals: list[TrialRecord]  # the chosen lambda retrained, one per seed; [] without --final
    fine_log_range: tuple[float, float] | None
    fit: LambdaFit | None = None  # validation accuracy against log10 lambda, near the top


def search_fit(records: Sequence[TrialRecord]) -> LambdaFit | None:
    """The fit through the finished search trials (coarse and fine)."""
    points = [(r.trial.lambda_, r.score) for r in records if r.trial.stage in SEARCH_STAGES]
    return fit_lambda([(lam, score) for lam, score in points if score is not None])


def chosen_lambda(choose: str, best: TrialRecord | None, fit: LambdaFit | None) -> float | None:
    """The lambda `--choose` picks: the best trial's (the study's protocol), or the fit's peak
    (the best trial's where there is no fit)."""
    if choose == "fit" and fit is not None:
        return fit.peak_lambda
    return None if best is None else best.trial.lambda_


def run_lambda_search(
    spec: LambdaSearchSpec,
    sweep_dir: Path,
    executor: Executor,
    *,
    progress: bool = False,
    population: Populations = AUTO,
) -> LambdaSearchResult:
    """Coarse, then fine around the best coarse trials, then the final retrain, as asked; each
    stage's trials in populations as `population` says."""
    records = source_records(Path(spec.source)) if spec.source else []
    next_index = 1 + max((r.trial.index for r in records), default=-1)
    fine: tuple[float, float] | None = None

    def run_stage(trials: Sequence[Trial]) -> list[TrialRecord]:
        def note(stage_records: list[TrialRecord]) -> str:
            write_lambda_tables(sweep_dir, [*records, *stage_records])
            return best_note([*records, *stage_records])

        return run_trials(
            sweep_dir, trials, executor, progress=progress, on_record=note, population=population
        )

    for stage in (stage for stage in spec.stages if stage in SEARCH_STAGES):
        if stage == "fine":
            fine = _fine_log_range(sweep_dir, records)
        trials = recorded_stage(sweep_dir, stage) or spec.stage_trials(
            stage, next_index, log_range=fine
        )
        records += run_stage(trials)
        next_index += len(trials)

    ranked = ranked_records(records)
    best = ranked[0] if ranked else None
    fit = search_fit(records)
    chosen = chosen_lambda(spec.choose, best, fit)
    finals = run_stage(_final_plan(spec, sweep_dir, chosen, next_index)) if spec.final else []
    write_lambda_tables(sweep_dir, [*records, *finals], fit)
    lambda_figure(sweep_dir, spec, records, best, finals, fit)
    return LambdaSearchResult(records, best, finals, fine, fit)


def _fine_log_range(sweep_dir: Path, records: Sequence[TrialRecord]) -> tuple[float, float]:
    """The fine range on record, else the one the search results give (then recorded)."""
    recorded = read_sweep_file(sweep_dir).get("fine_log_range")
    if recorded:
        return recorded[0], recorded[1]
    low, high = fine_range(records)
    record_plan(sweep_dir, [], fine_log_range=[low, high])
    return low, high


def _final_plan(
    spec: LambdaSearchSpec, sweep_dir: Path, chosen: float | None, index: int
) -> list[Trial]:
    recorded = recorded_stage(sweep_dir, "final")
    if recorded:
        return recorded
    if chosen is None:
        raise KnnError("no search trial finished, so there is no lambda to retrain")
    return spec.stage_trials("final", index, lambda_=chosen)


def source_records(source: Path) -> list[TrialRecord]:
    """The search trials of an earlier sweep, for `--fine --from` to refine."""
    kind, _, records = sweep.records(source)
    if kind != LAMBDA_SEARCH:
        raise RunFolderError(
            f"{source} was made by {SWEEP_COMMANDS.get(kind, kind)}: --from takes a lambda search"
        )
    records = [r for r in records if r.trial.stage in SEARCH_STAGES]
    if not any(r.finished for r in records):
        raise RunFolderError(f"{source} has no finished search trial to refine")
    return records


def best_note(records: Sequence[TrialRecord]) -> str:
    ranked = ranked_records(r for r in records if r.trial.stage in SEARCH_STAGES)
    if not ranked:
        return "no finished trial yet"
    best = ranked[0]
    return f"best lambda {best.trial.lambda_:.3g} (val {best.score:.3f})"
