"""`knn runs` and `knn compare` on folders made by the real commands on the tiny fake CIFAR-10."""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import write_fake_cifar

from knn_cli.cli import cli
from knn_cli.compare import draw_comparison, read_compared
from knn_cli.kinds.base import count_text

CONFIG = """
name: tiny
model: {hidden: [16], batch_norm: true}
training: {n_s: 5, cycles: 1, batch_size: 10, eval_every: 5}
data: {validation_size: 20}
"""


def run(*args: Any) -> Any:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def one_line_error(result: Any, *fragments: str) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def summary(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "summary.json").read_text())


def percent(value: float) -> str:
    return f"{100 * value:.2f}%"


def table_rows(text: str) -> dict[str, list[str]]:
    """A markdown table's body rows by their first cell."""
    rows = [line.strip("|").split("|") for line in text.splitlines() if line.startswith("| ")]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows[1:]}


def metric_column(folder: Path, split: str, key: str) -> list[float]:
    with (folder / "metrics.csv").open(newline="") as handle:
        return [float(row[key]) for row in csv.DictReader(handle) if row["split"] == split]


@dataclass(frozen=True)
class Zoo:
    """One folder of each kind, made once for the module (each training takes a moment)."""

    runs: Path
    bn: Path
    no_bn: Path
    search: Path
    gradcheck: Path
    study: Path
    stray: Path


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Zoo:
    root = tmp_path_factory.mktemp("zoo")
    data = write_fake_cifar(root / "cifar")
    runs = root / "runs"
    config = root / "tiny.yaml"
    config.write_text(CONFIG)
    common = ["--set", f"data.dir={data}", "--runs-dir", runs]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KNN_CACHE_DIR", str(root / "cache"))
        patch.delenv("KNN_DATA_DIR", raising=False)
        assert run("train", config, "--set", "name=bn", *common).exit_code == 0
        no_bn = ["--set", "name=nobn", "--set", "model.batch_norm=false"]
        assert run("train", config, *no_bn, "--set", "training.lambda=0.01", *common).exit_code == 0
        search = run(
            "lambda-search", "--config", config, "--coarse", "--trials", 2, "--n-s", 5,
            "--cycles", 1, "--workers", 1, "--final", "--final-seeds", 2, "--final-n-s", 5,
            "--final-cycles", 1, "--final-validation-size", 20, *common,
        )  # fmt: skip
        assert search.exit_code == 0, search.output
    # The gradient check and the study as their writers leave them (summary.json; study.json).
    gradcheck = runs / "2020-01-01_00-00-00_gradcheck-k2"
    gradcheck.mkdir()
    (gradcheck / "summary.json").write_text(
        json.dumps({"command": "gradcheck", "status": "passed", "layers": 2, "hidden": [8]})
    )
    study = runs / "2020-01-02_00-00-00_study"
    study.mkdir()
    parts = {
        "gradcheck": {"folder": "gradcheck", "kind": "gradcheck", "status": "finished",
                      "seconds": 2.5},
        "configs": {"folder": "configs", "kind": "sweep", "status": "finished", "seconds": 40.0},
        "lambda-search": {"folder": "lambda", "kind": "lambda-search", "status": "interrupted",
                          "seconds": 7.25},
        "init-sensitivity": {"folder": "init", "kind": "init-sensitivity", "status": "pending",
                             "seconds": None},
    }  # fmt: skip
    (study / "study.json").write_text(
        json.dumps({"kind": "study", "version": 1, "quick": True, "parts": parts,
                    "started": "2020-01-02T00:00:05"})
    )  # fmt: skip
    stray = runs / "notes"
    stray.mkdir()
    found = {path.name.split("_", 2)[-1]: path for path in runs.iterdir()}
    return Zoo(runs, found["bn"], found["nobn"], found["lambda-search"], gradcheck, study, stray)


# -- knn runs -------------------------------------------------------------------------------------


