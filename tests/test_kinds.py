"""Each kind of folder knn leaves, recognised, read and summarised by its own module in
`knn_cli.kinds`, on small folders written here as the commands write them; and `knn runs`,
which asks those modules, showing each."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from knn_cli.cli import cli
from knn_cli.config import config_from_dict, config_to_dict
from knn_cli.errors import RunFolderError
from knn_cli.kinds import gradcheck, kind_of, range_test, run, study, summary, sweep
from knn_cli.sweeps.config_runs import config_trials
from knn_cli.sweeps.folder import record_plan, start_sweep
from knn_cli.sweeps.plan import CONFIG_SWEEP, ConfigSweepSpec

CONFIG = """
name: tiny
model: {hidden: [16], batch_norm: true}
training: {n_s: 5, cycles: 1, batch_size: 10, eval_every: 5}
data: {validation_size: 20}
"""


def write(folder: Path, **files: Any) -> Path:
    """`folder` with the given files (`summary_json=...`: summary.json), dicts written as JSON."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        text = content if isinstance(content, str) else json.dumps(content)
        (folder / name.replace("_json", ".json").replace("_yaml", ".yaml")).write_text(text)
    return folder


def make_run(folder: Path, **summary_values: Any) -> Path:
    values = {"status": "finished", "test_accuracy": 0.5, "final_val_accuracy": 0.52}
    return write(folder, config_yaml=CONFIG, summary_json={**values, **summary_values})


def make_gradcheck(folder: Path) -> Path:
    write(folder, summary_json={"command": "gradcheck", "status": "passed", "layers": 2,
                                "hidden": [8], "textbook_passed": {"no BN": True}})  # fmt: skip
    (folder / "gradcheck.csv").write_text("parameter,relative error\nW1,1e-9\nb1,2e-10\n")
    return folder


def make_range_test(folder: Path) -> Path:
    seeds = [
        {"seed": 0, "suggestions": {"peak_accuracy": 0.41, "eta_min": 1e-3, "eta_max": 0.1}},
        {"seed": 1, "suggestions": {"peak_accuracy": 0.43, "eta_min": 2e-3, "eta_max": 0.2}},
    ]
    summary_doc = {
        "command": "lr-range", "name": "tiny", "status": "finished", "wall_seconds": 3.0,
        "schedule": {"shape": "exponential", "low": 1e-4, "high": 30},
        "suggested": {"eta_min": {"value": 1.4e-3}, "eta_max": {"value": 0.14}},
        "seeds": seeds,
    }  # fmt: skip
    return write(folder, config_yaml=CONFIG, lr_range_json={"steps": 100}, summary_json=summary_doc)


def make_sweep(parent: Path, name: str = "configs") -> Path:
    """A sweep of one config over two seeds: the first trial finished, the second not begun."""
    doc = {"name": "tiny", "model": {"hidden": [8]}, "training": {"n_s": 5, "cycles": 1}}
    spec = ConfigSweepSpec(name=name, runs=({"config": config_to_dict(config_from_dict(doc)),
                                              "seeds": 2},))  # fmt: skip
    folder = start_sweep(parent, CONFIG_SWEEP, spec, name, exact=True)
    trials = config_trials(spec)
    record_plan(folder, trials)
    make_run(folder / trials[0].folder, wall_seconds=4.0)
    return folder


def make_study(parent: Path) -> Path:
    folder = parent / "2020-01-02_00-00-00_study"
    make_sweep(folder, "configs")
    parts = {
        "gradcheck": {"folder": "gradcheck", "kind": "gradcheck", "status": "finished",
                      "seconds": 2.5},
        "configs": {"folder": "configs", "kind": "sweep", "status": "running", "seconds": None},
        "lambda-search": {"folder": "lambda", "kind": "lambda-search", "status": "pending",
                          "seconds": None},
    }  # fmt: skip
    doc = {"kind": "study", "version": 1, "quick": True, "parts": parts,
           "started": "2020-01-02T00:00:05"}  # fmt: skip
    return write(folder, study_json=doc)


def test_each_kind_is_recognised_by_its_own_files(tmp_path: Path) -> None:
    folders = {
        run.KIND: make_run(tmp_path / "run"),
        gradcheck.KIND: make_gradcheck(tmp_path / "check"),
        range_test.KIND: make_range_test(tmp_path / "range"),
        sweep.KIND: make_sweep(tmp_path),
        study.KIND: make_study(tmp_path),
    }
    for kind, folder in folders.items():
        assert kind_of(folder) is kind, folder
        others = [other for other in folders if other is not kind]
        # Only the kinds a folder is also made of (a range test holds a run's files) say yes.
        assert not any(o.recognise(folder) for o in others if o not in (run.KIND,)), folder
    # A run as it starts (its config alone), and as one stopped before its summary.
    assert kind_of(write(tmp_path / "starting", config_yaml=CONFIG)) is run.KIND
    assert kind_of(write(tmp_path / "stopped", **{"metrics.csv": "step\n"})) is run.KIND
    assert kind_of(write(tmp_path / "notes", **{"README.md": "mine"})) is None


