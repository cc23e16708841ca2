"""Sweeps on the tiny fake CIFAR-10 folder: planning, resuming, failures, and three executors."""

from __future__ import annotations

import csv
import json
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from knn_cli.cli import cli
from knn_cli.config import config_from_dict, config_to_dict
from knn_cli.errors import KnnError, RunFolderError
from knn_cli.executors import (
    DaskExecutor,
    Outcome,
    ProcessExecutor,
    SerialExecutor,
    guarded,
    make_executor,
)
from knn_cli.stack import default_hidden
from knn_cli.sweeps.config_runs import run_config_sweep
from knn_cli.sweeps.folder import TrialRecord, load_sweep, start_sweep
from knn_cli.sweeps.init_grid import run_init_sensitivity
from knn_cli.sweeps.lambda_search import fine_range, run_lambda_search
from knn_cli.sweeps.plan import (
    CONFIG_SWEEP,
    INIT_SENSITIVITY,
    LAMBDA_SEARCH,
    ConfigSweepSpec,
    GridSpec,
    LambdaSearchSpec,
    Trial,
    TrialJob,
    final_trials,
    grid_trials,
    lambda_trials,
    sample_log_lambda,
    trial_config,
)
from knn_cli.sweeps.populations import Populations
from knn_cli.sweeps.running import run_population, run_trials
from knn_cli.sweeps.tables import final_test_summary

pytestmark = pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")


def tiny_base(data_dir: Path, **training: Any) -> dict[str, Any]:
    """A config that trains in a fraction of a second on the fake folder (120 train images)."""
    doc = {
        "name": "tiny",
        "model": {"hidden": [8], "batch_norm": True},
        "training": {"batch_size": 20, "n_s": 10, "cycles": 1, **training},
        "data": {"dir": str(data_dir), "validation_size": 30},
    }
    return config_to_dict(config_from_dict(doc))


def tiny_search(data_dir: Path, **changes: Any) -> LambdaSearchSpec:
    options = {
        "coarse": True, "fine": False, "trials": 4, "cycles": 1, "n_s": 10, "seed": 3,
        "final_seeds": 2, "final_validation_size": 20,
    }  # fmt: skip
    return LambdaSearchSpec(base=tiny_base(data_dir), **{**options, **changes})


def read_csv(path: Path, drop: Sequence[str] = ("seconds", "folder")) -> list[dict[str, str]]:
    """Rows without the columns that rightly differ between two runs of the same sweep."""
    with path.open(newline="") as handle:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(handle)]


def finished(trial: Trial, accuracy: float) -> TrialRecord:
    return TrialRecord(
        trial, Path(trial.folder), {"status": "finished", "final_val_accuracy": accuracy}
    )


# --- sampling and planning -----------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_sampled_lambdas_lie_in_the_log_range(seed: int) -> None:
    values = [sample_log_lambda(seed, "coarse", i, -5.0, -1.0) for i in range(200)]
    assert all(1e-5 <= v <= 1e-1 for v in values)
    logs = [math.log10(v) for v in values]
    assert min(logs) < -4.5 and max(logs) > -1.5  # spread over the range, not one corner
    assert len(set(values)) == len(values)


def test_a_trials_lambda_depends_on_its_index_not_on_how_many_trials_there_are() -> None:
    base = config_to_dict(config_from_dict({"name": "b"}))
    few = lambda_trials(base, "coarse", (-5, -1), range(3), seed=7, cycles=1, n_s=10)
    many = lambda_trials(base, "coarse", (-5, -1), range(10), seed=7, cycles=1, n_s=10)
    assert [t.to_dict() for t in few] == [t.to_dict() for t in many[:3]]
    # Every search trial trains with the sweep's seed (they differ in lambda alone); the final
    # retrains each with a seed of its own.
    assert [t.config["training"]["seed"] for t in many] == [7] * 10
    finals = final_trials(base, range(10, 13), 1e-3, seed=7, cycles=1, validation_size=1000)
    assert [t.config["training"]["seed"] for t in finals] == [17, 18, 19]
    assert all(not t.evaluate_test for t in many)  # search trials never see the test set
    assert sample_log_lambda(7, "coarse", 2, -5, -1) != sample_log_lambda(7, "fine", 2, -5, -1)
    assert sample_log_lambda(7, "coarse", 2, -5, -1) != sample_log_lambda(8, "coarse", 2, -5, -1)


