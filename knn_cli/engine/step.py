"""The training step on the fast kernels: forward, loss, backward and the update rule's step, for
a population of networks of the same shapes at once (a lone network is a population of one).

What it adds to the textbook step (`Network.textbook_gradients`, then `UpdateRule.step`, then
`Network.update_moving_averages`) is speed only, and tests/test_engine.py holds it to that:

- the members' parameters and update-rule state are stacked (`population.py`), so that each
  operation of the step is one NumPy call for all of them, and each member computes exactly what
  it would compute alone; members that draw the same batch share its gathering and its first
  product (`batches.MemberGroups`);
- every array of a step lives in a `Workspace` kept per batch size;
- the backward pass starts from the rule driver's `gradient_scale(eta)` times dL/dscores (for
  SGD, eta: the gradients come out as the steps themselves; `rules.py`);
- a large first layer is split between two lanes (`split.py`), each of which updates its half of
  W1 and, told the next batch, goes on to its half of the next batch's first product, while
  the caller updates the other parameters and folds the batch statistics into the moving
  averages, all of them in one pass over one array.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from knn_cli.engine.batches import Batch, Batches, MemberGroups
from knn_cli.engine.kernels import (
    KernelSetup,
    kernel_for,
    softmax_cross_entropy_grad,
    sums_of_squares,
)
from knn_cli.engine.lanes import Lanes
from knn_cli.engine.population import StackedParameters, StackedRule
from knn_cli.engine.rules import RuleDriver, driver_for
from knn_cli.engine.split import SplitAffineKernel, worth_splitting
from knn_cli.network import Network
from knn_cli.optim import SGD, UpdateRule
from knn_cli.stack import Affine, Mode

# Steps between flushes of subnormal numbers (see `flush_subnormals`): rare enough to cost
# nothing per step, often enough that few of them pile up in between.
FLUSH_EVERY = 200


class Workspace:
    """Every array one training step writes, for one batch size, reused step after step:
    allocating them anew costs more than the arithmetic on the small layers, and reusing them
    keeps the step's memory flat."""

    def __init__(self, network: Network, groups: MemberGroups, n: int) -> None:
        dtype, P = network.dtype, groups.members
        self.n = n
        # Where each member's each row of scores starts in the flat (P, n, C) array.
        self.row_starts = np.arange(P * n).reshape(P, n) * network.n_classes
        # Every layer's batch statistics side by side (mu1 var1 mu2 var2 ...), a row per member,
        # so that one pass folds them all into the moving averages (`Engine._fold_statistics`).
        sizes = statistic_sizes(network)
        self.statistics = np.empty((P, sum(size for _, size in sizes)), dtype=dtype)
        self.statistic_views = consecutive(self.statistics, sizes)
        first = network.layers[0]
        self.split: SplitAffineKernel | None = None
        self.kernels = []
        for index, layer in enumerate(network.layers):
            setup = KernelSetup(
                n,
                dtype,
                index == 0,
                network.zero_gradients,
                self.statistic_views,
                groups,
                network.shapes,
            )
            if index == 0 and isinstance(first, Affine) and worth_splitting(first, n):
                self.split = SplitAffineKernel(first, setup)
                self.kernels.append(self.split)
            else:
                self.kernels.append(kernel_for(layer, setup))
        self.grads = {
            name: np.zeros((P, *shape) if len(shape) != 1 else (P, 1, *shape), dtype=dtype)
            for name, shape in network.shapes.items()
        }  # the zero gradients are left alone by the kernels: summing would add noise
        self.loss_grad = np.empty((P, n, network.n_classes), dtype=dtype)
        # The parameters a step updates on the caller's lane, in the parameters' order.
        self.updated_here = tuple(
            name
            for name in network.params
            if name not in network.zero_gradients
            and not (self.split is not None and name == self.split.W)
        )


