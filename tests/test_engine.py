"""The engine against the textbook: the same gradients, statistics and steps, element by element,
for every depth, batch-norm placement and update rule, with the first layer split or whole."""

from __future__ import annotations

import numpy as np
import pytest

from knn_cli.engine import Engine
from knn_cli.engine.batches import Batch
from knn_cli.engine.rules import RuleDriver, ScaledSGD, driver_for
from knn_cli.engine.split import SPLIT_MIN_MULTIPLY_ADDS
from knn_cli.network import Network
from knn_cli.optim import SGD, UPDATE_RULES, make_update_rule
from knn_cli.stack import Affine, BatchNorm, ReLU

HIDDEN = [12, 10, 8, 8, 6, 6, 6, 6]
VARIANTS = {
    "no-bn": {"batch_norm": False},
    "bn-before-relu": {"batch_norm": True, "bn_position": "before_relu"},
    "bn-after-relu": {"batch_norm": True, "bn_position": "after_relu"},
    "bn-dropout": {"batch_norm": True, "dropout": 0.3},
    "dropout-label-smoothing": {"batch_norm": False, "dropout": 0.2, "label_smoothing": 0.1},
}


def problem(seed: int, n: int = 16, d: int = 15) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)), rng.integers(0, 10, n)


def moved(network: Network, seed: int) -> Network:
    """Off the initial point (zero biases, unit gamma), where slips in the math could hide."""
    rng = np.random.default_rng(seed)
    network.set_params(
        {k: v + 0.1 * rng.standard_normal(v.shape) for k, v in network.params.items()}
    )
    return network


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("k", range(1, 10))
def test_engine_gradients_equal_the_textbook_layers(k: int, variant: str) -> None:
    X, y = problem(k)
    net = moved(Network(15, HIDDEN[: k - 1], 10, dtype="float64", seed=k, **VARIANTS[variant]), k)
    cost, grads = Engine(net).cost_and_gradients(X, y, 0.01)
    expected_cost, expected = net.textbook_gradients(X, y, 0.01)
    assert cost == pytest.approx(expected_cost, rel=1e-13)
    assert list(grads) == list(expected) == list(net.params)
    for name in expected:
        np.testing.assert_allclose(
            grads[name], expected[name], rtol=1e-10, atol=1e-13, err_msg=name
        )
    for name in net.zero_gradients:
        assert not grads[name].any()  # exactly zero, not rounding noise


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_a_step_measures_the_textbook_batch_statistics(variant: str, dtype: str) -> None:
    """To the rounding of the sums: the engine adds each member's rows in one matrix product
    (`kernels.sums_over_rows`), the textbook with np.sum, in another order."""
    X, y = problem(3, n=20)
    net = moved(Network(15, [9, 7], 10, dtype=dtype, seed=3, **VARIANTS[variant]), 3)
    expected = net.batch_statistics(X)
    with Engine(net) as engine:
        engine.step(X, y, 0.01, 0.0)  # eta 0: the averages start from this batch's statistics
    assert net.moving_averages.keys() == expected.keys()
    rtol = 1e-5 if dtype == "float32" else 1e-13
    for name, value in expected.items():
        np.testing.assert_allclose(
            net.moving_averages[name], value, rtol=rtol, atol=rtol * 1e-2, err_msg=name
        )


def textbook_step(net: Network, rule, X, y, lambda_: float, eta: float) -> None:
    """A step as a textbook writes it: loss gradients, the rule's step, the moving averages."""
    _, grads = net.textbook_gradients(X, y, 0.0)  # the loss alone: rules apply lambda themselves
    for name in net.zero_gradients:
        # Their true value. The textbook backward leaves rounding noise (~1e-17) there, which
        # Adam's normalization would blow up to steps of ~1e-11; the engine leaves them alone.
        grads[name] = np.zeros_like(grads[name])
    stats = net.batch_statistics(X)
    rule.step(net.params, grads, eta, lambda_, net.decayed)
    net.update_moving_averages(stats)