def test_fine_range_spans_the_top_three_by_validation_accuracy_widened() -> None:
    base = config_to_dict(config_from_dict({"name": "b"}))
    lambdas = [1e-5, 1e-4, 1e-3, 3e-3, 1e-2, 1e-1]
    accuracies = [0.40, 0.50, 0.55, 0.54, 0.52, 0.30]
    trials = [
        Trial(i, "coarse", "", trial_config(base, "b", {"training.lambda": lam}), f"{i}", False)
        for i, lam in enumerate(lambdas)
    ]
    records = [finished(t, a) for t, a in zip(trials, accuracies, strict=True)]
    low, high = fine_range(records)
    assert low == pytest.approx(-3 - 0.25) and high == pytest.approx(-2 + 0.25)
    # A failed trial does not count, however good its (missing) figure.
    records[0] = TrialRecord(trials[0], Path("0"), {"status": "failed", "final_val_accuracy": 0.9})
    assert fine_range(records) == (low, high)
    with pytest.raises(KnnError, match="nothing to refine"):
        fine_range([TrialRecord(trials[0], Path("0"), {"status": "diverged"})])


def test_final_retrains_hold_out_less_and_report_mean_and_spread_of_finished_ones() -> None:
    base = config_to_dict(config_from_dict({"name": "b"}))
    finals = final_trials(base, [7, 8, 9], 0.003, seed=2, cycles=3, validation_size=1000)
    assert [t.config["training"]["seed"] for t in finals] == [9, 10, 11]
    assert {t.config["data"]["validation_size"] for t in finals} == {1000}
    assert {t.config["training"]["cycles"] for t in finals} == {3}
    assert {t.config["training"]["lambda"] for t in finals} == {0.003}
    records = [
        TrialRecord(finals[0], Path("a"), {"status": "finished", "test_accuracy": 0.50}),
        TrialRecord(finals[1], Path("b"), {"status": "finished", "test_accuracy": 0.54}),
        TrialRecord(finals[2], Path("c"), {"status": "diverged", "test_accuracy": 0.10}),
    ]
    mean, spread, count = final_test_summary(records)
    assert (mean, count) == (pytest.approx(0.52), 2)
    assert spread == pytest.approx(math.sqrt(0.02**2 * 2))  # sample deviation of 0.50, 0.54
    assert final_test_summary(records[:1]) == (pytest.approx(0.50), 0.0, 1)
    assert final_test_summary(records[2:]) is None


def test_init_grid_covers_every_cell_with_a_normal_init() -> None:
    base = config_to_dict(config_from_dict({"name": "b"}))
    trials = grid_trials(base, (3, 9), (False, True), (1e-1, 1e-3), seed=5, cycles=2, n_s=None)
    assert len(trials) == 8
    cells = {
        (
            len(t.config["model"]["hidden"]) + 1,
            t.config["model"]["batch_norm"],
            t.config["model"]["sigma"],
        )
        for t in trials
    }
    assert cells == {(k, bn, s) for k in (3, 9) for bn in (False, True) for s in (1e-1, 1e-3)}
    assert all(t.config["model"]["init"] == "normal" and t.evaluate_test for t in trials)
    assert {tuple(t.config["model"]["hidden"]) for t in trials} == {
        default_hidden(3),
        default_hidden(9),
    }
    assert [t.config["training"]["seed"] for t in trials] == [5] * 8  # paired cells
    assert len({t.folder for t in trials}) == 8


# --- running, failing, resuming ------------------------------------------------------------------


def test_a_failing_and_a_diverging_trial_are_recorded_and_the_sweep_goes_on(
    tmp_path: Path, fake_cifar_dir: Path
) -> None:
    spec = tiny_search(fake_cifar_dir, trials=3)
    sweep_dir = start_sweep(tmp_path, LAMBDA_SEARCH, spec)
    trials = lambda_trials(spec.base, "coarse", (-3, -2), range(4), seed=0, cycles=1, n_s=10)
    # batch_size 500 > the 120 training images: train_run raises inside the worker.
    broken = trial_config(trials[1].config, "broken", {"training.batch_size": 100})
    broken["training"]["batch_size"] = 500  # valid for CIFAR-10's size, not for this folder's
    trials[1] = Trial(1, "coarse", "broken", broken, trials[1].folder, False)
    unstable = trial_config(
        trials[2].config,
        "unstable",
        {"model.batch_norm": False, "training.eta_min": 1e6, "training.eta_max": 1e7},
    )
    trials[2] = Trial(2, "coarse", "unstable", unstable, trials[2].folder, False)

    records = run_trials(sweep_dir, trials, SerialExecutor())
    assert [r.status for r in records] == ["finished", "failed", "diverged", "finished"]
    assert "batch_size" in records[1].message and "\n" not in records[1].message
    on_disk = json.loads((sweep_dir / "001-coarse" / "summary.json").read_text())
    assert on_disk["status"] == "failed"

    # Resuming re-runs the failed trial only: finished and diverged ones are final. It trains
    # again in its folder, the failed attempt kept inside; a third attempt keeps both, in order.
    for attempt in (2, 3):
        again = run_trials(sweep_dir, trials, SerialExecutor())
        assert [r.folder.name for r in again] == [t.folder for t in trials]
        assert again[1].status == "failed"
        kept = sweep_dir / "001-coarse" / "earlier-attempts"
        assert sorted(p.name for p in kept.iterdir()) == [str(n) for n in range(1, attempt)]
        assert json.loads((kept / "1" / "summary.json").read_text()) == on_disk
        assert not (kept / str(attempt - 1) / "earlier-attempts").exists()  # flat, not nested
    assert sorted(p.name for p in sweep_dir.iterdir()) == sorted(
        ["sweep.json", *(t.folder for t in trials)]
    )


