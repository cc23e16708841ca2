"""The command line as a user meets it: one-line errors, exit codes, and the happy paths."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from knn_cli.cli import EXIT_INTERRUPTED, cli

GOOD_CONFIG = """
name: tiny
model: {hidden: [16], batch_norm: true}
training: {n_s: 5, cycles: 1, batch_size: 10, eval_every: 5}
data: {validation_size: 20}
"""


def run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def assert_one_line_error(result, exit_code: int, *fragments: str) -> str:
    """Ours are one line; click's usage errors keep its usage hint above their one line."""
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    message = lines[-1]
    assert len(lines) == 1 or lines[0].startswith("Usage:"), lines
    assert message.startswith("error: ") or message.startswith("Error: "), message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def train_on_fake(tmp_path: Path, data_dir: Path, runs_dir: Path, *extra: str):
    """`knn train` of GOOD_CONFIG on the tiny fake CIFAR-10 folder, with extra arguments."""
    config = write(tmp_path, GOOD_CONFIG)
    return run(
        "train", config, "--set", f"data.dir={data_dir}", "--runs-dir", str(runs_dir), *extra
    )


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# -- bad config files and overrides --

BAD_CONFIGS = [
    ("model: [1, 2", "YAML"),
    ("- just\n- a list\n", "mapping"),
    ("training:\n  lamda: 0.1\n", "did you mean 'training.lambda'"),
    ("training:\n  batch_size: abc\n", "training.batch_size"),
    ("training:\n  lambda: -0.1\n", "training.lambda"),
    ("training:\n  eta_min: 0.5\n  eta_max: 0.1\n", "eta_min"),
    ("training:\n  batch_size: 0\n", "training.batch_size"),
    ("training:\n  batch_size: 60000\n", "training.batch_size"),
    ("model:\n  hidden: []\n  batch_norm: [1]\n", "model.batch_norm"),
    ("model:\n  hidden: [50, 0]\n", "model.hidden"),
    ("model:\n  hidden: [50, null]\n", "model.hidden"),
    ("model:\n  sigma: 0\n", "model.sigma"),
    ("model:\n  bn_alpha: 1.0\n", "model.bn_alpha"),
    ("model:\n  init: xavier\n", "model.init"),
    ("training:\n  dtype: float16\n", "training.dtype"),
]


@pytest.mark.parametrize(
    ("text", "fragment"), BAD_CONFIGS, ids=[f[1] + str(i) for i, f in enumerate(BAD_CONFIGS)]
)
def test_bad_config_file_is_one_line_and_exit_2(tmp_path: Path, text: str, fragment: str) -> None:
    result = run("train", write(tmp_path, text), "--runs-dir", str(tmp_path / "runs"))
    assert_one_line_error(result, 2, fragment)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_missing_config_file(tmp_path: Path) -> None:
    result = run("train", str(tmp_path / "nope.yaml"))
    assert_one_line_error(result, 2, "nope.yaml")


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("training.lamda=0.1", "did you mean 'training.lambda'"),
        ("training.lambda=-1", "training.lambda"),
        ("nokeyvalue", "="),
        ("model.hidden=[50,-3]", "model.hidden"),
        ("model.init=foo", "model.init"),
    ],
)
def test_bad_override_is_one_line_and_exit_2(tmp_path: Path, override: str, fragment: str) -> None:
    result = run(
        "train", write(tmp_path, GOOD_CONFIG), "--set", override, "--runs-dir", str(tmp_path)
    )
    assert_one_line_error(result, 2, fragment)


# -- bad data --


def test_missing_data_folder(tmp_path: Path) -> None:
    result = run(
        "train",
        write(tmp_path, GOOD_CONFIG),
        "--set",
        f"data.dir={tmp_path / 'absent'}",
        "--runs-dir",
        str(tmp_path / "runs"),
    )
    assert_one_line_error(result, 2, "absent")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_gradcheck_with_a_wrong_data_setting_fails_instead_of_using_random_data(
    tmp_path: Path,
) -> None:
    result = run(
        "gradcheck",
        "--layers",
        "2",
        "--runs-dir",
        str(tmp_path),
        env={"KNN_DATA_DIR": str(tmp_path / "nowhere")},
    )
    assert_one_line_error(result, 2, "nowhere")


def test_files_in_a_run_folder_are_readable_by_others(tmp_path: Path, fake_cifar_dir: Path) -> None:
    import os

    old = os.umask(0o022)
    try:
        assert train_on_fake(tmp_path, fake_cifar_dir, tmp_path / "runs").exit_code == 0
    finally:
        os.umask(old)
    (run_dir,) = (tmp_path / "runs").iterdir()
    for name in ("summary.json", "config.yaml", "model.npz"):
        assert (run_dir / name).stat().st_mode & 0o044 == 0o044, name


