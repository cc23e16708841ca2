"""P networks of the same shapes held as one: their parameters and their update rules' state
stacked on a leading axis -- a matrix (d, m) as (P, d, m), a vector (m,) as (P, 1, m), so that it
broadcasts over a batch's rows -- and every operation of a step is one NumPy call for all of them.

The members stay whole: each network's parameters and each rule's state arrays are views of the
stacked arrays, so a member is evaluated, saved and restored as if it had trained alone. A
population of one stacks nothing: its stacked arrays are views of the network's own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from knn_cli.network import Network
from knn_cli.optim import UpdateRule


def stacked_shape(shape: tuple[int, ...], members: int) -> tuple[int, ...]:
    """A parameter's shape in the stack: vectors get a row axis to broadcast over a batch."""
    return (members, 1, *shape) if len(shape) == 1 else (members, *shape)


def check_alike(networks: Sequence[Network]) -> None:
    """Members must compute alike: the same layers (widths, batch norm and its place, dropout),
    dtype, moving-average momentum and loss. Their init and values may differ."""
    first = networks[0]
    for other in networks[1:]:
        same = (
            other.layers == first.layers
            and other.dtype == first.dtype
            and other.bn_alpha == first.bn_alpha
            and other.label_smoothing == first.label_smoothing
        )
        if not same:
            raise ValueError("a population's networks must have the same layers and settings")


class StackedParameters:
    """The members' parameters by name, stacked; each member's network holds views of them.

    `in_sync` says whether every network still holds the views handed out (a caller may have
    replaced an array with `Network.set_params`); `adopt` stacks them anew.
    """

    def __init__(self, networks: Sequence[Network]) -> None:
        check_alike(networks)
        self.networks = list(networks)
        self.shapes = dict(networks[0].shapes)
        self.arrays: dict[str, np.ndarray] = {}
        self._views: list[dict[str, np.ndarray]] = []
        self.adopt()

    @property
    def members(self) -> int:
        return len(self.networks)

    def adopt(self) -> None:
        P = self.members
        for name, shape in self.shapes.items():
            if P == 1:
                self.arrays[name] = self.networks[0].params[name].reshape(stacked_shape(shape, 1))
            else:
                stacked = np.stack([net.params[name] for net in self.networks])
                self.arrays[name] = stacked.reshape(stacked_shape(shape, P))
        self._views = [{name: self.member(name, i) for name in self.shapes} for i in range(P)]
        for network, views in zip(self.networks, self._views, strict=True):
            network.params.update(views)

    def member(self, name: str, i: int) -> np.ndarray:
        """Member i's view of the named parameter, in the network's own shape."""
        return self.arrays[name][i].reshape(self.shapes[name])

    def in_sync(self) -> bool:
        for network, views in zip(self.networks, self._views, strict=True):
            held = network.params
            for name, view in views.items():
                if held[name] is not view:
                    return False
        return True

    def detach(self, i: int) -> None:
        """Member i's network gets arrays of its own (it leaves the population)."""
        network = self.networks[i]
        network.params = {name: value.copy() for name, value in network.params.items()}


class StackedRule:
    """The members' update rules as one: a rule of the same class and settings whose state
    arrays are stacked, and whose eta and lambda are one per member; each member's rule holds
    views of the stacked state and counts its own steps."""

    def __init__(self, rules: Sequence[UpdateRule], parameters: StackedParameters) -> None:
        first = rules[0]
        settings = {name: getattr(first, name) for name in first.settings}
        for other in rules[1:]:
            if type(other) is not type(first) or any(
                getattr(other, name) != value for name, value in settings.items()
            ):
                raise ValueError("a population's members must share one update rule")
            if other.steps != first.steps:
                raise ValueError("a population's members must be at the same step")
        self.rules = list(rules)
        self.rule = type(first)(**settings)
        self.rule.steps = first.steps
        for slot in first.slots:
            for name, stacked_params in parameters.arrays.items():
                shape = parameters.shapes[name]
                for rule in rules:  # a rule that has not stepped yet starts at zero
                    if name not in rule.state[slot]:
                        rule.state[slot][name] = np.zeros(shape, dtype=stacked_params.dtype)
                if len(rules) == 1:
                    stacked = rules[0].state[slot][name].reshape(stacked_params.shape)
                else:
                    stacked = np.stack([rule.state[slot][name] for rule in rules])
                    stacked = stacked.reshape(stacked_params.shape)
                self.rule.state[slot][name] = stacked
                for i, rule in enumerate(rules):
                    rule.state[slot][name] = stacked[i].reshape(shape)
        self._seen = [rule.state for rule in rules]

    def holds(self, rules: Sequence[UpdateRule]) -> bool:
        """Whether these are the rules stacked, their state as it was stacked."""
        return len(rules) == len(self.rules) and all(
            mine is theirs and seen is theirs.state
            for mine, theirs, seen in zip(self.rules, rules, self._seen, strict=True)
        )

    def begin(self, eta: np.ndarray, lambda_: np.ndarray, params: Mapping[str, np.ndarray]) -> None:
        """The step's start for the stacked rule (per-member eta and lambda) and each member's
        count of steps."""
        self.rule.begin(eta, lambda_, params)
        for rule in self.rules:  # each member's count of steps, saved with its state
            rule.steps = self.rule.steps

    def detach(self, i: int) -> None:
        rule = self.rules[i]
        rule.state = {
            slot: {name: value.copy() for name, value in by_name.items()}
            for slot, by_name in rule.state.items()
        }