class Engine:
    """The fast path for training a population of networks of the same shapes (or one): their
    parameters and update rules' state stacked, their workspaces, their moving averages side by
    side in one array, the update rule's driver and, with `two_lanes`, a helper thread for the
    first layer.

    Made by whoever trains (the trainer; the gradient check, to check the gradients training
    uses). The networks stay the models: each holds views of the stacked parameters, which the
    engine updates in place, so a member's network always shows its parameters as they are. The
    engine folds the moving averages in an array of its own, starting from those the networks
    hold at the engine's first step; `write_back` copies them into the networks' arrays, so call
    it before reading a network's averages (the trainer does before every evaluation, checkpoint
    and at the end; `close` does too). Use it as a context manager, or call `close`.

    `groups[i]` is the batch group of member i: members that draw the same batch (the same
    seed), numbered 0, 0, 1, ... in order; by default each member draws its own. A step then
    takes one batch (and labels, and dropout noise) per group.
    """

    def __init__(
        self,
        networks: Network | Sequence[Network],
        *,
        groups: Sequence[int] | None = None,
        two_lanes: bool = False,
    ) -> None:
        self.lone = isinstance(networks, Network)
        members = [networks] if isinstance(networks, Network) else list(networks)
        self.networks = members
        self.network = members[0]  # the model the kernels are built from
        self.groups = MemberGroups(range(len(members)) if groups is None else groups)
        if self.groups.members != len(members):
            raise ValueError(f"{len(members)} networks but {self.groups.members} group entries")
        self.parameters = StackedParameters(members)
        self.lanes = Lanes() if two_lanes else None
        self._workspaces: dict[int, Workspace] = {}
        self._statistic_sizes = statistic_sizes(self.network)
        self._averages: np.ndarray | None = None  # the moving averages side by side, (P, S)
        # Counts the engine's changes to the parameters (steps, flushes, re-stacking), so that
        # work done ahead for older parameters is never used.
        self._version = 0
        self._rules: StackedRule | None = None
        self._driver: RuleDriver | None = None
        self._decayed = frozenset(self.network.decayed)
        self.last_losses: np.ndarray | None = None

    @property
    def members(self) -> int:
        return len(self.networks)

    @property
    def params(self) -> dict[str, np.ndarray]:
        """The stacked parameters by name: (P, d, m) matrices, (P, 1, m) vectors."""
        return self.parameters.arrays

    @property
    def helping(self) -> bool:
        """Whether the helper thread takes half of the first layer (off while an evaluation
        occupies the other core); never changes what a step computes."""
        return self.lanes is not None and self.lanes.helping

    @helping.setter
    def helping(self, value: bool) -> None:
        if self.lanes is not None:
            self.lanes.helping = value

    def workspace(self, n: int) -> Workspace:
        work = self._workspaces.get(n)
        if work is None:
            # The trainer uses one batch size (plus at most a gradient check's); more would mean
            # a caller that varies it freely, and then holding them all is a leak.
            if len(self._workspaces) >= 4:
                self._workspaces.clear()
            work = self._workspaces[n] = Workspace(self.network, self.groups, n)
        return work

    def cost_and_gradients(
        self, X: np.ndarray, y: np.ndarray, lambda_: float, noise: tuple[int, ...] = (0,)
    ) -> tuple[float, dict[str, np.ndarray]]:
        """`Network.cost_and_gradients` on the engine, for a lone network: the cost and
        dJ/d(every parameter), L2 term included, in training mode; moving averages untouched.
        The arrays returned are the caller's own."""
        if self.members != 1:
            raise ValueError("cost_and_gradients is for an engine over one network")
        network = self.network
        self._keep_in_sync()
        work = self.workspace(len(y))
        ones = np.ones((1, 1, 1))
        losses = self._loss_and_gradients(
            work, Batches.of(Batch(X)), np.asarray(y)[None], ones, [Mode(train=True, noise=noise)]
        )
        total = {
            name: grad.reshape(network.shapes[name]).copy() for name, grad in work.grads.items()
        }
        for name in network.decayed:
            total[name] += (2.0 * lambda_) * network.params[name]
        return float(losses[0]) + lambda_ * network.weight_penalty(), total

    def step(
        self,
        batch: Any,
        y: np.ndarray | Sequence[np.ndarray],
        lambda_: float | Sequence[float],
        eta: float | Sequence[float],
        rule: UpdateRule | Sequence[UpdateRule] | None = None,
        *,
        following: Any = None,
        noise: tuple[int, ...] | Sequence[tuple[int, ...]] = (0,),
    ) -> Any:
        """One step of each member's update rule (plain SGD when None) on its group's mini-batch,
        dropout's masks drawn from its group's `noise`; returns the cost before the step: a
        number for an engine made over one network, else one per member (P,).

        `batch` is a `Batch` (rows of a data set, perhaps augmented) or an array of rows, one
        for each group (a sequence) or one for the only group; `y` the labels alike; `lambda_`
        and `eta` a number for every member or one each; `rule` one rule or one each.

        Given the rows of a data set, the lanes of a split first layer gather their own halves
        of the batch; given also `following`, the next call's batch, which must follow with
        nothing changed in between, each lane goes on from its half of this step's update to
        its half of the next batch's first product. Not on one lane: there is no hand-over to
        save, and the next batch would evict this one's second half from the cache before its
        weight gradient. The lanes only decide which threads run a split layer's halves, never
        what they compute.
        """
        batches = Batches.of(batch)
        if batches.groups != self.groups.count:
            raise ValueError(f"{batches.groups} batches for {self.groups.count} batch groups")
        n = len(batches)
        labels = self._labels(y, n)
        etas, lambdas = self._per_member(eta), self._per_member(lambda_)
        noises = [noise] if isinstance(noise[0], int | np.integer) else list(noise)  # type: ignore[index]
        rules = self._rules_for(rule)
        driver = self._driver
        assert driver is not None
        work = self.workspace(n)
        split, params, grads, decayed = work.split, self.params, work.grads, self._decayed
        lanes = self.lanes
        following_batches = None if following is None else Batches.of(following)
        ahead = (
            split is not None
            and batches.rows is not None
            and following_batches is not None
            and len(following_batches) == n  # else the next step has other buffers
            and self.helping
        )
        rules.begin(etas, lambdas, params)
        # By the rule's count of steps, which is saved with its state: a continued run flushes
        # where the uninterrupted one would.
        state = [array for by_name in rules.rule.state.values() for array in by_name.values()]
        if rules.rule.steps % FLUSH_EVERY == 0 and flush_subnormals([*params.values(), *state]):
            self._version += 1  # W1 may have changed: a product computed ahead is stale
        # Each member's sum of squared decayed weights before the update: W1's halves (each
        # lane updates the half it computed), then the rest.
        penalties: list[Any] = [0.0, 0.0, 0.0]

        def update_half(which: int) -> None:
            assert split is not None
            penalties[which] = split.update_half(which, driver, params, grads, split.W in decayed)
            if ahead:
                assert following_batches is not None
                split.prepare(which, following_batches, params[split.W], each_gathers=True)

        def update_the_rest() -> None:
            for name in work.updated_here:
                is_decayed = name in decayed
                if is_decayed:
                    penalties[2] = penalties[2] + sums_of_squares(params[name])
                driver.update(name, params[name], grads[name], decayed=is_decayed)
            self._fold_statistics(work)

        modes = [Mode(train=True, noise=tuple(each)) for each in noises]
        losses = self._loss_and_gradients(
            work,
            batches,
            labels,
            driver.gradient_scale(etas),
            modes,
            lanes=lanes,
            after_first_layer=update_half if split is not None else None,
            meanwhile=update_the_rest,
        )
        self._version += 1
        if ahead:
            assert following_batches is not None and split is not None
            split.prepared_for(following_batches, self._version, params[split.W])
        costs = losses + lambdas[:, 0, 0] * (penalties[0] + penalties[1] + penalties[2])
        # The data term alone, per member, for whoever watches it without the weight penalty
        # (the range test: at large rates the decay shrinks the penalty as the loss runs away).
        self.last_losses = losses
        return float(costs[0]) if self.lone else costs

    def write_back(self) -> None:
        """Copy the engine's moving averages into the networks', so that each network is whole
        for whoever reads it (an evaluation, a checkpoint, the saved model)."""
        if self._averages is None:
            return
        for network, row in zip(self.networks, self._averages, strict=True):
            held = network.moving_averages
            for name, value in consecutive(row, self._statistic_sizes).items():
                same = name in held and held[name].shape == value.shape
                if same and held[name].dtype == value.dtype:
                    held[name][...] = value
                else:
                    held[name] = value.copy()

    def remove(self, members: Sequence[int]) -> None:
        """Let members go (a member that diverged): their networks and rules get arrays of
        their own, as they are now, and the others train on as before, their numbers unchanged
        (no operation mixes members)."""
        gone = set(members)
        if not gone:
            return
        self.write_back()
        keep = [i for i in range(self.members) if i not in gone]
        if not keep:
            raise ValueError("a population cannot let all its members go")
        for i in sorted(gone):
            self.parameters.detach(i)
            if self._rules is not None:
                self._rules.detach(i)
        rules = None if self._rules is None else [self._rules.rules[i] for i in keep]
        group_of = [self.groups.group_of[i] for i in keep]
        renumbered = {group: number for number, group in enumerate(dict.fromkeys(group_of))}
        self.networks = [self.networks[i] for i in keep]
        self.network = self.networks[0]
        self.groups = MemberGroups([renumbered[g] for g in group_of])
        self.parameters = StackedParameters(self.networks)
        self._rules = None if rules is None else StackedRule(rules, self.parameters)
        self._driver = None if self._rules is None else driver_for(self._rules.rule)
        if self._averages is not None:
            self._averages = self._averages[keep].copy()
        self._workspaces.clear()
        self._version += 1

    def close(self) -> None:
        """Write the averages back and end the helper thread."""
        self.write_back()
        if self.lanes is not None:
            self.lanes.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- what a step is given, per member -----------------------------------------------------

    def _per_member(self, value: float | Sequence[float]) -> np.ndarray:
        """A number for every member, or one each, as (P, 1, 1) float64 (a new array: the rule
        keeps it for the step)."""
        values = np.empty((self.members, 1, 1))
        values[:, 0, 0] = value
        return values

    def _labels(self, y: np.ndarray | Sequence[np.ndarray], n: int) -> np.ndarray:
        """Each member's labels, (P, n), from its group's."""
        per_group = np.asarray(y)
        if per_group.ndim == 1:
            per_group = per_group[None]
        if per_group.shape != (self.groups.count, n):
            raise ValueError(f"labels of shape {per_group.shape} for {self.groups.count} batches")
        if self.groups.count == self.members:
            return per_group
        return self.groups.expand(per_group)

    def _rules_for(self, rule: UpdateRule | Sequence[UpdateRule] | None) -> StackedRule:
        """The members' rules stacked (again, if they are not those stacked before), with the
        parameters in sync with the networks (a caller may have replaced a network's arrays)."""
        self._keep_in_sync()
        if rule is None:
            rules = self._rules.rules if self._rules is not None else [SGD() for _ in self.networks]
        elif isinstance(rule, UpdateRule):
            if self.members != 1 and (self._rules is None or rule is not self._rules.rules[0]):
                raise ValueError("a population's step needs one update rule per member")
            rules = [rule] if self.members == 1 else self._rules.rules  # type: ignore[union-attr]
        else:
            rules = list(rule)
        if self._rules is None or not self._rules.holds(rules):
            self._rules = StackedRule(rules, self.parameters)
            self._driver = driver_for(self._rules.rule)
        return self._rules

    def _keep_in_sync(self) -> None:
        if not self.parameters.in_sync():  # a caller gave a network new arrays
            self.parameters.adopt()
            if self._rules is not None:  # stacked again below, over the new arrays
                self._rules = StackedRule(self._rules.rules, self.parameters)
                self._driver = driver_for(self._rules.rule)
            self._version += 1

    # -- the step's passes --------------------------------------------------------------------

    def _loss_and_gradients(
        self,
        work: Workspace,
        batches: Batches,
        labels: np.ndarray,
        scale: np.ndarray,
        modes: Sequence[Mode],
        *,
        lanes: Lanes | None = None,
        after_first_layer=None,
        meanwhile=None,
    ) -> np.ndarray:
        """Each member's mean cross-entropy of its batch, (P,), with `scale` (P, 1, 1) times
        its gradient for every parameter in `work.grads` and its statistics in
        `work.statistics`.

        With a split first layer, `after_first_layer(half)` runs on each lane right after its
        half of W1's gradient, while those rows are in its cache; `meanwhile()` runs on the
        caller once every other gradient is known.
        """
        network = self.network
        params, grads, kernels, split = self.params, work.grads, work.kernels, work.split
        if split is not None:  # its lanes gather their own halves of the batches
            H = split.forward(batches, params, self._version, lanes)
        else:
            inputs = np.asarray(batches.whole(), dtype=network.dtype)
            if kernels[0].in_place and any(
                np.may_share_memory(inputs, b.X) for b in batches.batches
            ):  # not the caller's to write into
                inputs = inputs.copy()
            H = kernels[0].forward(inputs, params, modes)
        for kernel in kernels[1:]:
            H = kernel.forward(H, params, modes)
        smoothing = network.label_smoothing
        # The scale over the batch size in float64, then rounded to the dtype (as a number is).
        scale = (scale / len(labels[0])).astype(network.dtype)
        losses = softmax_cross_entropy_grad(
            H, labels, work.row_starts, scale, work.loss_grad, smoothing
        )
        G = work.loss_grad
        for kernel in reversed(kernels[1:]):
            G = kernel.backward(G, params, grads)
        if split is not None:
            split.backward(G, params, grads, lanes, after_first_layer, meanwhile)
            return losses
        kernels[0].backward(G, params, grads)
        if meanwhile is not None:
            meanwhile()
        return losses

    def _fold_statistics(self, work: Workspace) -> None:
        """`Network.update_moving_averages` for a training step, as one operation on all the
        layers' statistics of all the members side by side (the same arithmetic, element by
        element)."""
        if not self._statistic_sizes:
            return
        if self._averages is None:
            self._averages = self._first_averages(work)
            return
        alpha = self.network.bn_alpha
        self._averages *= alpha
        self._averages += (1.0 - alpha) * work.statistics

    def _first_averages(self, work: Workspace) -> np.ndarray:
        """The first step's averages, side by side: each network's own folded with this batch's
        statistics where it holds them (a continued run), else this batch's statistics."""
        alpha = self.network.bn_alpha
        rows = []
        for i, network in enumerate(self.networks):
            pieces = []
            for name, value in work.statistic_views.items():
                held = network.moving_averages.get(name)
                if held is None:
                    pieces.append(value[i].copy())
                    continue
                average = np.array(held, dtype=value.dtype)
                average *= alpha
                average += (1.0 - alpha) * value[i]
                pieces.append(average)
            rows.append(np.concatenate(pieces))
        return np.stack(rows)


