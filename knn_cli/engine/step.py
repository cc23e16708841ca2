"""The training step on the fast kernels: forward, loss, backward and the update rule's step.

What it adds to the textbook step (`Network.textbook_gradients`, then `UpdateRule.step`, then
`Network.update_moving_averages`) is speed only, and tests/test_engine.py holds it to that:

- every array of a step lives in a `Workspace` kept per batch size;
- the backward pass starts from `rule.gradient_scale(eta)` times dL/dscores (for SGD, eta: the
  gradients come out as the steps themselves);
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
        self.statistic_sizes = [
            (name, int(np.prod(shape))) for name, shape in network.statistic_shapes.items()
        ]
        self.statistics = np.empty(sum(size for _, size in self.statistic_sizes), dtype=dtype)
        self.statistic_views = consecutive(self.statistics, self.statistic_sizes)
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
    """One network's fast path: its workspaces, and its moving averages side by side."""

    def __init__(self, network: Network) -> None:
        self.network = network
        self._workspaces: dict[int, Workspace] = {}
        # The moving averages in one array, and the views of it the network's dict held when it
        # was made: used only while the dict still holds exactly those (`_fold_statistics`).
        self._averages: tuple[np.ndarray, dict[str, np.ndarray]] | None = None
        self._sgd = SGD()
        self._decayed = frozenset(network.decayed)

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
        """`Network.cost_and_gradients`: the cost and dJ/d(every parameter), L2 term included."""
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
        X: np.ndarray | Batch,
        y: np.ndarray,
        lambda_: float,
        eta: float,
        rule: UpdateRule | None = None,
        lanes: Lanes | None = None,
        rows: np.ndarray | None = None,
        next_rows: np.ndarray | Batch | None = None,
        noise: tuple[int, ...] = (0,),
    ) -> float:
        """One step of `rule` (plain SGD when None) on the mini-batch X[rows], y[rows] (all of X
        and y when `rows` is None), dropout's masks drawn from `noise`; returns the cost before
        the step. X may also be a `Batch` (an augmented one, say), y then its labels, and
        `next_rows` the next step's `Batch`.

        Given the whole training set and the rows, the lanes of a split first layer gather their
        own halves of the batch; given also `next_rows`, the rows of the next call, which must
        follow with nothing changed in between, each lane goes on from its half of this step's
        update to its half of the next batch's first product. Not on one lane: there is no
        hand-over to save, and the next batch would evict this one's second half from the cache
        before its weight gradient. `lanes` only decides which threads run a split layer's
        halves, never what they compute.
        """
        network, rule = self.network, rule or self._sgd
        if isinstance(X, Batch):
            batch = X
        else:
            batch = Batch(X, None if rows is None else np.asarray(rows))
            if rows is not None:
                y = np.asarray(y)[batch.rows]
        following = next_rows
        if following is not None and not isinstance(following, Batch):
            following = Batch(batch.X, np.asarray(following))
        work = self.workspace(len(y))
        split, params, grads, decayed = work.split, network.params, work.grads, self._decayed
        ahead = (
            split is not None
            and batch.rows is not None
            and following is not None
            and len(following) == len(y)  # else the next step has other buffers
            and lanes is not None
            and lanes.helping
        )
        rule.begin(eta, lambda_, params)
        # By the rule's count of steps, which is saved with its state: a continued run flushes
        # where the uninterrupted one would.
        if rule.steps % FLUSH_EVERY == 0 and flush_subnormals(
            [*params.values(), *(a for by_name in rule.state.values() for a in by_name.values())]
        ):
            network.version += 1  # W1 may have changed: a product computed ahead is stale
        penalties = [0.0, 0.0, 0.0]  # W1's halves (each lane updates the half it computed), rest

        def update_half(which: int) -> None:
            assert split is not None
            penalties[which] = split.update_half(which, rule, params, grads, split.W in decayed)
            if ahead:
                split.prepare(which, following, params[split.W], each_gathers=True)

        def update_the_rest() -> None:
            for name in work.updated_here:
                is_decayed = name in decayed
                if is_decayed:
                    penalties[2] += sum_of_squares(params[name])
                rule.update(name, params[name], grads[name], decayed=is_decayed)
            self._fold_statistics(work)

        loss = self._loss_and_gradients(
            work,
            batch,
            y,
            rule.gradient_scale(eta),
            Mode(train=True, noise=noise),
            lanes=lanes,
            after_first_layer=update_half if split is not None else None,
            meanwhile=update_the_rest,
        )
        network.version += 1
        if ahead:
            split.prepared_for(following, network.version)
        return loss + lambda_ * sum(penalties)

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
            H = split.forward(batch, params, network.version, lanes)
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
        layers' statistics side by side (the same arithmetic, element by element).

        Falls back to the general update, and then gathers the averages side by side anew,
        whenever the dict no longer holds the views made last time: on the first batch, after
        `load_state`, or when a caller replaced the dict or an entry.
        """
        network = self.network
        if self._averages is not None:
            averages, views = self._averages
            if (
                averages.shape == work.statistics.shape
                and network.moving_averages.keys() == views.keys()
                and all(network.moving_averages[name] is view for name, view in views.items())
            ):
                alpha = network.bn_alpha
                averages *= alpha
                averages += (1.0 - alpha) * work.statistics
                return
        self._averages = None
        network.update_moving_averages(work.statistic_views)
        names = [name for name, _ in work.statistic_sizes]
        if names and all(name in network.moving_averages for name in names):
            averages = np.concatenate([network.moving_averages[name] for name in names])
            views = consecutive(averages, work.statistic_sizes)
            network.moving_averages = dict(views)
            self._averages = (averages, views)


def flush_subnormals(arrays: Sequence[np.ndarray]) -> bool:
    """Set numbers within 2^24 of the subnormal range (below 2e-31 in float32) to zero, in
    place; whether there were any.

    Adam at high rates drives the weights of dead units, and the moments of parameters whose
    gradient stays zero, towards zero step after step and into subnormal numbers, on which x86
    arithmetic is many times slower: an Adam run at the study's rates slowed down epoch after
    epoch (README, Performance). Flushing only true subnormals did not keep up; from the margin
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
