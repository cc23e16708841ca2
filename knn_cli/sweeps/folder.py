"""The sweep folder: `sweep.json` (what was asked for, and every trial planned so far) and one
subfolder per trial, each an ordinary `knn train` run folder.

A trial cut short after a checkpoint continues from it in its folder, to the numbers it would
have reached uninterrupted. A trial that failed, or stopped before its first checkpoint, trains
again in its folder, its earlier attempt moved inside (`003-coarse/earlier-attempts/1/`): no run
folder is overwritten, and the sweep folder holds one folder per trial. (Sweeps made by earlier
versions re-ran trials in `003-coarse.2`; those are still read.)"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from knn_cli.config import config_from_dict, config_to_dict
from knn_cli.errors import ConfigError, RunFolderError
from knn_cli.kinds.sweep import SWEEP_FILE, SWEEP_FORMAT_VERSION, read_sweep_file
from knn_cli.runs import (
    CHECKPOINT_FILE,
    SUMMARY_FILE,
    atomic_write_json,
    new_run_dir,
    summary_or_empty,
)
from knn_cli.sweeps.plan import (
    CONFIG_SWEEP,
    INIT_SENSITIVITY,
    LAMBDA_SEARCH,
    NEW,
    RESUME,
    RETRIED,
    ConfigSweepSpec,
    GridSpec,
    LambdaSearchSpec,
    Trial,
)

DONE_STATUSES = ("finished", "diverged")  # deterministic ends: re-running changes nothing


SELECTION_METRIC = "final_val_accuracy"  # the model a search trial ends with, judged on val


@dataclass(frozen=True)
class TrialRecord:
    """A trial as its folder tells it: status, accuracies, where, and why it failed if it did."""

    trial: Trial
    folder: Path | None
    summary: Mapping[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        if self.folder is None:
            return "pending"
        return str(self.summary.get("status", "interrupted"))

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    @property
    def score(self) -> float | None:
        """Validation accuracy used for selection; None unless the trial finished."""
        return self.summary.get(SELECTION_METRIC) if self.finished else None

    def get(self, key: str) -> Any:
        return self.summary.get(key)

    @property
    def message(self) -> str:
        return "" if self.finished else str(self.summary.get("message") or "")


_SPECS: dict[str, type] = {
    LAMBDA_SEARCH: LambdaSearchSpec,
    INIT_SENSITIVITY: GridSpec,
    CONFIG_SWEEP: ConfigSweepSpec,
}
Spec = LambdaSearchSpec | GridSpec | ConfigSweepSpec


SWEEP_COMMANDS = {
    LAMBDA_SEARCH: "knn lambda-search",
    INIT_SENSITIVITY: "knn init-sensitivity",
    CONFIG_SWEEP: "knn sweep",
}


def kind_mismatch(folder: Path, found: str, wanted: str) -> str:
    """A one-line message for a sweep folder given to the wrong command."""
    command, asked = SWEEP_COMMANDS.get(found, "knn"), SWEEP_COMMANDS.get(wanted, wanted)
    return f"{folder} was made by {command}, not {asked}: use {command} --resume"


def start_sweep(
    runs_dir: str | Path, kind: str, spec: Spec, name: str | None = None, *, exact: bool = False
) -> Path:
    """A new sweep folder (named `name`, else by its kind) with its plan written (atomically)
    before any trial starts. `exact` makes `runs_dir/name` itself, without a time stamp (a part
    of a study)."""
    if exact:
        sweep_dir = Path(runs_dir) / (name or kind)
        sweep_dir.mkdir(parents=True)
    else:
        sweep_dir = new_run_dir(runs_dir, name or kind)
    doc = {"kind": kind, "version": SWEEP_FORMAT_VERSION, "spec": asdict(spec), "trials": []}
    atomic_write_json(sweep_dir / SWEEP_FILE, doc)
    return sweep_dir


def load_sweep(sweep_dir: str | Path) -> tuple[str, Spec]:
    """The kind and spec of an existing sweep folder, or a one-line RunFolderError."""
    doc = read_sweep_file(Path(sweep_dir))
    try:
        cls = _SPECS[doc["kind"]]
        spec = {
            key: tuple(value) if isinstance(value, list) and key != "base" else value
            for key, value in doc["spec"].items()
        }
        if cls is LambdaSearchSpec:
            # Sweeps planned before the final retrain had seeds and a hold-out of its own
            # resume as they were planned: one retrain, on the base config's split.
            spec.setdefault("final_seeds", 1)
            spec.setdefault("final_validation_size", spec["base"]["data"]["validation_size"])
        return doc["kind"], cls(**spec)
    except (KeyError, TypeError) as error:
        raise RunFolderError(
            f"{sweep_dir}/{SWEEP_FILE} is not a valid sweep plan: {error}"
        ) from None


def load_sweep_of_kind(sweep_dir: str | Path, kind: str) -> Spec:
    """The spec of a sweep folder that `kind`'s command made, or a one-line RunFolderError
    naming the command that made it."""
    found, spec = load_sweep(sweep_dir)
    if found != kind:
        raise RunFolderError(kind_mismatch(Path(sweep_dir), found, kind))
    return spec


def resume_or_start(sweep_dir: Path, kind: str, spec: Spec) -> Spec:
    """The sweep in `sweep_dir` (made exactly there, a part of a study): its recorded plan if it
    was started before, else `spec`, written to a new folder."""
    if sweep_dir.exists():
        return load_sweep_of_kind(sweep_dir, kind)
    start_sweep(sweep_dir.parent, kind, spec, sweep_dir.name, exact=True)
    return spec


def record_plan(sweep_dir: Path, trials: Sequence[Trial], **notes: Any) -> None:
    """Add a stage's trials (and notes such as the fine range) to sweep.json, refusing a plan
    that disagrees with the one on disk: resuming it would mix two different sweeps."""
    doc = read_sweep_file(sweep_dir)
    planned = {t["folder"]: t for t in doc["trials"]}
    for trial in trials:
        known = planned.get(trial.folder)
        if known is not None and _as_this_version_writes_it(known) != trial.to_dict():
            raise RunFolderError(
                f"{sweep_dir}: trial {trial.folder} would differ from the recorded plan; "
                "start a new sweep instead of resuming this one"
            )
        planned[trial.folder] = trial.to_dict()
    doc["trials"] = sorted(planned.values(), key=lambda t: t["index"])
    doc.update(notes)
    atomic_write_json(sweep_dir / SWEEP_FILE, doc)


def _as_this_version_writes_it(trial: Mapping[str, Any]) -> Mapping[str, Any]:
    """A recorded trial with its config written as this version writes configs, so that a sweep
    planned by an earlier version (say, with the update rules' settings spelled the old way)
    resumes; a config this version cannot read stays as it is, and differs."""
    try:
        config = config_to_dict(config_from_dict(trial["config"]))
    except (ConfigError, KeyError, TypeError):
        return trial
    return {**trial, "config": config}


def recorded_stage(sweep_dir: Path, stage: str) -> list[Trial]:
    """A stage's trials as first planned. The fine and final stages depend on earlier results,
    which a resume may change (a failed trial re-run); the plan on record is the sweep's."""
    doc = read_sweep_file(sweep_dir)
    return [
        Trial.from_dict(_as_this_version_writes_it(t)) for t in doc["trials"] if t["stage"] == stage
    ]


def attempt_dirs(sweep_dir: Path, trial: Trial) -> list[Path]:
    """The trial's folders, oldest first: `003-coarse`, then `003-coarse.2`, `.3`... for re-runs."""
    found = []
    for attempt in range(1, 1000):
        path = sweep_dir / (trial.folder if attempt == 1 else f"{trial.folder}.{attempt}")
        if not path.is_dir():
            return found
        found.append(path)
    return found


def trial_record(sweep_dir: Path, trial: Trial) -> TrialRecord:
    """The trial's done attempt if it has one, else its latest (failed, interrupted) attempt."""
    attempts = [(path, summary_or_empty(path)) for path in attempt_dirs(sweep_dir, trial)]
    for path, summary in attempts:
        if summary.get("status") in DONE_STATUSES:
            return TrialRecord(trial, path, summary)
    if attempts:
        return TrialRecord(trial, *attempts[-1])
    return TrialRecord(trial, None)


EARLIER_ATTEMPTS = "earlier-attempts"


def next_attempt(sweep_dir: Path, trial: Trial) -> tuple[Path, str]:
    """Where and how the trial's next attempt trains: (folder, NEW | RESUME | RETRIED).

    Called in the sweep's process, which holds the sweep folder's lock, before any worker
    starts on the trial."""
    attempts = attempt_dirs(sweep_dir, trial)
    if not attempts:
        return sweep_dir / trial.folder, NEW
    latest = attempts[-1]
    if (latest / CHECKPOINT_FILE).is_file() and summary_or_empty(latest).get("status") in (
        None,
        "interrupted",
    ):
        return latest, RESUME
    retire(latest)
    return latest, RETRIED


def retire(run_dir: Path) -> None:
    """Move the attempt in `run_dir` to `run_dir/earlier-attempts/N`, leaving `run_dir` holding
    only its earlier attempts, in order, for the next attempt to train in."""
    aside = run_dir.with_name(f".{run_dir.name}.retiring")
    run_dir.rename(aside)
    earlier = run_dir / EARLIER_ATTEMPTS
    earlier.mkdir(parents=True)
    if (aside / EARLIER_ATTEMPTS).is_dir():
        for older in (aside / EARLIER_ATTEMPTS).iterdir():
            older.rename(earlier / older.name)
        (aside / EARLIER_ATTEMPTS).rmdir()
    aside.rename(earlier / str(len(list(earlier.iterdir())) + 1))


def write_failure(run_dir: Path, trial: Trial, error: str) -> None:
    summary = {
        **summary_or_empty(run_dir),
        "name": trial.config["name"],
        "status": "failed",
        "message": error,
    }
    run_dir.mkdir(exist_ok=True)  # the trial may have failed before it made its folder
    atomic_write_json(run_dir / SUMMARY_FILE, summary)
