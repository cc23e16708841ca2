"""Update rules: how a gradient becomes a change of the parameters.

Every rule has one interface. Once a step, `begin(eta, lambda_, params)` takes the learning rate
(the cyclical schedule drives every rule) and the L2 strength; then `update(w, g, state, ...)`
changes one parameter in place, where g is the gradient of the *loss* -- without the L2 term,
which each rule applies to the parameters marked `decayed` in its own way (added to the gradient,
or as a decoupled decay in AdamW) -- and `state` holds the rule's arrays for that parameter
(e.g. its velocity), by slot. A rule keeps its state per parameter name (`state`), which is
saved with the model (`state_dict`) so a run can be continued where it stopped.

Every rule here works element by element, so an update of a block of rows (w, g and the state
restricted to those rows) is that of the whole restricted to the block: the engine updates W1
by halves on two threads this way (`engine/rules.py`). And so the engine can step a population
of networks at once: their parameters stacked on a leading axis, eta and lambda given as arrays
of shape (P, 1, 1), one per member, which `begin` casts to the parameters' dtype (`per_step`).

A new rule is a subclass with its `update` (and `begin` for per-step scalars), its
hyperparameters declared in `settings`, and one line in `UPDATE_RULES`; the config then takes
them as `training.optimizer_settings`. The study's rule is `SGD`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np


@dataclass(frozen=True)
class Setting:
    """A rule's hyperparameter: its default and the interval it must lie in, so that a config
    can be checked before any training starts."""

    default: float
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def allows(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return math.isfinite(value) and above and below

    def describe(self) -> str:
        """What `allows` accepts, in words: 'a number >= 0 and < 1'."""
        parts = []
        if self.low > -math.inf:
            parts.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high < math.inf:
            parts.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        return "a number " + " and ".join(parts) if parts else "a finite number"


def per_step(value: Any, params: Mapping[str, np.ndarray]) -> Any:
    """A step's coefficient as a rule applies it: a number as it is (NumPy rounds it to the
    parameters' dtype), one per member of a population cast to the parameters' dtype -- the same
    rounding, where a float64 array would turn every product into float64 arithmetic."""
    if isinstance(value, np.ndarray) and params:
        return value.astype(next(iter(params.values())).dtype)
    return value


FRACTION = {"low": 0.0, "high": 1.0, "high_open": True}  # in [0, 1): momenta, betas
POSITIVE = {"low": 0.0, "low_open": True}


class UpdateRule:
    """The interface, and the per-parameter state every rule keeps by name.

    `slots` names the rule's state arrays per parameter (e.g. "velocity"); they start at zero.
    `settings` declares the rule's hyperparameters; each becomes an attribute of the same name,
    given as a keyword argument or left at its default.
    """

    slots: ClassVar[tuple[str, ...]] = ()
    settings: ClassVar[Mapping[str, Setting]] = {}

    def __init__(self, **settings: float) -> None:
        unknown = sorted(set(settings) - set(self.settings))
        if unknown:
            known = ", ".join(self.settings) or "none"
            raise TypeError(f"{type(self).__name__} has no setting {unknown[0]!r} (its: {known})")
        for name, setting in self.settings.items():
            setattr(self, name, float(settings.get(name, setting.default)))
        self.state: dict[str, dict[str, np.ndarray]] = {slot: {} for slot in self.slots}
        self.steps = 0
        self.eta = 0.0
        self.lambda_ = 0.0

    def begin(self, eta: Any, lambda_: Any, params: Mapping[str, np.ndarray]) -> None:
        """Start a step: the rate and L2 strength for it, and state for parameters new to us.

        Called before any `update` of the step, on one thread, so that updates running on two
        threads find their state arrays made. eta and lambda_ are numbers, or float64 arrays
        of one per member of a population (shape (P, 1, 1)).
        """
        self.steps += 1
        self.eta, self.lambda_ = per_step(eta, params), per_step(lambda_, params)
        for slot in self.state.values():
            for name, value in params.items():
                if name not in slot:
                    slot[name] = np.zeros_like(value)

    def update(
        self, w: np.ndarray, g: np.ndarray, state: Mapping[str, np.ndarray], *, decayed: bool
    ) -> None:
        """w <- the rule's new value, in place, from the loss gradient g; `state` is this
        parameter's arrays by slot (the same rows as w), to be updated in place too."""
        raise NotImplementedError

    def state_of(self, name: str) -> dict[str, np.ndarray]:
        """The named parameter's state arrays, by slot."""
        return {slot: by_name[name] for slot, by_name in self.state.items()}

    def step(
        self,
        params: Mapping[str, np.ndarray],
        grads: Mapping[str, np.ndarray],
        eta: float,
        lambda_: float,
        decayed: tuple[str, ...] | frozenset[str] = (),
    ) -> None:
        """One whole step, as a textbook writes it: every parameter from its loss gradient."""
        self.begin(eta, lambda_, params)
        for name, w in params.items():
            self.update(w, grads[name], self.state_of(name), decayed=name in decayed)

    def state_dict(self) -> dict[str, np.ndarray]:
        """The state as flat arrays, `slot.parameter` and `steps`, for an npz file."""
        flat = {f"{slot}.{name}": value.copy() for slot, by_name in self.state.items()
                for name, value in by_name.items()}  # fmt: skip
        return {**flat, "steps": np.array(self.steps)}

    def load_state_dict(
        self, flat: Mapping[str, np.ndarray], params: Mapping[str, np.ndarray]
    ) -> None:
        """Restore `state_dict`'s arrays; raises ValueError where they do not fit `params`."""
        state: dict[str, dict[str, np.ndarray]] = {slot: {} for slot in self.slots}
        for key, value in flat.items():
            if key == "steps":
                continue
            slot, _, name = key.partition(".")
            if slot not in state or name not in params:
                rule = type(self).__name__
                raise ValueError(f"optimizer state {key!r} does not belong to {rule}")
            if np.shape(value) != params[name].shape:
                raise ValueError(f"optimizer state {key!r} has shape {np.shape(value)}")
            state[slot][name] = np.array(value, dtype=params[name].dtype)
        self.state = state
        self.steps = int(flat["steps"]) if "steps" in flat else 0


