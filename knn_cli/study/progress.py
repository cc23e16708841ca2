"""One progress bar for a whole study: the runs finished of all it plans, the parts running, and
the time left, from the plan's estimate at first and from the runs' own pace as they finish.

The parts run on threads and in worker processes, each writing its runs' `summary.json` as they
end; the bar only looks at the study folder (every `POLL_SECONDS`), so it watches and changes
nothing. Quiet when not on a terminal: the parts' lines are printed as before.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import click
from tqdm import tqdm

from knn_cli.formatting import duration
from knn_cli.kinds.range_test import LR_RANGE
from knn_cli.kinds.study import STUDY_FILE
from knn_cli.runs import SUMMARY_FILE, summary_or_empty

POLL_SECONDS = 1.0
DONE = ("finished", "diverged")


def runs_done(study_dir: Path) -> int:
    """Runs of the study that have ended: a run folder's summary says finished or diverged; a
    range test counts one run per seed (as the plan counts it)."""
    done = 0
    for path in study_dir.rglob(SUMMARY_FILE):
        summary = summary_or_empty(path.parent)
        if summary.get("command") == LR_RANGE:
            done += len(summary.get("seeds", []))
        elif summary.get("status") in DONE and "total_steps" in summary:
            done += 1
    return done


def running_parts(study_dir: Path) -> list[str]:
    try:
        parts = json.loads((study_dir / STUDY_FILE).read_text()).get("parts", {})
    except (OSError, ValueError):
        return []
    return [name for name, part in parts.items() if part.get("status") == "running"]


def seconds_left(estimate: float, elapsed: float, done: int, total: int) -> float:
    """Time left: the plan's estimate of what remains, moved towards the pace the finished runs
    set (elapsed / share done) as that share grows; no runs done, the estimate alone."""
    if total <= 0 or done >= total:
        return 0.0
    share = done / total
    if share == 0:
        return max(0.0, estimate - elapsed)
    by_pace = elapsed / share - elapsed
    by_plan = max(0.0, estimate - elapsed)
    return (1.0 - share) * by_plan + share * by_pace


class StudyBar:
    """The bar, as a context manager; `say` prints a line above it (or plainly when quiet)."""

    def __init__(
        self, study_dir: Path, planned_runs: int, estimate: float, *, enabled: bool
    ) -> None:
        self.study_dir, self.total, self.estimate = study_dir, planned_runs, estimate
        self.enabled = enabled
        self._stop = threading.Event()
        self._bar: tqdm | None = None
        self._thread: threading.Thread | None = None
        self._started = time.monotonic()
        self._done_before = runs_done(study_dir) if enabled else 0  # a resumed study's

    def __enter__(self) -> StudyBar:
        if self.enabled:
            self._bar = tqdm(
                total=self.total,
                initial=self._done_before,
                desc="study",
                unit="run",
                dynamic_ncols=True,
                bar_format="{desc}: {n}/{total} runs |{bar}| {elapsed}{postfix}",
            )
            self._thread = threading.Thread(target=self._watch, name="study-bar", daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: object
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._bar is not None:
            self._refresh()
            if kind is None:  # done: runs the plan counted but no part needed are not owed
                self._bar.total = self._bar.n
                self._bar.refresh()
            self._bar.close()

    @property
    def say(self) -> Callable[[str], None]:
        return tqdm.write if self._bar is not None else click.echo

    def _watch(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            self._refresh()

    def _refresh(self) -> None:
        assert self._bar is not None
        done = runs_done(self.study_dir)
        elapsed = time.monotonic() - self._started
        # The pace is this session's: runs done before it took none of its time.
        left = seconds_left(
            self.estimate, elapsed, done - self._done_before, self.total - self._done_before
        )
        parts = ", ".join(running_parts(self.study_dir)) or "-"
        self._bar.n = min(done, self.total)
        self._bar.set_postfix_str(f"about {duration(left)} left; running: {parts}", refresh=True)