def test_incomplete_data_folder(tmp_path: Path, fake_cifar_dir: Path) -> None:
    (fake_cifar_dir / "data_batch_3").unlink()
    result = train_on_fake(tmp_path, fake_cifar_dir, tmp_path / "runs")
    assert_one_line_error(result, 2, "data_batch_3")


def test_data_file_of_the_wrong_kind(tmp_path: Path, fake_cifar_dir: Path) -> None:
    (fake_cifar_dir / "test_batch").write_bytes(b"this is not a pickle")
    result = train_on_fake(tmp_path, fake_cifar_dir, tmp_path / "runs")
    assert_one_line_error(result, 2, "test_batch")


def test_download_with_a_wrong_checksum_unpacks_nothing(tmp_path: Path, monkeypatch) -> None:
    from knn_cli.data import cifar10
    from knn_cli.data.locate import cache_dir

    archive = tmp_path / "cifar.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        payload = b"hello"
        info = tarfile.TarInfo("cifar-10-batches-py/readme.txt")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    monkeypatch.setattr(cifar10, "CIFAR10_URL", archive.as_uri())
    monkeypatch.setattr(cifar10, "CIFAR10_MD5", hashlib.md5(b"something else").hexdigest())
    result = run("train", write(tmp_path, GOOD_CONFIG), "--runs-dir", str(tmp_path / "runs"))
    assert_one_line_error(result, 2)
    assert "MD5" in result.stderr or "checksum" in result.stderr.lower()
    cache = cache_dir()
    assert not (cache / "cifar-10-batches-py").exists()
    assert (
        not [p for p in cache.rglob("*") if p.suffix in {".gz", ".tmp"}] if cache.exists() else True
    )


# -- bad run folders --


@pytest.mark.parametrize("command", ["plot", "evaluate"])
def test_run_folder_that_does_not_exist(tmp_path: Path, command: str) -> None:
    assert_one_line_error(run(command, str(tmp_path / "nothing")), 2, "does not exist")


@pytest.mark.parametrize("command", ["plot", "evaluate"])
def test_folder_that_is_not_a_run(tmp_path: Path, command: str) -> None:
    (tmp_path / "some_folder").mkdir()
    assert_one_line_error(run(command, str(tmp_path / "some_folder")), 2, "some_folder")


def test_incomplete_run_folder(tmp_path: Path, fake_cifar_dir: Path) -> None:
    runs = tmp_path / "runs"
    result = train_on_fake(tmp_path, fake_cifar_dir, runs)
    assert result.exit_code == 0, result.output
    (run_dir,) = runs.iterdir()
    (run_dir / "model.npz").unlink()
    assert_one_line_error(run("evaluate", str(run_dir)), 2, "model.npz")
    (run_dir / "model.npz").write_bytes(b"garbage")
    assert_one_line_error(run("evaluate", str(run_dir)), 2, "not a valid model file")
    (run_dir / "metrics.csv").write_text("step,foo\n1,2\n")
    assert_one_line_error(run("plot", str(run_dir)), 2, "missing columns")


def test_unwritable_runs_folder_fails_before_training(tmp_path: Path, fake_cifar_dir: Path) -> None:
    blocker = tmp_path / "file_not_folder"
    blocker.write_text("x")
    result = train_on_fake(tmp_path, fake_cifar_dir, blocker / "runs")
    assert_one_line_error(result, 2, "runs folder")


# -- happy paths and exit codes --


def test_train_plot_evaluate_round_trip(tmp_path: Path, fake_cifar_dir: Path) -> None:
    runs = tmp_path / "runs"
    result = train_on_fake(tmp_path, fake_cifar_dir, runs, "--set", "training.lambda=0.01")
    assert result.exit_code == 0, result.output
    (run_dir,) = runs.iterdir()
    assert run_dir.name.endswith("_tiny")
    assert "lambda: 0.01" in (run_dir / "config.yaml").read_text()  # the resolved config
    summary = json.loads((run_dir / "summary.json").read_text())
    assert f"test accuracy {summary['test_accuracy']:.2%}" in result.output
    for png in ("cost.png", "loss.png", "accuracy.png"):
        (run_dir / png).unlink()
    assert run("plot", str(run_dir)).exit_code == 0
    assert (run_dir / "accuracy.png").is_file()
    evaluated = run("evaluate", str(run_dir))
    assert evaluated.exit_code == 0
    assert f"test accuracy {summary['test_accuracy']:.2%}" in evaluated.output