class SGD(UpdateRule):
    """Gradient descent on the cost, the study's rule:  w <- w - eta (g + 2 lambda w),
    written as w <- (1 - 2 eta lambda) w - eta g.

    The engine drives it on a fast path of its own (`engine/rules.py`: the backward pass
    hands it eta g ready-made), held to this one by tests/test_engine.py.
    """

    def begin(self, eta: Any, lambda_: Any, params: Mapping[str, np.ndarray]) -> None:
        super().begin(eta, lambda_, params)
        self.decay = per_step(1.0 - 2.0 * lambda_ * eta, params)

    def update(self, w, g, state, *, decayed):
        if decayed and np.any(self.decay != 1.0):
            w *= self.decay
        w -= self.eta * g


class Momentum(UpdateRule):
    """Heavy-ball momentum, in PyTorch's form:  v <- mu v + g',  w <- w - eta v,  where
    g' = g + 2 lambda w for weights. The velocity holds gradients rather than steps, so a
    changing eta scales the whole of it."""

    slots = ("velocity",)
    settings: ClassVar = {"momentum": Setting(0.9, **FRACTION)}
    momentum: float

    def update(self, w, g, state, *, decayed):
        if decayed:
            g = g + 2.0 * self.lambda_ * w
        v = state["velocity"]
        v *= self.momentum
        v += g
        w -= self.eta * self._direction(g, v)

    def _direction(self, g: np.ndarray, v: np.ndarray) -> np.ndarray:
        return v


class Nesterov(Momentum):
    """Nesterov momentum (PyTorch's form):  v <- mu v + g',  w <- w - eta (g' + mu v): the step
    looks ahead along the velocity it has just updated."""

    def _direction(self, g: np.ndarray, v: np.ndarray) -> np.ndarray:
        return g + self.momentum * v


class Adam(UpdateRule):
    """Adam (Kingma and Ba, 2015), L2 added to the gradient (g' = g + 2 lambda w for weights):

    m <- b1 m + (1 - b1) g',   v <- b2 v + (1 - b2) g'^2
    w <- w - eta m_hat / (sqrt(v_hat) + eps)
    m_hat = m / (1 - b1^t),   v_hat = v / (1 - b2^t)   (t: the step, from 1)
    """

    slots = ("m", "v")
    settings: ClassVar = {
        "beta1": Setting(0.9, **FRACTION),
        "beta2": Setting(0.999, **FRACTION),
        "eps": Setting(1e-8, **POSITIVE),
    }
    beta1: float
    beta2: float
    eps: float
    decoupled = False  # AdamW decays the weights apart from the moments

    def begin(self, eta: Any, lambda_: Any, params: Mapping[str, np.ndarray]) -> None:
        super().begin(eta, lambda_, params)
        self.correction1 = 1.0 - self.beta1**self.steps
        self.correction2 = 1.0 - self.beta2**self.steps
        self.decay = per_step(1.0 - 2.0 * lambda_ * eta, params)  # AdamW's

    def update(self, w, g, state, *, decayed):
        if decayed and self.decoupled:
            w *= self.decay
        elif decayed:
            g = g + 2.0 * self.lambda_ * w
        m, v = state["m"], state["v"]
        m *= self.beta1
        m += (1.0 - self.beta1) * g
        v *= self.beta2
        v += (1.0 - self.beta2) * np.square(g)
        w -= self.eta * (m / self.correction1) / (np.sqrt(v / self.correction2) + self.eps)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov and Hutter, 2019): the weights decay as SGD's
    L2 would decay them, w <- (1 - 2 eta lambda) w, and the moments see the loss gradient
    alone, so the decay is not rescaled per unit by the adaptive denominator."""

    decoupled = True


UPDATE_RULES: dict[str, type[UpdateRule]] = {
    "sgd": SGD,
    "momentum": Momentum,
    "nesterov": Nesterov,
    "adam": Adam,
    "adamw": AdamW,
}


def make_update_rule(name: str, settings: Mapping[str, Any] | None = None) -> UpdateRule:
    """The rule called `name` with the given settings (checked by the config against the
    rule's declared `settings`; here an unknown one is a TypeError)."""
    return UPDATE_RULES[name](**dict(settings or {}))
