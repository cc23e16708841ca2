"""Training end to end on small synthetic data: learning, run folders, reproducibility, faults."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import REAL_DATA_DIR, interrupt_at, requires_real_data

from knn_cli.config import TrainingConfig, config_from_dict
from knn_cli.data.cifar10 import Dataset
from knn_cli.experiment import evaluate_run, load_trained, load_trained_network, train_run
from knn_cli.network import Network
from knn_cli.runs import new_run_dir, read_metrics
from knn_cli.trainer import Callbacks, Splits, _batches, train

pytestmark = pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")


def synthetic_dataset(seed: int = 0, n_train: int = 600, d: int = 32) -> Dataset:
    """Ten Gaussian blobs: learnable, far from chance, and tiny."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((10, d)) * 1.5

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 10, n)
        return (centers[y] + rng.standard_normal((n, d))).astype(np.float32), y

    (X_train, y_train), (X_val, y_val), (X_test, y_test) = split(n_train), split(200), split(200)
    names = tuple(f"class{i}" for i in range(10))
    return Dataset(X_train, y_train, X_val, y_val, X_test, y_test, names, "synthetic")


def small_config_doc(batch_norm: bool = True, **training: object) -> dict:
    return {
        "name": "tiny",
        "model": {"hidden": [20, 20], "batch_norm": batch_norm},
        "training": {"n_s": 30, "cycles": 2, "batch_size": 20, "eval_every": 10, **training},
    }


def small_config(batch_norm: bool = True, **training: object):
    return config_from_dict(small_config_doc(batch_norm, **training))


def test_training_learns_and_writes_a_complete_run_folder(tmp_path: Path) -> None:
    config = small_config()
    run_dir = new_run_dir(tmp_path, config.name)
    summary = train_run(config, run_dir, dataset=synthetic_dataset())
    assert summary["status"] == "finished"
    assert summary["test_accuracy"] > 0.6  # chance is 0.1
    assert summary["best_val_accuracy"] >= summary["final_val_accuracy"] > 0.6
    for name in (
        "config.yaml",
        "metrics.csv",
        "summary.json",
        "model.npz",
        "cost.png",
        "loss.png",
        "accuracy.png",
    ):
        assert (run_dir / name).is_file(), name
    metrics = read_metrics(run_dir)
    steps = sorted({m["step"] for m in metrics})
    assert steps == list(range(0, 121, 10))  # step 0, every 10 steps, and the end (120 = 2*2*30)
    assert {m["split"] for m in metrics} == {"train", "val"}
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk["test_accuracy"] == summary["test_accuracy"]
    assert on_disk["n_s"] == 30 and on_disk["total_steps"] == 120


def test_saved_model_reloads_to_the_same_predictions(tmp_path: Path) -> None:
    data = synthetic_dataset()
    run_dir = new_run_dir(tmp_path, "reload")
    summary = train_run(small_config(), run_dir, dataset=data)
    _config, network = load_trained_network(run_dir)
    accuracy = float(np.mean(network.predict(data.X_test) == data.y_test))
    assert accuracy == summary["test_accuracy"]
    assert set(network.moving_averages) == {"mu1", "var1", "mu2", "var2"}


@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
def test_the_update_rules_state_is_saved_with_the_model(tmp_path: Path, optimizer: str) -> None:
    """model.npz holds the rule's state by parameter name, and loading the run restores it."""
    data = synthetic_dataset()
    run_dir = new_run_dir(tmp_path, optimizer)
    config = small_config(optimizer=optimizer, eta_min=1e-4, eta_max=1e-2)
    summary = train_run(config, run_dir, dataset=data)
    assert summary["status"] == "finished" and summary["test_accuracy"] > 0.6
    _config, network, rule = load_trained(run_dir)
    assert type(rule).__name__.lower() == optimizer
    assert rule.steps == summary["total_steps"]
    with np.load(run_dir / "model.npz") as saved:
        slot = type(rule).slots[0]
        assert f"optimizer.{slot}.W1" in saved.files
        np.testing.assert_array_equal(rule.state[slot]["W1"], saved[f"optimizer.{slot}.W1"])
    assert set(rule.state[slot]) == set(network.params)
    assert float(np.mean(network.predict(data.X_test) == data.y_test)) == summary["test_accuracy"]