def test_diverged_run_exits_1(tmp_path: Path, fake_cifar_dir: Path) -> None:
    result = train_on_fake(
        tmp_path,
        fake_cifar_dir,
        tmp_path / "runs",
        "--set",
        "model.batch_norm=false",
        "--set",
        "training.eta_min=1e6",
        "--set",
        "training.eta_max=1e9",
    )
    assert_one_line_error(result, 1, "diverged")


def test_gradcheck_passes_and_writes_its_table(tmp_path: Path) -> None:
    result = run("gradcheck", "--layers", "3", "--hidden", "8,6", "--runs-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "random data" in result.output  # no real data in this test's environment
    (run_dir,) = tmp_path.iterdir()
    table = (run_dir / "gradcheck.md").read_text()
    assert "gamma2" in table and "FAIL" not in table
    assert table.count("\n") == 2 + 6 + 10  # header, rule, 6 params without BN, 10 with


def test_gradcheck_failure_exits_1(tmp_path: Path) -> None:
    result = run(
        "gradcheck",
        "--layers",
        "2",
        "--hidden",
        "5",
        "--no-bn",
        "--tolerance",
        "1e-30",
        "--runs-dir",
        str(tmp_path),
    )
    assert_one_line_error(result, 1, "gradient check failed")


def test_gradcheck_bad_hidden_is_usage_error(tmp_path: Path) -> None:
    result = run("gradcheck", "--layers", "3", "--hidden", "8", "--runs-dir", str(tmp_path))
    assert_one_line_error(result, 2, "--hidden")


def test_ctrl_c_mid_training_exits_130_with_one_line_saying_what_was_saved(
    tmp_path: Path, fake_cifar_dir: Path, monkeypatch
) -> None:
    from conftest import interrupt_at

    interrupt_at(monkeypatch, 3)  # of 10 steps
    result = train_on_fake(tmp_path, fake_cifar_dir, tmp_path / "runs")
    message = assert_one_line_error(result, EXIT_INTERRUPTED, "interrupted; what was computed")
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert message.endswith(f"continue with: knn train --resume {run_dir}")
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGHUP"])
def test_a_stop_signal_mid_training_saves_everything_and_exits_130(
    tmp_path: Path, fake_cifar_dir: Path, signal_name: str
) -> None:
    """A real process, a real signal (SIGHUP: the terminal closed): the run folder keeps its
    metrics, model, summary and a checkpoint to continue from."""
    import os
    import signal
    import subprocess
    import sys
    import time

    runs = tmp_path / "runs"
    config = write(tmp_path, GOOD_CONFIG)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "knn_cli",
            "train",
            config,
            "--set",
            f"data.dir={fake_cifar_dir}",
            "--set",
            "training.n_s=1000000",
            "--set",
            "training.eval_every=200",
            "--runs-dir",
            str(runs),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ},
    )
    deadline = time.monotonic() + 60
    metrics = None
    while time.monotonic() < deadline:
        found = list(runs.glob("*/metrics.csv"))
        if found and found[0].read_text().count("\n") >= 5:  # header + two evaluation points
            metrics = found[0]
            break
        time.sleep(0.1)
    assert metrics is not None, "training never recorded metrics"
    process.send_signal(getattr(signal, signal_name))
    _out, err = process.communicate(timeout=60)
    assert process.returncode == EXIT_INTERRUPTED, err
    assert "Traceback" not in err and "interrupted" in err
    run_dir = metrics.parent
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert summary["steps"] >= 200
    assert (run_dir / "model.npz").is_file() and (run_dir / "checkpoint.npz").is_file()
    assert run("evaluate", str(run_dir)).exit_code == 0  # the saved model is usable


def test_disk_error_mid_run_is_one_line_and_keeps_what_was_written(
    tmp_path: Path, fake_cifar_dir: Path, monkeypatch
) -> None:
    import errno

    from knn_cli.runs import CsvLog

    original = CsvLog.append
    calls = {"n": 0}

    def failing_append(self, records):
        calls["n"] += self.path.name == "metrics.csv"
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
        original(self, records)

    monkeypatch.setattr(CsvLog, "append", failing_append)
    runs = tmp_path / "runs"
    result = train_on_fake(tmp_path, fake_cifar_dir, runs, "--set", "training.eval_every=2")
    assert_one_line_error(result, 1, "No space left on device")
    (run_dir,) = runs.iterdir()
    assert (run_dir / "metrics.csv").read_text().count("\n") == 1 + 2 * 2  # two points kept
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"


