"""Extending the core from outside the package, as the README's Development section says: a
layer and an update rule defined here alone train, are gradient-checked and save their state,
with no module of the package changed."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

import numpy as np
import pytest

from knn_cli.config import ModelConfig, RunConfig, TrainingConfig
from knn_cli.engine import Engine
from knn_cli.engine.batches import Batch
from knn_cli.gradcheck import check_network_paths, choose_check_point
from knn_cli.network import Network
from knn_cli.optim import Setting, UpdateRule
from knn_cli.stack import Affine, BatchNorm, Layer, ReLU
from knn_cli.trainer import Callbacks, Splits, train


@dataclass(frozen=True)
class LeakyReLU(Layer):
    """max(x, slope x): a layer without parameters, with a kink at 0."""

    slope: float = 0.1

    def forward(self, x, params, mode):
        return np.where(x > 0, x, self.slope * x), x

    def backward(self, dout, cache, params):
        return dout * np.where(cache > 0, 1.0, self.slope), {}

    def distance_to_kink(self, x):
        return float(np.abs(x).min())


@dataclass(frozen=True)
class Scale(Layer):
    """out = x s, one learned scale per unit: a layer with a parameter of its own."""

    index: int
    width: int

    @property
    def s(self) -> str:
        return f"s{self.index}"

    def parameters(self):
        return {self.s: (self.width,)}

    def initial_values(self, rng, init):
        return {self.s: np.ones(self.width)}

    def forward(self, x, params, mode):
        return x * params[self.s], x

    def backward(self, dout, cache, params):
        return dout * params[self.s], {self.s: (dout * cache).sum(axis=0)}


class RMSProp(UpdateRule):
    """square <- rho square + (1 - rho) g^2,  w <- w - eta g / (sqrt(square) + eps)."""

    slots = ("square",)
    settings: ClassVar = {"rho": Setting(0.9, low=0.0, high=1.0, high_open=True)}
    rho: float
    eps = 1e-8

    def update(self, w, g, state, *, decayed):
        if decayed:
            g = g + 2.0 * self.lambda_ * w
        square = state["square"]
        square *= self.rho
        square += (1.0 - self.rho) * np.square(g)
        w -= self.eta * g / (np.sqrt(square) + self.eps)


def stack(d: int, classes: int) -> list[Layer]:
    return [
        Affine(1, d, 16),
        LeakyReLU(),
        Scale(1, 16),
        Affine(2, 16, 12),
        BatchNorm(2, 12),
        ReLU(),
        Affine(3, 12, classes),
    ]


def test_a_new_layer_is_gradient_checked_on_the_engine_and_the_textbook_path() -> None:
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((14, 9)), rng.integers(0, 5, 14)
    network = Network.from_layers(stack(9, 5), dtype="float64", seed=1)
    assert list(network.params) == [
        "W1", "b1", "s1", "W2", "b2", "gamma2", "beta2", "W3", "b3",
    ]  # fmt: skip
    assert network.zero_gradients == {"b2"}  # b2 feeds the batch norm; b1 feeds LeakyReLU
    assert choose_check_point(network, X, rng) >= 6e-4
    for path, rows in check_network_paths(network, X, y, 0.01).items():
        failures = [row for row in rows if not row.passed]
        assert not failures, (path, failures)


def test_a_new_layer_and_a_new_update_rule_train() -> None:
    rng = np.random.default_rng(2)
    centers = rng.standard_normal((5, 20)) * 2.0
    y = rng.integers(0, 5, 500)
    X = (centers[y] + rng.standard_normal((500, 20))).astype(np.float32)
    network = Network.from_layers(stack(20, 5), seed=3)
    rule = RMSProp()
    records: list[dict] = []
    schedule = TrainingConfig(
        lambda_=0.001,
        batch_size=25,
        eta_min=1e-4,
        eta_max=1e-2,
        n_s=40,
        cycles=1,
        eval_every=40,
        seed=0,
    )
    splits = Splits(X[:400], y[:400], X[400:], y[400:])
    outcome = train(network, splits, schedule, rule=rule, listener=Callbacks(records.extend))
    assert outcome.status == "finished"
    first, last = records[1], records[-1]  # validation at step 0 and at the end
    assert first["split"] == last["split"] == "val"
    assert last["accuracy"] > 0.9 > first["accuracy"]
    assert rule.steps == outcome.steps == 2 * schedule.n_s
    assert rule.state_dict().keys() >= {"square.s1", "square.W1", "steps"}
    assert not np.allclose(network.params["s1"], 1.0)  # the new parameter was trained


@pytest.mark.parametrize("helping", [False, True])
def test_a_new_update_rule_on_the_split_first_layer(helping: bool) -> None:
    """The engine hands each lane its half of W1 to update: a rule written here gets the rows
    of its own state for that half, and the result is that of one whole update."""
    rng = np.random.default_rng(4)
    X, y = rng.standard_normal((80, 640)) / 8.0, rng.integers(0, 10, 80)
    split, whole = (Network(640, [50], 10, dtype="float64", seed=4) for _ in range(2))
    rules = RMSProp(), RMSProp()
    with Engine(split, two_lanes=True) as engine:
        assert engine.workspace(40).split is not None
        engine.helping = helping
        for step in range(3):
            rows = np.arange(step % 2, 80, 2)
            engine.step(Batch(X, rows), y[rows], 0.01, 0.01, rules[0])
            _, grads = whole.textbook_gradients(X[rows], y[rows], 0.0)
            rules[1].step(whole.params, grads, 0.01, 0.01, whole.decayed)
    for name in whole.params:
        np.testing.assert_allclose(split.params[name], whole.params[name], rtol=1e-8, atol=1e-12)


def test_a_new_update_rule_with_a_hyperparameter_is_set_from_a_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One class and one line: registered under a name, the config takes its setting as
    `training.optimizer_settings`, checks it against the declared interval, and training gets
    a rule with it."""
    from knn_cli import optim
    from knn_cli.config import config_from_dict, dump_config, load_config
    from knn_cli.errors import ConfigError
    from knn_cli.experiment import build_update_rule

    monkeypatch.setitem(optim.UPDATE_RULES, "rmsprop", RMSProp)
    config = config_from_dict(
        {"training": {"optimizer": "rmsprop", "optimizer_settings": {"rho": 0.5}}}
    )
    rule = build_update_rule(config)
    assert isinstance(rule, RMSProp) and rule.rho == 0.5
    assert config.training.optimizer_settings == {"rho": 0.5}
    overridden = config_from_dict({}, ["training.optimizer=rmsprop"])
    assert overridden.training.optimizer_settings == {"rho": 0.9}  # the declared default
    assert "optimizer_settings:\n    rho: 0.9" in dump_config(overridden)
    with pytest.raises(ConfigError, match=r"rho must be a number >= 0 and < 1, got 1\.5"):
        config_from_dict({}, ["training.optimizer=rmsprop", "training.optimizer_settings.rho=1.5"])
    with pytest.raises(ConfigError, match=r"rmsprop has no setting 'roh' \(did you mean 'rho'"):
        config_from_dict({}, ["training.optimizer=rmsprop", "training.optimizer_settings.roh=0.5"])
    assert load_config(None, ["training.optimizer=rmsprop"]).training.optimizer == "rmsprop"


