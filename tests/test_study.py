"""`knn study`'s runner apart from its report: the time estimate, and that a part's sweep folder
is the study's while the study runs it."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import knn_cli.estimate as estimate
from knn_cli.cli import cli
from knn_cli.estimate import PlannedRun
from knn_cli.executors import Outcome, guarded
from knn_cli.locks import FolderBusy, folder_lock
from knn_cli.study.parts import run_configs_part
from knn_cli.study.plan import PlannedPart, estimate_seconds
from knn_cli.study.settings import StudySettings, study_config


def test_the_estimate_counts_steps_evaluations_and_rounds_of_workers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(estimate, "measure_speed", lambda *args: (0.001, 1e-6))
    config = study_config(StudySettings(), "3layer_bn")
    run = PlannedRun(config, n_s=250, cycles=2)  # 1000 steps, 10 evaluations a cycle and step 0
    assert (run.steps, run.evaluations) == (1000, 21)
    # The study measures its training curve on 5,000 rows but at the last point: 20 points of
    # 5,000 + 5,000 rows, and one of 45,000 + 5,000.
    assert config.evaluation.train_curve_rows == 5000
    assert run.rows_evaluated == 20 * 10_000 + 50_000
    one_run = 1000 * 0.001 + 250_000 * 1e-6 + estimate.START_SECONDS
    three = PlannedPart("three", "", [run] * 3)
    estimates = estimate_seconds([three], 2, 50_000, 3072)
    # Three runs on two workers take two rounds, whatever the overhead factor.
    assert estimates["three"] == pytest.approx(2 * one_run * estimate.UNMODELLED_OVERHEAD)
    alone = estimate_seconds([three], 1, 50_000, 3072)["three"]
    assert alone == pytest.approx(3 * one_run * estimate.UNMODELLED_OVERHEAD)


class TriesTheLock:
    """Runs jobs in this process, first trying to take the sweep folder's lock as a second
    `--resume` of the part's sweep would."""

    workers = 1
    in_process = True

    def __init__(self) -> None:
        self.refused: list[str] = []

    def check(self) -> None:
        pass

    def run(self, items: Sequence[Any], fn: Callable[[Any], Any]) -> Iterator[tuple[Any, Outcome]]:
        for item in items:
            try:
                with folder_lock(Path(item.run_dir).parent):
                    pass
            except FolderBusy as error:
                self.refused.append(str(error))
            yield item, guarded(fn, item)


def test_a_part_sweep_is_held_by_the_study_while_it_runs(
    tmp_path: Path, fake_cifar_dir: Path
) -> None:
    settings = StudySettings(
        quick=True,
        seeds=1,
        overrides=(f"data.dir={fake_cifar_dir}", "data.validation_size=30", "training.n_s=5"),
    )
    executor = TriesTheLock()
    run = run_configs_part(tmp_path / "configs", settings, executor, False, {})
    assert run.status == "finished"
    assert len(executor.refused) == 4 and "is in use by process" in executor.refused[0]


def test_the_grid_takes_its_widths_from_its_depths_not_from_set() -> None:
    result = CliRunner().invoke(cli, ["init-sensitivity", "--set", "model.hidden=[5]"])
    assert result.exit_code == 2
    assert "drop --set model.hidden" in result.output


def test_list_options_say_what_each_value_must_be() -> None:
    result = CliRunner().invoke(cli, ["init-sensitivity", "--sigmas=-1"])
    assert result.exit_code == 2 and "positive sigmas" in result.output
    result = CliRunner().invoke(cli, ["gradcheck", "--layers", "3", "--hidden", "5"])
    assert result.exit_code == 2 and "2 comma-separated widths >= 1" in result.output
