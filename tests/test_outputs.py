"""What a person looks at: the figures, the training progress bar, the sweep commands' output."""

from __future__ import annotations

import io
import itertools
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.image
import matplotlib.pyplot as plt
import pytest
from click.testing import CliRunner

import knn_cli.experiment
import knn_cli.progress
from knn_cli.cli import cli
from knn_cli.config import config_from_dict, config_to_dict, dump_config, load_config
from knn_cli.experiment import train_run
from knn_cli.plots import draw_curves, plot_run, run_description, write_figure
from knn_cli.progress import TrainingBar
from knn_cli.runs import atomic_write_json, metrics_log, new_run_dir, read_metrics
from knn_cli.sweeps.figures import draw_lambda_search, draw_loss_curves
from knn_cli.sweeps.folder import TrialRecord, load_sweep, start_sweep
from knn_cli.sweeps.plan import (
    LAMBDA_SEARCH,
    GridSpec,
    LambdaSearchSpec,
    Trial,
    final_trials,
    grid_trials,
    trial_config,
)

pytestmark = pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")

BASE = config_to_dict(config_from_dict({"name": "3layer_bn"}))


# -- the lambda search figure ---------------------------------------------------------------------


def search_record(index: int, stage: str, lambda_: float, **summary: Any) -> TrialRecord:
    config = trial_config(BASE, f"3layer_bn-{index:03d}", {"training.lambda": lambda_})
    trial = Trial(index, stage, "", config, f"{index:03d}-{stage}", stage == "final")
    return TrialRecord(trial, Path(trial.folder), {"status": "finished", **summary})


def lambda_search_figure(lambdas: Sequence[float], finals: int = 3) -> tuple[Any, Any]:
    records = [
        search_record(i, "coarse" if i % 2 else "fine", lam, final_val_accuracy=0.4 + 0.01 * i)
        for i, lam in enumerate(lambdas)
    ]
    best = max(records, key=lambda r: r.score)
    final_records = [
        search_record(len(records) + i, "final", best.trial.lambda_, test_accuracy=0.5 + 0.01 * i)
        for i in range(finals)
    ]
    fig = draw_lambda_search(LambdaSearchSpec(base=BASE), records, best, final_records)
    return fig, fig.axes[0]


