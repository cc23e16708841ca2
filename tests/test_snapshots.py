"""Snapshot ensembles (`evaluation.snapshot_ensemble`, Huang et al. 2017): the networks at the
ends of the last m cycles are saved in the run folder, their mean prediction's accuracy is the
one reported, taking them changes no bit of what training computes, and a run stopped or
crashed and continued keeps or rewrites the same snapshots and reaches the same accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import interrupt_at
from test_train import image_dataset, small_config_doc, synthetic_dataset

from knn_cli.augment import mirror
from knn_cli.cli import cli
from knn_cli.config import TrainingConfig, config_from_dict, load_config
from knn_cli.data.cifar10 import Dataset
from knn_cli.errors import ConfigError
from knn_cli.evaluation import accuracy, ensemble_accuracy
from knn_cli.experiment import build_network, open_run, train_population, train_run
from knn_cli.layers import softmax
from knn_cli.listing import ENSEMBLE_HEADER, list_rows, rows_table
from knn_cli.network import Network
from knn_cli.runs import new_run_dir, read_metrics
from knn_cli.trainer import Listener, Splits, train

pytestmark = pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")

N_S, CYCLES = 30, 3  # a cycle is 60 steps; evaluations every 10
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def config(snapshots: int, *, cycles: int = CYCLES, **evaluation: object):
    doc = small_config_doc(n_s=N_S, cycles=cycles)
    doc["evaluation"] = {"snapshot_ensemble": snapshots, **evaluation}
    return config_from_dict(doc)


def snapshot_files(run_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    """Each snapshot's arrays, by file name."""
    found = {}
    for path in sorted((run_dir / "snapshots").glob("*.npz")):
        with np.load(path) as archive:
            found[path.name] = {name: archive[name] for name in archive.files}
    return found


def model_arrays(run_dir: Path) -> dict[str, np.ndarray]:
    with np.load(run_dir / "model.npz") as archive:
        return {name: archive[name] for name in archive.files}


def assert_same_arrays(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert got[name].dtype == value.dtype, name
        np.testing.assert_array_equal(got[name], value, err_msg=name)


def by_hand(run_dir: Path, dataset: Dataset, *, precise: bool, mirrored: bool) -> dict[str, float]:
    """The ensemble's accuracies from the saved files alone: each snapshot rebuilt, its batch-norm
    statistics measured over the training set where precise BN is on, softmax (averaged with
    the mirror image's), the mean over snapshots, argmax."""
    run_config = load_config(run_dir / "config.yaml")
    networks = []
    for path in sorted((run_dir / "snapshots").glob("cycle-*.npz")):
        network = build_network(run_config, dataset.n_features)
        with np.load(path) as archive:
            network.load_state({name: archive[name] for name in archive.files})
        if precise:
            network.moving_averages = network.precise_statistics(dataset.X_train)
        networks.append(network)

    def mean_prediction(X: np.ndarray) -> np.ndarray:
        each = []
        for network in networks:
            p = softmax(network.scores(X))
            if mirrored:
                p = (p + softmax(network.scores(mirror(X)))) / 2
            each.append(p)
        return np.mean(each, axis=0).argmax(axis=1)

    return {
        "val": float(np.mean(mean_prediction(dataset.X_val) == dataset.y_val)),
        "test": float(np.mean(mean_prediction(dataset.X_test) == dataset.y_test)),
    }


# -- the ensemble's accuracy ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("precise", "mirrored"), [(False, False), (True, True)], ids=["moving-averages", "precise-flip"]
)
def test_the_ensemble_accuracy_is_that_of_averaging_the_saved_snapshots_by_hand(
    tmp_path: Path, precise: bool, mirrored: bool
) -> None:
    data = image_dataset()
    run_config = config(2, precise_bn=precise, test_time_flip=mirrored)
    run_dir = new_run_dir(tmp_path, "ensemble")
    summary = train_run(run_config, run_dir, dataset=data)
    assert summary["status"] == "finished"
    assert sorted(snapshot_files(run_dir)) == ["cycle-2.npz", "cycle-3.npz"]  # the last 2 of 3
    plain = by_hand(run_dir, data, precise=precise, mirrored=False)
    assert summary["final_val_accuracy_snapshot_ensemble"] == plain["val"]
    assert summary["test_accuracy_snapshot_ensemble"] == plain["test"]
    if mirrored:
        flipped = by_hand(run_dir, data, precise=precise, mirrored=True)
        assert summary["final_val_accuracy_snapshot_ensemble_flip"] == flipped["val"]
        assert summary["test_accuracy_snapshot_ensemble_flip"] == flipped["test"]
    else:
        assert not [key for key in summary if key.endswith("_snapshot_ensemble_flip")]
    # The plain accuracies are still there, as without the ensemble.
    assert summary["test_accuracy"] is not None and summary["final_val_accuracy"] is not None