def test_batch_norm_after_the_relu_trains(tmp_path: Path) -> None:
    data = synthetic_dataset()
    config = config_from_dict(
        {**small_config_doc(), "model": {"hidden": [20, 20], "bn_position": "after_relu"}}
    )
    summary = train_run(config, new_run_dir(tmp_path, "after"), dataset=data)
    assert summary["status"] == "finished" and summary["test_accuracy"] > 0.6


def test_same_config_and_seed_give_identical_metrics(tmp_path: Path) -> None:
    data = synthetic_dataset()
    first, second, other = (new_run_dir(tmp_path, f"r{i}") for i in range(3))
    train_run(small_config(), first, dataset=data)
    train_run(small_config(), second, dataset=data)
    train_run(small_config(seed=1), other, dataset=data)
    assert (first / "metrics.csv").read_text() == (second / "metrics.csv").read_text()
    assert (first / "metrics.csv").read_text() != (other / "metrics.csv").read_text()


def test_divergence_is_detected_and_recorded(tmp_path: Path) -> None:
    config = small_config(batch_norm=False, eta_min=1e3, eta_max=1e6)
    run_dir = new_run_dir(tmp_path, "boom")
    summary = train_run(config, run_dir, dataset=synthetic_dataset())
    assert summary["status"] == "diverged"
    assert "cost became" in summary["message"]
    assert summary["test_accuracy"] is None
    assert read_metrics(run_dir)  # the step-0 evaluation is kept
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "diverged"


def test_interrupted_run_keeps_metrics_model_and_says_interrupted(
    tmp_path: Path, monkeypatch
) -> None:
    """A KeyboardInterrupt raised mid-training (as Ctrl-C or SIGTERM would) loses nothing."""
    from knn_cli.recorder import RunRecorder

    original = RunRecorder.on_step

    def interrupted_after(self, step, eta):  # the run hears of its 54th step, then Ctrl-C
        original(self, step, eta)
        if step == 54:
            raise KeyboardInterrupt

    monkeypatch.setattr(RunRecorder, "on_step", interrupted_after)
    run_dir = new_run_dir(tmp_path, "ctrl-c")
    with pytest.raises(KeyboardInterrupt):
        train_run(small_config(), run_dir, dataset=synthetic_dataset())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert summary["steps"] == 54
    assert max(m["step"] for m in read_metrics(run_dir)) == 50  # evaluations every 10 steps
    assert (run_dir / "model.npz").is_file()
    load_trained_network(run_dir)  # the saved model is complete and loadable
    assert not list(run_dir.glob(".*.tmp"))


def test_trainer_reports_evaluations_through_a_callback_only() -> None:
    data = synthetic_dataset(n_train=100)
    network = Network(32, [8], 10, seed=0)
    schedule = TrainingConfig(
        lambda_=0.0,
        batch_size=25,
        eta_min=1e-3,
        eta_max=1e-1,
        n_s=4,
        cycles=1,
        eval_every=3,
        seed=0,
    )
    seen: list[int] = []
    outcome = train(
        network,
        Splits(data.X_train, data.y_train, data.X_val, data.y_val),
        schedule,
        listener=Callbacks(evaluation=lambda rows: seen.append(rows[0]["step"])),
    )
    assert outcome.status == "finished" and outcome.steps == 8
    assert seen == [0, 3, 6, 8]


def test_batches_are_a_new_shuffle_each_epoch_drawn_from_the_seed_alone() -> None:
    """The trainer looks one batch ahead; the batches must stay those of one permutation per
    epoch from the schedule's seed, dropping a last partial batch."""
    rng = np.random.default_rng([7, 1])
    first, second = rng.permutation(10), rng.permutation(10)
    expected = [first[0:3], first[3:6], first[6:9], second[0:3], second[3:6], second[6:9]]
    got = list(itertools.islice(_batches(10, 3, 7), 6))
    assert [list(b) for b in got] == [list(b) for b in expected]