def test_guarded_turns_any_exception_into_a_one_line_failed_outcome() -> None:
    def explode(_: int) -> None:
        raise ValueError("bad\nvalue")

    outcome = guarded(explode, 1)
    assert outcome == Outcome(False, None, "ValueError: bad value")
    assert guarded(abs, -2) == Outcome(True, 2)


class InterruptAfter:
    """An executor that is Ctrl-C'd after `n` trials, while the next one is half-way through."""

    workers = 1
    in_process = True

    def __init__(self, n: int) -> None:
        self.n = n

    def run(self, items: Sequence[Any], fn: Callable[[Any], Any]) -> Iterator[tuple[Any, Outcome]]:
        for done, item in enumerate(items):  # each a population of one trial
            if done == self.n:
                Path(item[0].run_dir).mkdir()
                Path(item[0].run_dir, "metrics.csv").write_text("step,epoch\n0,0\n")  # partial
                raise KeyboardInterrupt
            yield item, guarded(fn, item)


def test_an_interrupted_sweep_resumes_to_the_same_table_as_an_uninterrupted_one(
    tmp_path: Path, fake_cifar_dir: Path
) -> None:
    spec = tiny_search(fake_cifar_dir, fine=True, final=True, trials=2)
    straight = start_sweep(tmp_path / "a", LAMBDA_SEARCH, spec)
    run_lambda_search(spec, straight, SerialExecutor())

    broken = start_sweep(tmp_path / "b", LAMBDA_SEARCH, spec)
    with pytest.raises(KeyboardInterrupt):
        run_lambda_search(spec, broken, InterruptAfter(1), population=Populations(1))
    finished_first = (broken / "000-coarse" / "summary.json").stat().st_mtime_ns
    assert sorted(p.name for p in broken.iterdir() if p.is_dir()) == ["000-coarse", "001-coarse"]
    statuses = [row["status"] for row in read_csv(broken / "trials.csv")]
    assert statuses == ["finished", "interrupted"]  # as it stopped, not "pending"
    kind, resumed_spec = load_sweep(broken)
    assert kind == LAMBDA_SEARCH and resumed_spec == spec
    result = run_lambda_search(resumed_spec, broken, SerialExecutor())

    assert (broken / "table.md").read_text() == (straight / "table.md").read_text()
    assert read_csv(broken / "trials.csv") == read_csv(straight / "trials.csv")
    assert (broken / "000-coarse" / "summary.json").stat().st_mtime_ns == finished_first
    # Cut short before any checkpoint: re-run in its folder, the partial attempt kept inside.
    assert (broken / "001-coarse" / "summary.json").is_file()
    partial = broken / "001-coarse" / "earlier-attempts" / "1"
    assert (partial / "metrics.csv").read_text() == "step,epoch\n0,0\n"
    assert [r.trial.stage for r in result.records] == ["coarse"] * 2 + ["fine"] * 2
    assert [r.trial.index for r in result.finals] == [4, 5]
    assert all(r.get("test_accuracy") is not None for r in result.finals)
    assert {r.trial.lambda_ for r in result.finals} == {result.best.trial.lambda_}
    assert [r.trial.config["training"]["seed"] for r in result.finals] == [7, 8]  # seed 3 + index
    assert {r.trial.config["data"]["validation_size"] for r in result.finals} == {20}
    assert {r.trial.config["data"]["validation_size"] for r in result.records} == {30}
    assert all(r.get("test_accuracy") is None for r in result.records)
    assert "mean +- standard deviation over 2 seeds" in (broken / "table.md").read_text()
    assert (broken / "lambda_vs_accuracy.png").stat().st_size > 0
    recorded = json.loads((broken / "sweep.json").read_text())
    assert tuple(recorded["fine_log_range"]) == result.fine_log_range
    assert [t["folder"] for t in recorded["trials"]][-2:] == ["004-final", "005-final"]