def test_an_ensemble_averages_probabilities_not_votes() -> None:
    """Three networks, two of which lean weakly to class 0 and one strongly to class 1: a vote
    says 0, the mean probability 1."""

    class Fixed(Network):
        def __init__(self, scores: list[float]) -> None:
            super().__init__(2, [], 2, seed=0)
            self.fixed = np.asarray(scores, dtype=np.float32)

        def scores(self, X: np.ndarray, *, train: bool = False) -> np.ndarray:
            return np.tile(self.fixed, (len(X), 1))

    networks = [Fixed([0.2, 0.0]), Fixed([0.2, 0.0]), Fixed([0.0, 5.0])]
    X, y = np.zeros((4, 2), dtype=np.float32), np.ones(4, dtype=np.int64)
    assert [accuracy(n, X, y) for n in networks] == [0.0, 0.0, 1.0]
    assert ensemble_accuracy(networks, X, y) == 1.0


def test_one_snapshot_is_the_final_network() -> None:
    """m = 1 keeps the network at the last step: its ensemble is the network alone."""
    data = synthetic_dataset()
    network = Network(32, [16], 10, seed=0)
    assert ensemble_accuracy([network], data.X_test, data.y_test) == accuracy(
        network, data.X_test, data.y_test
    )


# -- an observer: no training bit changes ---------------------------------------------------------


def test_snapshots_change_no_training_bit_and_are_the_network_at_each_cycle_end(
    tmp_path: Path,
) -> None:
    data = synthetic_dataset()
    off, on = new_run_dir(tmp_path, "off"), new_run_dir(tmp_path, "on")
    summary_off = train_run(config(0), off, dataset=data)
    summary_on = train_run(config(CYCLES), on, dataset=data)  # m = cycles: every cycle
    for name in ("metrics.csv", "diagnostics.csv"):
        assert (on / name).read_bytes() == (off / name).read_bytes(), name
    assert_same_arrays(model_arrays(on), model_arrays(off))
    ensemble_keys = {"final_val_accuracy_snapshot_ensemble", "test_accuracy_snapshot_ensemble"}
    assert ensemble_keys <= summary_on.keys() and not ensemble_keys & summary_off.keys()
    for key, value in summary_off.items():
        if "accuracy" in key:
            assert summary_on[key] == value, key
    assert not (off / "snapshots").exists()

    snapshots = snapshot_files(on)
    assert sorted(snapshots) == [f"cycle-{c}.npz" for c in range(1, CYCLES + 1)]
    # The last is the final network (model.npz less the update rule's state)...
    final = {k: v for k, v in model_arrays(on).items() if not k.startswith("optimizer.")}
    assert_same_arrays(snapshots[f"cycle-{CYCLES}.npz"], final)
    # ...and the first the network a one-cycle run ends with: the same steps, the same batches,
    # its moving averages as current as at the end of that run.
    short = new_run_dir(tmp_path, "short")
    train_run(config(0, cycles=1), short, dataset=data)
    first = {k: v for k, v in model_arrays(short).items() if not k.startswith("optimizer.")}
    assert_same_arrays(snapshots["cycle-1.npz"], first)


def test_a_listener_is_told_of_the_cycle_ends_it_wants_only() -> None:
    data = synthetic_dataset(n_train=300)
    splits = Splits(data.X_train, data.y_train, data.X_val, data.y_val)
    schedule = TrainingConfig(batch_size=25, n_s=6, cycles=3, eval_every=5, seed=1)

    class Second(Listener):
        def __init__(self) -> None:
            self.told: list[tuple[int, int]] = []
            self.averages: dict[str, np.ndarray] = {}

        def wants_cycle_end(self, cycle: int) -> bool:
            return cycle == 2

        def on_cycle_end(self, step: int, cycle: int) -> None:
            self.told.append((step, cycle))
            self.averages = {k: v.copy() for k, v in network.moving_averages.items()}

    network = Network(32, [16], 10, batch_norm=True, seed=0)
    listener = Second()
    train(network, splits, schedule, listener=listener)
    assert listener.told == [(24, 2)]
    alone = Network(32, [16], 10, batch_norm=True, seed=0)
    train(alone, splits, TrainingConfig(batch_size=25, n_s=6, cycles=2, eval_every=5, seed=1))
    assert listener.averages.keys() == alone.moving_averages.keys() != set()
    for name, value in alone.moving_averages.items():
        np.testing.assert_array_equal(listener.averages[name], value, err_msg=name)


