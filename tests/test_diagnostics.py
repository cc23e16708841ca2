"""Per-layer diagnostics and the landscape measures: each quantity against a direct computation,
the measures on functions whose answer is known, and that watching training changes nothing it
computes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from test_train import image_dataset

from knn_cli.cli import cli
from knn_cli.config import TrainingConfig, config_from_dict
from knn_cli.diagnostics import (
    Probe,
    landscape,
    layer_statistics,
    network_landscape,
    percentiles,
    update_ratios,
)
from knn_cli.engine import Engine
from knn_cli.experiment import train_run
from knn_cli.network import Network
from knn_cli.optim import make_update_rule
from knn_cli.runs import new_run_dir, read_diagnostics
from knn_cli.stack import TRAINING, Affine, BatchNorm, ReLU
from knn_cli.trainer import Callbacks, Splits, train

pytestmark = pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")


def problem(seed: int = 0, n: int = 40, d: int = 12):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)), rng.integers(0, 10, n)


@pytest.mark.parametrize("batch_norm", [False, True])
def test_layer_statistics_against_a_direct_computation(batch_norm: bool) -> None:
    X, y = problem()
    net = Network(12, [9, 7], 10, batch_norm=batch_norm, dtype="float64", seed=3)
    found = layer_statistics(net, X, y)
    _, grads = net.textbook_gradients(X, y, 0.0)  # the loss's gradient: no L2 term
    H = X
    for layer in net.layers:  # every affine layer's output, as the textbook pass computes it
        out, _ = layer.forward(H, net.params, TRAINING)
        if isinstance(layer, Affine):
            index = str(layer.index)
            assert found[(index, "activation_mean")] == pytest.approx(out.mean(), rel=1e-12)
            assert found[(index, "activation_std")] == pytest.approx(out.std(), rel=1e-12)
            for p in (15, 50, 85):
                expected = np.percentile(out, p)
                assert found[(index, f"activation_p{p}")] == pytest.approx(expected, rel=1e-12)
            W = net.params[layer.W]
            assert found[(index, "weight_norm")] == pytest.approx(np.linalg.norm(W), rel=1e-12)
            expected = np.linalg.norm(grads[layer.W])
            assert found[(index, "grad_norm")] == pytest.approx(expected, rel=1e-10)
        H = out
    assert {layer for layer, _ in found} == {"1", "2", "3"}
    assert ("3", "dead_fraction") not in found  # the output layer has no ReLU


@pytest.mark.parametrize("size", [1, 2, 7, 1000])
def test_percentiles_are_numpys_from_one_sort(size: int) -> None:
    rng = np.random.default_rng(size)
    ties = rng.integers(0, 5, size).astype(np.float32)  # repeated values, in float32 as trained
    for values in (rng.standard_normal((size, 3)), ties):
        expected = np.percentile(values, (0, 15, 50, 85, 100))
        found = percentiles(values, (0, 15, 50, 85, 100))
        np.testing.assert_allclose(found, expected, rtol=1e-12, atol=0)


def test_percentiles_of_a_diverged_layer_are_nan_as_numpys() -> None:
    values = np.array([[1.0, np.nan], [3.0, 2.0]])
    assert np.isnan(np.percentile(values, 50))
    assert all(np.isnan(p) for p in percentiles(values, (15, 50, 85)))


def test_dead_fraction_counts_units_shut_on_every_row() -> None:
    """Units 0-2 of layer 1 get a bias of -100: dead on every row; unit 3 is dead on half of
    the rows only, which does not count."""
    X = np.vstack([np.ones((10, 4)), -np.ones((10, 4))])
    net = Network.from_layers([Affine(1, 4, 8), ReLU(), Affine(2, 8, 3)], dtype="float64")
    W1 = np.zeros((4, 8))
    W1[:, 3] = 1.0  # +4 on the first rows, -4 on the others
    W1[:, 4:] = 0.5  # +2 and -2, with the bias below always active
    b1 = np.zeros(8)
    b1[:3] = -100.0
    b1[4:] = 10.0
    net.set_params({"W1": W1, "b1": b1})
    found = layer_statistics(net, X, np.zeros(20, dtype=int))
    assert found[("1", "dead_fraction")] == pytest.approx(3 / 8)


def test_the_update_ratio_is_the_step_done_by_hand_over_the_weights() -> None:
    X, y = problem(1)
    net = Network(12, [9], 10, dtype="float64", seed=1)
    before = {name: net.params[name].copy() for name in ("W1", "W2")}
    _, grads = net.textbook_gradients(X, y, 0.0)
    make_update_rule("sgd").step(net.params, grads, 0.1, 0.01, net.decayed)
    found = update_ratios(net, before)
    for index in (1, 2):
        W = net.params[f"W{index}"]
        expected = np.linalg.norm(W - before[f"W{index}"]) / np.linalg.norm(W)
        assert found[(str(index), "update_ratio")] == pytest.approx(expected, rel=1e-12)
        # SGD's step here: eta (g + 2 lambda W_before).
        step = 0.1 * (grads[f"W{index}"] + 0.02 * before[f"W{index}"])
        assert expected == pytest.approx(np.linalg.norm(step) / np.linalg.norm(W), rel=1e-10)


@pytest.mark.parametrize("beta", [0.5, 3.0])
def test_beta_smoothness_is_beta_for_a_quadratic_at_every_step_size(beta: float) -> None:
    w = {"a": np.array([1.0, -2.0, 0.5]), "b": np.array([[3.0]])}

    def quadratic(params):
        loss = beta / 2 * sum(float(np.sum(v**2)) for v in params.values())
        return loss, {k: beta * v for k, v in params.items()}

    for steps in ([1e-3], [0.1], [1e-4, 0.05, 0.3]):
        found = landscape(quadratic, w, steps)
        assert found[("all", "beta_smoothness")] == pytest.approx(beta, rel=1e-9)
        # ||g(w - t g) - g|| = beta t ||g||, largest at the largest step.
        g_norm = beta * np.sqrt(sum(np.sum(v**2) for v in w.values()))
        assert found[("all", "grad_change")] == pytest.approx(beta * max(steps) * g_norm)


def test_a_linear_loss_has_no_gradient_change_and_a_known_loss_range() -> None:
    c = {"w": np.array([2.0, -1.0])}

    def linear(params):
        return float(np.dot(c["w"], params["w"])), {"w": c["w"].copy()}

    found = landscape(linear, {"w": np.zeros(2)}, [0.1, 0.5])
    assert found[("all", "grad_change")] == 0.0
    assert found[("all", "beta_smoothness")] == 0.0
    assert found[("all", "loss_range")] == pytest.approx(0.5 * 5.0)  # t ||c||^2 at t = 0.5


def test_the_network_landscape_is_measured_in_float64_and_changes_nothing() -> None:
    X, y = problem(2)
    net = Network(12, [9, 7], 10, batch_norm=True, seed=2)  # float32
    before = net.state()
    found = network_landscape(net, X, y, [1e-6, 1e-3])
    assert found[("all", "beta_smoothness")] > 0 and np.isfinite(found[("all", "grad_change")])
    for name, value in net.state().items():
        np.testing.assert_array_equal(value, before[name])
        assert value.dtype == np.float32


def tiny_splits(seed: int = 0) -> Splits:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((300, 3072)).astype(np.float32)
    y = rng.integers(0, 10, 300)
    return Splits(X[:240], y[:240], X[240:], y[240:])


def test_training_reports_the_probe_at_every_evaluation_point() -> None:
    splits = tiny_splits()
    net = Network(3072, [20, 10], 10, batch_norm=True, seed=0)
    probe = Probe.of(splits.X_train, splits.y_train, 50, seed=0, landscape_steps=(1e-3, 1e-2))
    schedule = TrainingConfig(
        lambda_=0.01,
        batch_size=40,
        eta_min=1e-4,
        eta_max=0.05,
        n_s=12,
        cycles=1,
        eval_every=6,
        seed=0,
    )
    seen: list[dict] = []
    train(net, splits, schedule, probe=probe, listener=Callbacks(diagnostics=seen.extend))
    steps = sorted({row["step"] for row in seen})
    assert steps == [0, 6, 12, 18, 24]
    ratios = [r for r in seen if r["quantity"] == "update_ratio"]
    assert {r["step"] for r in ratios} == {6, 12, 18, 24}  # none at step 0: no step before it
    assert {r["layer"] for r in seen if r["quantity"] == "beta_smoothness"} == {"all"}


SETTINGS = {
    "plain": {},
    "dropout-and-augmentation": {
        "model": {"dropout": 0.2},
        "augment": {"flip": True, "translate": 2},
    },
}


@pytest.mark.parametrize("extra", SETTINGS.values(), ids=SETTINGS.keys())
def test_diagnostics_on_or_off_give_the_same_metrics_and_weights_bit_for_bit(
    tmp_path: Path, extra: dict
) -> None:
    """Observation only: not a bit of what training computes moves, dropout's and
    augmentation's random streams included, with the landscape's extra passes too."""
    base = {
        "name": "watched",
        "model": {"hidden": [16, 8], "batch_norm": True, **extra.get("model", {})},
        "training": {"batch_size": 20, "n_s": 15, "cycles": 1, "eval_every": 5},
        "augment": extra.get("augment", {}),
        "data": {"validation_size": 30},
    }
    images = image_dataset()
    runs = {}
    for label, diagnostics in (
        ("off", {"layers": False}),
        ("on", {"layers": True, "probe_size": 40, "landscape": True}),
    ):
        config = config_from_dict({**base, "diagnostics": diagnostics})
        run_dir = new_run_dir(tmp_path, label)
        train_run(config, run_dir, dataset=images)
        runs[label] = run_dir
    off, on = runs["off"], runs["on"]
    assert (off / "metrics.csv").read_bytes() == (on / "metrics.csv").read_bytes()
    with np.load(off / "model.npz") as a, np.load(on / "model.npz") as b:
        assert a.files == b.files
        for name in a.files:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert not (off / "diagnostics.csv").exists() and not (off / "layers.png").exists()
    rows = read_diagnostics(on)
    assert {row["step"] for row in rows} == {0, 5, 10, 15, 20, 25, 30}
    assert (on / "layers.png").is_file() and (on / "landscape.png").is_file()
    summary = json.loads((on / "summary.json").read_text())
    assert summary["status"] == "finished"


def test_a_probe_is_the_same_rows_for_the_same_seed() -> None:
    splits = tiny_splits()
    first = Probe.of(splits.X_train, splits.y_train, 30, seed=5)
    again = Probe.of(splits.X_train, splits.y_train, 30, seed=5)
    other = Probe.of(splits.X_train, splits.y_train, 30, seed=6)
    np.testing.assert_array_equal(first.X, again.X)
    assert not np.array_equal(first.X, other.X)


@pytest.mark.parametrize(
    ("setting", "fragment"),
    [
        ("diagnostics.probe_size=0", "diagnostics.probe_size must be an integer >= 1"),
        ("diagnostics.probe_size=45001", "diagnostics.probe_size must be <= the 45000"),
        ("diagnostics.landscape_steps=[]", "a non-empty list of step sizes > 0"),
        ("diagnostics.landscape_steps=[0.1, -0.01]", "landscape_steps[1] must be a number > 0"),
        ("diagnostics.percentile_layer=3", "must name a hidden layer, 1 to 2"),
    ],
)
def test_bad_diagnostics_settings_are_one_line_before_any_folder(
    tmp_path: Path, setting: str, fragment: str
) -> None:
    runs = tmp_path / "runs"
    result = CliRunner().invoke(
        cli, ["train", "configs/3layer_bn.yaml", "--set", setting, "--runs-dir", str(runs)]
    )
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and fragment in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not runs.exists()


def test_data_smaller_than_the_probe_is_probed_whole(tmp_path: Path) -> None:
    """The config refuses a probe larger than CIFAR-10's training split (above); data with
    fewer training rows than the default probe, as in these tests, is probed whole."""
    config = config_from_dict(
        {"training": {"batch_size": 10, "n_s": 5}, "data": {"validation_size": 30},
         "diagnostics": {"probe_size": 10_000}}
    )  # fmt: skip
    summary = train_run(config, new_run_dir(tmp_path, "big"), dataset=image_dataset())
    assert summary["status"] == "finished" and summary["probe_rows"] == 300


def test_an_engine_step_and_the_probe_of_its_network_agree_on_the_gradient() -> None:
    """The gradient norm the probe reports is the one training's step would use (at lambda 0,
    through the engine), not only the textbook's."""
    X, y = problem(4, n=30)
    net = Network(12, [9], 10, batch_norm=True, dtype="float64", seed=4)
    found = layer_statistics(net, X, y)
    _, grads = Engine(net).cost_and_gradients(X, y, 0.0)
    assert found[("1", "grad_norm")] == pytest.approx(np.linalg.norm(grads["W1"]), rel=1e-9)


def test_bn_layers_are_measured_at_the_affine_output_they_receive() -> None:
    net = Network.from_layers(
        [Affine(1, 6, 5), BatchNorm(1, 5), ReLU(), Affine(2, 5, 3)], dtype="float64"
    )
    X, y = problem(5, n=20, d=6)
    found = layer_statistics(net, X, y % 3)
    out = X @ net.params["W1"] + net.params["b1"]
    assert found[("1", "activation_std")] == pytest.approx(out.std(), rel=1e-12)