def test_a_new_model_option_is_one_declaration_read_by_the_loader_overrides_and_docs() -> None:
    """A config option added from outside: its declaration (default, parser, help) alone gives
    the loader, `--set` with its bounds and did-you-mean, and the documented block; the code
    that uses it builds the network."""
    from knn_cli.config import commented_yaml, config_from_dict, section, setting, with_overrides
    from knn_cli.config import values as v
    from knn_cli.errors import ConfigError
    from knn_cli.stack import standard_layers_of

    @dataclass(frozen=True, slots=True)
    class LeakyModel(ModelConfig):
        leak: float = setting(0.0, v.number(0, below=1), "slope of the hidden ReLUs below 0")

    @dataclass(frozen=True, slots=True)
    class LeakyRun(RunConfig):
        model: LeakyModel = section(LeakyModel)

    config = config_from_dict({"model": {"leak": 0.2}}, schema=LeakyRun)
    assert config.model.leak == 0.2 and config.model.hidden == (50, 50)
    assert with_overrides(config, ["model.leak=0.3"]).model.leak == 0.3
    assert with_overrides(config, {"model.leak": 0.0}).model.leak == 0.0
    assert "  leak: 0.2             # slope of the hidden ReLUs below 0" in commented_yaml(config)
    with pytest.raises(ConfigError, match=r"^model\.leak must be a number >= 0 and < 1, got 1\.5"):
        config_from_dict({}, ["model.leak=1.5"], schema=LeakyRun)
    with pytest.raises(ConfigError, match=r"did you mean 'model\.leak'"):
        config_from_dict({}, ["model.leek=0.1"], schema=LeakyRun)
    with pytest.raises(ConfigError, match=r"unknown config key 'model\.leak'"):
        config_from_dict({}, ["model.leak=0.1"])  # the package's own schema is unchanged

    # The code that uses it: the study's stack with its ReLUs made leaky.
    model = config.model
    layers = [
        LeakyReLU(model.leak) if isinstance(layer, ReLU) else layer
        for layer in standard_layers_of((9, *model.hidden, 5), asdict(model))
    ]
    network = Network.from_layers(layers, init=model.init, dtype="float64", seed=1)
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((14, 9)), rng.integers(0, 5, 14)
    assert choose_check_point(network, X, rng) >= 6e-4
    for path, rows in check_network_paths(network, X, y, 0.01).items():
        assert all(row.passed for row in rows), path