def test_train_rejects_a_batch_larger_than_the_training_rows() -> None:
    """Called without the config check, a too-large batch must fail, not loop for ever."""
    X, y = np.zeros((10, 4), dtype=np.float32), np.zeros(10, dtype=int)
    schedule = TrainingConfig(
        lambda_=0.0,
        batch_size=11,
        eta_min=1e-3,
        eta_max=1e-2,
        n_s=1,
        cycles=1,
        eval_every=1,
        seed=0,
    )
    with pytest.raises(ValueError, match="batch_size must be 1 to the 10 training rows, got 11"):
        train(Network(4, [3], 2), Splits(X, y, X, y), schedule)


def test_batch_larger_than_training_set_is_a_config_error(tmp_path: Path) -> None:
    from knn_cli.errors import ConfigError

    with pytest.raises(ConfigError, match="batch_size"):
        train_run(
            small_config(batch_size=5000), new_run_dir(tmp_path, "big"), dataset=synthetic_dataset()
        )


def test_run_folders_are_unique_within_one_second(tmp_path: Path) -> None:
    import datetime as dt

    now = dt.datetime(2026, 1, 2, 3, 4, 5)
    first = new_run_dir(tmp_path, "same", now=now)
    second = new_run_dir(tmp_path, "same", now=now)
    assert first != second
    assert first.name == "2026-01-02_03-04-05_same"
    assert second.name == "2026-01-02_03-04-05_same-2"


def test_evaluate_run_uses_the_data_the_config_names(tmp_path: Path, fake_cifar_dir: Path) -> None:
    config = config_from_dict(
        {
            "name": "fake",
            "model": {"hidden": [16]},
            "training": {"n_s": 10, "cycles": 1, "batch_size": 10},
            "data": {"dir": str(fake_cifar_dir), "validation_size": 20},
        }
    )
    run_dir = new_run_dir(tmp_path, "fake")
    summary = train_run(config, run_dir)
    assert summary["status"] == "finished"
    assert evaluate_run(run_dir) == pytest.approx(summary["test_accuracy"])


@requires_real_data
def test_a_few_hundred_steps_on_real_cifar10_learn(tmp_path: Path) -> None:
    """The real pipeline end to end: 300 steps of the 3-layer BN protocol beat chance by far."""
    from knn_cli.config import load_config

    config = load_config(
        Path(__file__).parent.parent / "configs" / "3layer_bn.yaml",
        [f"data.dir={REAL_DATA_DIR}", "training.n_s=150", "training.cycles=1"],
    )
    run_dir = new_run_dir(tmp_path, config.name)
    summary = train_run(config, run_dir)
    assert summary["status"] == "finished"
    assert summary["n_train"] == 45000
    assert summary["final_val_accuracy"] > 0.35
    assert summary["test_accuracy"] > 0.35


