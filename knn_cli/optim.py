"""Update rules: how a gradient becomes a change of the parameters.

Every rule has one interface. Once a step, `begin(eta, lambda_, params)` takes the learning rate
(the cyclical schedule drives every rule) and the L2 strength; then `update(name, w, g, ...)`
changes one parameter in place, where g is the gradient of the *loss* -- without the L2 term,
which each rule applies to the parameters marked `decayed` in its own way (added to the gradient,
or as a decoupled decay in AdamW). A rule keeps its state per parameter name (`state`), which is
saved with the model (`state_dict`) so a run can be continued where it stopped.

`update` may be called on a block of rows of a parameter (`rows`), e.g. by the engine's two
threads on the two halves of W1; every rule here works element by element, so a block's update
is that of the whole restricted to the block.

A new rule is a subclass with its `update` (and `begin` for per-step scalars), and one line in
`UPDATE_RULES`. The study's rule is `SGD`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

ALL_ROWS = slice(None)


class UpdateRule:
    """The interface, and the per-parameter state every rule keeps by name.

    `slots` names the rule's state arrays per parameter (e.g. "velocity"); they start at zero.
    """

    slots: ClassVar[tuple[str, ...]] = ()
    settings: ClassVar[tuple[str, ...]] = ()  # keyword arguments, taken from the config

    def __init__(self) -> None:
        self.state: dict[str, dict[str, np.ndarray]] = {slot: {} for slot in self.slots}
        self.steps = 0
        self.eta = 0.0
        self.lambda_ = 0.0

    def gradient_scale(self, eta: float) -> float:
        """What the backward pass should multiply every gradient by; 1 for all but SGD."""
        return 1.0

    def begin(self, eta: float, lambda_: float, params: Mapping[str, np.ndarray]) -> None:
        """Start a step: the rate and L2 strength for it, and state for parameters new to us.

        Called before any `update` of the step, on one thread, so that updates running on two
        threads find their state arrays made.
        """
        self.steps += 1
        self.eta, self.lambda_ = eta, lambda_
        for slot in self.state.values():
            for name, value in params.items():
                if name not in slot:
                    slot[name] = np.zeros_like(value)

    def update(
        self, name: str, w: np.ndarray, g: np.ndarray, *, decayed: bool, rows: slice = ALL_ROWS
    ) -> None:
        """w <- the rule's new value, in place; `w` and `g` are `rows` of the named parameter
        and of its loss gradient (times `gradient_scale`)."""
        raise NotImplementedError

    def step(
        self,
        params: Mapping[str, np.ndarray],
        grads: Mapping[str, np.ndarray],
        eta: float,
        lambda_: float,
        decayed: tuple[str, ...] | frozenset[str] = (),
    ) -> None:
        """One whole step, as a textbook writes it: every parameter from its loss gradient
        (not scaled: call this with plain gradients, whatever `gradient_scale` says)."""
        self.begin(eta, lambda_, params)
        scale = self.gradient_scale(eta)
        for name, w in params.items():
            g = grads[name] if scale == 1.0 else scale * grads[name]
            self.update(name, w, g, decayed=name in decayed)

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
    """Gradient descent on the cost, the study's rule:  w <- w - eta (g + 2 lambda w).

    Written as w <- (1 - 2 eta lambda) w - eta g. Its fast path: it asks the backward pass for
    eta g at once (`gradient_scale`), free because the backward pass is linear in the gradient it
    starts from, so a step is one pass over each parameter where scaling and adding took more
    (benchmarks/bench_train.py --optimizer measures the rules against each other).
    """

    def gradient_scale(self, eta: float) -> float:
        return eta

    def begin(self, eta: float, lambda_: float, params: Mapping[str, np.ndarray]) -> None:
        super().begin(eta, lambda_, params)
        self.decay = 1.0 - 2.0 * lambda_ * eta

    def update(self, name, w, g, *, decayed, rows=ALL_ROWS):
        # g is eta times the loss gradient here (see gradient_scale).
        if decayed and self.decay != 1.0:
            w *= self.decay
        w -= g


class Momentum(UpdateRule):
    """Heavy-ball momentum, in PyTorch's form:  v <- mu v + g',  w <- w - eta v,  where
    g' = g + 2 lambda w for weights. The velocity holds gradients rather than steps, so a
    changing eta scales the whole of it."""

    slots = ("velocity",)
    settings = ("momentum",)

    def __init__(self, momentum: float = 0.9) -> None:
        super().__init__()
        self.momentum = momentum

    def update(self, name, w, g, *, decayed, rows=ALL_ROWS):
        if decayed:
            g = g + 2.0 * self.lambda_ * w
        v = self.state["velocity"][name][rows]
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
    settings = ("beta1", "beta2", "eps")
    decoupled = False  # AdamW decays the weights apart from the moments

    def __init__(self, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8) -> None:
        super().__init__()
        self.beta1, self.beta2, self.eps = beta1, beta2, eps

    def begin(self, eta: float, lambda_: float, params: Mapping[str, np.ndarray]) -> None:
        super().begin(eta, lambda_, params)
        self.correction1 = 1.0 - self.beta1**self.steps
        self.correction2 = 1.0 - self.beta2**self.steps

    def update(self, name, w, g, *, decayed, rows=ALL_ROWS):
        if decayed and self.decoupled:
            w *= 1.0 - 2.0 * self.lambda_ * self.eta
        elif decayed:
            g = g + 2.0 * self.lambda_ * w
        m = self.state["m"][name][rows]
        v = self.state["v"][name][rows]
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
    """The rule called `name`, given the settings it takes (others in `settings` are ignored)."""
    cls = UPDATE_RULES[name]
    given = settings or {}
    return cls(**{key: given[key] for key in cls.settings if key in given})
