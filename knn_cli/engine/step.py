"""The training step on the fast kernels: forward, loss, backward and the update rule's step.

What it adds to the textbook step (`Network.textbook_gradients`, then `UpdateRule.step`, then
`Network.update_moving_averages`) is speed only, and tests/test_engine.py holds it to that:

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

import numpy as np

from knn_cli.engine.batches import Batch
from knn_cli.engine.kernels import (
    KernelSetup,
    kernel_for,
    softmax_cross_entropy_grad,
    sum_of_squares,
)
from knn_cli.engine.lanes import Lanes
from knn_cli.engine.rules import driver_for
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

    def __init__(self, network: Network, n: int) -> None:
        dtype = network.dtype
        self.n = n
        self.rows = np.arange(n)
        # Every layer's batch statistics side by side (mu1 var1 mu2 var2 ...), so that one pass
        # folds them all into the moving averages (`Engine._fold_statistics`).
        sizes = statistic_sizes(network)
        self.statistics = np.empty(sum(size for _, size in sizes), dtype=dtype)
        self.statistic_views = consecutive(self.statistics, sizes)
        first = network.layers[0]
        self.split: SplitAffineKernel | None = None
        self.kernels = []
        for index, layer in enumerate(network.layers):
            setup = KernelSetup(n, dtype, index == 0, network.zero_gradients, self.statistic_views)
            if index == 0 and isinstance(first, Affine) and worth_splitting(first, n):
                self.split = SplitAffineKernel(first, setup)
                self.kernels.append(self.split)
            else:
                self.kernels.append(kernel_for(layer, setup))
        self.grads = {name: np.empty(shape, dtype=dtype) for name, shape in network.shapes.items()}
        for name in network.zero_gradients:  # left alone by the kernels: summing would add noise
            self.grads[name].fill(0.0)
        self.loss_grad = np.empty((n, network.n_classes), dtype=dtype)
        # The parameters a step updates on the caller's lane, in the parameters' order.
        self.updated_here = tuple(
            name
            for name in network.params
            if name not in network.zero_gradients
            and not (self.split is not None and name == self.split.W)
        )


class Engine:
    """The fast path for training one network: its workspaces, its moving averages side by side
    in one array, the update rule's driver and, with `two_lanes`, a helper thread for the first
    layer.

    Made by whoever trains (the trainer; the gradient check, to check the gradients training
    uses). The network stays the model: the engine updates its parameters in place, and folds
    the moving averages in an array of its own, starting from those the network holds at the
    engine's first step; `write_back` copies them into the network's arrays, so call it before
    reading the network's averages (the trainer does before every evaluation, checkpoint and
    at the end; `close` does too). Use it as a context manager, or call `close`.
    """

    def __init__(self, network: Network, *, two_lanes: bool = False) -> None:
        self.network = network
        self.lanes = Lanes() if two_lanes else None
        self._workspaces: dict[int, Workspace] = {}
        self._statistic_sizes = statistic_sizes(network)
        self._averages: np.ndarray | None = None  # the moving averages side by side
        # Counts the engine's changes to the parameters (steps, flushes), so that work done
        # ahead for older parameters is never used.
        self._version = 0
        self._driver = driver_for(SGD())
        self._decayed = frozenset(network.decayed)

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
            work = self._workspaces[n] = Workspace(self.network, n)
        return work

    def cost_and_gradients(
        self, X: np.ndarray, y: np.ndarray, lambda_: float, noise: tuple[int, ...] = (0,)
    ) -> tuple[float, dict[str, np.ndarray]]:
        """`Network.cost_and_gradients` on the engine: the cost and dJ/d(every parameter), L2
        term included, in training mode; moving averages untouched. The arrays returned are the
        caller's own."""
        network = self.network
        work = self.workspace(len(y))
        mode = Mode(train=True, noise=noise)
        loss = self._loss_and_gradients(work, Batch(X), y, 1.0, mode)
        total = {name: grad.copy() for name, grad in work.grads.items()}
        for name in network.decayed:
            total[name] += (2.0 * lambda_) * network.params[name]
        return loss + lambda_ * network.weight_penalty(), total

    def step(
        self,
        batch: Batch | np.ndarray,
        y: np.ndarray,
        lambda_: float,
        eta: float,
        rule: UpdateRule | None = None,
        *,
        following: Batch | None = None,
        noise: tuple[int, ...] = (0,),
    ) -> float:
        """One step of `rule` (plain SGD when None) on the mini-batch `batch` (a `Batch`: rows
        of a data set, perhaps augmented; or an array of its rows) with labels y, dropout's
        masks drawn from `noise`; returns the cost before the step.

        Given the rows of a data set, the lanes of a split first layer gather their own halves
        of the batch; given also `following`, the next call's batch, which must follow with
        nothing changed in between, each lane goes on from its half of this step's update to
        its half of the next batch's first product. Not on one lane: there is no hand-over to
        save, and the next batch would evict this one's second half from the cache before its
        weight gradient. The lanes only decide which threads run a split layer's halves, never
        what they compute.
        """
        network = self.network
        if not isinstance(batch, Batch):
            batch = Batch(batch)
        rule = rule or self._driver.rule
        if self._driver.rule is not rule:
            self._driver = driver_for(rule)
        driver = self._driver
        work = self.workspace(len(y))
        split, params, grads, decayed = work.split, network.params, work.grads, self._decayed
        lanes = self.lanes
        ahead = (
            split is not None
            and batch.rows is not None
            and following is not None
            and len(following) == len(y)  # else the next step has other buffers
            and self.helping
        )
        rule.begin(eta, lambda_, params)
        # By the rule's count of steps, which is saved with its state: a continued run flushes
        # where the uninterrupted one would.
        if rule.steps % FLUSH_EVERY == 0 and flush_subnormals(
            [*params.values(), *(a for by_name in rule.state.values() for a in by_name.values())]
        ):
            self._version += 1  # W1 may have changed: a product computed ahead is stale
        penalties = [0.0, 0.0, 0.0]  # W1's halves (each lane updates the half it computed), rest

        def update_half(which: int) -> None:
            assert split is not None
            penalties[which] = split.update_half(which, driver, params, grads, split.W in decayed)
            if ahead:
                split.prepare(which, following, params[split.W], each_gathers=True)

        def update_the_rest() -> None:
            for name in work.updated_here:
                is_decayed = name in decayed
                if is_decayed:
                    penalties[2] += sum_of_squares(params[name])
                driver.update(name, params[name], grads[name], decayed=is_decayed)
            self._fold_statistics(work)

        loss = self._loss_and_gradients(
            work,
            batch,
            y,
            driver.gradient_scale(eta),
            Mode(train=True, noise=noise),
            lanes=lanes,
            after_first_layer=update_half if split is not None else None,
            meanwhile=update_the_rest,
        )
        self._version += 1
        if ahead:
            split.prepared_for(following, self._version, params[split.W])
        return loss + lambda_ * sum(penalties)

    def write_back(self) -> None:
        """Copy the engine's moving averages into the network's, so that the network is whole
        for whoever reads it (an evaluation, a checkpoint, the saved model)."""
        if self._averages is None:
            return
        held = self.network.moving_averages
        for name, value in consecutive(self._averages, self._statistic_sizes).items():
            if name in held and held[name].shape == value.shape and held[name].dtype == value.dtype:
                held[name][...] = value
            else:
                held[name] = value.copy()

    def close(self) -> None:
        """Write the averages back and end the helper thread."""
        self.write_back()
        if self.lanes is not None:
            self.lanes.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _loss_and_gradients(
        self,
        work: Workspace,
        batch: Batch,
        y: np.ndarray,
        scale: float,
        mode: Mode,
        *,
        lanes: Lanes | None = None,
        after_first_layer=None,
        meanwhile=None,
    ) -> float:
        """Mean cross-entropy of the batch, with `scale` times
        its gradient for every parameter in `work.grads` and its statistics in
        `work.statistics`.

        With a split first layer, `after_first_layer(half)` runs on each lane right after its
        half of W1's gradient, while those rows are in its cache; `meanwhile()` runs on the
        caller once every other gradient is known.
        """
        network = self.network
        params, grads, kernels, split = network.params, work.grads, work.kernels, work.split
        if split is not None:  # its lanes gather their own halves of the batch
            H = split.forward(batch, params, self._version, lanes)
        else:
            inputs = np.asarray(batch.whole(), dtype=network.dtype)
            if kernels[0].in_place and np.may_share_memory(inputs, batch.X):  # not the caller's
                inputs = inputs.copy()
            H = kernels[0].forward(inputs, params, mode)
        for kernel in kernels[1:]:
            H = kernel.forward(H, params, mode)
        smoothing = network.label_smoothing
        loss = softmax_cross_entropy_grad(H, y, work.rows, scale, work.loss_grad, smoothing)
        G = work.loss_grad
        for kernel in reversed(kernels[1:]):
            G = kernel.backward(G, params, grads)
        if split is not None:
            split.backward(G, params, grads, lanes, after_first_layer, meanwhile)
            return loss
        kernels[0].backward(G, params, grads)
        if meanwhile is not None:
            meanwhile()
        return loss

    def _fold_statistics(self, work: Workspace) -> None:
        """`Network.update_moving_averages` for a training step, as one operation on all the
        layers' statistics side by side (the same arithmetic, element by element)."""
        if not self._statistic_sizes:
            return
        if self._averages is None:
            self._averages = self._first_averages(work)
            return
        alpha = self.network.bn_alpha
        self._averages *= alpha
        self._averages += (1.0 - alpha) * work.statistics

    def _first_averages(self, work: Workspace) -> np.ndarray:
        """The first step's averages, side by side: the network's own folded with this batch's
        statistics where it holds them (a continued run), else this batch's statistics."""
        network, alpha = self.network, self.network.bn_alpha
        pieces = []
        for name, value in work.statistic_views.items():
            held = network.moving_averages.get(name)
            if held is None:
                pieces.append(value.copy())
                continue
            average = np.array(held, dtype=value.dtype)
            average *= alpha
            average += (1.0 - alpha) * value
            pieces.append(average)
        return np.concatenate(pieces)


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
    """Views of consecutive pieces of `flat`, by name."""
    views, start = {}, 0
    for name, size in sizes:
        views[name] = flat[start : start + size]
        start += size
    return views