def test_resume_refuses_a_folder_that_is_not_a_sweep(tmp_path: Path) -> None:
    with pytest.raises(RunFolderError, match="does not exist"):
        load_sweep(tmp_path / "missing")
    with pytest.raises(RunFolderError, match="not a sweep folder"):
        load_sweep(tmp_path)
    (tmp_path / "sweep.json").write_text('{"kind": "lambda-search", "vers')
    with pytest.raises(RunFolderError, match="cannot be read"):
        load_sweep(tmp_path)


# --- executors -----------------------------------------------------------------------------------


def test_serial_process_and_dask_executors_give_identical_tables(
    tmp_path: Path, fake_cifar_dir: Path
) -> None:
    distributed = pytest.importorskip("distributed")
    spec = tiny_search(fake_cifar_dir, trials=3)
    tables = {}
    with distributed.LocalCluster(
        n_workers=2,
        processes=True,
        threads_per_worker=1,
        host="127.0.0.1",
        dashboard_address=None,
    ) as cluster:
        executors = {
            "serial": SerialExecutor(),
            "processes": ProcessExecutor(2),
            "dask": DaskExecutor(cluster.scheduler_address),
        }
        # Its workers known once checked, before the queue opens: a sweep plans its
        # populations for them.
        executors["dask"].check()
        assert executors["dask"].workers == 2
        for name, executor in executors.items():
            sweep_dir = start_sweep(tmp_path / name, LAMBDA_SEARCH, spec)
            result = run_lambda_search(spec, sweep_dir, executor)
            assert [r.status for r in result.records] == ["finished"] * 3, name
            tables[name] = (
                read_csv(sweep_dir / "trials.csv"),
                (sweep_dir / "table.md").read_text(),
            )
    assert tables["processes"] == tables["serial"]
    assert tables["dask"] == tables["serial"]


def test_dask_executor_says_when_the_scheduler_cannot_be_reached() -> None:
    pytest.importorskip("distributed")
    executor = DaskExecutor("tcp://127.0.0.1:9", timeout=1)
    with pytest.raises(KnnError, match="cannot reach the Dask scheduler"):
        list(executor.run([1], abs))


def test_process_executor_leaves_no_worker_behind_when_stopped_early() -> None:
    import multiprocessing
    import time

    others = set(multiprocessing.active_children())  # left by earlier tests, not ours
    results = ProcessExecutor(2).run([-1, -2, -3, -4], abs)
    next(results)
    assert set(multiprocessing.active_children()) - others  # the workers did start
    results.close()  # what an interrupt does to the consuming loop
    deadline = time.monotonic() + 10  # reaping a killed process can lag on a loaded machine
    while set(multiprocessing.active_children()) - others and time.monotonic() < deadline:
        time.sleep(0.1)
    assert set(multiprocessing.active_children()) - others == set()


def exit_on_negative(number: int) -> int:
    """A job whose worker dies (as one killed, or out of memory) on a negative number."""
    import os

    if number < 0:
        os._exit(3)
    return number


def test_a_worker_that_dies_fails_its_job_and_the_sweep_goes_on() -> None:
    """A worker killed mid-job breaks the process pool: that job fails with a message rather
    than waiting for ever, and the jobs after it run on a fresh pool."""
    results = dict(ProcessExecutor(1).run([-1, 4, -2, 5], exit_on_negative))
    assert sorted(results) == [-2, -1, 4, 5]
    for number in (-1, -2):
        assert not results[number].ok
        assert results[number].error.startswith("worker process failed: ")
    assert results[4].ok and results[4].value == 4 and results[5].value == 5


def test_a_job_that_ends_its_worker_s_interpreter_is_a_failure_not_a_hang() -> None:
    """SystemExit passes `guarded` (it is no Exception); its outcome must still reach the
    caller, or the sweep would wait for ever."""
    import sys
    import threading

    found: list = []
    sweep = threading.Thread(
        target=lambda: found.extend(ProcessExecutor(1).run([3, 4], sys.exit)), daemon=True
    )
    sweep.start()
    sweep.join(timeout=60)
    assert not sweep.is_alive(), "the sweep waited for ever"
    assert sorted(item for item, _ in found) == [3, 4]
    assert all(not outcome.ok and "SystemExit" in outcome.error for _, outcome in found)


