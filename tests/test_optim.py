"""Update rules: steps computed by hand on a tiny problem, their state, updates by blocks of rows,
saving and loading, and (where PyTorch is installed) torch.optim as an independent reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from knn_cli.optim import UPDATE_RULES, Adam, AdamW, Setting, make_update_rule

LAMBDA = 0.01
ETAS = (0.1, 0.05, 0.2)
# Two parameters: a weight (L2 applies) and a bias (it does not); their loss gradients per step.
START = {"w": [1.0, -2.0], "b": [0.5]}
GRADS = (
    {"w": [0.3, -0.1], "b": [0.2]},
    {"w": [-0.4, 0.25], "b": [-0.1]},
    {"w": [0.1, 0.1], "b": [0.05]},
)


def run_rule(name: str, steps: int = 3) -> tuple[dict[str, np.ndarray], object]:
    rule = make_update_rule(name)
    params = {k: np.array(v) for k, v in START.items()}
    for grads, eta in zip(GRADS[:steps], ETAS[:steps], strict=True):
        rule.step(params, {k: np.array(v) for k, v in grads.items()}, eta, LAMBDA, ("w",))
    return params, rule


def by_hand(name: str) -> tuple[dict[str, list[float]], dict[str, dict[str, list[float]]]]:
    """The same three steps in plain Python floats, one number at a time, as the formulas read."""
    mu, b1, b2, eps = 0.9, 0.9, 0.999, 1e-8
    values = {k: list(v) for k, v in START.items()}
    state = {s: {k: [0.0] * len(v) for k, v in START.items()} for s in ("velocity", "m", "v")}
    for t, (grads, eta) in enumerate(zip(GRADS, ETAS, strict=True), start=1):
        for key, params in values.items():
            decayed = key == "w"
            for i, w in enumerate(params):
                g = grads[key][i]
                if name == "sgd":
                    params[i] = w - eta * (g + (2 * LAMBDA * w if decayed else 0.0))
                elif name in ("momentum", "nesterov"):
                    g += 2 * LAMBDA * w if decayed else 0.0
                    v = state["velocity"][key][i] = mu * state["velocity"][key][i] + g
                    params[i] = w - eta * (v if name == "momentum" else g + mu * v)
                else:
                    if name == "adamw" and decayed:
                        w = w - eta * 2 * LAMBDA * w
                    elif decayed:
                        g += 2 * LAMBDA * w
                    m = state["m"][key][i] = b1 * state["m"][key][i] + (1 - b1) * g
                    v = state["v"][key][i] = b2 * state["v"][key][i] + (1 - b2) * g * g
                    m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
                    params[i] = w - eta * m_hat / (math.sqrt(v_hat) + eps)
    return values, state


# The first step of w[0] worked out on paper (lambda 0.01, eta 0.1, g 0.3, w 1.0).
FIRST_STEP = {
    "sgd": 1.0 - 0.1 * (0.3 + 0.02),  # 0.968
    "momentum": 1.0 - 0.1 * 0.32,  # v = 0.32: the same as SGD on the first step
    "nesterov": 1.0 - 0.1 * (0.32 + 0.9 * 0.32),  # 0.9392
    "adam": 1.0 - 0.1 * 0.32 / (0.32 + 1e-8),  # m_hat = g', sqrt(v_hat) = |g'|: about 0.9
    "adamw": 0.998 - 0.1 * 0.3 / (0.3 + 1e-8),  # decayed by 1 - 2 eta lambda, then Adam on g
}


@pytest.mark.parametrize("name", UPDATE_RULES)
def test_first_step_as_worked_out_on_paper(name: str) -> None:
    params, _ = run_rule(name, steps=1)
    assert params["w"][0] == pytest.approx(FIRST_STEP[name], rel=1e-12)


@pytest.mark.parametrize("name", UPDATE_RULES)
def test_three_steps_and_their_state_equal_the_formulas_by_hand(name: str) -> None:
    params, rule = run_rule(name)
    expected, state = by_hand(name)
    for key in START:
        np.testing.assert_allclose(params[key], expected[key], rtol=1e-12, err_msg=key)
    assert rule.steps == 3
    assert set(rule.state) == set(type(rule).slots)
    for slot, by_name in rule.state.items():
        for key, value in by_name.items():
            np.testing.assert_allclose(value, state[slot][key], rtol=1e-12, err_msg=slot)


@pytest.mark.parametrize("name", UPDATE_RULES)
def test_updating_blocks_of_rows_equals_updating_the_whole(name: str) -> None:
    """The engine updates W1's halves on two threads: w, g and the state restricted to a block
    of rows give the rows of a whole update."""
    rng = np.random.default_rng(0)
    W = rng.standard_normal((6, 3))
    whole, blocks = make_update_rule(name), make_update_rule(name)
    W_whole, W_blocks = W.copy(), W.copy()
    for eta in (0.1, 0.05):
        g = rng.standard_normal((6, 3))
        for rule, target, parts in (
            (whole, W_whole, [slice(None)]),
            (blocks, W_blocks, [slice(0, 2), slice(2, 6)]),
        ):
            rule.begin(eta, LAMBDA, {"W": target})
            for rows in parts:
                state = {slot: value[rows] for slot, value in rule.state_of("W").items()}
                rule.update(target[rows], g[rows], state, decayed=True)
    np.testing.assert_array_equal(W_blocks, W_whole)
    for slot, value in whole.state_of("W").items():
        np.testing.assert_array_equal(blocks.state_of("W")[slot], value)


@pytest.mark.parametrize("name", UPDATE_RULES)
def test_state_saved_and_loaded_continues_the_same(name: str) -> None:
    params, rule = run_rule(name, steps=2)
    saved, kept = rule.state_dict(), {k: v.copy() for k, v in params.items()}
    loaded = make_update_rule(name)
    loaded.load_state_dict(saved, kept)
    assert loaded.steps == 2
    grads, eta = {k: np.array(v) for k, v in GRADS[2].items()}, ETAS[2]
    rule.step(params, grads, eta, LAMBDA, ("w",))
    loaded.step(kept, grads, eta, LAMBDA, ("w",))
    for key in params:
        np.testing.assert_array_equal(kept[key], params[key])


def test_state_that_does_not_fit_is_refused() -> None:
    params = {"w": np.zeros(2)}
    with pytest.raises(ValueError, match="shape"):
        Adam().load_state_dict({"m.w": np.zeros(3), "steps": np.array(1)}, params)
    with pytest.raises(ValueError, match="does not belong"):
        Adam().load_state_dict({"velocity.w": np.zeros(2)}, params)


def test_settings_reach_the_rule_and_others_are_refused() -> None:
    assert make_update_rule("nesterov", {"momentum": 0.5}).momentum == 0.5
    assert make_update_rule("momentum").momentum == 0.9  # the declared default
    adamw = make_update_rule("adamw", {"beta1": 0.8, "beta2": 0.99, "eps": 1e-6})
    assert isinstance(adamw, AdamW)
    assert (adamw.beta1, adamw.beta2, adamw.eps) == (0.8, 0.99, 1e-6)
    with pytest.raises(TypeError, match="AdamW has no setting 'momentum'"):
        make_update_rule("adamw", {"momentum": 0.5})


def test_a_setting_says_what_it_allows() -> None:
    fraction = Setting(0.9, low=0.0, high=1.0, high_open=True)
    assert fraction.allows(0.0) and fraction.allows(0.99)
    assert not fraction.allows(1.0) and not fraction.allows(-0.1)
    assert not fraction.allows(float("nan"))
    assert fraction.describe() == "a number >= 0 and < 1"
    assert Setting(1e-8, low=0.0, low_open=True).describe() == "a number > 0"


# -- PyTorch as an independent implementation -------------------------------------------------


def torch_optimizer(name: str, torch, weight, bias):
    decay = {"params": [weight], "weight_decay": 2 * LAMBDA}
    plain = {"params": [bias], "weight_decay": 0.0}
    groups = [decay, plain]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=1.0)
    if name in ("momentum", "nesterov"):
        return torch.optim.SGD(groups, lr=1.0, momentum=0.9, nesterov=name == "nesterov")
    cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
    return cls(groups, lr=1.0, betas=(0.9, 0.999), eps=1e-8)


@pytest.mark.parametrize("name", UPDATE_RULES)
def test_rules_agree_with_torch_optim(name: str) -> None:
    torch = pytest.importorskip("torch", reason="PyTorch not installed: no independent reference")
    rng = np.random.default_rng(1)
    params = {"w": rng.standard_normal((4, 3)), "b": rng.standard_normal(3)}
    weight = torch.tensor(params["w"].copy(), requires_grad=True)
    bias = torch.tensor(params["b"].copy(), requires_grad=True)
    reference = torch_optimizer(name, torch, weight, bias)
    rule = make_update_rule(name)
    for step in range(6):
        eta = 0.02 * (1 + step % 3)
        grads = {"w": rng.standard_normal((4, 3)), "b": rng.standard_normal(3)}
        rule.step(params, grads, eta, LAMBDA, ("w",))
        for group in reference.param_groups:
            group["lr"] = eta
        weight.grad, bias.grad = torch.tensor(grads["w"]), torch.tensor(grads["b"])
        reference.step()
    np.testing.assert_allclose(params["w"], weight.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(params["b"], bias.detach().numpy(), rtol=1e-10, atol=1e-12)