def assert_same_state(net: Network, reference: Network, rtol: float = 1e-9) -> None:
    for name in reference.params:
        np.testing.assert_allclose(
            net.params[name], reference.params[name], rtol=rtol, atol=1e-12, err_msg=name
        )
    assert net.moving_averages.keys() == reference.moving_averages.keys()
    for name in reference.moving_averages:
        np.testing.assert_allclose(
            net.moving_averages[name], reference.moving_averages[name], rtol=rtol, err_msg=name
        )


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("rule_name", UPDATE_RULES)
def test_engine_steps_equal_textbook_steps(rule_name: str, variant: str) -> None:
    X, y = problem(5, n=60)
    fast, slow = (
        moved(Network(15, [9, 7], 10, dtype="float64", seed=5, **VARIANTS[variant]), 5)
        for _ in range(2)
    )
    fast_rule, slow_rule = make_update_rule(rule_name), make_update_rule(rule_name)
    engine = Engine(fast)
    for step in range(4):
        rows = np.arange(step, 60, 4)[:12]
        eta = 0.01 * (step + 1)
        engine.step(Batch(X, rows), y[rows], 0.02, eta, fast_rule)
        engine.write_back()
        textbook_step(slow, slow_rule, X[rows], y[rows], 0.02, eta)
        assert_same_state(fast, slow)
    assert fast_rule.steps == slow_rule.steps == 4
    for slot, by_name in slow_rule.state.items():
        for name, value in by_name.items():
            np.testing.assert_allclose(fast_rule.state[slot][name], value, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("helping", [False, True])
@pytest.mark.parametrize("rule_name", ["sgd", "adam"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_engine_steps_with_a_split_first_layer_equal_textbook_steps(
    variant: str, rule_name: str, helping: bool
) -> None:
    """The first layer shared by two lanes, each updating its half and computing its half of
    the next batch's product ahead, against the textbook step on the whole layer."""
    d, n = 640, 40
    assert n * d * 50 >= SPLIT_MIN_MULTIPLY_ADDS
    rng = np.random.default_rng(11)
    X, y = rng.standard_normal((200, d)) / np.sqrt(d) * 3, rng.integers(0, 10, 200)
    fast, slow = (
        Network(d, [50, 20], 10, dtype="float64", seed=3, **VARIANTS[variant]) for _ in range(2)
    )
    fast_rule, slow_rule = make_update_rule(rule_name), make_update_rule(rule_name)
    batches = [Batch(X, np.arange(i, 200, 5)[:n]) for i in range(5)]
    with Engine(fast, two_lanes=True) as engine:
        assert engine.workspace(n).split is not None
        engine.helping = helping
        for step, batch in enumerate(batches):
            following = batches[step + 1] if step + 1 < len(batches) else None
            eta = 0.02 * (step + 1)
            engine.step(batch, y[batch.rows], 0.02, eta, fast_rule, following=following)
            engine.write_back()
            textbook_step(slow, slow_rule, X[batch.rows], y[batch.rows], 0.02, eta)
            assert_same_state(fast, slow, rtol=1e-8)


def test_the_engine_never_writes_into_the_callers_data() -> None:
    """A stack whose first layer works in place (here batch norm on the inputs) gets a copy."""
    stack = [BatchNorm(0, 6), Affine(1, 6, 5), ReLU(), Affine(2, 5, 3)]
    net = Network.from_layers(stack, dtype="float64")
    X = np.random.default_rng(0).standard_normal((10, 6))
    before = X.copy()
    engine = Engine(net)
    engine.cost_and_gradients(X, np.arange(10) % 3, 0.01)
    engine.step(X, np.arange(10) % 3, 0.01, 0.1)
    np.testing.assert_array_equal(X, before)


def test_which_gradients_are_exactly_zero_follows_from_the_stack() -> None:
    before = Network(5, [4, 3], 2, batch_norm=True, bn_position="before_relu")
    after = Network(5, [4, 3], 2, batch_norm=True, bn_position="after_relu")
    plain = Network(5, [4, 3], 2, batch_norm=False)
    assert before.zero_gradients == {"b1", "b2"}
    assert after.zero_gradients == plain.zero_gradients == frozenset()
    assert list(after.params) == list(before.params)  # the same names either way


def test_numbers_near_the_subnormal_range_are_flushed_to_zero() -> None:
    from knn_cli.engine.step import flush_subnormals

    values = np.array([1e-33, -1e-35, 1e-31, 1e-20, 0.0, 1.0], dtype=np.float32)
    assert flush_subnormals([values])
    np.testing.assert_array_equal(values, np.array([0, 0, 0, 1e-20, 0, 1], dtype=np.float32))
    assert not flush_subnormals([values])  # nothing left to flush


def test_a_flush_during_training_reaches_params_and_state_and_drops_work_done_ahead() -> None:
    """Every FLUSH_EVERY steps; and since W1 may change, a product computed ahead is not used."""
    from knn_cli.engine.step import FLUSH_EVERY

    rng = np.random.default_rng(5)
    X, y = rng.standard_normal((80, 640)).astype(np.float32), rng.integers(0, 10, 80)
    net = Network(640, [50, 20], 10, batch_norm=True, seed=5)
    rule = make_update_rule("momentum")
    batch = Batch(X, np.arange(40))
    before = net.batch_statistics(X[:40])["mu1"]
    with Engine(net, two_lanes=True) as engine:
        for _ in range(FLUSH_EVERY - 1):  # eta 0: nothing moves
            engine.step(batch, y[:40], 0.0, 0.0, rule, following=batch)
        assert engine.workspace(40).split.ahead  # computed ahead
        net.params["W1"][0, 0] = 1e-33
        rule.state["velocity"]["b1"][0] = -1e-34  # b1 feeds batch norm: no update touches it
        engine.step(batch, y[:40], 0.0, 0.0, rule)
    assert net.params["W1"][0, 0] == 0 and rule.state["velocity"]["b1"][0] == 0
    # The last step measured the flushed W1's statistics, not those of the product computed
    # ahead with the W1 before.
    after = net.batch_statistics(X[:40])["mu1"]
    assert abs(after[0] - before[0]) > 1e-3
    np.testing.assert_allclose(net.moving_averages["mu1"], 0.8 * before + 0.2 * after, atol=1e-6)


def test_an_sgd_step_on_the_engine_is_the_rule_as_written() -> None:
    """SGD's driver makes the step from gradients the backward pass scaled by eta; a subclass
    of SGD gets the general driver, as it may have changed the math."""

    class MySGD(SGD):
        pass

    assert isinstance(driver_for(SGD()), ScaledSGD)
    assert type(driver_for(MySGD())) is RuleDriver
    X, y = problem(8, n=30)
    nets = [moved(Network(15, [9, 7], 10, dtype="float64", seed=8, batch_norm=True), 8)
            for _ in range(3)]  # fmt: skip
    rules = [SGD(), MySGD(), SGD()]
    for step in range(3):
        eta = 0.05 * (step + 1)
        Engine(nets[0]).step(X, y, 0.01, eta, rules[0])
        Engine(nets[1]).step(X, y, 0.01, eta, rules[1])
        textbook_step(nets[2], rules[2], X, y, 0.01, eta)
    for name in nets[2].params:
        for net in nets[:2]:
            np.testing.assert_allclose(net.params[name], nets[2].params[name], rtol=1e-10,
                                       atol=1e-13, err_msg=name)  # fmt: skip
