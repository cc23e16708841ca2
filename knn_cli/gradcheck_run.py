"""The gradient check as a run: its settings, the reduced problem it checks on, the checks of
each variant of the network (without batch norm, with it before or after the ReLU), and the
folder it writes (`gradcheck.md`, `gradcheck.csv`, `summary.json`). `knn gradcheck` and the
study's first part both run it through `run_gradcheck`; the math is in `gradcheck.py`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from knn_cli.data.batches import read_batch
from knn_cli.data.cifar10 import N_CLASSES, TRAIN_FILES
from knn_cli.data.locate import find_data_dir
from knn_cli.errors import DataError
from knn_cli.formatting import csv_text, markdown_table
from knn_cli.gradcheck import GradientComparison, check_network_paths, choose_check_point
from knn_cli.kinds.gradcheck import CSV_FILE, TABLE_FILE
from knn_cli.kinds.gradcheck import GRADCHECK as GRADCHECK_COMMAND
from knn_cli.network import Network
from knn_cli.runs import SUMMARY_FILE, atomic_write_json, atomic_write_text
from knn_cli.stack import default_hidden


@dataclass(frozen=True)
class GradcheckSettings:
    """What `knn gradcheck` is asked for (its options, by the same names)."""

    layers: int = 3
    hidden: tuple[int, ...] | None = None  # None: the assignment's widths for `layers`
    batch_norm: bool | None = None  # None: check with and without
    bn_position: str = "before_relu"  # before_relu | after_relu | both
    dims: int = 20  # the first features of each image
    batch: int = 20
    lambda_: float = 0.005
    h: float = 1e-5
    tolerance: float = 1e-6
    seed: int = 0
    data_dir: str | None = None

    @property
    def widths(self) -> tuple[int, ...]:
        return default_hidden(self.layers) if self.hidden is None else tuple(self.hidden)

    def variants(self) -> list[tuple[bool, str | None]]:
        """(batch norm, its position) of each network checked."""
        both = ["before_relu", "after_relu"]
        positions = both if self.bn_position == "both" else [self.bn_position]
        variants: list[tuple[bool, str | None]] = []
        if self.batch_norm is not True:
            variants.append((False, None))
        if self.batch_norm is not False:
            variants += [(True, position) for position in positions]
        return variants


@dataclass(frozen=True)
class Problem:
    """The reduced problem checked: inputs, labels, and where they come from, in words."""

    X: np.ndarray
    y: np.ndarray
    source: str


@dataclass(frozen=True)
class GradientCheck:
    """One network's check: the engine's gradients parameter by parameter, the textbook
    layers' in one verdict."""

    label: str
    margin: float  # distance of the nearest ReLU input from the kink
    engine: list[GradientComparison]
    textbook_worst: float  # largest relative error of the textbook layers' gradients
    textbook_passed: bool


@dataclass(frozen=True)
class GradcheckRun:
    checks: list[GradientCheck]
    source: str

    @property
    def failures(self) -> list[str]:
        """What failed, as `variant parameter` (or `variant (textbook layers)`); empty if all
        passed."""
        checks = self.checks
        failed = [f"{c.label} {row.name}" for c in checks for row in c.engine if not row.passed]
        return failed + [f"{c.label} (textbook layers)" for c in checks if not c.textbook_passed]


def gradcheck_problem(settings: GradcheckSettings) -> Problem:
    """The first `dims` features of `batch` real CIFAR-10 images when the data is on this
    machine (never downloading for a check), random data when no data source is configured at
    all; says which."""
    dims, batch, seed = settings.dims, settings.batch, settings.seed
    try:
        folder = find_data_dir(settings.data_dir, download=False)
        pixels, labels = read_batch(folder / TRAIN_FILES[0])
    except DataError as error:
        if settings.data_dir is not None or os.environ.get("KNN_DATA_DIR"):
            raise  # a source was named and is wrong: say so rather than check other data
        rng = np.random.default_rng(seed)
        reason = str(error).split(";")[0]
        return Problem(
            rng.standard_normal((batch, dims)),
            rng.integers(0, N_CLASSES, batch),
            f"random data ({reason})",
        )
    features = pixels[:, :dims].astype(np.float64)
    features = (features - features.mean(axis=0)) / features.std(axis=0)
    return Problem(features[:batch], labels[:batch].astype(np.int64), f"CIFAR-10 from {folder}")


def gradient_check(
    problem: Problem, settings: GradcheckSettings, batch_norm: bool, bn_position: str | None
) -> GradientCheck:
    """Check a float64 network of the settings' widths at a point away from special values
    and kinks."""
    network = Network(
        problem.X.shape[1],
        settings.widths,
        N_CLASSES,
        batch_norm=batch_norm,
        bn_position=bn_position or "before_relu",
        dtype="float64",
        seed=settings.seed,
    )
    margin = choose_check_point(network, problem.X, np.random.default_rng(settings.seed))
    checked = check_network_paths(
        network, problem.X, problem.y, settings.lambda_, h=settings.h, rel_tol=settings.tolerance
    )
    label = "without BN" if not batch_norm else "with BN"
    label += " after ReLU" if batch_norm and bn_position == "after_relu" else ""
    textbook = checked["textbook"]
    worst = max((row.max_rel_error for row in textbook if row.judged_by == "relative"), default=0)
    return GradientCheck(
        label, margin, checked["engine"], worst, all(row.passed for row in textbook)
    )


def run_gradcheck(
    settings: GradcheckSettings,
    run_dir: Path,
    problem: Problem | None = None,
    on_check: Callable[[GradientCheck], None] | None = None,
) -> GradcheckRun:
    """Every variant's check, each handed to `on_check` as it is done, then the folder's
    tables and summary."""
    problem = problem or gradcheck_problem(settings)
    checks = []
    for batch_norm, position in settings.variants():
        check = gradient_check(problem, settings, batch_norm, position)
        if on_check is not None:
            on_check(check)
        checks.append(check)
    run = GradcheckRun(checks, problem.source)
    _write(run_dir, run, settings)
    return run


HEADERS = ("variant", "parameter", "shape", "max abs error", "max rel error", "judged by", "result")


def _rows(checks: Sequence[GradientCheck]) -> list[list[Any]]:
    return [
        [
            check.label,
            row.name,
            "x".join(map(str, row.shape)),
            f"{row.max_abs_error:.2e}",
            f"{row.max_rel_error:.2e}",
            row.judged_by,
            "pass" if row.passed else "FAIL",
        ]
        for check in checks
        for row in check.engine
    ]


def gradcheck_table(checks: Sequence[GradientCheck]) -> str:
    """Every parameter of every variant, as Markdown (for the terminal and gradcheck.md)."""
    return markdown_table(HEADERS, _rows(checks))


def _write(run_dir: Path, run: GradcheckRun, settings: GradcheckSettings) -> None:
    rows = _rows(run.checks)
    atomic_write_text(run_dir / TABLE_FILE, markdown_table(HEADERS, rows))
    atomic_write_text(run_dir / CSV_FILE, csv_text(HEADERS, rows))
    summary = {
        "command": GRADCHECK_COMMAND,
        "status": "failed" if run.failures else "passed",
        "layers": settings.layers,
        "hidden": list(settings.widths),
        "bn_position": settings.bn_position,
        "dims": settings.dims,
        "batch": settings.batch,
        "h": settings.h,
        "tolerance": settings.tolerance,
        "seed": settings.seed,
        "data": run.source,
        "lambda": settings.lambda_,
        "textbook_passed": {check.label: check.textbook_passed for check in run.checks},
    }
    atomic_write_json(run_dir / SUMMARY_FILE, summary)
