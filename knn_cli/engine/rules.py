"""How the engine drives an update rule: what the backward pass's gradients are scaled by, and
the update of a block of a parameter's rows (the halves of W1 that two lanes update). The rule
is the population's stacked rule (`population.StackedRule`): parameters, gradients and state
carry the members on a leading axis, and a block of rows is taken on the axis after it.

Any rule runs through `RuleDriver`, which hands it the rows of its own state for the block; a
rule with a fast path of its own has a driver class in `FAST_RULES`, tested against the rule as
written (tests/test_engine.py), as a layer's fast kernel is against the layer.
"""

from __future__ import annotations

import numpy as np

from knn_cli.optim import SGD, UpdateRule

ALL_ROWS = slice(None)


class RuleDriver:
    """Any update rule as the engine drives it: unscaled gradients, state by rows."""

    def __init__(self, rule: UpdateRule) -> None:
        self.rule = rule

    def gradient_scale(self, eta: np.ndarray) -> np.ndarray:
        """What the backward pass multiplies every member's gradients by (1: the loss gradient
        as is), from the members' rates, (P, 1, 1) float64."""
        return np.ones_like(eta)

    def update(
        self, name: str, w: np.ndarray, g: np.ndarray, *, decayed: bool, rows: slice = ALL_ROWS
    ) -> None:
        """The rule's update of `rows` of the named parameter; `w` and `g` are those rows."""
        state = {slot: by_name[name][:, rows] for slot, by_name in self.rule.state.items()}
        self.rule.update(w, g, state, decayed=decayed)


class ScaledSGD(RuleDriver):
    """SGD with the step made by the backward pass: starting it from eta dL/dscores (free, as
    the backward pass is linear in what it starts from) makes every gradient eta g, so the
    update is one pass over each parameter where scaling and subtracting took two."""

    rule: SGD

    def gradient_scale(self, eta: np.ndarray) -> np.ndarray:
        return eta

    def update(self, name, w, g, *, decayed, rows=ALL_ROWS):
        # g is eta times the loss gradient here (see gradient_scale).
        if decayed:
            w *= self.rule.decay  # (1 - 2 eta lambda) per member; times 1 leaves w as it is
        w -= g


FAST_RULES: dict[type[UpdateRule], type[RuleDriver]] = {SGD: ScaledSGD}


def driver_for(rule: UpdateRule) -> RuleDriver:
    """The rule's fast driver; a subclass of a rule class gets the general one, as it may have
    changed its math."""
    return FAST_RULES.get(type(rule), RuleDriver)(rule)
