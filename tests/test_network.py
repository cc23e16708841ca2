"""The network as a model: its passes, batch-norm behaviour in training and evaluation, cost
values, parameters and moving averages by name (and an engine's averages written back into it);
its gradients against centred differences are in test_gradcheck.py."""

from __future__ import annotations

import numpy as np
import pytest

from knn_cli.engine import Engine
from knn_cli.gradcheck import (
    choose_check_point,
)
from knn_cli.layers import cross_entropy, softmax
from knn_cli.network import Network

ASSIGNMENT_WIDTHS = {3: [50, 50], 9: [50, 30, 20, 20, 10, 10, 10, 10]}


def small_problem(seed: int, n: int = 12, d: int = 15, classes: int = 10):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)), rng.integers(0, classes, n)


def test_cost_on_a_hand_checkable_case() -> None:
    """All-zero weights give uniform probabilities: loss = log(C); the penalty is lambda*sum W^2."""
    net = Network(4, [3], 5, dtype="float64")
    net.set_params({name: np.zeros_like(v) for name, v in net.params.items()})
    X = np.ones((6, 4))
    y = np.array([0, 1, 2, 3, 4, 0])
    cost, loss = net.cost(X, y, lambda_=0.1)
    assert loss == pytest.approx(np.log(5))
    assert cost == pytest.approx(np.log(5))
    W2 = np.zeros((3, 5))
    W2[0, 0] = 2.0
    net.set_params({"W2": W2})
    cost, loss = net.cost(X, y, lambda_=0.1)
    assert cost - loss == pytest.approx(0.1 * 4.0)


def test_cross_entropy_and_softmax_agree_and_stay_finite() -> None:
    scores = np.array([[1000.0, 0.0, -1000.0], [0.1, 0.2, 0.3]])
    y = np.array([2, 1])
    probs = softmax(scores.copy())
    assert np.allclose(probs.sum(axis=1), 1.0)
    assert np.isfinite(cross_entropy(scores, y))
    assert cross_entropy(scores, y) == pytest.approx(
        (2000.0 - np.log(np.exp(0.2) / np.exp([0.1, 0.2, 0.3]).sum())) / 2
    )