def test_each_member_of_a_population_keeps_the_snapshots_it_keeps_alone(tmp_path: Path) -> None:
    data = synthetic_dataset()
    configs = [
        config_from_dict(
            {**small_config_doc(n_s=N_S, cycles=CYCLES), "evaluation": {"snapshot_ensemble": 2}},
            [f"training.seed={seed}", f"name=s{seed}"],
        )
        for seed in (0, 1)
    ]
    alone = [new_run_dir(tmp_path / "alone", c.name) for c in configs]
    for run_config, run_dir in zip(configs, alone, strict=True):
        train_run(run_config, run_dir, dataset=data, background_evaluation=False)
    runs = [open_run(c, new_run_dir(tmp_path / "together", c.name), data, population=2)
            for c in configs]  # fmt: skip
    train_population(runs, data, background_evaluation=False)
    for lone, run in zip(alone, runs, strict=True):
        got, expected = snapshot_files(run.run_dir), snapshot_files(lone)
        assert got.keys() == expected.keys() == {"cycle-2.npz", "cycle-3.npz"}
        for name in expected:
            assert_same_arrays(got[name], expected[name])
        summary = json.loads((run.run_dir / "summary.json").read_text())
        lone_summary = json.loads((lone / "summary.json").read_text())
        for key in ("final_val_accuracy_snapshot_ensemble", "test_accuracy_snapshot_ensemble"):
            assert summary[key] == lone_summary[key], key


# -- bad input ------------------------------------------------------------------------------------