def test_make_executor_maps_the_options() -> None:
    assert isinstance(make_executor(1, None), SerialExecutor)
    assert isinstance(make_executor(3, None), ProcessExecutor)
    assert isinstance(make_executor(None, "tcp://h:1"), DaskExecutor)


# --- the init-sensitivity grid and the commands ---------------------------------------------------


def test_init_sensitivity_writes_a_table_per_cell_and_a_figure(
    tmp_path: Path, fake_cifar_dir: Path
) -> None:
    spec = GridSpec(
        base=tiny_base(fake_cifar_dir),
        depths=(2,),
        sigmas=(1e-1, 1e-4),
        n_s=10,
        cycles=1,
    )
    sweep_dir = start_sweep(tmp_path, INIT_SENSITIVITY, spec)
    records = run_init_sensitivity(spec, sweep_dir, SerialExecutor())
    assert len(records) == 4 and all(r.get("test_accuracy") is not None for r in records)
    table = (sweep_dir / "results.md").read_text().splitlines()
    assert table[0].split("|")[1:-1] == [
        " layers ",
        " batch norm ",
        " sigma=0.1 ",
        " sigma=0.0001 ",
    ]
    assert [row.split("|")[2].strip() for row in table[2:]] == ["no BN", "BN"]
    assert len(read_csv(sweep_dir / "results.csv")) == 4
    assert (sweep_dir / "loss_curves.png").stat().st_size > 0


def test_lambda_search_command_runs_coarse_fine_and_final(
    tmp_path: Path, fake_cifar_dir: Path
) -> None:
    runs = tmp_path / "runs"
    args = [
        "lambda-search", "--coarse", "--fine", "--final", "--trials", "2", "--n-s", "10",
        "--cycles", "1", "--final-cycles", "1", "--final-seeds", "2",
        "--final-validation-size", "20", "--workers", "1", "--runs-dir", str(runs),
        "--set", f"data.dir={fake_cifar_dir}", "--set", "data.validation_size=30",
        "--set", "model.hidden=[8]", "--set", "training.batch_size=20", "--set", "training.n_s=10",
    ]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert (
        "best lambda" in result.output
        and "final retrain (seed 4, 1 cycle, 20 held out): test accuracy" in result.output
        and "final retrain (seed 5, 1 cycle, 20 held out): test accuracy" in result.output
        and "over 2 seeds" in result.output
    )
    (sweep_dir,) = runs.iterdir()
    rows = read_csv(sweep_dir / "trials.csv")
    assert [r["stage"] for r in rows] == ["coarse"] * 2 + ["fine"] * 2 + ["final"] * 2

    again = CliRunner().invoke(cli, ["lambda-search", "--resume", str(sweep_dir), "--workers", "1"])
    assert again.exit_code == 0, again.output
    assert read_csv(sweep_dir / "trials.csv") == rows


def test_lambda_search_command_refuses_bad_resume_and_mixed_options(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["lambda-search", "--resume", str(tmp_path)])
    assert result.exit_code == 2
    assert (
        result.output.strip().startswith("error:") and len(result.output.strip().splitlines()) == 1
    )
    assert "not a sweep folder" in result.output
    mixed = CliRunner().invoke(cli, ["lambda-search", "--resume", str(tmp_path), "--trials", "3"])
    assert mixed.exit_code == 2 and "--trials" in mixed.output
    neither = CliRunner().invoke(cli, ["lambda-search", "--runs-dir", str(tmp_path)])
    assert neither.exit_code == 2 and "--coarse" in neither.output
    no_final = CliRunner().invoke(
        cli, ["lambda-search", "--coarse", "--final-seeds", "2", "--runs-dir", str(tmp_path)]
    )
    assert no_final.exit_code == 2 and "--final-seeds" in no_final.output
    assert "add --final" in no_final.output
    too_big = CliRunner().invoke(
        cli,
        ["lambda-search", "--coarse", "--final", "--final-validation-size", "50000",
         "--runs-dir", str(tmp_path)],
    )  # fmt: skip
    assert too_big.exit_code == 2 and "--final-validation-size" in too_big.output
    assert not list(tmp_path.iterdir())  # refused before any sweep folder was made