def test_runs_json_and_table_agree_with_the_folders_own_files(zoo: Zoo) -> None:
    result = run("runs", zoo.runs, "--json")
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert set(rows) == {p.name for p in (zoo.bn, zoo.no_bn, zoo.search, zoo.gradcheck, zoo.study)}

    for folder in (zoo.bn, zoo.no_bn):
        row, own = rows[folder.name], summary(folder)
        assert (row["kind"], row["status"]) == ("run", own["status"]) == ("run", "finished")
        assert row["test_accuracy"] == own["test_accuracy"]
        assert row["val_accuracy"] == own["final_val_accuracy"]
        assert row["wall_seconds"] == own["wall_seconds"]
        assert row["folder"] == str(folder)
    assert "no BN" in rows[zoo.no_bn.name]["settings"]
    assert "lambda 0.01" in rows[zoo.no_bn.name]["settings"]
    assert ", BN," in rows[zoo.bn.name]["settings"]

    trials = sorted(p for p in zoo.search.iterdir() if p.is_dir())
    search, finals = trials[:2], trials[2:]
    assert [p.name for p in trials] == ["000-coarse", "001-coarse", "002-final", "003-final"]
    sweep = rows[zoo.search.name]
    assert (sweep["kind"], sweep["status"]) == ("lambda-search", "4/4 finished")
    assert (sweep["finished"], sweep["total"]) == (4, 4)
    assert sweep["val_accuracy"] == max(summary(p)["final_val_accuracy"] for p in search)
    mean_test = sum(summary(p)["test_accuracy"] for p in finals) / 2
    assert sweep["test_accuracy"] == pytest.approx(mean_test)
    # The runs' shares of their workers: the two search trials trained as one population.
    assert [summary(p)["population"] for p in trials] == [2, 2, 2, 2]
    shares = sum(summary(p)["wall_seconds"] / summary(p)["population"] for p in trials)
    assert sweep["wall_seconds"] == pytest.approx(shares)

    assert (rows[zoo.gradcheck.name]["kind"], rows[zoo.gradcheck.name]["status"]) == (
        "gradcheck",
        "passed",
    )
    study = rows[zoo.study.name]
    assert (study["kind"], study["status"]) == ("study", "2/4 finished, 1 interrupted")
    assert study["wall_seconds"] == pytest.approx(2.5 + 40.0 + 7.25)
    assert study["started"] == "2020-01-02T00:00:05"

    table = run("runs", zoo.runs)
    assert table.exit_code == 0
    cells = table_rows(table.output)
    assert list(cells) == list(rows)  # the same rows, in the same order
    kind, status, _, test, val, wall, started = cells[zoo.bn.name]
    own = summary(zoo.bn)
    assert (kind, status, test, val) == (
        "run",
        "finished",
        percent(own["test_accuracy"]),
        percent(own["final_val_accuracy"]),
    )
    assert wall == f"{own['wall_seconds']:.1f} s"
    assert started == f"{zoo.bn.name[:10]} {zoo.bn.name[11:16].replace('-', ':')}"
    assert cells[zoo.search.name][3] == percent(mean_test)
    assert "1 other folder" in table.output  # notes/


def test_runs_lists_newest_first_by_the_folder_stamp(zoo: Zoo, tmp_path: Path) -> None:
    parent = tmp_path / "runs"
    stamps = {"2021-05-01_10-00-00_b": zoo.bn, "2021-05-03_09-00-00_c": zoo.no_bn}
    stamps["2021-05-02_23-59-59_a"] = zoo.search
    for name, source in stamps.items():
        shutil.copytree(source, parent / name)
    result = run("runs", parent, "--json")
    names = [row["name"] for row in json.loads(result.output)]
    assert names == ["2021-05-03_09-00-00_c", "2021-05-02_23-59-59_a", "2021-05-01_10-00-00_b"]
    assert json.loads(result.output)[0]["started"] == "2021-05-03T09:00:00"
    assert list(table_rows(run("runs", parent).output)) == names


def test_runs_of_a_folder_of_runs_folders_says_where_to_look(zoo: Zoo, tmp_path: Path) -> None:
    parent = tmp_path / "experiments"
    shutil.copytree(zoo.bn, parent / "monday" / zoo.bn.name)
    (parent / "notes").mkdir()
    output = run("runs", parent).output
    assert "no runs, sweeps or studies under" in output
    assert "(2 other folders there not made by knn)" in output
    assert f"(knn folders one level down: knn runs {parent / 'monday'})" in output


def test_runs_of_a_sweep_lists_its_trials_and_of_a_study_its_parts(zoo: Zoo) -> None:
    trials = json.loads(run("runs", zoo.search, "--json").output)
    assert sorted(row["name"] for row in trials) == [
        "000-coarse",
        "001-coarse",
        "002-final",
        "003-final",
    ]
    assert {row["kind"] for row in trials} == {"run"}
    parts = json.loads(run("runs", zoo.study, "--json").output)
    by_name = {row["name"]: row for row in parts}
    assert set(by_name) == {"gradcheck", "configs", "lambda", "init"}
    assert by_name["lambda"]["status"] == "interrupted"
    assert by_name["lambda"]["wall_seconds"] == 7.25