def test_batch_norm_train_mode_normalizes_each_unit() -> None:
    """In training mode a BN layer's output before the ReLU has per-unit mean beta and std gamma."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 7)) * 5 + 3
    net = Network(7, [6], 4, batch_norm=True, dtype="float64", seed=0, init="normal", sigma=1e-4)
    gamma = rng.uniform(0.5, 2.0, 6)
    beta = rng.uniform(-1.0, 1.0, 6)
    net.set_params({"gamma1": gamma, "beta1": beta, "W2": np.eye(6, 4)})
    # Read the normalized pre-activation through a linear probe: make the ReLU transparent by a
    # large beta shift and undo it afterwards.
    net.set_params({"beta1": beta + 100.0})
    hidden = net.scores(X, train=True)[:, :4] - 100.0  # W2 = identity on the first 4 units
    np.testing.assert_allclose(hidden.mean(axis=0), beta[:4], atol=1e-8)
    np.testing.assert_allclose(hidden.std(axis=0), gamma[:4], rtol=1e-6)


def test_bn_eps_is_small_enough_for_tiny_init() -> None:
    """sigma = 1e-4 makes pre-activations ~1e-6 in scale; eps must not swamp their variance."""
    rng = np.random.default_rng(1)
    X = rng.standard_normal((100, 20))
    net = Network(20, [10, 10], 3, batch_norm=True, init="normal", sigma=1e-4, dtype="float32")
    net.set_params(
        {"beta1": np.full(10, 100.0, dtype=np.float32), "beta2": np.full(10, 100.0, np.float32)}
    )
    net.set_params({"W3": np.eye(10, 3)})
    out = net.scores(X, train=True) - 100.0
    np.testing.assert_allclose(out.std(axis=0), 1.0, rtol=1e-3)


def test_eval_mode_uses_moving_averages() -> None:
    rng = np.random.default_rng(2)
    net = Network(5, [4], 3, batch_norm=True, dtype="float64", bn_alpha=0.5)
    first, second = rng.standard_normal((50, 5)), rng.standard_normal((50, 5)) + 2.0
    y = rng.integers(0, 3, 50)
    engine = Engine(net)
    engine.step(first, y, lambda_=0.0, eta=0.0)
    engine.write_back()
    s1 = first @ net.params["W1"] + net.params["b1"]
    np.testing.assert_allclose(net.moving_averages["mu1"], s1.mean(axis=0))  # starts from batch 1
    np.testing.assert_allclose(net.moving_averages["var1"], s1.var(axis=0))
    engine.step(second, y, lambda_=0.0, eta=0.0)
    engine.write_back()
    s2 = second @ net.params["W1"] + net.params["b1"]
    expected_mu = 0.5 * s1.mean(axis=0) + 0.5 * s2.mean(axis=0)
    np.testing.assert_allclose(net.moving_averages["mu1"], expected_mu)
    # Eval mode output depends on the moving averages, not on the batch it is given.
    single = net.scores(second[:1])
    assert np.allclose(single, net.scores(second)[:1])
    assert not np.allclose(net.scores(second, train=True), net.scores(second))


def test_moving_averages_folded_together_equal_those_folded_one_by_one() -> None:
    """A step folds all layers' statistics in one pass; the arithmetic must be the per-array
    one, and averages loaded from a state or held by a snapshot must not be mixed up with it."""
    X, y = small_problem(seed=5, n=30, d=12)
    batches = [np.arange(i, 30, 3)[:10] for i in range(3)] * 2
    net = Network(12, [9, 7, 5], 10, batch_norm=True, seed=5)
    by_hand = Network(12, [9, 7, 5], 10, batch_norm=True, seed=5)
    engine = Engine(net)
    snapshot, reloaded_engine = None, None
    for step, rows in enumerate(batches):
        stats = by_hand.batch_statistics(X[rows].astype(np.float32))
        by_hand.update_moving_averages(stats)
        engine.step(X[rows], y[rows], 0.01, 0.1)
        engine.write_back()
        by_hand.set_params(net.params)
        if step == 2:
            snapshot = net.snapshot()
            frozen = {k: v.copy() for k, v in snapshot.moving_averages.items()}
            reloaded = Network(12, [9, 7, 5], 10, batch_norm=True)
            Engine(reloaded).step(X, y, 0.01, 0.1)  # averages of its own, then replaced
            reloaded.load_state(net.state())
            reloaded_engine = Engine(reloaded)  # takes the loaded averages at its first step
        elif step > 2:
            reloaded_engine.step(X[rows], y[rows], 0.01, 0.1)
    reloaded_engine.write_back()
    assert (
        net.moving_averages.keys()
        == by_hand.moving_averages.keys()
        == {f"{stat}{layer}" for stat in ("mu", "var") for layer in (1, 2, 3)}
    )
    for name, value in by_hand.moving_averages.items():
        # The engine's batch statistics round otherwise than the textbook's (its sums over the
        # rows are matrix products); the folding is the same arithmetic, so the reloaded
        # network, folded by the engine from the same averages, agrees with it exactly.
        np.testing.assert_allclose(net.moving_averages[name], value, rtol=1e-5, err_msg=name)
        np.testing.assert_array_equal(reloaded.moving_averages[name], net.moving_averages[name])
        np.testing.assert_array_equal(snapshot.moving_averages[name], frozen[name])


def test_an_engine_starts_from_the_averages_the_network_holds() -> None:
    """None: from its first batch's statistics; some set by hand: those, folded with it."""
    X, y = small_problem(seed=6, n=20, d=12)
    net = Network(12, [9, 7], 10, batch_norm=True, seed=6, bn_alpha=0.5)
    stats = net.batch_statistics(X.astype(np.float32))
    with Engine(net) as engine:
        for _ in range(2):
            engine.step(X, y, 0.0, 0.0)  # eta 0: the batch statistics stay those of X
    assert net.moving_averages.keys() == stats.keys()
    for name, value in stats.items():  # to the rounding of the engine's sums over the rows
        np.testing.assert_allclose(net.moving_averages[name], value, rtol=1e-5, atol=1e-7)
    net.moving_averages = {"mu2": np.zeros(7, dtype=np.float32)}  # one set by hand
    with Engine(net) as engine:
        engine.step(X, y, 0.0, 0.0)
    assert net.moving_averages.keys() == stats.keys()
    np.testing.assert_allclose(net.moving_averages["mu2"], 0.5 * stats["mu2"], rtol=1e-6)
    np.testing.assert_allclose(net.moving_averages["mu1"], stats["mu1"], rtol=1e-6)


