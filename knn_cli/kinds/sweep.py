"""A sweep's folder (`knn lambda-search`, `knn init-sensitivity`, `knn sweep`, or a part of a
study): sweep.json -- its kind, what was asked for, every trial planned so far -- and a run
folder per trial.

Recognising one and reading sweep.json are light; its trial records are built by the sweep
machinery (`sweeps.folder`, `sweeps.plan`), imported only when a sweep is read. `sweeps/folder.py`,
which writes the folder, takes the file's name and reader from here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from knn_cli.errors import RunFolderError
from knn_cli.kinds.base import Kind, Row, count_text, number, read_own_file, row, total
from knn_cli.kinds.run import worker_seconds
from knn_cli.locks import holder_alive

if TYPE_CHECKING:
    from knn_cli.sweeps.folder import Spec, TrialRecord

SWEEP = "sweep"  # shown for a sweep whose sweep.json does not say its kind
SWEEP_FILE = "sweep.json"
SWEEP_FORMAT_VERSION = 1


def recognise(folder: Path) -> bool:
    return (folder / SWEEP_FILE).is_file()


def read_sweep_file(sweep_dir: Path) -> dict[str, Any]:
    """sweep.json, or a one-line RunFolderError saying why the folder is no sweep."""
    doc = read_own_file(sweep_dir, SWEEP_FILE, "sweep")
    if not isinstance(doc, dict) or doc.get("version") != SWEEP_FORMAT_VERSION:
        path = sweep_dir / SWEEP_FILE
        raise RunFolderError(f"{path} is not a sweep plan this version of knn can read")
    return doc


def recorded_kind(folder: Path) -> str:
    """The kind sweep.json records (lambda-search, init-sensitivity, sweep), read leniently: a
    folder whose file cannot be read is still shown as a sweep."""
    try:
        return str(json.loads((folder / SWEEP_FILE).read_text())["kind"])
    except (OSError, ValueError, KeyError, TypeError):
        return SWEEP


def records(sweep_dir: Path) -> tuple[str, Spec, list[TrialRecord]]:
    """The sweep's kind, its spec and a record per trial planned so far (each the attempt that
    counts: the finished one if any, else the latest)."""
    from knn_cli.sweeps.folder import load_sweep, trial_record
    from knn_cli.sweeps.plan import Trial

    kind, spec = load_sweep(sweep_dir)
    try:
        trials = [Trial.from_dict(t) for t in read_sweep_file(sweep_dir)["trials"]]
    except (KeyError, TypeError) as error:
        raise RunFolderError(
            f"{sweep_dir}/{SWEEP_FILE} lists trials this knn cannot read: {error}"
        ) from None
    return kind, spec, [trial_record(sweep_dir, trial) for trial in trials]


def planned_total(kind: str, spec: Any, planned: int) -> int:
    """Trials the sweep will have run when done. A lambda search plans its fine and final stages
    only once the stage before has results, so sweep.json alone would undercount them."""
    from knn_cli.sweeps.plan import LAMBDA_SEARCH

    if kind != LAMBDA_SEARCH:
        return planned
    return max(planned, spec.total_trials)


def summary(folder: Path) -> Row:
    """Its trials counted by how they ended, its best validation accuracy (of the search trials,
    where it has them), the final retrain's mean test accuracy, and its workers' time."""
    from knn_cli.sweeps.plan import SEARCH_STAGES
    from knn_cli.sweeps.tables import final_test_summary

    kind, spec, found = records(folder)
    planned = planned_total(kind, spec, len(found))
    # A final retrain holds out a different validation set: only search trials compare.
    scores = [r.get("final_val_accuracy") for r in found if r.finished]
    if any(r.trial.stage in SEARCH_STAGES for r in found):
        scores = [r.score for r in found if r.trial.stage in SEARCH_STAGES and r.finished]
    final = final_test_summary(found)
    # A run trained in a population of P took a P-th of its wall time's worth of a worker.
    seconds = [worker_seconds(r.summary) for r in found if r.folder is not None]
    return row(
        folder,
        kind,
        count_text([r.status for r in found], planned, running=holder_alive(folder)),
        sweep_settings(kind, spec),
        written=(SWEEP_FILE,),
        test_accuracy=final[0] if final else None,
        val_accuracy=max((s for s in scores if number(s) is not None), default=None),
        wall_seconds=total(seconds),
        finished=sum(r.finished for r in found),
        total=planned,
    )


def sweep_settings(kind: str, spec: Any) -> str:
    """What the sweep varies over and on what network, in one line."""
    from knn_cli.config_diff import model_settings
    from knn_cli.sweeps.plan import CONFIG_SWEEP, INIT_SENSITIVITY, LAMBDA_SEARCH

    if kind == LAMBDA_SEARCH:
        stages = [s for s in ("coarse", "fine", "final") if getattr(spec, s)]
        low, high = spec.log_range
        span = f"lambda {10**low:.2g} to {10**high:.2g}" if spec.coarse else "lambda refined"
        parts = [*model_settings(spec.base), "+".join(stages), f"{spec.trials} trials", span]
    elif kind == INIT_SENSITIVITY:
        batch_norm = {(False,): "no BN", (True,): "BN"}.get(tuple(spec.batch_norms), "BN and no BN")
        parts = [
            f"k {','.join(map(str, spec.depths))}",
            batch_norm,
            f"sigma {','.join(f'{s:g}' for s in spec.sigmas)}",
        ]
    elif kind == CONFIG_SWEEP:
        names = [entry["config"]["name"] for entry in spec.runs]
        listed = ", ".join(names)
        short = f"{len(names)} configs, {names[0]} to {names[-1]}"
        parts = [listed if len(listed) <= 50 else short]
    else:
        parts = []
    return ", ".join(parts)


def trials_with_curves(sweep_dir: Path) -> list[Path]:
    """The folders of the trials that have started (their metrics.csv written), each the
    attempt that counts."""
    from knn_cli.kinds.run import METRICS_FILE

    _, _, found = records(sweep_dir)
    folders = [r.folder for r in found if r.folder and (r.folder / METRICS_FILE).is_file()]
    if not folders:
        raise RunFolderError(f"{sweep_dir}: no trial of this sweep has curves yet")
    return folders


KIND = Kind(
    SWEEP,
    recognise,
    summary,
    shown=recorded_kind,
    holds_folders=True,
    curves=trials_with_curves,
)