def shown_labels(fig: Any, ax: Any) -> list[Any]:
    """The x tick labels as drawn: boxes on the canvas, of every label with text in view."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    low, high = ax.get_xlim()
    labels = [*ax.get_xticklabels(), *ax.get_xticklabels(minor=True)]
    shown = [x for x in labels if x.get_text().strip() and low <= x.get_position()[0] <= high]
    return sorted((label.get_window_extent(renderer) for label in shown), key=lambda box: box.x0)


@pytest.mark.parametrize(
    "lambdas",
    [
        [0.003, 0.0037, 0.0042, 0.0051, 0.006],  # under a decade: the reported overlap
        [1e-5, 3e-4, 2e-3, 0.04, 0.1],  # the default coarse range
        [0.00505, 0.00508, 0.0051, 0.00512],  # a fine search around one value
        [0.0055, 0.008, 0.0195],  # just too wide for 1-2-3-5 labels
        [2e-4, 7e-4, 1.5e-3],
        [0.004],  # every trial but one failed
    ],
)
def test_lambda_axis_labels_never_overlap_and_there_are_enough(lambdas: list[float]) -> None:
    fig, ax = lambda_search_figure(lambdas)
    boxes = shown_labels(fig, ax)
    plt.close(fig)
    assert len(boxes) >= 3, "too few labels to read lambda off the axis"
    for left, right in itertools.pairwise(boxes):
        assert left.x1 < right.x0, "two tick labels overlap"


def test_lambda_figure_shows_the_final_retrains_and_the_chosen_lambda() -> None:
    fig, ax = lambda_search_figure([0.001, 0.002, 0.004, 0.008], finals=3)
    (finals,) = [c for c in ax.collections if c.get_gid() == "final"]
    assert len(finals.get_offsets()) == 3
    assert {x for x, _ in finals.get_offsets()} == {0.008}  # at the chosen lambda
    labels = ax.get_legend_handles_labels()[1]
    plt.close(fig)
    assert any(label.startswith("coarse") for label in labels)
    assert any(label.startswith("fine") for label in labels)
    assert "best trial: lambda 0.008 (retrained)" in labels
    assert any(label.startswith("final retrain (3 seeds") for label in labels)


# -- the init-sensitivity grid --------------------------------------------------------------------


def fake_run(folder: Path, losses: Sequence[float]) -> Path:
    folder.mkdir()
    log = metrics_log(folder)
    for split in ("train", "val"):
        log.append(
            [
                {"step": 10 * i, "epoch": i, "eta": 0.01, "split": split, "cost": loss,
                 "loss": loss, "accuracy": 0.1}
                for i, loss in enumerate(losses)
            ]
        )  # fmt: skip
    log.close()
    return folder


def test_init_grid_panels_share_one_y_scale_and_say_their_number_is_test_accuracy(
    tmp_path: Path,
) -> None:
    spec = GridSpec(base=BASE, depths=(3,), sigmas=(1e-1, 1e-3))
    trials = grid_trials(BASE, spec.depths, spec.batch_norms, spec.sigmas, seed=0, cycles=1, n_s=5)
    flat = [2.3026 + 0.0006 * (i % 2) for i in range(10)]  # no BN that never learns
    learning = [2.3 - 0.1 * i for i in range(10)]
    records = [
        TrialRecord(
            trial,
            fake_run(tmp_path / trial.folder, flat if i == 1 else learning),
            {"status": "finished", "test_accuracy": 0.1 if i == 1 else 0.531, "n_s": 5},
        )
        for i, trial in enumerate(trials)
    ]
    fig = draw_loss_curves(spec, records)
    limits = {ax.get_ylim() for ax in fig.axes}
    titles = [ax.get_title() for ax in fig.axes]
    plt.close(fig)
    assert len(limits) == 1, "each panel has its own y scale"
    (low, high) = limits.pop()
    assert high - low > 1.0  # the flat cell's 0.0006 of wobble is a hair, not the whole panel
    assert low <= 1.4 and high >= 2.3032
    assert all("test acc " in title for title in titles)
    assert "test acc 53.10%" in titles[0]


# -- run curves -----------------------------------------------------------------------------------


def test_run_figures_are_large_and_titled_by_config_and_settings(tmp_path: Path) -> None:
    config = load_config(Path(__file__).parent.parent / "configs" / "3layer_bn.yaml")
    run_dir = fake_run(tmp_path / "2026-01-01_00-00-00_3layer_bn", [2.3, 2.0, 1.8])
    (run_dir / "config.yaml").write_text(dump_config(config))
    atomic_write_json(run_dir / "summary.json", {"status": "finished", "n_s": 2250})
    assert run_description(run_dir) == (
        "3layer_bn",
        "hidden [50, 50], BN, lambda 0.005, 2 cycles, n_s 2250",
    )
    (accuracy_png, *_) = [p for p in plot_run(run_dir) if p.name == "accuracy.png"]
    height, width, _ = matplotlib.image.imread(accuracy_png).shape
    assert width >= 1000 and height >= 600
    (run_dir / "config.yaml").unlink()  # a folder copied without its config still plots
    assert run_description(run_dir) == (run_dir.name, "")
    assert len(plot_run(run_dir)) == 3


def test_a_flat_curve_looks_flat_in_a_run_figure(tmp_path: Path) -> None:
    run_dir = fake_run(tmp_path / "run", [2.3026 + 0.0006 * (i % 2) for i in range(10)])
    fig, ax = plt.subplots()
    draw_curves(ax, read_metrics(run_dir), "loss")
    low, high = ax.get_ylim()
    plt.close(fig)
    assert high - low >= 0.2 and low < 2.3026 and high > 2.3032


# -- the training progress bar --------------------------------------------------------------------


class RecordingBar(knn_cli.progress.tqdm):  # type: ignore[misc,name-defined]
    """A real bar that redraws only when told to, and keeps the postfix of every redraw."""

    shown: list[str]
    latest: RecordingBar | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.shown = []
        RecordingBar.latest = self
        kwargs.update(file=io.StringIO(), mininterval=math.inf, disable=False)
        super().__init__(*args, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> None:
        self.shown.append(self.postfix or "")
        super().display(msg, pos)


def shown_accuracies(shown: Sequence[str]) -> list[str]:
    """The val_acc of each redraw, runs of one value counted once."""
    values = [part.split("=")[1] for s in shown for part in s.split(", ") if "val_acc" in part]
    return [v for i, v in enumerate(values) if i == 0 or values[i - 1] != v]


def test_the_bar_shows_no_accuracy_before_the_first_evaluation_and_each_one_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(knn_cli.progress, "tqdm", RecordingBar)
    bar = TrainingBar(300, desc="tiny")
    for step in range(1, 151):
        bar.step(step, 0.01)
    assert shown_accuracies(RecordingBar.latest.shown) == ["-"]
    bar.evaluated(0.4123, eta=0.02)
    assert RecordingBar.latest.shown[-1] == "eta=2.00e-02, val_acc=0.412"
    bar.close()


def test_knn_train_shows_every_evaluation_as_it_arrives_and_no_made_up_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_train import small_config, synthetic_dataset

    monkeypatch.setattr(knn_cli.progress, "tqdm", RecordingBar)
    RecordingBar.latest = None
    run_dir = new_run_dir(tmp_path, "tiny")
    train_run(small_config(), run_dir, dataset=synthetic_dataset(), progress=True)
    assert RecordingBar.latest is not None
    measured = [f"{m['accuracy']:.3f}" for m in read_metrics(run_dir) if m["split"] == "val"]
    expected = [v for i, v in enumerate(measured) if i == 0 or measured[i - 1] != v]
    assert shown_accuracies(RecordingBar.latest.shown) == ["-", *expected]


# -- knn lambda-search's output and --final-n-s ---------------------------------------------------


def test_lambda_search_prints_the_final_summary_once_and_final_n_s_shortens_the_retrain(
    tmp_path: Path, fake_cifar_dir: Path
) -> None:
    runs = tmp_path / "runs"
    args = [
        "lambda-search", "--coarse", "--final", "--trials", "2", "--n-s", "10", "--cycles", "1",
        "--final-cycles", "1", "--final-seeds", "2", "--final-validation-size", "20",
        "--final-n-s", "3", "--workers", "1", "--runs-dir", str(runs),
        "--set", f"data.dir={fake_cifar_dir}", "--set", "data.validation_size=30",
        "--set", "model.hidden=[8]", "--set", "training.batch_size=20", "--set", "training.n_s=10",
    ]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    summaries = [i for i, line in enumerate(lines) if line.startswith("final retrain: test")]
    assert len(summaries) == 1, result.output
    each = [i for i, line in enumerate(lines) if line.startswith("final retrain (seed")]
    assert len(each) == 2 and max(each) < summaries[0]  # the mean after what it is the mean of
    (sweep_dir,) = runs.iterdir()
    assert "final retrain: test" in (sweep_dir / "table.md").read_text()  # the file keeps it
    plan = json.loads((sweep_dir / "sweep.json").read_text())
    assert plan["spec"]["final_n_s"] == 3
    finals = [t for t in plan["trials"] if t["stage"] == "final"]
    assert [t["config"]["training"]["n_s"] for t in finals] == [3, 3]
    searched = [t for t in plan["trials"] if t["stage"] == "coarse"]
    assert {t["config"]["training"]["n_s"] for t in searched} == {10}
    for trial in finals:
        summary = json.loads((sweep_dir / trial["folder"] / "summary.json").read_text())
        assert summary["n_s"] == 3 and summary["total_steps"] == 6
    height, width, _ = matplotlib.image.imread(sweep_dir / "lambda_vs_accuracy.png").shape
    assert width >= 1000 and height >= 600

    no_final = CliRunner().invoke(cli, [*args[:2], "--final-n-s", "3", "--runs-dir", str(runs)])
    assert no_final.exit_code == 2 and "add --final" in no_final.output


def test_a_sweep_planned_before_final_n_s_existed_retrains_at_the_configs_n_s(
    tmp_path: Path,
) -> None:
    base = config_to_dict(config_from_dict({"name": "b", "training": {"n_s": 40}}))
    sweep_dir = start_sweep(tmp_path, LAMBDA_SEARCH, LambdaSearchSpec(base=base, final=True))
    doc = json.loads((sweep_dir / "sweep.json").read_text())
    del doc["spec"]["final_n_s"]
    (sweep_dir / "sweep.json").write_text(json.dumps(doc))
    _, resumed = load_sweep(sweep_dir)
    assert resumed.final_n_s is None
    (final,) = final_trials(
        base, [0], 1e-3, seed=0, cycles=1, validation_size=1000, n_s=resumed.final_n_s
    )
    assert final.config["training"]["n_s"] == 40


def test_accuracy_is_plotted_in_percent() -> None:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import PercentFormatter

    from knn_cli.plots import draw_curves

    metrics = [
        {"step": step, "split": split, "accuracy": value, "loss": 2.0 - value}
        for step, value in ((0, 0.1), (10, 0.4))
        for split in ("train", "val")
    ]
    fig, (accuracy, loss) = plt.subplots(1, 2)
    draw_curves(accuracy, metrics, "accuracy")
    draw_curves(loss, metrics, "loss")
    assert isinstance(accuracy.yaxis.get_major_formatter(), PercentFormatter)
    assert not isinstance(loss.yaxis.get_major_formatter(), PercentFormatter)
    plt.close(fig)


@pytest.mark.parametrize(("low", "high", "at_least"), [(0.2, 4.5, 3), (1e-21, 3.0, 4)])
def test_a_layer_panel_labels_enough_ticks_to_be_read(low: float, high: float, at_least: int):
    """A log axis over less than two decades once showed a single label ('1')."""
    import matplotlib

    matplotlib.use("Agg")
    from knn_cli.plots import draw_layers

    rows = [
        {"step": step, "layer": "1", "quantity": "activation_std", "value": value}
        for step, value in ((0, low), (10, high))
    ]
    fig = draw_layers(rows, "title")
    fig.canvas.draw()
    ax = fig.axes[1]  # activation scale
    bottom, top = ax.get_ylim()
    labelled = [
        t for t in ax.get_yticks() if bottom <= t <= top and ax.yaxis.get_major_formatter()(t)
    ]
    assert len(labelled) >= at_least


@pytest.mark.parametrize("suffix", [".png", ".pdf", ".svg"])
def test_every_figure_is_written_whole_and_png_at_the_fastest_level(
    tmp_path: Path, suffix: str
) -> None:
    """One writer for every figure: renamed into place (no partial file stays), a PNG at zlib
    level 1, where the default level 6 packs the same picture smaller; other formats take no
    PNG options."""

    def figure() -> Any:
        fig, ax = plt.subplots(figsize=(4, 3), dpi=100)
        ax.plot(range(100), [math.sin(i / 7) for i in range(100)])
        return fig

    path = write_figure(figure(), tmp_path / f"f{suffix}")
    assert path.is_file() and [p.name for p in tmp_path.iterdir()] == [path.name]
    if suffix == ".png":
        assert matplotlib.image.imread(path).shape[:2] == (300, 400)
        default = tmp_path / "default.png"
        fig = figure()
        fig.savefig(default)
        plt.close(fig)
        assert path.stat().st_size > default.stat().st_size