def statistic_sizes(network: Network) -> list[tuple[str, int]]:
    """Each moving average's name and number of entries, in the network's order."""
    return [(name, int(np.prod(shape))) for name, shape in network.statistic_shapes.items()]


def flush_subnormals(arrays: Sequence[np.ndarray]) -> bool:
    """Set numbers within 2^24 of the subnormal range (below 2e-31 in float32) to zero, in
    place; whether there were any.

    Adam at high rates drives the weights of dead units, and the moments of parameters whose
    gradient stays zero, towards zero step after step and into subnormal numbers, on which x86
    arithmetic is many times slower: an Adam run at the study's rates slowed down epoch after
    epoch (benchmarks/README.md). Flushing only true subnormals did not keep up; from the margin
    numbers take longer than FLUSH_EVERY steps to decay into the subnormals. A number this
    small changes no float32 sum it enters.
    """
    changed = False
    for array in arrays:
        small = np.abs(array) < np.finfo(array.dtype).tiny * 2.0**24
        small &= array != 0
        if small.any():
            array[small] = 0
            changed = True
    return changed


def consecutive(flat: np.ndarray, sizes: Sequence[tuple[str, int]]) -> dict[str, np.ndarray]:
    """Views of consecutive pieces of `flat` (its last axis), by name."""
    views, start = {}, 0
    for name, size in sizes:
        views[name] = flat[..., start : start + size]
        start += size
    return views