def image_dataset(seed: int = 0, n_train: int = 300) -> Dataset:
    """Ten classes of random 3 x 32 x 32 'images' around class means: augmentation needs the
    image layout."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((10, 3072)) * 0.5

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 10, n)
        return (centers[y] + rng.standard_normal((n, 3072))).astype(np.float32), y

    (X_train, y_train), (X_val, y_val), (X_test, y_test) = split(n_train), split(60), split(60)
    names = tuple(f"class{i}" for i in range(10))
    return Dataset(X_train, y_train, X_val, y_val, X_test, y_test, names, "synthetic images")


def test_augmented_training_is_reproducible_from_the_seed_and_differs_from_plain(
    tmp_path: Path,
) -> None:
    data = image_dataset()
    doc = small_config_doc()
    augmented = config_from_dict({**doc, "augment": {"flip": True, "translate": 2}})
    runs = [new_run_dir(tmp_path, f"r{i}") for i in range(3)]
    for run_dir, config in zip(runs, (augmented, augmented, config_from_dict(doc)), strict=True):
        assert train_run(config, run_dir, dataset=data)["status"] == "finished"
    first, second, plain = ((r / "metrics.csv").read_text() for r in runs)
    assert first == second
    assert first != plain


def test_precise_batch_norm_replaces_the_averages_and_both_accuracies_are_reported(
    tmp_path: Path,
) -> None:
    data = synthetic_dataset()
    config = config_from_dict({**small_config_doc(), "evaluation": {"precise_bn": True}})
    run_dir = new_run_dir(tmp_path, "precise")
    summary = train_run(config, run_dir, dataset=data)
    assert {"test_accuracy_moving_averages", "final_val_accuracy_precise_bn"} <= summary.keys()
    assert summary["test_accuracy"] > 0.6 and summary["test_accuracy_moving_averages"] > 0.6
    _config, network = load_trained_network(run_dir)
    # The first layer's statistics are those of X W1 + b1 over every training row.
    S1 = data.X_train.astype(np.float64) @ network.params["W1"] + network.params["b1"]
    np.testing.assert_allclose(network.moving_averages["mu1"], S1.mean(axis=0), rtol=1e-4)
    np.testing.assert_allclose(network.moving_averages["var1"], S1.var(axis=0), rtol=1e-4)
    assert summary["test_accuracy"] == float(np.mean(network.predict(data.X_test) == data.y_test))


def test_test_time_flip_is_reported_apart(tmp_path: Path) -> None:
    from knn_cli.augment import mirror
    from knn_cli.layers import softmax

    data = image_dataset()
    config = config_from_dict({**small_config_doc(), "evaluation": {"test_time_flip": True}})
    run_dir = new_run_dir(tmp_path, "flip")
    summary = train_run(config, run_dir, dataset=data)
    _config, network = load_trained_network(run_dir)
    both = softmax(network.scores(data.X_test)) + softmax(network.scores(mirror(data.X_test)))
    assert summary["test_accuracy_flip"] == float(np.mean(both.argmax(axis=1) == data.y_test))
    assert "final_val_accuracy_flip" in summary
    assert summary["test_accuracy"] == float(np.mean(network.predict(data.X_test) == data.y_test))


def resumable_config():
    """Everything a continued run must draw alike: shuffling, dropout, augmentation, Adam."""
    doc = small_config_doc(optimizer="adam", eta_min=1e-4, eta_max=3e-3)
    doc["model"] |= {"dropout": 0.2}
    doc["augment"] = {"flip": True, "translate": 2}
    doc["evaluation"] = {"precise_bn": True}
    return config_from_dict(doc)


def assert_same_run(run_dir: Path, reference: Path) -> None:
    assert (run_dir / "metrics.csv").read_bytes() == (reference / "metrics.csv").read_bytes()
    with np.load(run_dir / "model.npz") as got, np.load(reference / "model.npz") as expected:
        assert got.files == expected.files
        for name in expected.files:
            np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    summary = json.loads((run_dir / "summary.json").read_text())
    expected_summary = json.loads((reference / "summary.json").read_text())
    for key in ("status", "steps", "test_accuracy", "final_val_accuracy", "best_val_accuracy"):
        assert summary[key] == expected_summary[key], key


def test_a_run_stopped_by_ctrl_c_continues_to_the_same_bits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, config = image_dataset(), resumable_config()
    whole = new_run_dir(tmp_path, "whole")
    train_run(config, whole, dataset=data, stop_between_steps=True)
    cut = new_run_dir(tmp_path, "cut")
    with monkeypatch.context() as patch:
        interrupt_at(patch, 47)  # between two evaluation points (every 10 steps)
        with pytest.raises(KeyboardInterrupt):
            train_run(config, cut, dataset=data, stop_between_steps=True)
    assert json.loads((cut / "summary.json").read_text())["status"] == "interrupted"
    assert (cut / "checkpoint.npz").is_file()
    summary = train_run(config, cut, dataset=data, stop_between_steps=True, resume=True)
    assert summary["status"] == "finished" and not (cut / "checkpoint.npz").exists()
    assert_same_run(cut, whole)


def test_a_crashed_run_continues_from_its_last_periodic_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash after the last checkpoint: the steps and evaluations since are done again."""
    import knn_cli.recorder as recorder

    data = image_dataset()
    config = config_from_dict(
        {**small_config_doc(), "training": {**small_config_doc()["training"],
                                            "checkpoint_minutes": 1e-9}}
    )  # fmt: skip
    whole = new_run_dir(tmp_path, "whole")
    train_run(config, whole, dataset=data)
    crashed = new_run_dir(tmp_path, "crashed")
    real_save = recorder.write_checkpoint
    saved: list[int] = []

    def save_until(run_dir, arrays, info):  # type: ignore[no-untyped-def]
        if info["step"] > 33:  # checkpoints stop here; the run crashes at step 58
            if info["step"] >= 58:
                raise RuntimeError("disk gone")
            return
        saved.append(info["step"])
        real_save(run_dir, arrays, info)

    with monkeypatch.context() as patch:
        patch.setattr(recorder, "write_checkpoint", save_until)
        with pytest.raises(RuntimeError, match="disk gone"):
            train_run(config, crashed, dataset=data)
    assert saved[-1] == 33
    assert max(r["step"] for r in read_metrics(crashed)) == 50  # recorded after the checkpoint
    train_run(config, crashed, dataset=data, resume=True)
    assert_same_run(crashed, whole)