def test_a_trial_never_trains_into_a_folder_that_already_exists(
    tmp_path: Path, fake_cifar_dir: Path
) -> None:
    (trial,) = lambda_trials(
        tiny_base(fake_cifar_dir), "coarse", (-3, -2), [0], seed=0, cycles=1, n_s=10
    )
    taken = tmp_path / trial.folder
    taken.mkdir()  # e.g. a stale task of an earlier attempt
    with pytest.raises(FileExistsError):
        run_population([TrialJob(trial, str(taken))])
    assert not any(taken.iterdir())


def test_the_final_hold_out_defaults_to_the_configs_when_that_is_smaller(
    tmp_path: Path, fake_cifar_dir: Path
) -> None:
    args = [
        "lambda-search", "--coarse", "--final", "--trials", "1", "--n-s", "10", "--cycles", "1",
        "--final-cycles", "1", "--final-seeds", "1", "--workers", "1",
        "--runs-dir", str(tmp_path), "--set", f"data.dir={fake_cifar_dir}",
        "--set", "data.validation_size=30", "--set", "model.hidden=[8]",
        "--set", "training.batch_size=20", "--set", "training.n_s=10",
    ]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "30 held out" in result.output


def test_a_sweep_planned_before_final_seeds_existed_resumes_as_planned(
    tmp_path: Path, fake_cifar_dir: Path
) -> None:
    spec = tiny_search(fake_cifar_dir, final=True)
    sweep_dir = start_sweep(tmp_path, LAMBDA_SEARCH, spec)
    doc = json.loads((sweep_dir / "sweep.json").read_text())
    del doc["spec"]["final_seeds"], doc["spec"]["final_validation_size"]
    (sweep_dir / "sweep.json").write_text(json.dumps(doc))
    _, resumed = load_sweep(sweep_dir)
    assert resumed.final_seeds == 1
    assert resumed.final_validation_size == spec.base["data"]["validation_size"] == 30


def test_a_sweep_planned_with_the_earlier_spelling_of_rule_settings_resumes(
    tmp_path: Path, fake_cifar_dir: Path
) -> None:
    """Sweeps planned by earlier versions hold training.momentum, beta1, beta2 and adam_eps in
    every trial's config; resuming one must not take it for another plan (which, truly
    another, is still refused)."""
    spec = ConfigSweepSpec(name="old", runs=({"config": tiny_base(fake_cifar_dir), "seeds": 2},))
    sweep_dir = start_sweep(tmp_path, CONFIG_SWEEP, spec)
    run_config_sweep(spec, sweep_dir, SerialExecutor())
    doc = json.loads((sweep_dir / "sweep.json").read_text())
    old = {"momentum": 0.9, "beta1": 0.9, "beta2": 0.999, "adam_eps": 1e-8}
    for config in [doc["spec"]["runs"][0]["config"], *(t["config"] for t in doc["trials"])]:
        del config["training"]["optimizer_settings"]
        config["training"].update(old)
    (sweep_dir / "sweep.json").write_text(json.dumps(doc))
    _, resumed = load_sweep(sweep_dir)
    records = run_config_sweep(resumed, sweep_dir, SerialExecutor())
    assert [r.status for r in records] == ["finished", "finished"]
    doc["trials"][0]["config"]["training"]["lambda"] = 0.5  # truly another plan
    (sweep_dir / "sweep.json").write_text(json.dumps(doc))
    with pytest.raises(RunFolderError, match="would differ from the recorded plan"):
        run_config_sweep(resumed, sweep_dir, SerialExecutor())


def test_init_sensitivity_command(tmp_path: Path, fake_cifar_dir: Path) -> None:
    runs = tmp_path / "runs"
    args = [
        "init-sensitivity", "--depths", "2", "--batch-norm", "on", "--sigmas", "1e-1,1e-3",
        "--n-s", "10", "--cycles", "1", "--workers", "1", "--runs-dir", str(runs),
        "--set", f"data.dir={fake_cifar_dir}", "--set", "data.validation_size=30",
        "--set", "training.batch_size=20",
    ]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "sigma=0.1" in result.output and "sigma=0.001" in result.output
    (sweep_dir,) = runs.iterdir()
    assert len(read_csv(sweep_dir / "results.csv")) == 2
    bad = CliRunner().invoke(cli, ["init-sensitivity", "--sigmas", "x", "--runs-dir", str(runs)])
    assert bad.exit_code == 2 and "--sigmas" in bad.output