def test_each_kind_reads_its_records(tmp_path: Path) -> None:
    assert run.records(make_run(tmp_path / "run"))["test_accuracy"] == 0.5
    assert run.records(write(tmp_path / "training", config_yaml=CONFIG)) == {}

    rows = gradcheck.records(make_gradcheck(tmp_path / "check"))
    assert [r["parameter"] for r in rows] == ["W1", "b1"]

    seeds = range_test.records(make_range_test(tmp_path / "range"))
    assert [s["suggestions"]["peak_accuracy"] for s in seeds] == [0.41, 0.43]

    kind, spec, trials = sweep.records(make_sweep(tmp_path))
    assert (kind, spec.name) == ("sweep", "configs")
    assert [t.status for t in trials] == ["finished", "pending"]
    assert trials[0].get("test_accuracy") == 0.5

    parts = study.records(make_study(tmp_path / "s"))
    assert {name: p["status"] for name, p in parts.items()} == {
        "gradcheck": "finished", "configs": "running", "lambda-search": "pending",
    }  # fmt: skip


def test_each_kind_summarises_itself(tmp_path: Path) -> None:
    shown = summary(make_run(tmp_path / "2021-05-01_10-00-00_bn"))
    assert (shown.kind, shown.status, shown.test_accuracy) == ("run", "finished", 0.5)
    assert "hidden [16], BN" in shown.settings and shown.started == "2021-05-01T10:00:00"

    check = summary(make_gradcheck(tmp_path / "check"))
    assert (check.kind, check.status, check.settings) == (
        "gradcheck", "passed", "k=2, hidden [8], no BN",
    )  # fmt: skip

    tested = summary(make_range_test(tmp_path / "range"))
    assert (tested.kind, tested.status, tested.val_accuracy) == ("lr-range", "finished", 0.43)
    assert tested.settings == "tiny, exponential 0.0001 to 30, suggests 0.0014 to 0.14"

    swept = summary(make_sweep(tmp_path))
    assert (swept.kind, swept.status, swept.finished, swept.total) == (
        "sweep", "1/2 finished", 1, 2,
    )  # fmt: skip
    assert (swept.val_accuracy, swept.wall_seconds) == (0.52, 4.0)

    studied = summary(make_study(tmp_path / "s"))
    assert (studied.kind, studied.status, studied.settings) == (
        "study", "1/3 finished, 1 running", "quick: gradcheck, configs, lambda-search",
    )  # fmt: skip
    assert (studied.wall_seconds, studied.started) == (2.5, "2020-01-02T00:00:05")

    with pytest.raises(RunFolderError, match="not a run, sweep or study"):
        summary(write(tmp_path / "notes", **{"README.md": "mine"}))


def test_a_damaged_folder_keeps_its_kind_and_says_why(tmp_path: Path) -> None:
    broken = make_sweep(tmp_path)
    (broken / "sweep.json").write_text('{"kind": "lambda-search", "vers')
    shown = summary(broken)
    assert shown.kind == "sweep" and shown.status.startswith("unreadable: ")
    future = make_study(tmp_path / "s")
    doc = json.loads((future / "study.json").read_text())
    (future / "study.json").write_text(json.dumps({**doc, "version": 2}))
    assert summary(future).status.startswith("unreadable: ") and summary(future).kind == "study"
    # A summary.json of the right name but another shape (edited, or cut short by hand).
    odd = tmp_path / "range"
    odd.mkdir()
    (odd / "lr_range.json").write_text("{}")
    (odd / "summary.json").write_text('{"schedule": {"low": 1e-5}, "seeds": [{"suggestions": 1}]}')
    shown = summary(odd)
    assert shown.kind == "lr-range" and shown.status.startswith("unreadable: KeyError")


def test_knn_runs_shows_every_kind(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    make_run(runs / "2021-05-01_10-00-00_bn")
    make_gradcheck(runs / "2021-05-02_10-00-00_check")
    make_range_test(runs / "2021-05-03_10-00-00_range")
    make_sweep(runs, "2021-05-04_10-00-00_configs")
    make_study(runs)
    result = CliRunner().invoke(cli, ["runs", str(runs), "--json"])
    assert result.exit_code == 0, result.output
    kinds = {row["name"]: (row["kind"], row["status"]) for row in json.loads(result.output)}
    assert kinds == {
        "2021-05-04_10-00-00_configs": ("sweep", "1/2 finished"),
        "2021-05-03_10-00-00_range": ("lr-range", "finished"),
        "2021-05-02_10-00-00_check": ("gradcheck", "passed"),
        "2021-05-01_10-00-00_bn": ("run", "finished"),
        "2020-01-02_00-00-00_study": ("study", "1/3 finished, 1 running"),
    }
    # A study lists its parts: the sweep by its own files, the others as study.json says.
    parts = CliRunner().invoke(cli, ["runs", str(runs / "2020-01-02_00-00-00_study"), "--json"])
    by_name = {row["name"]: (row["kind"], row["status"]) for row in json.loads(parts.output)}
    assert by_name == {
        "configs": ("sweep", "1/2 finished"),
        "gradcheck": ("gradcheck", "finished"),
        "lambda": ("lambda-search", "pending"),
    }