def test_the_network_reads_the_engines_averages_only_once_written_back() -> None:
    """The engine keeps the averages side by side in an array of its own; the network's dict
    holds what was last written back (its arrays written into, not replaced)."""
    X, y = small_problem(seed=7, n=20, d=12)
    net = Network(12, [9], 10, batch_norm=True, seed=7, bn_alpha=0.5)
    engine = Engine(net)
    engine.step(X, y, 0.0, 0.1)
    assert net.moving_averages == {}
    engine.write_back()
    held = net.moving_averages["mu1"]
    first = held.copy()
    engine.step(X, y, 0.0, 0.1)
    np.testing.assert_array_equal(net.moving_averages["mu1"], first)
    engine.close()
    assert net.moving_averages["mu1"] is held and not np.array_equal(held, first)


def test_float32_and_float64_agree() -> None:
    X, y = small_problem(seed=3, n=40, d=30)
    results = {}
    for dtype in ("float32", "float64"):
        net = Network(30, [20, 20], 10, batch_norm=True, dtype=dtype, seed=5)
        with Engine(net) as engine:
            for _ in range(5):
                engine.step(X.astype(dtype), y, 0.01, 0.05)
        results[dtype] = (net.cost(X.astype(dtype), y, 0.01), net.params["W1"])
    assert results["float32"][0][0] == pytest.approx(results["float64"][0][0], rel=1e-4)
    np.testing.assert_allclose(results["float32"][1], results["float64"][1], atol=1e-5)
    assert results["float32"][1].dtype == np.float32


def test_he_and_normal_init_scales_and_seeding() -> None:
    he = Network(3000, [500], 10, init="he", seed=1, dtype="float64")
    assert he.params["W1"].std() == pytest.approx(np.sqrt(2 / 3000), rel=0.02)
    assert he.params["W2"].std() == pytest.approx(np.sqrt(2 / 500), rel=0.05)
    normal = Network(3000, [500], 10, init="normal", sigma=1e-3, seed=1)
    assert normal.params["W1"].std() == pytest.approx(1e-3, rel=0.02)
    again = Network(3000, [500], 10, init="he", seed=1, dtype="float64")
    assert np.array_equal(he.params["W1"], again.params["W1"])
    other = Network(3000, [500], 10, init="he", seed=2, dtype="float64")
    assert not np.array_equal(he.params["W1"], other.params["W1"])


def test_parameters_are_held_by_name() -> None:
    net = Network(10, [8, 6], 4, batch_norm=True)
    assert list(net.params) == [
        "W1",
        "b1",
        "gamma1",
        "beta1",
        "W2",
        "b2",
        "gamma2",
        "beta2",
        "W3",
        "b3",
    ]
    assert net.params["W2"].shape == (8, 6)
    plain = Network(10, [8, 6], 4, batch_norm=False)
    assert list(plain.params) == ["W1", "b1", "W2", "b2", "W3", "b3"]
    with pytest.raises(ValueError, match="shape"):
        net.set_params({"W1": np.zeros((3, 3))})
    with pytest.raises(KeyError):
        plain.set_params({"gamma1": np.ones(8)})


def test_training_steps_reduce_the_cost() -> None:
    rng = np.random.default_rng(4)
    centers = rng.standard_normal((3, 10)) * 3
    y = rng.integers(0, 3, 300)
    X = centers[y] + rng.standard_normal((300, 10))
    for bn in (False, True):
        net = Network(10, [16], 3, batch_norm=bn, seed=0)
        before = net.cost(X.astype(np.float32), y, 0.0, train=True)[0]
        with Engine(net) as engine:
            for _ in range(100):
                engine.step(X.astype(np.float32), y, 0.0, 0.1)
        assert net.cost(X.astype(np.float32), y, 0.0)[0] < 0.5 * before
        assert (net.predict(X.astype(np.float32)) == y).mean() > 0.9


