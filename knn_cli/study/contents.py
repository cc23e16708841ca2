"""What a study folder holds, read into plain data: study.json, and each part through the
readers its kind describes (`knn_cli.kinds`: sweep records, the gradient check's CSV), so the
report reads the same numbers the parts' own tables show.

A part that is missing, not started or unreadable is kept as such (with the reason), never an
error: a half-finished study is reported as far as it got. A folder that is no study is.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from knn_cli.errors import RunFolderError
from knn_cli.kinds import gradcheck, sweep
from knn_cli.kinds.run import summary_or_empty
from knn_cli.kinds.study import read_study_file
from knn_cli.study.parts import CONFIGS, GRADCHECK, GRID, PART_NAMES, RATES, SEARCH, SEARCH_9
from knn_cli.study.rates import Rates, read_rates
from knn_cli.sweeps.config_runs import read_config_sweep
from knn_cli.sweeps.folder import (
    TrialRecord,
    load_sweep_of_kind,
    trial_record,
)
from knn_cli.sweeps.init_grid import grid_plan
from knn_cli.sweeps.lambda_search import ranked_records
from knn_cli.sweeps.plan import (
    INIT_SENSITIVITY,
    LAMBDA_SEARCH,
    GridSpec,
    LambdaSearchSpec,
)


@dataclass(frozen=True)
class PartState:
    """A part as study.json records it, and why its folder could not be read if it could not."""

    name: str
    folder: Path
    kind: str
    status: str
    seconds: float | None
    message: str
    error: str = ""


@dataclass(frozen=True)
class Gradcheck:
    """One depth's `knn gradcheck` folder: its settings and its CSV rows, as written."""

    name: str
    layers: int
    hidden: tuple[int, ...]
    status: str
    rows: tuple[dict[str, str], ...]


@dataclass(frozen=True)
class LambdaSearch:
    spec: LambdaSearchSpec
    search: tuple[TrialRecord, ...]  # coarse and fine trials, in plan order
    finals: tuple[TrialRecord, ...]  # the chosen lambda retrained, one per seed
    best: TrialRecord | None  # the best search trial on validation accuracy
    fine_log_range: tuple[float, float] | None

    @property
    def chosen_lambda(self) -> float | None:
        """The lambda retrained (as planned), else the best so far."""
        if self.finals:
            return self.finals[0].trial.lambda_
        return None if self.best is None else self.best.trial.lambda_


@dataclass(frozen=True)
class Grid:
    spec: GridSpec
    records: tuple[TrialRecord, ...]


@dataclass(frozen=True)
class Study:
    folder: Path
    doc: Mapping[str, Any]
    parts: Mapping[str, PartState]
    gradchecks: tuple[Gradcheck, ...] = ()
    configs: tuple[TrialRecord, ...] = ()
    search: LambdaSearch | None = None
    retrain_9layer: tuple[TrialRecord, ...] = ()
    grid: Grid | None = None
    rates: Rates | None = None

    @property
    def quick(self) -> bool:
        return bool(self.doc.get("quick"))


def read_study(study_dir: str | Path) -> Study:
    study_dir = Path(study_dir)
    doc = read_study_file(study_dir)
    parts = {name: _part_state(study_dir, name, doc) for name in PART_NAMES}
    readers = {
        GRADCHECK: ("gradchecks", _read_gradchecks),
        CONFIGS: ("configs", read_config_sweep),
        SEARCH: ("search", _read_lambda_search),
        SEARCH_9: ("retrain_9layer", read_config_sweep),
        GRID: ("grid", _read_grid),
        RATES: ("rates", read_rates),
    }
    found: dict[str, Any] = {}
    for name, (attribute, reader) in readers.items():
        part = parts[name]
        if not part.folder.is_dir():
            continue
        try:
            found[attribute] = reader(part.folder)
        except RunFolderError as error:  # the part's own files: report it, read the others
            parts[name] = replace(part, error=str(error))
    return Study(folder=study_dir, doc=doc, parts=parts, **found)


def _part_state(study_dir: Path, name: str, doc: Mapping[str, Any]) -> PartState:
    entry = (doc.get("parts") or {}).get(name) or {}
    seconds = entry.get("seconds")
    return PartState(
        name=name,
        folder=study_dir / str(entry.get("folder") or name),
        kind=str(entry.get("kind") or ""),
        status=str(entry.get("status") or "pending"),
        seconds=float(seconds) if isinstance(seconds, int | float) else None,
        message=str(entry.get("message") or ""),
    )


def _read_gradchecks(folder: Path) -> tuple[Gradcheck, ...]:
    """Every `k<layers>` subfolder, fewest layers first."""
    checks = []
    for sub in folder.iterdir():
        match = re.fullmatch(r"k(\d+)", sub.name)
        if not match or not sub.is_dir():
            continue
        summary = summary_or_empty(sub)
        checks.append(
            Gradcheck(
                name=sub.name,
                layers=int(summary.get("layers", match.group(1))),
                hidden=tuple(summary.get("hidden", ())),
                status=str(summary.get("status", "interrupted")),
                rows=gradcheck.records(sub),
            )
        )
    return tuple(sorted(checks, key=lambda check: check.layers))


def _read_lambda_search(folder: Path) -> LambdaSearch:
    spec = load_sweep_of_kind(folder, LAMBDA_SEARCH)
    _, _, records = sweep.records(folder)
    search = tuple(r for r in records if r.trial.stage != "final")
    ranked = ranked_records(search)
    fine = sweep.read_sweep_file(folder).get("fine_log_range")
    return LambdaSearch(
        spec=spec,
        search=search,
        finals=tuple(r for r in records if r.trial.stage == "final"),
        best=ranked[0] if ranked else None,
        fine_log_range=(float(fine[0]), float(fine[1])) if fine else None,
    )


def _read_grid(folder: Path) -> Grid:
    spec = load_sweep_of_kind(folder, INIT_SENSITIVITY)
    return Grid(spec, tuple(trial_record(folder, trial) for trial in grid_plan(spec)))


def first_seed_runs(records: Sequence[TrialRecord]) -> dict[str, TrialRecord]:
    """Each config's run with its lowest seed: the one whose curves the report draws."""
    runs: dict[str, TrialRecord] = {}
    for record in records:
        name = record.trial.config["name"]
        seed = record.trial.config["training"]["seed"]
        if name not in runs or seed < runs[name].trial.config["training"]["seed"]:
            runs[name] = record
    return runs
