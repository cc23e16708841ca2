"""Sweeps as real processes meet them: killed with -9, resumed twice at once, stopped mid-trial.

Each test starts `python -m knn_cli` in a subprocess on the tiny fake CIFAR-10 and sends real
signals, because what is tested (the kernel's parent-death signal, file locks held by a dead
process, a checkpoint written on SIGTERM) exists only between processes.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from knn_cli.cli import cli

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc to find worker processes"
)

# Long enough to be stopped mid-trial (seconds per trial), short enough for the suite.
SLOW_TRIAL = ["--set", "model.hidden=[8]", "--set", "data.validation_size=30"]


def knn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "knn_cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ},
    )


def finish(process: subprocess.Popen[str], timeout: float = 60) -> tuple[str, str]:
    """The process's output once it ends; if it does not, kill it and fail with what it said."""
    try:
        return process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        raise AssertionError(f"{process.args} did not end:\n{out}\n{err}") from None


def wait_for(condition: Callable[[], object], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def children_of(pid: int) -> set[int]:
    """The live processes whose parent is `pid` (from /proc, no psutil needed)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def sweep_folder(runs: Path) -> Path:
    wait_for(lambda: list(runs.glob("*/sweep.json")), "the sweep folder")
    return next(runs.glob("*/sweep.json")).parent


def lock_holder(folder: Path) -> str:
    lock = folder / ".lock"
    return lock.read_text().strip() if lock.is_file() else ""


def search(runs: Path, data: Path, *extra: str, n_s: str = "200000") -> subprocess.Popen[str]:
    return knn(
        "lambda-search", "--coarse", "--trials", "4", "--cycles", "1", "--n-s", n_s,
        "--runs-dir", str(runs), "--set", f"data.dir={data}", *SLOW_TRIAL, *extra,
    )  # fmt: skip


def test_workers_end_when_the_sweep_is_killed_hard(tmp_path: Path, fake_cifar_dir: Path) -> None:
    sweep = search(tmp_path / "runs", fake_cifar_dir, "--workers", "2")
    folder = sweep_folder(tmp_path / "runs")
    wait_for(lambda: len(list(folder.glob("00?-coarse/config.yaml"))) >= 2, "two trials")
    workers = {p for p in children_of(sweep.pid) if "spawn_main" in _cmdline(p)}
    assert len(workers) == 2
    sweep.kill()  # SIGKILL: no handler, no cleanup in the sweep process
    finish(sweep, 30)
    wait_for(lambda: not any(alive(p) for p in workers), "the workers to end", timeout=10)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return ""


def test_a_sweep_folder_admits_one_process_and_is_taken_over_after_its_death(
    tmp_path: Path, fake_cifar_dir: Path
) -> None:
    first = search(tmp_path / "runs", fake_cifar_dir, "--workers", "1")
    folder = sweep_folder(tmp_path / "runs")
    wait_for(lambda: f"process {first.pid} " in lock_holder(folder) + " ", "the first's lock")

    second = knn("lambda-search", "--resume", str(folder), "--workers", "1")
    _out, err = finish(second, 60)
    assert second.returncode == 2
    assert err.strip().splitlines() == [
        f"error: {folder} is in use by {lock_holder(folder)}; wait for it to end or stop it first"
    ]
    assert f"process {first.pid} on" in err

    first.kill()  # its lock dies with it, though the lock file still names it
    finish(first, 30)
    third = knn("lambda-search", "--resume", str(folder), "--workers", "1")
    wait_for(lambda: f"process {third.pid} " in lock_holder(folder) + " ", "the take-over")
    third.send_signal(signal.SIGTERM)
    _out, err = finish(third, 60)
    assert third.returncode == 130, err
    assert "Traceback" not in err and "leaked" not in err


def test_stopping_a_process_pool_sweep_leaks_nothing(tmp_path: Path, fake_cifar_dir: Path) -> None:
    sweep = search(tmp_path / "runs", fake_cifar_dir, "--workers", "2")
    folder = sweep_folder(tmp_path / "runs")
    wait_for(lambda: len(list(folder.glob("00?-coarse/config.yaml"))) >= 2, "two trials")
    workers = children_of(sweep.pid)
    sweep.send_signal(signal.SIGTERM)
    _out, err = finish(sweep, 60)
    assert sweep.returncode == 130
    assert err.strip().splitlines()[-1] == (
        "error: interrupted; what was computed so far is saved; "
        f"continue with: knn lambda-search --resume {folder}"
    )
    assert "leaked semaphore" not in err and "Traceback" not in err
    # The workers and the resource tracker, which ends when the sweep's end closes its pipe.
    wait_for(lambda: not any(alive(p) for p in workers), "the workers to end", timeout=10)


def trials_csv(folder: Path) -> list[dict[str, str]]:
    with (folder / "trials.csv").open() as f:
        rows = list(csv.DictReader(f))
    for row in rows:  # where and how long: the rest must match
        for key in ("folder", "seconds", "wall_seconds", "peak_memory_mb"):
            row.pop(key, None)
    return rows


def test_a_trial_stopped_mid_way_continues_from_its_checkpoint_to_the_same_numbers(
    tmp_path: Path, fake_cifar_dir: Path
) -> None:
    """SIGTERM lands in the second trial of an in-process sweep: that trial saves a checkpoint,
    and the resumed sweep continues it in its folder rather than starting it again."""
    n_s = ("--n-s", "3000")
    straight = CliRunner().invoke(
        cli,
        ["lambda-search", "--coarse", "--trials", "2", "--cycles", "1", *n_s, "--workers", "1",
         "--runs-dir", str(tmp_path / "straight"), "--set", f"data.dir={fake_cifar_dir}",
         *SLOW_TRIAL],
    )  # fmt: skip
    assert straight.exit_code == 0, straight.output

    stopped = knn(
        "lambda-search", "--coarse", "--trials", "2", "--cycles", "1", *n_s, "--workers", "1",
        "--runs-dir", str(tmp_path / "stopped"), "--set", f"data.dir={fake_cifar_dir}",
        *SLOW_TRIAL,
    )  # fmt: skip
    folder = sweep_folder(tmp_path / "stopped")
    metrics = folder / "001-coarse" / "metrics.csv"
    wait_for(lambda: metrics.is_file() and metrics.read_text().count("\n") >= 4, "trial 2")
    stopped.send_signal(signal.SIGTERM)
    _out, err = finish(stopped, 60)
    assert stopped.returncode == 130, err
    assert (folder / "001-coarse" / "checkpoint.npz").is_file()

    resumed = CliRunner().invoke(cli, ["lambda-search", "--resume", str(folder), "--workers", "1"])
    assert resumed.exit_code == 0, resumed.output
    (straight_folder,) = (tmp_path / "straight").iterdir()
    assert trials_csv(folder) == trials_csv(straight_folder)
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["000-coarse", "001-coarse"]
    assert not (folder / "001-coarse" / "earlier-attempts").exists()  # continued, not redone


def test_a_population_killed_hard_continues_to_the_uninterrupted_numbers(
    tmp_path: Path, fake_cifar_dir: Path
) -> None:
    """kill -9 of an in-process sweep whose two trials train as one population, checkpointing
    every few steps: the resumed sweep continues each trial from its own checkpoint (perhaps of
    different steps, if the kill fell between the two saves) to the uninterrupted table."""
    args = ["lambda-search", "--coarse", "--trials", "2", "--cycles", "1", "--n-s", "3000",
            "--workers", "1", "--set", f"data.dir={fake_cifar_dir}",
            "--set", "training.checkpoint_minutes=0.002", *SLOW_TRIAL]  # fmt: skip
    straight = CliRunner().invoke(cli, [*args, "--runs-dir", str(tmp_path / "straight")])
    assert straight.exit_code == 0, straight.output
    killed = knn(*args, "--runs-dir", str(tmp_path / "killed"))
    folder = sweep_folder(tmp_path / "killed")
    checkpoints = [folder / f"00{k}-coarse" / "checkpoint.npz" for k in range(2)]
    wait_for(lambda: all(c.is_file() for c in checkpoints), "both trials' checkpoints")
    time.sleep(0.5)  # a few more saves, so that one may be cut short
    killed.kill()
    finish(killed, 30)
    summaries = [folder / f"00{k}-coarse" / "summary.json" for k in range(2)]
    assert not any(s.is_file() for s in summaries)  # no handler ran: nothing was finished
    resumed = CliRunner().invoke(cli, ["lambda-search", "--resume", str(folder), "--workers", "1"])
    assert resumed.exit_code == 0, resumed.output
    (straight_folder,) = (tmp_path / "straight").iterdir()
    assert trials_csv(folder) == trials_csv(straight_folder)
    for k in range(2):
        assert not (folder / f"00{k}-coarse" / "earlier-attempts").exists()  # continued
        assert json.loads(summaries[k].read_text())["population"] == 2


def test_a_scheduler_address_that_cannot_work_fails_at_once_and_leaves_no_folder(
    tmp_path: Path, fake_cifar_dir: Path
) -> None:
    pytest.importorskip("distributed")
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    for address, message in [
        ("foo://x", "is not a scheduler address; expected tcp://HOST:PORT"),
        ("tcp://127.0.0.1:99999", "is not a scheduler address"),
        (f"tcp://127.0.0.1:{closed_port}", "cannot reach the Dask scheduler"),
    ]:
        started = time.monotonic()
        result = CliRunner().invoke(
            cli,
            ["lambda-search", "--coarse", "--scheduler", address,
             "--runs-dir", str(tmp_path / "runs"), "--set", f"data.dir={fake_cifar_dir}"],
        )  # fmt: skip
        assert result.exit_code == 2, result.output
        assert message in result.output and len(result.output.strip().splitlines()) == 1
        assert time.monotonic() - started < 5
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())