@pytest.mark.parametrize("bn_position", [None, "before_relu", "after_relu"])
def test_gradients_agree_with_torch_autograd(bn_position: str | None) -> None:
    """An independent implementation: the same network written out in PyTorch, differentiated
    by its autograd (float64)."""
    torch = pytest.importorskip("torch", reason="PyTorch not installed: no independent reference")
    X, y = small_problem(seed=21, n=16)
    hidden = [12, 10, 8]
    net = Network(
        X.shape[1],
        hidden,
        10,
        batch_norm=bn_position is not None,
        bn_position=bn_position or "before_relu",
        dtype="float64",
        seed=21,
    )
    choose_check_point(net, X, np.random.default_rng(21))

    p = {k: torch.tensor(v, requires_grad=True) for k, v in net.params.items()}

    def batch_norm(S, layer):
        mean, var = S.mean(dim=0), S.var(dim=0, unbiased=False)
        return p[f"gamma{layer}"] * (S - mean) / torch.sqrt(var + 1e-12) + p[f"beta{layer}"]

    H = torch.tensor(X)
    for layer in range(1, len(hidden) + 2):
        H = H @ p[f"W{layer}"] + p[f"b{layer}"]
        if layer <= len(hidden):
            if bn_position == "before_relu":
                H = batch_norm(H, layer)
            H = torch.relu(H)
            if bn_position == "after_relu":
                H = batch_norm(H, layer)
    penalty = sum((p[f"W{layer}"] ** 2).sum() for layer in range(1, len(hidden) + 2))
    total = torch.nn.functional.cross_entropy(H, torch.tensor(y)) + 0.01 * penalty
    total.backward()
    for compute in (net.cost_and_gradients, Engine(net).cost_and_gradients):
        cost, grads = compute(X, y, 0.01)
        assert cost == pytest.approx(total.item(), rel=1e-12)
        for name, tensor in p.items():
            np.testing.assert_allclose(
                grads[name], tensor.grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=name
            )


def test_dropout_is_off_in_evaluation_and_on_in_training() -> None:
    X, _ = small_problem(seed=41, n=30)
    plain = Network(X.shape[1], [20, 20], 10, dtype="float64", seed=5)
    dropping = Network(X.shape[1], [20, 20], 10, dtype="float64", seed=5, dropout=0.5)
    assert [type(layer).__name__ for layer in dropping.layers].count("Dropout") == 2
    dropping.set_params(plain.params)
    np.testing.assert_array_equal(dropping.scores(X), plain.scores(X))
    assert not np.allclose(dropping.scores(X, train=True), plain.scores(X, train=True))


@pytest.mark.parametrize("bn_position", ["before_relu", "after_relu"])
def test_precise_statistics_are_each_layers_over_all_rows(bn_position: str) -> None:
    """Layer by layer, each on its input computed with the earlier layers' new statistics."""
    X, _ = small_problem(seed=50, n=230, d=9)
    net = Network(9, [7, 5], 3, batch_norm=True, bn_position=bn_position, dtype="float64", seed=1)
    stats = net.precise_statistics(X, block_size=64)  # blocks that do not divide the rows
    H = X @ net.params["W1"] + net.params["b1"]
    if bn_position == "after_relu":
        H = np.maximum(H, 0)
    np.testing.assert_allclose(stats["mu1"], H.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats["var1"], H.var(axis=0), rtol=1e-12)
    H = (H - H.mean(axis=0)) / np.sqrt(H.var(axis=0) + 1e-12) * net.params["gamma1"]
    H += net.params["beta1"]
    if bn_position == "before_relu":
        H = np.maximum(H, 0)
    H = H @ net.params["W2"] + net.params["b2"]
    if bn_position == "after_relu":
        H = np.maximum(H, 0)
    np.testing.assert_allclose(stats["mu2"], H.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(stats["var2"], H.var(axis=0), rtol=1e-10)


def test_the_configs_model_defaults_are_the_python_apis() -> None:
    """`Network(d, hidden, C, **options)` and a config's `model:` section mean the same network
    when an option is left out (batch norm aside: the config's default is on, the API's off)."""
    import inspect
    from dataclasses import fields

    from knn_cli.config import ModelConfig
    from knn_cli.stack import standard_layers

    keywords = {
        name: parameter.default
        for function in (standard_layers, Network._build)
        for name, parameter in inspect.signature(function).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }
    config = ModelConfig()
    for option in fields(ModelConfig):
        if option.name == "hidden":
            continue
        assert option.name in keywords, f"Network does not take model.{option.name}"
        expected = (
            (not keywords["batch_norm"]) if option.name == "batch_norm" else keywords[option.name]
        )
        assert getattr(config, option.name) == expected, option.name