def test_runs_on_an_empty_missing_or_wrong_folder(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run("runs", empty)
    assert result.exit_code == 0
    assert result.output.strip() == f"no runs, sweeps or studies under {empty}"
    assert json.loads(run("runs", empty, "--json").output) == []
    one_line_error(run("runs", tmp_path / "absent"), str(tmp_path / "absent"), "does not exist")
    (tmp_path / "file.txt").write_text("x")
    one_line_error(run("runs", tmp_path / "file.txt"), "file.txt", "not a folder")


def test_a_running_sweep_says_so_and_does_not_count_its_trial_in_progress(
    zoo: Zoo, tmp_path: Path
) -> None:
    sweep = tmp_path / "2021-01-01_00-00-00_lambda-search"
    shutil.copytree(zoo.search, sweep)
    (sweep / "001-coarse" / "summary.json").unlink()  # as if still training
    stopped = json.loads(run("runs", tmp_path, "--json").output)[0]["status"]
    assert stopped == "3/4 finished, 1 interrupted"
    # The lock file names the sweep's process; here a live one with knn on its command line.
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "knn"])
    try:
        command = Path(f"/proc/{holder.pid}/cmdline")
        for _ in range(500):  # just started, it may not show its command line for a moment
            if not command.parent.is_dir() or b"knn" in command.read_bytes():
                break
            time.sleep(0.01)
        (sweep / ".lock").write_text(f"process {holder.pid} on {socket.gethostname()}\n")
        running = json.loads(run("runs", tmp_path, "--json").output)[0]["status"]
    finally:
        holder.kill()
        holder.wait()
    assert running == "3/4 finished, running"
    gone = json.loads(run("runs", tmp_path, "--json").output)[0]["status"]
    assert gone == stopped  # the holder has exited: stopped again


def test_a_lambda_search_is_judged_on_its_search_trials_validation(
    zoo: Zoo, tmp_path: Path
) -> None:
    """The final retrain holds out its own (here: smaller) validation set; its accuracy there
    does not compare with the search trials', so it is not the sweep's best."""
    sweep = tmp_path / "2021-01-01_00-00-00_lambda-search"
    shutil.copytree(zoo.search, sweep)
    search_best = max(
        summary(sweep / name)["final_val_accuracy"] for name in ("000-coarse", "001-coarse")
    )
    final = sweep / "003-final" / "summary.json"
    final.write_text(json.dumps({**summary(sweep / "003-final"), "final_val_accuracy": 1.5}))
    (row,) = json.loads(run("runs", tmp_path, "--json").output)
    assert row["val_accuracy"] == search_best


def test_count_text() -> None:
    statuses = ["finished", "diverged", "pending", "finished", "failed", "interrupted"]
    assert count_text(statuses, 8) == "2/8 finished, 1 diverged, 1 failed, 1 interrupted"
    assert count_text(statuses, 8, running=True) == "2/8 finished, 1 diverged, 1 failed, running"
    assert count_text(["passed", "finished"], 2) == "2/2 finished"


# -- knn compare ----------------------------------------------------------------------------------


def test_compare_prints_the_differences_and_writes_figure_and_table(
    zoo: Zoo, tmp_path: Path
) -> None:
    out = tmp_path / "figs" / "two.png"
    result = run("compare", zoo.bn, zoo.no_bn, "--out", out)
    assert result.exit_code == 0, result.output
    rows = table_rows(result.output)
    header = result.output.splitlines()[0].strip("|").split("|")
    assert [h.strip() for h in header] == [
        "run", "batch_norm", "lambda", "status", "test", "val", "best val", "wall time",
    ]  # fmt: skip
    for folder, bn, lambda_ in ((zoo.bn, "true", "0.005"), (zoo.no_bn, "false", "0.01")):
        own = summary(folder)
        assert rows[folder.name] == [
            bn,
            lambda_,
            "finished",
            percent(own["test_accuracy"]),
            percent(own["final_val_accuracy"]),
            percent(own["best_val_accuracy"]),
            f"{own['wall_seconds']:.1f} s",
        ]
    markdown = out.with_suffix(".md").read_text()
    assert table_rows(markdown) == rows
    assert "![cost, loss and accuracy of each run](two.png)" in markdown
    layers = out.with_name("two_layers.png")  # both runs measured their layers (the default)
    assert "by layer, at step 0 and at the end](two_layers.png)" in markdown
    assert f"written: {out}, {layers}, {out.with_suffix('.md')}" in result.output
    import matplotlib.image

    for figure in (out, layers):
        assert matplotlib.image.imread(figure).shape[2] in (3, 4)


