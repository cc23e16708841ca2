"""What a training run leaves in its folder, recorded as it goes: the metrics of every evaluation
point (metrics.csv) and the layers' measurements (diagnostics.csv), appended as they come, the
progress bar, checkpoints, and at the end the model, the summary and the plots.

The recorder only watches: the trainer calls `on_evaluation`, `on_diagnostics` and `on_step`,
`on_cycle_end` (the snapshot ensemble's networks, snapshots/cycle-<c>.npz) and `save_checkpoint`
between two steps; `finish` writes the end of a run that ended as training said (finished or
diverged), `finish_despite` the end of one that an error or an interrupt cut short, never
letting a failure of its own hide the error that ended the run.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from knn_cli.plots import plot_run
from knn_cli.progress import TrainingBar
from knn_cli.runs import (
    CHECKPOINT_FILE,
    MODEL_FILE,
    SUMMARY_FILE,
    atomic_save_npz,
    atomic_write_json,
    diagnostics_log,
    metrics_log,
    provenance,
    write_checkpoint,
    write_snapshot,
)
from knn_cli.trainer import Listener, TrainingOutcome

Record = Mapping[str, Any]


@dataclass(frozen=True)
class RunFacts:
    """What a run's summary says whatever becomes of the run."""

    name: str
    total_steps: int
    n_s: int
    n_train: int
    seed: int
    data: str  # where the data came from
    memory_estimate_mb: Mapping[str, float]  # the whole population's, where it trained in one
    probe_rows: int | None = None  # training rows the layers are measured on (None: not)
    population: int = 1  # runs trained side by side with it in one step, itself included