def test_fine_from_an_earlier_sweep_refines_its_best_trials(
    tmp_path: Path, fake_cifar_dir: Path
) -> None:
    coarse = tiny_search(fake_cifar_dir, trials=3)
    coarse_dir = start_sweep(tmp_path / "coarse", LAMBDA_SEARCH, coarse)
    first = run_lambda_search(coarse, coarse_dir, SerialExecutor())
    fine = tiny_search(fake_cifar_dir, coarse=False, fine=True, trials=2, source=str(coarse_dir))
    fine_dir = start_sweep(tmp_path / "fine", LAMBDA_SEARCH, fine)
    result = run_lambda_search(fine, fine_dir, SerialExecutor())
    assert result.fine_log_range == fine_range(first.records)
    assert [(r.trial.stage, r.trial.index) for r in result.records] == [
        ("coarse", 0), ("coarse", 1), ("coarse", 2), ("fine", 3), ("fine", 4)
    ]  # fmt: skip
    low, high = result.fine_log_range
    assert all(low <= math.log10(r.trial.lambda_) <= high for r in result.records[3:])
    assert sorted(p.name for p in fine_dir.iterdir() if p.is_dir()) == ["003-fine", "004-fine"]


def test_dask_executor_without_the_extra_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # import now fails
    for use in (
        DaskExecutor("tcp://127.0.0.1:8786").check,
        lambda: list(DaskExecutor("tcp://127.0.0.1:8786").run([1], abs)),
    ):
        with pytest.raises(KnnError, match=r"pip install -e '\.\[dask\]'"):
            use()


def test_a_sweep_in_which_no_trial_finished_exits_1(tmp_path: Path, fake_cifar_dir: Path) -> None:
    args = [
        "lambda-search", "--coarse", "--trials", "1", "--n-s", "5", "--cycles", "1",
        "--workers", "1", "--runs-dir", str(tmp_path / "runs"),
        "--set", f"data.dir={fake_cifar_dir}", "--set", "data.validation_size=30",
        "--set", "model.batch_norm=false", "--set", "training.batch_size=20",
        "--set", "training.eta_min=1e6", "--set", "training.eta_max=1e9",
    ]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    assert "no trial finished" in result.stderr


# -- knn sweep: a plan of configs -------------------------------------------------------------


def write_plan(tmp_path: Path, data_dir: Path) -> Path:
    common = (
        "training: {n_s: 10, cycles: 1, batch_size: 20, eval_every: 10, seed: 4}\n"
        f"data: {{dir: {data_dir}, validation_size: 30}}\n"
    )
    (tmp_path / "small.yaml").write_text(
        "name: small\nmodel: {hidden: [8], batch_norm: true}\n" + common
    )
    (tmp_path / "wide.yaml").write_text(
        "name: wide\nmodel: {hidden: [16], batch_norm: true}\n" + common
    )
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "name: tiny-ablation\nseeds: 2\nruns:\n  - small.yaml\n"
        "  - {config: wide.yaml, seeds: 1, set: [evaluation.test_time_flip=false]}\n"
        "  - {config: small.yaml, seeds: 1, set: [name=small-fast, training.eta_max=0.05],"
        " against: small}\n"
    )
    return plan