def test_compare_figure_has_a_line_per_run_and_split(zoo: Zoo) -> None:
    runs = read_compared([zoo.search, zoo.bn])  # a sweep stands for its trials
    assert [r.shown for r in runs] == [
        f"{zoo.search.name}/000-coarse",
        f"{zoo.search.name}/001-coarse",
        f"{zoo.search.name}/002-final",
        f"{zoo.search.name}/003-final",
        zoo.bn.name,
    ]
    fig = draw_comparison(runs)
    try:
        cost, loss, accuracy = fig.axes
        assert [ax.get_title() for ax in fig.axes] == ["Cost", "Loss", "Accuracy"]
        # Search trials measure no training-set curve (evaluation.train_curve_rows: 0): a run
        # has a dashed training line only where its metrics have one.
        splits = [
            [split for split in ("train", "val") if metric_column(run_.folder, split, "cost")]
            for run_ in runs
        ]
        assert ["train"] not in splits and ["val"] in splits and ["train", "val"] in splits
        for ax, key in ((cost, "cost"), (loss, "loss"), (accuracy, "accuracy")):
            lines = iter(ax.lines)
            assert len(ax.lines) == sum(map(len, splits))
            colours = set()
            for run_, its_splits in zip(runs, splits, strict=True):
                drawn = {split: next(lines) for split in its_splits}
                for split, line in drawn.items():
                    assert line.get_linestyle() == ("--" if split == "train" else "-")
                    assert list(line.get_ydata()) == metric_column(run_.folder, split, key)
                assert len({str(line.get_color()) for line in drawn.values()}) == 1
                colours.add(str(drawn["val"].get_color()))
            assert len(colours) == len(runs)
        legend = [text.get_text() for text in fig.legends[0].get_texts()]
        assert legend[-2:] == ["training", "validation"]
        assert len(legend) == len(runs) + 2
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def test_compare_legend_names_each_run_by_what_differs(zoo: Zoo) -> None:
    fig = draw_comparison(read_compared([zoo.bn, zoo.no_bn]))
    try:
        legend = [text.get_text() for text in fig.legends[0].get_texts()]
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
    assert legend[:2] == ["batch_norm=true, lambda=0.005", "batch_norm=false, lambda=0.01"]


def test_compare_writes_into_a_new_folder_that_knn_runs_passes_over(
    zoo: Zoo, tmp_path: Path
) -> None:
    parent = tmp_path / "runs"
    shutil.copytree(zoo.bn, parent / zoo.bn.name)
    result = run("compare", parent / zoo.bn.name, "--runs-dir", parent)
    assert result.exit_code == 0, result.output
    (made,) = [p for p in parent.iterdir() if p.name.endswith("_compare")]
    assert sorted(os.listdir(made)) == ["compare.md", "compare.png", "compare_layers.png"]
    assert "same, the seed included" in (made / "compare.md").read_text()
    listing = run("runs", parent)
    assert list(table_rows(listing.output)) == [zoo.bn.name]
    assert "other folder" not in listing.output


def test_compare_refuses_what_is_not_a_run_or_sweep_in_one_line(zoo: Zoo, tmp_path: Path) -> None:
    one_line_error(run("compare", zoo.bn, zoo.gradcheck), str(zoo.gradcheck), "gradient check")
    one_line_error(run("compare", zoo.study), str(zoo.study), "is a study")
    one_line_error(run("compare", zoo.stray), str(zoo.stray), "not a run, sweep or study")
    one_line_error(run("compare", tmp_path / "absent"), str(tmp_path / "absent"), "does not exist")
    one_line_error(run("compare", zoo.bn / "summary.json"), "summary.json", "not a run")
    out = tmp_path / "table.md"
    one_line_error(run("compare", zoo.bn, "--out", out), str(out), ".png")
    assert not out.exists()
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    for under in (a_file / "figure.png", a_file / "deeper" / "figure.png"):
        one_line_error(
            run("compare", zoo.bn, "--out", under), str(a_file), "is a file, not a folder"
        )
    empty_sweep = tmp_path / "sweep"
    empty_sweep.mkdir()
    plan = json.loads((zoo.search / "sweep.json").read_text())
    (empty_sweep / "sweep.json").write_text(json.dumps(plan))  # planned, nothing trained yet
    one_line_error(run("compare", empty_sweep), str(empty_sweep), "no trial")
