"""The first affine layer shared by two lanes, each owning half of the input features: those
columns of the batch and those rows of W, of its gradient and of its update (for every member of
a population at once).

Why features and not samples: a lane's half of the batch, of W and of its step then stays in that
core's cache from the gather through the forward product, the weight gradient and the update
(split by samples, both lanes would read all of W, just updated on the other core). The forward
product becomes the sum of two products over halves of the inner dimension -- a rounding
different from the whole product's, but the same whichever lane computes which half, so results
never depend on the lanes.

Waking the helper costs a fair part of a half (benchmarks/step_timeline.py), so a step hands over
as few jobs as it can: the weight gradient, the update and the next batch's forward product of
one half are one job (`prepare` runs inside the backward pass's job).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from knn_cli.engine.batches import Batches
from knn_cli.engine.kernels import KernelSetup, sums_of_squares, sums_over_rows
from knn_cli.engine.lanes import Lanes, run_halves
from knn_cli.engine.rules import RuleDriver
from knn_cli.stack import Affine

# A first layer whose forward product has at least this many multiply-adds (per member) is
# shared by the two lanes; a smaller one costs more to hand over than it takes. The study's
# first layer (100 x 3072 x 50 = 15M) is split; a gradient check's (20 x 20 x 50) is not.
SPLIT_MIN_MULTIPLY_ADDS = 1_000_000


def worth_splitting(layer: Affine, n: int) -> bool:
    return n * layer.fan_in * layer.fan_out >= SPLIT_MIN_MULTIPLY_ADDS and layer.fan_in >= 32


class SplitAffineKernel:
    """The AffineKernel of a first layer, computed in two halves of the input features."""

    in_place = False

    def __init__(self, layer: Affine, setup: KernelSetup) -> None:
        n, d, width, dtype = setup.n, layer.fan_in, layer.fan_out, setup.dtype
        P = setup.members
        self.groups = setup.groups
        self.W, self.b = layer.W, layer.b
        self.constant_bias = layer.b in setup.zero_gradients
        middle = d // 32 * 16  # a multiple of 16, the blocks OpenBLAS's kernels work in
        self.features = (slice(0, middle), slice(middle, d))
        self.out = np.empty((P, n, width), dtype=dtype)
        self.sums = sums_over_rows(setup)
        self.partials = [np.empty((P, n, width), dtype=dtype) for _ in range(2)]
        # Each group's rows, by halves of the features, (G, n, d / 2) or one (n, d / 2) per
        # group: for the backward pass.
        self.inputs: list[Any] = [np.empty((1, n, 0), dtype=dtype)] * 2
        self._no_rows = np.empty((1, 0, d), dtype=dtype)
        self._whole = self._no_rows  # the whole batches, when gathered at once
        # What the partials were computed for: the batches, the engine's count of changes to
        # the parameters, and the stacked weights array itself (re-stacked when a member's
        # network is given new arrays).
        self._prepared: tuple[Batches, int, np.ndarray] | None = None

    def prepare(self, which: int, batches: Batches, W: np.ndarray, each_gathers: bool) -> None:
        """One half of batch @ W for every member, into `partials[which]`.

        With `each_gathers` (the helper helps), each lane gathers its own half of the batch's
        features, so the half lands in the cache of the core that uses it. On one thread
        (half 0 runs first) one gather of whole rows is cheaper.
        """
        features = self.features[which]
        if each_gathers or not batches.whole_is_cheaper:
            part = batches.take(features)
        else:
            if which == 0:
                self._whole = batches.whole()
            part = self._whole[..., features]
        self.inputs[which] = part = np.asarray(part, dtype=W.dtype)
        self.groups.product(part, W[:, features], self.partials[which])

    def prepare_by_groups(self, batches: Batches, W: np.ndarray) -> None:
        """Both halves of batch @ W on one thread, group after group: each group's rows
        gathered whole and multiplied at once, while they are in the cache (gathering every
        group's first, then multiplying, reads them back from memory: 1.2 MB a batch)."""
        dtype = W.dtype
        wholes = [np.asarray(batch.whole(), dtype=dtype) for batch in batches.batches[:1]]
        for group, members in enumerate(self.groups.slices):
            whole = wholes[0] if group == 0 else np.asarray(batches.batches[group].whole(), dtype)
            for which, features in enumerate(self.features):
                np.matmul(
                    whole[:, features], W[members, features], out=self.partials[which][members]
                )
            wholes.append(whole)
        self.inputs = [[whole[:, features] for whole in wholes[1:]] for features in self.features]  # type: ignore[misc]

    def prepared_for(self, batches: Batches, version: int, W: np.ndarray) -> None:
        """Both halves of `prepare` have run for these batches with the weights W of
        `version`."""
        self._prepared = (batches.kept(), version, W)  # the caller may reuse its rows arrays

    @property
    def ahead(self) -> bool:
        """Whether a next batch's first product waits, computed ahead, for the next step."""
        return self._prepared is not None

    def forward(
        self, batches: Batches, params: Mapping[str, np.ndarray], version: int, lanes: Lanes | None
    ) -> np.ndarray:
        """batch @ W + b, W at `version`; from the halves `prepare` left if they are for the
        same batches, at the same version, of the same weights array."""
        W = params[self.W]
        prepared, self._prepared = self._prepared, None
        if (
            batches.rows is None
            or prepared is None
            or prepared[1] != version
            or prepared[2] is not W
            or not prepared[0].same_as(batches)
        ):
            each_gathers = lanes is not None and lanes.helping  # once: both halves must agree
            if not each_gathers and batches.groups > 1 and batches.whole_is_cheaper:
                self.prepare_by_groups(batches, W)
            else:
                run_halves(lambda which: self.prepare(which, batches, W, each_gathers), lanes)
        out = np.add(self.partials[0], self.partials[1], out=self.out)
        out += params[self.b]
        return out

    def backward(
        self,
        g: np.ndarray,
        params: Mapping[str, np.ndarray],
        grads: dict[str, np.ndarray],
        lanes: Lanes | None,
        then: Callable[[int], None] | None = None,
        meanwhile: Callable[[], None] | None = None,
    ) -> None:
        """The bias gradient, then dW = x^T g by halves of dW's rows; each lane goes on with
        `then(half)`, while the caller also runs `meanwhile`."""
        if not self.constant_bias:
            np.matmul(self.sums, g, out=grads[self.b])
        dW = grads[self.W]

        def half(which: int) -> None:
            inputs = [part.T for part in self.inputs[which]]  # each group's, (d / 2, n)
            self.groups.product(inputs, g, dW[:, self.features[which]])
            # Let the rows go: the next step's gathers then reuse their memory, still in the
            # cache, rather than writing to memory further on (5-15% of a population's step).
            self.inputs[which] = inputs = []
            if then is not None:
                then(which)

        run_halves(half, lanes, meanwhile)
        self._whole = self._no_rows

    def update_half(
        self,
        which: int,
        rule: RuleDriver,
        params: Mapping[str, np.ndarray],
        grads: Mapping[str, np.ndarray],
        decayed: bool,
    ) -> np.ndarray | float:
        """The rule's update of one half of W's rows; returns that half's sums of squares
        before the update, one per member (for the cost the step reports), when W is decayed."""
        rows = self.features[which]
        w = params[self.W][:, rows]
        penalty = sums_of_squares(w) if decayed else 0.0
        rule.update(self.W, w, grads[self.W][:, rows], decayed=decayed, rows=rows)
        return penalty