def test_every_command_module_imports_on_its_own() -> None:
    """cli.py and cli_sweeps.py once imported each other: importing either one first failed."""
    import subprocess
    import sys

    for module in ("knn_cli.cli_sweeps", "knn_cli.cli", "knn_cli.sweeps", "knn_cli.engine"):
        result = subprocess.run(
            [sys.executable, "-c", f"import {module}"], capture_output=True, text=True
        )
        assert result.returncode == 0, (module, result.stderr)


def test_gradcheck_checks_batch_norm_after_the_relu(tmp_path: Path) -> None:
    result = run(
        "gradcheck", "--layers", "3", "--hidden", "8,6", "--bn", "--bn-position", "after_relu",
        "--runs-dir", str(tmp_path),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "with BN after ReLU: nearest ReLU kink" in result.output
    assert "textbook layers: worst relative error" in result.output
    (run_dir,) = tmp_path.iterdir()
    table = (run_dir / "gradcheck.md").read_text()
    assert table.count("with BN after ReLU") == 10 and "absolute" not in table


def test_gradcheck_fails_when_the_textbook_layers_are_wrong(tmp_path: Path, monkeypatch) -> None:
    from knn_cli import layers

    right = layers.batch_norm_backward

    def wrong(dout, cache):
        dx, dgamma, dbeta = right(dout, cache)
        return dx, dgamma * 1.01, dbeta

    monkeypatch.setattr(layers, "batch_norm_backward", wrong)
    result = run("gradcheck", "--layers", "2", "--hidden", "5", "--bn", "--runs-dir", str(tmp_path))
    assert_one_line_error(result, 1, "with BN (textbook layers)")


def test_train_resume_continues_an_interrupted_run_to_the_same_metrics(
    tmp_path: Path, fake_cifar_dir: Path, monkeypatch
) -> None:
    from conftest import interrupt_at

    longer = ("--set", "training.n_s=30")  # 60 steps
    whole = train_on_fake(tmp_path, fake_cifar_dir, tmp_path / "whole", *longer)
    assert whole.exit_code == 0, whole.output
    with monkeypatch.context() as patch:
        interrupt_at(patch, 27)
        cut = train_on_fake(tmp_path, fake_cifar_dir, tmp_path / "cut", *longer)
    assert_one_line_error(cut, EXIT_INTERRUPTED, "interrupted")
    (run_dir,) = (tmp_path / "cut").iterdir()
    assert f"continue with: knn train --resume {run_dir}" in cut.output  # the command to type
    assert (run_dir / "checkpoint.npz").is_file()
    result = run("train", "--resume", str(run_dir))
    assert result.exit_code == 0, result.output
    assert f"continuing {run_dir}" in result.output
    (reference,) = (tmp_path / "whole").iterdir()
    assert (run_dir / "metrics.csv").read_bytes() == (reference / "metrics.csv").read_bytes()
    again = run("train", "--resume", str(run_dir))
    assert_one_line_error(again, 2, "finished: there is nothing to continue")


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["train"], "give a CONFIG to train, or --resume RUN_DIR"),
        (
            ["train", "c.yaml", "--resume", "somewhere"],
            "CONFIG to train or --resume RUN_DIR, not both",
        ),
        (["train", "--resume", "x", "--set", "training.lambda=0.1"], "drop --set"),
    ],
)
def test_train_resume_usage_errors(args: list[str], fragment: str) -> None:
    result = run(*args)
    assert result.exit_code == 2 and fragment in result.output


def test_train_resume_of_a_folder_without_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    missing = run("train", "--resume", str(tmp_path / "nowhere"))
    assert_one_line_error(missing, 2, "does not exist")
    (tmp_path / "run" / "config.yaml").write_text("name: x\n")
    result = run("train", "--resume", str(tmp_path / "run"))
    assert_one_line_error(result, 2, "no checkpoint.npz")


def test_a_stop_asked_for_after_the_last_step_waits_for_the_summary_and_is_not_lost(
    tmp_path: Path, fake_cifar_dir: Path, monkeypatch
) -> None:
    """Ctrl-C while the finished run is measured: the run is saved whole, as finished, and the
    command still stops (a sweep would otherwise go on to its next trial)."""
    import os
    import signal

    import knn_cli.experiment as experiment

    real = experiment.final_measurements

    def measured_while_interrupted(*args, **kwargs):  # type: ignore[no-untyped-def]
        os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(experiment, "final_measurements", measured_while_interrupted)
    runs = tmp_path / "runs"
    result = train_on_fake(tmp_path, fake_cifar_dir, runs)
    assert result.exit_code == EXIT_INTERRUPTED, result.output
    (run_dir,) = runs.iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["test_accuracy"] is not None
    assert not (run_dir / "checkpoint.npz").exists() and (run_dir / "accuracy.png").is_file()