def test_more_snapshots_than_cycles_is_refused_in_one_line_naming_both(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        config(4, cycles=3)
    message = str(error.value)
    assert "evaluation.snapshot_ensemble (4)" in message and "training.cycles (3)" in message
    assert "\n" not in message
    with pytest.raises(ConfigError, match=r"evaluation\.snapshot_ensemble must be an integer >= 0"):
        config(-1)
    with pytest.raises(ConfigError, match=r"evaluation\.snapshot_ensemble"):
        config_from_dict({"evaluation": {"snapshot_ensemble": True}})
    assert config(3, cycles=3).snapshot_cycles == range(1, 4)
    assert config(0).snapshot_cycles == range(0)


def test_the_cli_refuses_more_snapshots_than_cycles_with_exit_2_and_writes_nothing(
    tmp_path: Path,
) -> None:
    runs = tmp_path / "runs"
    overrides = ["--set", "evaluation.snapshot_ensemble=3", "--set", "training.cycles=2"]
    arguments = ["train", str(CONFIGS / "3layer_bn.yaml"), *overrides, "--runs-dir", str(runs)]
    result = CliRunner().invoke(cli, arguments, catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and "(3)" in line and "training.cycles (2)" in line
    assert not runs.exists() or not any(runs.iterdir())


# -- continued runs -------------------------------------------------------------------------------


def resumable_config():
    """What a continued run must draw alike (shuffling, dropout, augmentation, Adam), every cycle
    kept, measured with precise BN and mirror images."""
    doc = small_config_doc(optimizer="adam", eta_min=1e-4, eta_max=3e-3, n_s=N_S, cycles=CYCLES)
    doc["model"] |= {"dropout": 0.2}
    doc["augment"] = {"flip": True, "translate": 2}
    doc["evaluation"] = {"precise_bn": True, "test_time_flip": True, "snapshot_ensemble": CYCLES}
    return config_from_dict(doc)


def assert_same_ensemble(run_dir: Path, reference: Path) -> None:
    got, expected = snapshot_files(run_dir), snapshot_files(reference)
    assert got.keys() == expected.keys() == {f"cycle-{c}.npz" for c in range(1, CYCLES + 1)}
    for name in expected:
        assert_same_arrays(got[name], expected[name])
    summary = json.loads((run_dir / "summary.json").read_text())
    whole = json.loads((reference / "summary.json").read_text())
    assert summary["status"] == "finished"
    for key, value in whole.items():
        if "accuracy" in key:
            assert summary[key] == value, key
    assert (run_dir / "metrics.csv").read_bytes() == (reference / "metrics.csv").read_bytes()
    assert_same_arrays(model_arrays(run_dir), model_arrays(reference))


@pytest.mark.parametrize("stop", [60, 75], ids=["at-a-cycle-end", "mid-cycle"])
def test_a_run_stopped_by_ctrl_c_continues_to_the_same_snapshots_and_ensemble(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stop: int
) -> None:
    data, run_config = image_dataset(), resumable_config()
    whole = new_run_dir(tmp_path, "whole")
    train_run(run_config, whole, dataset=data, stop_between_steps=True)
    cut = new_run_dir(tmp_path, "cut")
    with monkeypatch.context() as patch:
        interrupt_at(patch, stop)
        with pytest.raises(KeyboardInterrupt):
            train_run(run_config, cut, dataset=data, stop_between_steps=True)
    assert json.loads((cut / "summary.json").read_text())["status"] == "interrupted"
    assert sorted(snapshot_files(cut)) == ["cycle-1.npz"]  # the one cycle ended so far
    kept = (cut / "snapshots" / "cycle-1.npz").stat().st_mtime_ns
    train_run(run_config, cut, dataset=data, stop_between_steps=True, resume=True)
    assert_same_ensemble(cut, whole)
    assert (cut / "snapshots" / "cycle-1.npz").stat().st_mtime_ns == kept  # not written again


def test_a_crash_after_a_snapshot_continues_from_an_earlier_checkpoint_to_the_same_bits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checkpoints stop at step 50, the run crashes at 70, after cycle 1's snapshot (60): the
    continued run computes that cycle's end again and writes the same snapshot."""
    import knn_cli.recorder as recorder

    data = image_dataset()
    doc = small_config_doc(n_s=N_S, cycles=CYCLES, checkpoint_minutes=1e-9)
    doc["evaluation"] = {"precise_bn": True, "snapshot_ensemble": CYCLES}
    run_config = config_from_dict(doc)
    whole = new_run_dir(tmp_path, "whole")
    train_run(run_config, whole, dataset=data)
    crashed = new_run_dir(tmp_path, "crashed")
    real_save = recorder.write_checkpoint

    def save_until(run_dir, arrays, info):  # type: ignore[no-untyped-def]
        if info["step"] >= 70:
            raise RuntimeError("disk gone")
        if info["step"] <= 50:
            real_save(run_dir, arrays, info)

    with monkeypatch.context() as patch:
        patch.setattr(recorder, "write_checkpoint", save_until)
        with pytest.raises(RuntimeError, match="disk gone"):
            train_run(run_config, crashed, dataset=data)
    assert sorted(snapshot_files(crashed)) == ["cycle-1.npz"]
    written = snapshot_files(crashed)["cycle-1.npz"]
    rewritten: list[int] = []
    real_write = recorder.write_snapshot

    def noting(run_dir, cycle, arrays):  # type: ignore[no-untyped-def]
        rewritten.append(cycle)
        real_write(run_dir, cycle, arrays)

    with monkeypatch.context() as patch:
        patch.setattr(recorder, "write_snapshot", noting)
        train_run(run_config, crashed, dataset=data, resume=True)
    assert rewritten == [1, 2, 3]  # from the checkpoint at 50: cycle 1 ends again
    assert_same_arrays(snapshot_files(crashed)["cycle-1.npz"], written)
    assert_same_ensemble(crashed, whole)
    assert max(r["step"] for r in read_metrics(crashed)) == 3 * 2 * N_S


# -- where it is shown ----------------------------------------------------------------------------


def test_knn_runs_shows_the_ensemble_beside_the_test_accuracy_where_a_run_has_one(
    tmp_path: Path,
) -> None:
    data = synthetic_dataset()
    runs = tmp_path / "runs"
    train_run(config(0), new_run_dir(runs, "plain"), dataset=data)
    summary = train_run(config(2), new_run_dir(runs, "ensemble"), dataset=data)
    rows, _ = list_rows(runs)
    by_name = {row.name.split("_", 2)[-1]: row for row in rows}
    ensemble = summary["test_accuracy_snapshot_ensemble"]
    assert by_name["ensemble"].test_accuracy_snapshot_ensemble == ensemble
    assert by_name["plain"].test_accuracy_snapshot_ensemble is None
    table = rows_table(rows)
    assert ENSEMBLE_HEADER in table.splitlines()[0]
    assert ENSEMBLE_HEADER not in rows_table([by_name["plain"]])