class RunRecorder(Listener):
    """One run's folder while it trains: the Listener of its member of the trainer's
    population. `state()` gives what model.npz and a checkpoint hold (the network's and the
    update rule's state, read between two steps), `network_state()` what a snapshot at the end
    of one of `snapshot_cycles` holds (the network's alone); `on_leaving` finishes the run when
    it leaves its population early (it diverged)."""

    def __init__(
        self,
        run_dir: Path,
        state: Callable[[], Mapping[str, np.ndarray]],
        facts: RunFacts,
        *,
        start_step: int = 0,
        earlier_seconds: float = 0.0,
        earlier_records: Sequence[Record] = (),
        progress: bool = False,
        measuring: bool = False,
        network_state: Callable[[], Mapping[str, np.ndarray]] | None = None,
        snapshot_cycles: Sequence[int] = (),
    ) -> None:
        if snapshot_cycles and network_state is None:
            raise ValueError("snapshots need the network's state")
        self.run_dir = run_dir
        self.state = state
        self.network_state = network_state
        self.snapshot_cycles = frozenset(snapshot_cycles)
        self.facts = facts
        self.steps_done = start_step
        self.started = time.time()
        self.earlier_seconds = earlier_seconds
        self.latest: dict[str, Record] = {}
        self.best_val: tuple[float, int] | None = None  # (accuracy, step)
        self.log = metrics_log(run_dir)
        self.diagnostics = diagnostics_log(run_dir) if measuring else None
        self.bar = TrainingBar(
            facts.total_steps, initial=start_step, desc=facts.name, enabled=progress
        )
        self.on_leaving: Callable[[TrainingOutcome], None] | None = None
        if earlier_records:
            self._note(earlier_records)

    # -- while training: the trainer's callbacks ------------------------------------------------

    def on_evaluation(self, records: Sequence[Record]) -> None:
        self.log.append(records)
        self._note(records)

    def on_diagnostics(self, rows: Sequence[Record]) -> None:
        if self.diagnostics is not None:
            self.diagnostics.append(rows)

    def on_step(self, step: int, eta: float) -> None:
        self.steps_done = step
        self.bar.step(step, eta)

    def ended(self, outcome: TrainingOutcome) -> None:
        if self.on_leaving is not None:
            self.on_leaving(outcome)

    def wants_cycle_end(self, cycle: int) -> bool:
        return cycle in self.snapshot_cycles

    def on_cycle_end(self, step: int, cycle: int) -> None:
        assert self.network_state is not None  # the constructor insists where there are cycles
        write_snapshot(self.run_dir, cycle, self.network_state())

    def save_checkpoint(self, done: int) -> None:
        write_checkpoint(self.run_dir, self.state(), {"step": done, "seconds": self.seconds()})

    def _note(self, records: Sequence[Record]) -> None:
        for record in records:
            self.latest[str(record["split"])] = record
        val = self.latest["val"]
        if self.best_val is None or val["accuracy"] > self.best_val[0]:
            self.best_val = (float(val["accuracy"]), int(val["step"]))
        self.bar.evaluated(val["accuracy"], val["eta"])

    def seconds(self) -> float:
        """Seconds trained in all, an interrupted attempt's included."""
        return self.earlier_seconds + time.time() - self.started

    # -- at the end ----------------------------------------------------------------------------

    def finish(self, outcome: TrainingOutcome, measured: Mapping[str, Any]) -> dict[str, Any]:
        """The end of a run training ended: model, summary (with the final `measured`
        accuracies), plots; a finished or diverged run's checkpoint goes, as nothing is left to
        continue."""
        self._close()
        atomic_save_npz(self.run_dir / MODEL_FILE, self.state())
        summary = self.summary(outcome, measured)
        atomic_write_json(self.run_dir / SUMMARY_FILE, summary)
        if outcome.status in ("finished", "diverged"):
            (self.run_dir / CHECKPOINT_FILE).unlink(missing_ok=True)
        if self.latest:
            plot_run(self.run_dir)
        return summary

    def finish_despite(self, error: BaseException) -> None:
        """The end of a run that `error` cut short (an interrupt, or a failure): what was
        computed is saved as far as it can be, the summary saying `interrupted` or `failed`.
        Whatever goes wrong here is said on stderr and not raised: the caller re-raises
        `error`, the cause worth reporting."""
        if isinstance(error, KeyboardInterrupt):
            outcome = TrainingOutcome("interrupted", 0, "interrupted (Ctrl-C or a stop signal)")
        else:
            outcome = TrainingOutcome("failed", 0, f"{type(error).__name__}: {error}")
        try:
            self.finish(outcome, {})
        except Exception as late:
            print(
                f"warning: {self.run_dir}: saving the run after {type(error).__name__} also "
                f"failed: {type(late).__name__}: {late}",
                file=sys.stderr,
            )

    def _close(self) -> None:
        self.bar.close()
        self.log.close()
        if self.diagnostics is not None:
            self.diagnostics.close()

    def summary(self, outcome: TrainingOutcome, measured: Mapping[str, Any]) -> dict[str, Any]:
        """summary.json: how the run ended, its accuracies, its cost, what reproduces it."""
        measured, facts = dict(measured), self.facts
        best_accuracy, best_step = self.best_val or (None, None)
        return {
            "name": facts.name,
            "status": outcome.status,
            "message": outcome.message,
            "steps": self.steps_done,
            "total_steps": facts.total_steps,
            "n_s": facts.n_s,
            "n_train": facts.n_train,
            "final_train_accuracy": self.latest.get("train", {}).get("accuracy"),
            "final_val_accuracy": self.latest.get("val", {}).get("accuracy"),
            "best_val_accuracy": best_accuracy,
            "best_val_step": best_step,
            "test_accuracy": measured.pop("test_accuracy", None),
            **measured,
            # In a population: the time it spent there, trained beside the others in each
            # step; its share of the worker's time is wall_seconds / population.
            "wall_seconds": round(self.seconds(), 3),
            "population": facts.population,
            "peak_memory_mb": peak_memory_mb(),
            "memory_estimate_mb": dict(facts.memory_estimate_mb),
            "probe_rows": facts.probe_rows,
            "seed": facts.seed,
            "data": facts.data,
            "versions": provenance(),
        }


def peak_memory_mb() -> float | None:
    """This process's peak resident memory so far (in a sweep's own process, the peak of all
    its runs so far), or None where the platform does not say."""
    try:
        import resource
    except ImportError:  # not on Unix
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)  # bytes or KiB
