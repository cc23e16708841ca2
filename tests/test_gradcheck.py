"""The gradient check: the checker itself (it finds a wrong gradient, differentiates a known
function, evaluates stacked variants as one at a time would), and every network's gradients, on
the engine and through the textbook layers, against its centred differences."""

from __future__ import annotations

import numpy as np
import pytest

from knn_cli.gradcheck import (
    check_network,
    check_network_paths,
    choose_check_point,
    compare_gradients,
    numerical_gradients,
)
from knn_cli.network import Network

ASSIGNMENT_WIDTHS = {3: [50, 50], 9: [50, 30, 20, 20, 10, 10, 10, 10]}


def small_problem(seed: int, n: int = 12, d: int = 15, classes: int = 10):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)), rng.integers(0, classes, n)


@pytest.mark.parametrize("batch_norm", [False, True], ids=["no-bn", "bn"])
@pytest.mark.parametrize("k", [1, 2, 3, 4, 6, 9])
def test_gradients_match_centred_differences(k: int, batch_norm: bool) -> None:
    X, y = small_problem(seed=k)
    hidden = [12, 10, 8, 8, 6, 6, 6, 6][: k - 1]
    net = Network(X.shape[1], hidden, 10, batch_norm=batch_norm, dtype="float64", seed=k)
    assert choose_check_point(net, X, np.random.default_rng(k)) >= 6e-4
    for path, rows in check_network_paths(net, X, y, lambda_=0.01).items():
        assert {r.name for r in rows} == set(net.params)
        failures = [r for r in rows if not r.passed]
        assert not failures, (path, failures)
        if batch_norm and k > 1:
            assert {r.name for r in rows if r.judged_by == "absolute"} == {
                f"b{layer}" for layer in range(1, k)
            }


@pytest.mark.parametrize("k", range(1, 10))
def test_gradients_with_bn_after_relu_match_centred_differences(k: int) -> None:
    """Batch norm after the ReLU: no bias feeds it directly, so every gradient is judged
    relatively, the engine's and the textbook layers' alike."""
    X, y = small_problem(seed=30 + k)
    hidden = [12, 10, 8, 8, 6, 6, 6, 6][: k - 1]
    net = Network(
        X.shape[1], hidden, 10, batch_norm=True, bn_position="after_relu", dtype="float64", seed=k
    )
    assert choose_check_point(net, X, np.random.default_rng(k)) >= 6e-4
    for path, rows in check_network_paths(net, X, y, lambda_=0.01).items():
        assert {r.name for r in rows} == set(net.params)
        assert all(r.judged_by == "relative" for r in rows)
        failures = [r for r in rows if not r.passed]
        assert not failures, (path, failures)


@pytest.mark.parametrize("k", [3, 9])
def test_gradients_at_assignment_widths_with_bn(k: int) -> None:
    X, y = small_problem(seed=100 + k, n=10, d=8)
    net = Network(8, ASSIGNMENT_WIDTHS[k], 10, batch_norm=True, dtype="float64", seed=k)
    assert choose_check_point(net, X, np.random.default_rng(k)) >= 6e-4
    assert all(r.passed for r in check_network(net, X, y, lambda_=0.005))


def test_checker_catches_a_wrong_gradient() -> None:
    """The comparison must be able to fail: a gradient off by 0.1% is flagged."""
    X, y = small_problem(seed=7)
    net = Network(X.shape[1], [8], 10, batch_norm=True, dtype="float64", seed=7)
    _, analytic = net.cost_and_gradients(X, y, 0.01)
    numeric = numerical_gradients(lambda stacked: net.cost_of(stacked, X, y, 0.01), net.params)
    analytic["gamma1"] = analytic["gamma1"] * 1.001
    verdict = {r.name: r.passed for r in compare_gradients(analytic, numeric)}
    assert verdict["gamma1"] is False
    assert verdict["W1"] is True


def test_numerical_gradient_of_a_known_function() -> None:
    params = {"a": np.array([1.0, -2.0]), "B": np.array([[0.5, 3.0]])}

    def cost(p):  # stacked: every array has a leading axis of variants
        return np.sum(p["a"] ** 3, axis=1) + np.sum(p["B"] ** 2, axis=(1, 2))

    grads = numerical_gradients(cost, params, chunk=1)
    np.testing.assert_allclose(grads["a"], 3 * params["a"] ** 2, rtol=1e-8)
    np.testing.assert_allclose(grads["B"], 2 * params["B"], rtol=1e-8)


def test_stacked_costs_equal_one_at_a_time_costs() -> None:
    """The numerical checker relies on cost_of giving what P separate calls would."""
    X, y = small_problem(seed=9)
    net = Network(X.shape[1], [7, 5], 10, batch_norm=True, dtype="float64", seed=9)
    rng = np.random.default_rng(0)
    variants = [
        {k: v + 0.1 * rng.standard_normal(v.shape) for k, v in net.params.items()} for _ in range(3)
    ]
    stacked = {k: np.stack([v[k] for v in variants]) for k in net.params}
    costs = net.cost_of(stacked, X, y, 0.02)
    for i, variant in enumerate(variants):
        net.set_params(variant)
        assert costs[i] == pytest.approx(net.cost(X, y, 0.02, train=True)[0], rel=1e-12)


@pytest.mark.parametrize(
    "settings",
    [
        {"batch_norm": False, "dropout": 0.3},
        {"batch_norm": True, "dropout": [0.5, 0.2, 0.1]},
        {"batch_norm": True, "bn_position": "after_relu", "dropout": 0.3},
        {"batch_norm": True, "label_smoothing": 0.1},
        {"batch_norm": False, "dropout": 0.2, "label_smoothing": 0.2},
    ],
    ids=["dropout", "bn-dropout-per-layer", "bn-after-relu-dropout", "bn-smoothing", "both"],
)
def test_dropout_and_label_smoothing_gradients_match_centred_differences(settings: dict) -> None:
    """Dropout is checked with a fixed mask: every pass of the check draws from the same seed."""
    X, y = small_problem(seed=40, n=16)
    net = Network(X.shape[1], [12, 10, 8], 10, dtype="float64", seed=4, **settings)
    assert choose_check_point(net, X, np.random.default_rng(4)) >= 6e-4
    for path, rows in check_network_paths(net, X, y, lambda_=0.01).items():
        failures = [r for r in rows if not r.passed]
        assert not failures, (path, failures)