def test_sweep_command_trains_each_config_with_its_seeds_and_tabulates_the_changes(
    tmp_path: Path, fake_cifar_dir: Path
) -> None:
    plan = write_plan(tmp_path, fake_cifar_dir)
    runs = tmp_path / "runs"
    result = CliRunner().invoke(
        cli, ["sweep", str(plan), "--workers", "1", "--runs-dir", str(runs)]
    )
    assert result.exit_code == 0, result.output
    (sweep_dir,) = runs.iterdir()
    assert sweep_dir.name.endswith("_tiny-ablation")
    trials = read_csv(sweep_dir / "results.csv")
    assert [(t["config"], t["seed"], t["status"]) for t in trials] == [
        ("small", "4", "finished"), ("small", "5", "finished"), ("wide", "4", "finished"),
        ("small-fast", "4", "finished"),
    ]  # fmt: skip
    table = (sweep_dir / "results.md").read_text()
    small, wide, fast = table.splitlines()[2:5]
    assert "(the start)" in small and "+-" in small  # two seeds: mean +- sd
    assert "model.hidden=[16]" in wide and "training.seed" not in wide
    assert "| training.eta_max=0.05 (from small) |" in fast
    again = CliRunner().invoke(cli, ["sweep", "--resume", str(sweep_dir), "--workers", "1"])
    assert again.exit_code == 0, again.output
    assert read_csv(sweep_dir / "results.csv") == trials  # nothing ran again


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("runs: []", "needs a list of configs under 'runs'"),
        ("runs: [missing.yaml]", "config file not found"),
        ("seeds: 0\nruns: [missing.yaml]", "seeds must be a whole number >= 1"),
        ("runs: [{seeds: 2}]", "run 1 must be a config path"),
        ("runs: [x.yaml]\nextra: 1", "unknown key 'extra'"),
        ("runs: [{config: x.yaml, against: nobody}]", "config file not found"),
    ],
)
def test_a_bad_sweep_plan_is_one_line(tmp_path: Path, text: str, fragment: str) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(text)
    result = CliRunner().invoke(cli, ["sweep", str(plan), "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2, result.output
    assert fragment in result.output and "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()


def test_fine_from_the_cli_searches_with_the_coarse_sweeps_schedule(
    tmp_path: Path, fake_cifar_dir: Path
) -> None:
    """Trials of two schedules cannot be ranked together: --from takes the refined sweep's
    --cycles and --n-s unless they are given."""
    data = ["--set", f"data.dir={fake_cifar_dir}", "--set", "data.validation_size=30"]
    coarse = CliRunner().invoke(
        cli,
        ["lambda-search", "--coarse", "--trials", "2", "--cycles", "1", "--n-s", "7",
         "--workers", "1", "--runs-dir", str(tmp_path / "coarse"), *data],
    )  # fmt: skip
    assert coarse.exit_code == 0, coarse.output
    (coarse_dir,) = (tmp_path / "coarse").iterdir()
    fine = CliRunner().invoke(
        cli,
        ["lambda-search", "--fine", "--from", str(coarse_dir), "--trials", "2", "--workers", "1",
         "--runs-dir", str(tmp_path / "fine"), *data],
    )  # fmt: skip
    assert fine.exit_code == 0, fine.output
    (fine_dir,) = (tmp_path / "fine").iterdir()
    for trial in json.loads((fine_dir / "sweep.json").read_text())["trials"]:
        assert trial["config"]["training"]["cycles"] == 1
        assert trial["config"]["training"]["n_s"] == 7


def test_a_sweep_folder_given_to_the_wrong_command_says_which_one_made_it(
    tmp_path: Path, fake_cifar_dir: Path
) -> None:
    sweep_dir = start_sweep(tmp_path, LAMBDA_SEARCH, tiny_search(fake_cifar_dir, trials=1))
    result = CliRunner().invoke(cli, ["sweep", "--resume", str(sweep_dir), "--workers", "1"])
    assert result.exit_code == 2
    assert result.output == (
        f"error: {sweep_dir} was made by knn lambda-search, not knn sweep: "
        "use knn lambda-search --resume\n"
    )


def test_a_sweep_of_a_config_that_cannot_fit_is_refused_before_its_folder(
    tmp_path: Path, fake_cifar_dir: Path
) -> None:
    huge = tmp_path / "huge.yaml"
    huge.write_text("name: huge\nmodel: {hidden: [2000000000]}\n")
    plan = tmp_path / "plan.yaml"
    plan.write_text("runs: [huge.yaml]\n")
    runs = tmp_path / "runs"
    for args in (
        ["sweep", str(plan)],
        ["lambda-search", "--coarse", "--config", str(huge)],
    ):
        result = CliRunner().invoke(cli, [*args, "--workers", "1", "--runs-dir", str(runs)])
        assert result.exit_code == 2, result.output
        assert "needs about" in result.output and len(result.output.splitlines()) == 1
    assert not runs.exists()


@pytest.mark.parametrize(
    "command",
    [
        ["lambda-search", "--coarse", "--set", "data.dir={missing}"],
        ["init-sensitivity", "--set", "data.dir={missing}"],
        ["sweep", "{plan}"],
    ],
)
def test_a_sweep_whose_data_cannot_be_had_fails_in_one_line_and_leaves_no_folder(
    tmp_path: Path, command: list[str]
) -> None:
    missing = tmp_path / "no-cifar"
    plan = tmp_path / "plan.yaml"
    (tmp_path / "c.yaml").write_text(f"name: c\ndata: {{dir: {missing}}}\n")
    plan.write_text("name: p\nruns: [c.yaml]\n")
    args = [part.format(missing=missing, plan=plan) for part in command]
    runs = tmp_path / "runs"
    result = CliRunner().invoke(cli, [*args, "--runs-dir", str(runs)])
    assert result.exit_code == 2, result.output
    assert "folder does not exist" in result.output and "Traceback" not in result.output
    assert not runs.exists() or not any(runs.iterdir())