def test_a_failure_while_saving_does_not_hide_the_error_that_ended_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Plotting (or saving) after a run that broke may fail too: the error that ended the run
    goes on up, the second is said on stderr, and the summary still says what happened."""
    import knn_cli.recorder as recorder

    original = recorder.RunRecorder.on_step

    def breaking_step(self, step, eta):  # type: ignore[no-untyped-def]
        original(self, step, eta)
        if step == 24:
            raise FloatingPointError("the step broke")

    def broken_plot(run_dir):  # type: ignore[no-untyped-def]
        raise OSError("no fonts")

    monkeypatch.setattr(recorder.RunRecorder, "on_step", breaking_step)
    monkeypatch.setattr(recorder, "plot_run", broken_plot)
    run_dir = new_run_dir(tmp_path, "broken")
    with pytest.raises(FloatingPointError, match="the step broke"):
        train_run(small_config(), run_dir, dataset=synthetic_dataset())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and "the step broke" in summary["message"]
    assert (run_dir / "model.npz").is_file()
    assert "saving the run after FloatingPointError also failed: OSError: no fonts" in (
        capsys.readouterr().err
    )


def test_the_training_curve_on_a_sample_or_not_at_all_changes_no_training_bit() -> None:
    """A sample of the training rows at every point but the last (which measures them all), or
    no training curve: the validation records and the weights are those of the whole curve."""
    data = synthetic_dataset(n_train=300)
    splits = Splits(data.X_train, data.y_train, data.X_val, data.y_val)
    schedule = TrainingConfig(
        lambda_=0.01,
        batch_size=25,
        eta_min=1e-3,
        eta_max=1e-1,
        n_s=12,
        cycles=1,
        eval_every=6,
        seed=3,
    )
    seen, weights = {}, {}
    for curve in (None, 7, 0):
        network = Network(32, [16], 10, seed=0)
        records: list[dict] = []
        train(network, splits, schedule, listener=Callbacks(records.extend), train_curve=curve)
        seen[curve], weights[curve] = records, network.state()
    val = {curve: [r for r in records if r["split"] == "val"] for curve, records in seen.items()}
    assert val[None] == val[7] == val[0]
    for curve in (7, 0):
        for name, value in weights[None].items():
            np.testing.assert_array_equal(weights[curve][name], value)
    assert not [r for r in seen[0] if r["split"] == "train"]
    sampled = [r for r in seen[7] if r["split"] == "train"]
    whole = [r for r in seen[None] if r["split"] == "train"]
    assert [r["step"] for r in sampled] == [r["step"] for r in whole] == [0, 6, 12, 18, 24]
    # Seven rows: accuracies in sevenths; the last point measures every row, as the whole does.
    assert all(round(7 * r["accuracy"], 9) % 1 == 0 for r in sampled[:-1])
    assert sampled[-1] == whole[-1]
