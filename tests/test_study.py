"""`knn study`'s runner apart from its report: the time estimate, and that a part's sweep folder
is the study's while the study runs it."""

from __future__ import annotations

import json
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
from knn_cli.study.parts import Running, run_configs_part
from knn_cli.study.plan import PlannedPart, estimate_seconds
from knn_cli.study.settings import QUICK_N_S, StudySettings, study_config
from knn_cli.sweeps.populations import Populations


def test_the_estimate_counts_steps_evaluations_and_populations_on_the_workers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A step of 1 ms alone and 0.6 ms a member in a population of 8: in a population of P a
    member's step is 0.6 ms + 0.4 ms * (8 / 7) (1 / P - 1 / 8), NumPy's cost per call shared."""
    monkeypatch.setattr(estimate, "measure_speed", lambda *args: (0.001, 0.0006, 1e-6))
    config = study_config(StudySettings(), "3layer_bn")
    run = PlannedRun(config, n_s=250, cycles=2)  # 1000 steps, 10 evaluations a cycle and step 0
    assert (run.steps, run.evaluations) == (1000, 21)
    # The study measures its training curve on 5,000 rows but at the last point: 20 points of
    # 5,000 + 5,000 rows, and one of 45,000 + 5,000.
    assert config.evaluation.train_curve_rows == 5000
    assert run.rows_evaluated == 20 * 10_000 + 50_000
    speeds = estimate.Speeds(3072)
    assert speeds.of(config, 1)[0] == pytest.approx(0.001)
    assert speeds.of(config, 8)[0] == pytest.approx(0.0006)
    shared = 0.0004 * 8 / 7
    assert speeds.of(config, 2)[0] == pytest.approx(0.001 - shared + shared / 2)

    def population(members: int) -> float:
        steps = 1000 * members * speeds.of(config, members)[0]
        evaluations = members * 250_000 * 1e-6
        return steps + evaluations + estimate.START_SECONDS + members * estimate.FINISH_SECONDS

    three = PlannedPart("three", "", [[run] * 3])
    overhead = estimate.UNMODELLED_OVERHEAD
    # Alike runs on two workers: a population of 2 and one of 1, side by side.
    estimates = estimate_seconds([three], 2, 50_000, 3072)
    assert estimates["three"] == pytest.approx(population(2) * overhead)
    # On one worker, one population of 3; off, three runs one after another.
    assert estimate_seconds([three], 1, 50_000, 3072)["three"] == pytest.approx(
        population(3) * overhead
    )
    off = estimate_seconds([three], 1, 50_000, 3072, Populations(1))["three"]
    assert off == pytest.approx(3 * population(1) * overhead)


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
                with folder_lock(Path(item[0].run_dir).parent):
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
    run = run_configs_part(tmp_path / "configs", settings, Running(executor), {})
    assert run.status == "finished"
    assert len(executor.refused) == 4 and "is in use by process" in executor.refused[0]


def test_the_grid_takes_its_widths_from_its_depths_not_from_set() -> None:
    result = CliRunner().invoke(cli, ["init-sensitivity", "--set", "model.hidden=[5]"])
    assert result.exit_code == 2
    assert "drop --set model.hidden" in result.output


@pytest.mark.parametrize(
    ("override", "said"),
    [
        ("training.cycles=x", "--set training.cycles: each part's cycles are the study's"),
        ("training.seed=5", "use --seed and --seeds"),
        ("model.hidden=[5]", "--set model.hidden: the study's networks are 3 and 9 layers"),
        ("training.n_s=abc", "training.n_s must be an integer >= 1 or null, got 'abc'"),
        ("training.eta_max=-1", "training.eta_max must be a number > 0, got -1"),
    ],
)
@pytest.mark.parametrize("quick", [True, False])
def test_a_study_refuses_a_bad_set_in_one_line_before_anything_runs(
    tmp_path: Path, fake_cifar_dir: Path, override: str, said: str, quick: bool
) -> None:
    """In a quick study the quick sizes used to hide a bad value from some parts, which then
    trained, until the init grid failed on it with exit 1."""
    runs = tmp_path / "runs"
    args = ["study", "--runs-dir", str(runs), "--set", f"data.dir={fake_cifar_dir}",
            "--set", override, *(["--quick"] if quick else [])]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith("error: ") and said in line
    assert not runs.exists()


def test_a_quick_study_takes_the_users_half_cycle_in_every_part() -> None:
    settings = StudySettings(quick=True, overrides=("training.n_s=7",))
    sizes = settings.sizes
    assert (sizes.search_n_s, sizes.final_n_s, sizes.grid_n_s) == (None, None, None)
    assert study_config(settings, "3layer").training.n_s == 7
    assert study_config(settings, "3layer").training.cycles == 1
    assert StudySettings(quick=True).sizes.grid_n_s == QUICK_N_S


def test_list_options_say_what_each_value_must_be() -> None:
    result = CliRunner().invoke(cli, ["init-sensitivity", "--sigmas=-1"])
    assert result.exit_code == 2 and "positive sigmas" in result.output
    result = CliRunner().invoke(cli, ["gradcheck", "--layers", "3", "--hidden", "5"])
    assert result.exit_code == 2 and "2 comma-separated widths >= 1" in result.output


def test_the_shared_queue_runs_the_most_urgent_ready_job_first() -> None:
    """One worker: while the first job runs, a less urgent part's jobs wait; an urgent part's
    jobs asked for later still go first."""
    import threading
    import time

    from knn_cli.executors import ProcessExecutor

    finished: list[tuple[str, float]] = []
    lock = threading.Lock()

    def consume(view: Any, items: list[float], label: str) -> None:
        for item, outcome in view.run(items, time.sleep):
            assert outcome.ok
            with lock:
                finished.append((label, item))

    with ProcessExecutor(1).shared() as shared:
        calm = threading.Thread(target=consume, args=(shared.view(5), [0.5, 0.01, 0.02], "calm"))
        calm.start()
        time.sleep(0.3)  # the first job handed to the worker, the other two waiting
        urgent = threading.Thread(target=consume, args=(shared.view(0), [0.03, 0.04], "urgent"))
        urgent.start()
        calm.join()
        urgent.join()
    assert finished == [
        ("calm", 0.5), ("urgent", 0.03), ("urgent", 0.04), ("calm", 0.01), ("calm", 0.02)
    ]  # fmt: skip


def test_a_part_runs_after_the_part_it_needs_and_others_run_beside_them() -> None:
    from knn_cli.study.parts import PARTS
    from knn_cli.study.runner import chains

    by_name = {part.name: part for part in PARTS}
    found = [[part.name for part in chain] for chain in chains(list(PARTS))]
    assert found == [
        ["gradcheck"], ["configs"], ["lambda-search", "lambda-9layer"], ["init-sensitivity"],
        ["usable-rates"],
    ]  # fmt: skip
    # A resumed study whose search finished: its 9-layer retrain runs alone.
    rest = [by_name["lambda-9layer"], by_name["init-sensitivity"]]
    assert [[p.name for p in chain] for chain in chains(rest)] == [
        ["lambda-9layer"], ["init-sensitivity"]
    ]  # fmt: skip


def run_files(study: Path) -> dict[str, bytes]:
    """Every run's metrics and weights in a study folder, by path."""
    found = [*study.rglob("metrics.csv"), *study.rglob("model.npz")]
    return {str(path.relative_to(study)): path.read_bytes() for path in found}


def test_a_study_runs_on_the_executor_chosen_and_a_failure_stays_its_own(
    tmp_path: Path, fake_cifar_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The quick study on two worker processes (the parts together) and in this process
    (--workers 1: one after another): every part runs, the 9-layer retrain only after the
    lambda search has chosen, beside the others where they run together; a part that fails
    (here the gradient check, made to) fails alone and the others finish; and every run's
    metrics and weights are the same bytes on both."""
    import dataclasses

    import knn_cli.study.runner as runner
    from knn_cli.errors import KnnError

    def broken(*args: Any) -> Any:
        raise KnnError("made to fail")

    failing = dataclasses.replace(runner.PARTS[0], run=broken)
    monkeypatch.setattr(runner, "PARTS", (failing, *runner.PARTS[1:]))
    files = {}
    for workers in ("2", "1"):
        runs = tmp_path / workers
        result = CliRunner().invoke(
            cli,
            ["study", "--quick", "--seeds", "1", "--workers", workers, "--runs-dir", str(runs),
             "--set", f"data.dir={fake_cifar_dir}", "--set", "data.validation_size=30",
             "--set", "training.n_s=5", "--set", "training.batch_size=20"],
        )  # fmt: skip
        (study,) = runs.glob("*_quick-study")
        doc = json.loads((study / "study.json").read_text())["parts"]
        statuses = {name: part["status"] for name, part in doc.items()}
        assert statuses == {
            "gradcheck": "failed", "configs": "finished", "lambda-search": "finished",
            "lambda-9layer": "finished", "init-sensitivity": "finished",
            "usable-rates": "finished",
        }, result.output  # fmt: skip
        assert "made to fail" in doc["gradcheck"]["message"]
        assert doc["lambda-9layer"]["started"] >= doc["lambda-search"]["ended"]
        together = doc["init-sensitivity"]["started"] < doc["lambda-search"]["ended"]
        assert together == (workers == "2")  # beside it on processes, after it here
        assert result.exit_code == 1 and "gradcheck" in result.output
        files[workers] = run_files(study)
    assert len(files["1"]) > 40 and files["2"] == files["1"]


def test_a_retrain_takes_the_suggested_bounds_else_a_decade_below_the_divergence() -> None:
    from knn_cli.study.parts import allowed_bounds, suggested_bounds

    suggested = {"suggested": {"eta_min": {"value": 0.0012345}, "eta_max": {"value": 0.15678}}}
    assert suggested_bounds(suggested) == (0.00123, 0.157)
    # Nothing suggested (its loss never fell) but its seeds diverged at 64 and 70: a peak of 6.4,
    # and below it the study's ratio of eta_max to eta_min.
    nothing = {"suggested": {}, "seeds": [{"diverged_eta": 64.0}, {"diverged_eta": 70.0}]}
    assert suggested_bounds(nothing) is None
    assert allowed_bounds(nothing) == (0.00064, 6.4)
    assert allowed_bounds({"suggested": {}, "seeds": [{"diverged_eta": None}]}) is None


def test_the_study_bar_counts_ended_runs_and_a_range_test_per_seed(tmp_path: Path) -> None:
    from knn_cli.study.progress import running_parts, runs_done

    def summary(folder: str, **values: object) -> None:
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "summary.json").write_text(json.dumps(values))

    summary("configs/000", status="finished", total_steps=10)
    summary("configs/001", status="diverged", total_steps=10)
    summary("configs/002", status="interrupted", total_steps=10)
    summary("gradcheck/k2", status="passed")  # a check, not a run
    summary("usable-rates/range-3layer", command="lr-range", seeds=[{}, {}])
    assert runs_done(tmp_path) == 2 + 2
    doc = {"parts": {"configs": {"status": "running"}, "gradcheck": {"status": "finished"}}}
    (tmp_path / "study.json").write_text(json.dumps(doc))
    assert running_parts(tmp_path) == ["configs"]


def test_the_time_left_moves_from_the_plan_to_the_pace_of_the_runs() -> None:
    from knn_cli.study.progress import seconds_left

    assert seconds_left(300.0, 0.0, 0, 100) == 300.0  # nothing done: the plan
    assert seconds_left(300.0, 400.0, 0, 100) == 0.0  # past the plan, nothing to go on yet
    # Half done in 100 s: the plan says 200 s left, the pace 100 s; halfway between.
    assert seconds_left(300.0, 100.0, 50, 100) == 150.0
    assert seconds_left(300.0, 100.0, 100, 100) == 0.0


def test_the_study_bar_is_quiet_off_a_terminal(tmp_path: Path, capsys) -> None:
    import click

    from knn_cli.study.progress import StudyBar

    with StudyBar(tmp_path, 10, 60.0, enabled=False) as bar:
        assert bar.say is click.echo
        bar.say("a part's line")
    captured = capsys.readouterr()
    assert captured.out == "a part's line\n" and captured.err == ""
