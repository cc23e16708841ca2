"""A k-layer fully connected ReLU network with softmax output and optional batch normalization.

Pure NumPy: arrays in, arrays out, no files and no progress output. Samples are rows (`X` has
shape `(n, d)`), labels are integer class indices. Parameters live in one dict keyed by name
(`W1, b1, gamma1, beta1, ..., Wk, bk`) so that generic code -- the optimizer step, the numerical
gradient checker, saving and loading -- serves every parameter alike. Batch normalization is a
per-layer option inside the same forward/backward loop, not a second code path.

Speed: a training step of the study's networks is two (100 x 3072) by (3072 x 50) matrix
products plus, per layer, a few dozen operations on arrays of a few thousand numbers, each of
which costs more in NumPy's call overhead than in arithmetic. So the step avoids every operation
it can (profiled, 3-layer BN: 45% of a step was not matrix products before, 30% after):
it writes into buffers kept in a `_Workspace` per batch size -- the forward loop takes them as
`out=` arguments, or None to allocate, so evaluation and the gradient checker's stacked
parameter sets run the very same loop; softmax and cross-entropy share one pass; the backward
pass starts from eta * dloss/dscores, so it produces the update itself; weight decay scales W in
place instead of building 2 lambda W; reductions call the ufuncs directly (np.mean's wrapper
cost three times the arithmetic here). A large first layer is shared by the trainer's two
lanes, one per core, each owning half of the input features (see `_InputSplit`), and the
updates of the other parameters run meanwhile on the caller's lane.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from knn_cli.lanes import Lanes, run_halves

INITS = ("he", "normal")
# A first layer whose forward product has at least this many multiply-adds is shared by two lanes
# (see `_InputSplit`); a smaller one costs more to hand over than it takes. The study's first
# layer (100 x 3072 x 50 = 15M) is split; a gradient check's (10 x 8 x 50) is not.
SPLIT_MIN_MULTIPLY_ADDS = 1_000_000
DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class Architecture:
    """What the network is, independent of its current parameter values."""

    input_dim: int
    hidden: tuple[int, ...]
    n_classes: int
    batch_norm: bool = False
    bn_eps: float = 1e-12
    bn_alpha: float = 0.8

    @property
    def n_layers(self) -> int:
        """k, the number of weight layers."""
        return len(self.hidden) + 1

    @property
    def widths(self) -> tuple[int, ...]:
        return (self.input_dim, *self.hidden, self.n_classes)

    def normalized(self, layer: int) -> bool:
        """Batch norm sits on hidden layers only; the output layer feeds the softmax directly."""
        return self.batch_norm and layer < self.n_layers


@dataclass
class _LayerBuffers:
    """One layer's arrays for a training step; None where the layer has no use for one.

    An all-None instance makes every `out=` argument None, i.e. "allocate", which is how the
    evaluation and stacked-parameter passes share the training step's forward loop.
    """

    out: np.ndarray | None = None  # pre-activation, then normalized, then the ReLU output
    s_hat: np.ndarray | None = None  # normalized pre-activation (batch norm)
    scratch: np.ndarray | None = None
    active: np.ndarray | None = None  # ReLU mask, kept for the backward pass
    grad: np.ndarray | None = None  # gradient with respect to `out`, filled by the backward pass
    mean: np.ndarray | None = None
    var: np.ndarray | None = None
    inv_std: np.ndarray | None = None


_ALLOCATE = _LayerBuffers()


class _Workspace:
    """Every array one training step writes, for one batch size and dtype, reused step after step.

    Allocating them anew each step costs more than the arithmetic on the small layers, and
    reusing them keeps the step's memory flat.
    """

    def __init__(self, arch: Architecture, n: int, dtype: np.dtype) -> None:
        self.n = n
        self.dtype = dtype
        self.layers: list[_LayerBuffers] = []
        # Every normalized layer's batch mean and variance side by side (mu1 var1 mu2 var2 ...),
        # so that one pass folds them all into the moving averages (`Network._fold_statistics`):
        # per array, that was 3 calls for each of 16 arrays in a 9-layer step.
        self.statistic_names = [
            (f"{stat}{layer}", width)
            for layer, width in enumerate(arch.widths[1:], start=1)
            if arch.normalized(layer)
            for stat in ("mu", "var")
        ]
        self.statistics = np.empty((sum(w for _, w in self.statistic_names),), dtype=dtype)
        views = iter(_consecutive(self.statistics, self.statistic_names).values())
        for layer, width in enumerate(arch.widths[1:], start=1):
            hidden = layer < arch.n_layers
            normalized = arch.normalized(layer)

            def rows(width: int = width) -> np.ndarray:
                return np.empty((n, width), dtype=dtype)

            def vector(width: int = width) -> np.ndarray:
                return np.empty((1, width), dtype=dtype)

            self.layers.append(
                _LayerBuffers(
                    out=rows(),
                    s_hat=rows() if normalized else None,
                    scratch=rows() if normalized else None,
                    active=np.empty((n, width), dtype=bool) if hidden else None,
                    grad=rows(),
                    mean=next(views)[None, :] if normalized else None,
                    var=next(views)[None, :] if normalized else None,
                    inv_std=vector() if normalized else None,
                )
            )
        self.rows = np.arange(n)
        d, width = arch.widths[0], arch.widths[1]
        self.input_split = (
            _InputSplit(d, n, width, dtype)
            if n * d * width >= SPLIT_MIN_MULTIPLY_ADDS and d >= 32
            else None
        )
        # One per parameter, in the parameters' order; shapes are fixed by the architecture.
        self.grads = {
            name: np.empty(shape, dtype=dtype) for name, shape in parameter_shapes(arch).items()
        }
        # Batch norm subtracts the batch mean, so a bias before it cannot change the training
        # cost: its gradient is exactly 0, for good (summing G would give rounding noise).
        for layer in range(1, arch.n_layers):
            if arch.normalized(layer):
                self.grads[f"b{layer}"].fill(0.0)


class Network:
    """Parameters and batch-norm moving averages of one network, with its passes."""

    def __init__(
        self,
        input_dim: int,
        hidden: Sequence[int],
        n_classes: int,
        *,
        batch_norm: bool = False,
        init: str = "he",
        sigma: float = 0.1,
        seed: int = 0,
        dtype: str = "float32",
        bn_eps: float = 1e-12,
        bn_alpha: float = 0.8,
    ) -> None:
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        self.arch = Architecture(
            int(input_dim),
            tuple(int(w) for w in hidden),
            int(n_classes),
            bool(batch_norm),
            float(bn_eps),
            float(bn_alpha),
        )
        self.dtype = np.dtype(dtype)
        self.params = initial_parameters(self.arch, init, sigma, seed, self.dtype)
        # Empty until the first training batch: the study starts the averages from that batch's
        # statistics rather than from an arbitrary 0/1 guess.
        self.moving_averages: dict[str, np.ndarray] = {}
        # The moving averages side by side, and the views of it the dict held when it was made:
        # used only while the dict still holds exactly those (see `_fold_statistics`).
        self._averages: tuple[np.ndarray, dict[str, np.ndarray]] | None = None
        self._workspaces: dict[int, _Workspace] = {}
        # Counts changes of the parameters: a first product computed ahead (`_InputSplit`) is
        # for one version of W1.
        self._weights_version = 0
        # Biases feeding a batch norm: their gradient is exactly 0, so a step leaves them alone.
        self._constant_biases = frozenset(
            f"b{layer}" for layer in range(1, self.arch.n_layers + 1) if self.arch.normalized(layer)
        )

    # -- parameters by name -------------------------------------------------------------------

    def get_params(self) -> dict[str, np.ndarray]:
        """A copy, so callers can keep a snapshot while training goes on."""
        return {name: value.copy() for name, value in self.params.items()}

    def set_params(self, values: Mapping[str, np.ndarray]) -> None:
        """Replace parameters by name; names and shapes must match the architecture."""
        for name, value in values.items():
            if name not in self.params:
                raise KeyError(f"unknown parameter {name!r}; known: {', '.join(self.params)}")
            value = np.asarray(value)
            if value.shape != self.params[name].shape:
                raise ValueError(
                    f"parameter {name} has shape {self.params[name].shape}, got {value.shape}"
                )
            self.params[name] = value.astype(self.dtype, copy=True)
        self._weights_version += 1

    def snapshot(self) -> Network:
        """An independent copy of parameters and moving averages, to evaluate elsewhere (on
        another thread) while this network goes on training."""
        clone = copy.copy(self)
        clone.params = self.get_params()
        clone.moving_averages = {k: v.copy() for k, v in self.moving_averages.items()}
        clone._averages = None
        clone._workspaces = {}
        return clone

    def state(self) -> dict[str, np.ndarray]:
        """Everything needed to restore the network: parameters and moving averages."""
        return {**self.get_params(), **{k: v.copy() for k, v in self.moving_averages.items()}}

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        self.set_params({k: v for k, v in state.items() if k in self.params})
        self._averages = None
        self.moving_averages = {
            k: np.asarray(v, dtype=self.dtype).copy()
            for k, v in state.items()
            if k.startswith(("mu", "var"))
        }

    # -- forward ------------------------------------------------------------------------------

    def scores(self, X: np.ndarray, *, train: bool = False) -> np.ndarray:
        """Unnormalized class scores. Evaluation mode uses the moving averages where they exist."""
        out, _stats = self._forward(X, train=train)
        return out

    def forward(self, X: np.ndarray, *, train: bool = False) -> np.ndarray:
        """Class probabilities, shape (n, n_classes)."""
        return softmax(self.scores(X, train=train))

    def predict(self, X: np.ndarray, block_size: int = 10_000) -> np.ndarray:
        """Predicted labels in evaluation mode, in blocks so a whole split fits in memory."""
        return np.concatenate(
            [
                self.scores(X[i : i + block_size]).argmax(axis=1)
                for i in range(0, len(X), block_size)
            ]
        )

    def cost(
        self, X: np.ndarray, y: np.ndarray, lambda_: float, *, train: bool = False
    ) -> tuple[float, float]:
        """(cost, loss): mean cross-entropy plus lambda times the sum of squared weights."""
        loss = cross_entropy(self.scores(X, train=train), y)
        return loss + lambda_ * self.weight_penalty(), loss

    def weight_penalty(self, params: Mapping[str, np.ndarray] | None = None) -> float:
        p = self.params if params is None else params
        total = sum(
            np.sum(np.square(p[f"W{layer}"], dtype=np.float64), axis=(-2, -1))
            for layer in range(1, self.arch.n_layers + 1)
        )
        return float(total) if np.ndim(total) == 0 else total

    def cost_of(
        self, params: Mapping[str, np.ndarray], X: np.ndarray, y: np.ndarray, lambda_: float
    ) -> np.ndarray:
        """Training-mode cost for parameter sets stacked along a leading axis, shape (P,).

        Every array in `params` has shape (P, *shape): P variants of the network evaluated in one
        pass. This is what lets a numerical gradient check perturb hundreds of entries per call
        instead of paying Python overhead for each one. The moving averages are not touched.
        """
        scores, _stats = self._forward(X, train=True, params=params)
        return cross_entropy(scores, y) + lambda_ * self.weight_penalty(params)

    def _forward(
        self,
        X: np.ndarray,
        *,
        train: bool,
        params: Mapping[str, np.ndarray] | None = None,
        work: _Workspace | None = None,
        lanes: Lanes | None = None,
        rows: np.ndarray | None = None,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The one forward loop for every depth, with and without batch norm.

        Returns the output scores and the batch statistics of each normalized layer (in training
        mode), which the caller may fold into the moving averages. With a workspace every result
        lands in its buffers, which then hold what the backward pass needs; without one, arrays
        are allocated. Vectors are broadcast with `[..., None, :]` and statistics taken over
        axis -2 so that the same loop serves stacked parameter sets (see `cost_of`).
        `rows` (only with a workspace whose first layer is split) says the batch is X[rows], for
        the lanes to gather.
        """
        p = self.params if params is None else params
        H = X if rows is not None else np.asarray(X, dtype=self.dtype)
        batch_stats: dict[str, np.ndarray] = {}
        arch = self.arch
        k = arch.n_layers
        for layer in range(1, k + 1):
            buf = _ALLOCATE if work is None else work.layers[layer - 1]
            W = p[f"W{layer}"]
            if layer == 1 and work is not None and work.input_split is not None:
                S = work.input_split.forward(H, rows, W, self._weights_version, buf.out, lanes)
            else:
                assert rows is None, "rows need a split first layer to gather them"
                S = np.matmul(H, W, out=buf.out)
            rows = None
            S += p[f"b{layer}"][..., None, :]
            if layer == k:
                return S, batch_stats
            if arch.batch_norm:
                if train or not self.moving_averages:
                    # add.reduce and a multiply: np.mean's Python layers cost 3x as much here
                    inv_n = 1.0 / S.shape[-2]
                    mean = np.add.reduce(S, axis=-2, keepdims=True, out=buf.mean)
                    mean *= inv_n
                    s_hat = np.subtract(S, mean, out=S if buf.s_hat is None else buf.s_hat)
                    squares = np.square(s_hat, out=buf.scratch)
                    var = np.add.reduce(squares, axis=-2, keepdims=True, out=buf.var)
                    var *= inv_n
                    if train and params is None:
                        batch_stats[f"mu{layer}"] = mean[..., 0, :]
                        batch_stats[f"var{layer}"] = var[..., 0, :]
                else:
                    mean = self.moving_averages[f"mu{layer}"]
                    var = self.moving_averages[f"var{layer}"]
                    s_hat = np.subtract(S, mean, out=S)
                inv_std = np.add(var, arch.bn_eps, out=buf.inv_std)
                np.sqrt(inv_std, out=inv_std)
                np.reciprocal(inv_std, out=inv_std)
                s_hat *= inv_std
                np.multiply(s_hat, p[f"gamma{layer}"][..., None, :], out=S)
                S += p[f"beta{layer}"][..., None, :]
            np.maximum(S, 0, out=S)
            if buf.active is not None:
                np.greater(S, 0, out=buf.active)
            H = S
        raise AssertionError("unreachable: the output layer returns")

    # -- backward -----------------------------------------------------------------------------

    def cost_and_gradients(
        self, X: np.ndarray, y: np.ndarray, lambda_: float
    ) -> tuple[float, dict[str, np.ndarray]]:
        """Cost and its exact gradient for every parameter, by name, in training mode.

        Leaves the moving averages alone so that it is a pure function of the parameters, which
        is what a numerical gradient check needs. The arrays returned are the caller's own.
        """
        H = np.asarray(X, dtype=self.dtype)
        loss, grads, _stats = self._loss_gradients_stats(H, y, scale=1.0)
        total = {name: grad.copy() for name, grad in grads.items()}
        for layer in range(1, self.arch.n_layers + 1):
            total[f"W{layer}"] += (2.0 * lambda_) * self.params[f"W{layer}"]
        return loss + lambda_ * self.weight_penalty(), total

    def train_step(
        self,
        X: np.ndarray,
        y: np.ndarray,
        lambda_: float,
        eta: float,
        lanes: Lanes | None = None,
        rows: np.ndarray | None = None,
        next_rows: np.ndarray | None = None,
    ) -> float:
        """One gradient-descent step on the mini-batch X[rows], y[rows] (all of X and y when
        `rows` is None); returns the cost before the step.

        Given the whole training set and the rows, the lanes of a split first layer gather their
        own halves of the batch; given also `next_rows`, the rows of the next call, which must
        follow with nothing changed in between, each lane goes on from its half of this step's
        update to its half of the next batch's first product (see `_InputSplit`). Not on one
        lane: there is no hand-over to save, and the next batch would evict this one's second
        half from the cache before its weight gradient.

        W becomes W - eta * (dloss/dW + 2 lambda W), done as a decay of W by (1 - 2 eta lambda)
        and the subtraction of eta * dloss/dW. The backward pass is linear in the gradient it
        starts from, so starting it from eta * dloss/dscores yields every step ready-made: each
        parameter costs one pass over its array (two for a weight), where scaling and adding
        the penalty term took four (see `_decay_and_step` for the penalty in the returned cost).
        `lanes` only decides which threads run a split layer's halves, never what they compute.
        """
        if rows is not None:
            rows = np.asarray(rows)
            y = np.asarray(y)[rows]
        p = self.params
        decay = 1.0 - 2.0 * lambda_ * eta
        work = self._workspace(len(y))
        split = work.input_split
        penalties = [0.0, 0.0, 0.0]  # W1's halves (each lane updates the half it computed), rest
        if next_rows is not None:
            next_rows = np.asarray(next_rows)
        ahead = (
            split is not None
            and rows is not None
            and next_rows is not None
            and len(next_rows) == len(y)  # else the next step has other buffers
            and lanes is not None
            and lanes.helping
        )

        def update_input_layer(which: int) -> None:
            assert split is not None
            W1 = p["W1"]
            penalties[which] = split.decay_and_step(which, W1, work.grads["W1"], decay)
            if ahead:
                split.prepare(which, X, next_rows, W1, each_gathers=True)

        def update_the_rest(stats: dict[str, np.ndarray]) -> None:
            for name, step in work.grads.items():
                if name == "W1" and split is not None:
                    continue  # by update_input_layer
                if name.startswith("W"):
                    penalties[2] += _decay_and_step(p[name], step, decay)
                elif name not in self._constant_biases:
                    p[name] -= step
            self._fold_statistics(work, stats)

        loss = self._loss_gradients_stats(
            X,
            y,
            scale=eta,
            lanes=lanes,
            rows=rows,
            after_input_layer=update_input_layer if split is not None else None,
            meanwhile=update_the_rest,
        )[0]
        self._weights_version += 1
        if ahead:
            split.prepared_for(X, next_rows, self._weights_version)
        return loss + lambda_ * sum(penalties)

    def update_moving_averages(self, batch_stats: Mapping[str, np.ndarray]) -> None:
        alpha = self.arch.bn_alpha
        for name, value in batch_stats.items():
            if name in self.moving_averages:
                average = self.moving_averages[name]
                average *= alpha
                average += (1.0 - alpha) * value
            else:
                self.moving_averages[name] = value.copy()

    def _fold_statistics(self, work: _Workspace, batch_stats: Mapping[str, np.ndarray]) -> None:
        """`update_moving_averages` for a training step, as one operation on all layers'
        statistics side by side (the same arithmetic, element by element).

        Falls back to the general update, and then gathers the averages side by side anew,
        whenever the dict no longer holds the views made last time: on the first batch, after
        `load_state`, or when a caller replaced the dict or an entry.
        """
        if self._averages is not None:
            averages, views = self._averages
            if (
                averages.shape == work.statistics.shape
                and self.moving_averages.keys() == views.keys()
                and all(self.moving_averages[name] is view for name, view in views.items())
            ):
                alpha = self.arch.bn_alpha
                averages *= alpha
                averages += (1.0 - alpha) * work.statistics
                return
        self._averages = None
        self.update_moving_averages(batch_stats)
        names = [name for name, _ in work.statistic_names]
        if names and all(name in self.moving_averages for name in names):
            averages = np.concatenate([self.moving_averages[name] for name in names])
            views = _consecutive(averages, work.statistic_names)
            self.moving_averages = dict(views)
            self._averages = (averages, views)

    def _workspace(self, n: int) -> _Workspace:
        work = self._workspaces.get(n)
        if work is None:
            # The trainer uses one batch size (plus at most a gradient check's); more would mean
            # a caller that varies it freely, and then holding them all is a leak.
            if len(self._workspaces) >= 4:
                self._workspaces.clear()
            work = self._workspaces[n] = _Workspace(self.arch, n, self.dtype)
        return work

    def _loss_gradients_stats(
        self,
        X: np.ndarray,
        y: np.ndarray,
        scale: float,
        lanes: Lanes | None = None,
        rows: np.ndarray | None = None,
        after_input_layer: Callable[[int], None] | None = None,
        meanwhile: Callable[[dict[str, np.ndarray]], None] | None = None,
    ) -> tuple[float, dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Mean cross-entropy, `scale` times its gradient for every parameter (no penalty term),
        and the batch statistics, for the batch X[rows] (X when `rows` is None).

        With a split first layer, `after_input_layer(half)` runs on each lane right after its
        half of W1's gradient, while those rows are in its cache. The gradients are the
        workspace's buffers, valid until the next step of this batch size.
        """
        p = self.params
        work = self._workspace(len(y))
        if rows is not None and work.input_split is None:  # no lanes to gather halves
            X, rows = X[rows], None
        if rows is None:
            X = np.asarray(X, dtype=self.dtype)
        grads = work.grads
        scores, stats = self._forward(X, train=True, work=work, lanes=lanes, rows=rows)
        k = self.arch.n_layers
        loss = _softmax_cross_entropy_grad(scores, y, work.rows, scale, out=work.layers[k - 1].grad)
        G = work.layers[k - 1].grad
        for layer in range(k, 0, -1):
            buf = work.layers[layer - 1]
            if layer < k:
                G *= buf.active  # through the ReLU
                if self.arch.batch_norm:
                    G = _batch_norm_backward(
                        G, buf, p[f"gamma{layer}"], grads[f"gamma{layer}"], grads[f"beta{layer}"]
                    )
            if not self.arch.normalized(layer):  # else the gradient stays 0 (see _Workspace)
                np.add.reduce(G, axis=0, out=grads[f"b{layer}"])
            if layer == 1 and work.input_split is not None:
                # The last gradient: every other one is ready for `meanwhile`.
                work.input_split.weight_gradient(
                    G,
                    grads["W1"],
                    lanes,
                    after_input_layer,
                    None if meanwhile is None else functools.partial(meanwhile, stats),
                )
                return loss, grads, stats
            H = X if layer == 1 else work.layers[layer - 2].out
            np.matmul(H.T, G, out=grads[f"W{layer}"])
            if layer > 1:  # the input layer's gradient is never needed
                G = np.matmul(G, p[f"W{layer}"].T, out=work.layers[layer - 2].grad)
        if meanwhile is not None:
            meanwhile(stats)
        return loss, grads, stats


class _InputSplit:
    """The first layer, shared by two lanes: each owns half of the input features, i.e. those
    columns of the batch and those rows of W1, its gradient and its update.

    Why features and not samples: a lane's half of the batch, of W1 and of its step then stays
    in that core's cache from the gather through the forward product, the weight gradient and
    the update (split by samples, both lanes would read all of W1, just updated on the other
    core). The forward product becomes the sum of two products over halves of the inner
    dimension -- a rounding different from the whole product's, but the same whichever lane
    computes which half, so results never depend on the lanes.

    Waking the helper costs 40-100 us on this machine (a halted virtual CPU), a quarter of a
    half product; so a step hands over as few jobs as it can: the weight gradient, update and
    next batch's forward product of one half are one job (`prepare` runs inside the backward
    pass's job), leaving one hand-over per step.
    """

    def __init__(self, d: int, n: int, width: int, dtype: np.dtype) -> None:
        middle = d // 32 * 16  # a multiple of 16, the blocks OpenBLAS's kernels work in
        self.features = (slice(0, middle), slice(middle, d))
        self.partials = [np.empty((n, width), dtype=dtype) for _ in range(2)]
        self.inputs: list[np.ndarray] = [np.empty((n, 0), dtype=dtype)] * 2  # for the backward
        self._batch = np.empty((0, d), dtype=dtype)  # the whole batch, when gathered at once
        # What the partials were computed for: rows, source and the weights' version.
        self._prepared: tuple[np.ndarray, np.ndarray, int] | None = None

    def prepare(
        self, which: int, X: np.ndarray, rows: np.ndarray | None, W: np.ndarray, each_gathers: bool
    ) -> None:
        """One half of X[rows] @ W (of X @ W when `rows` is None), into `partials[which]`.

        With `each_gathers` (the helper helps), each lane gathers its own half of the batch's
        features: the gather is a tenth of the step, and the half lands in the cache of the core
        that uses it. On one thread (half 0 runs first) one gather of whole rows is cheaper.
        """
        features = self.features[which]
        if rows is None:
            part = X[:, features]
        elif each_gathers:
            part = X[rows, features]
        else:
            if which == 0:
                self._batch = X[rows]
            part = self._batch[:, features]
        self.inputs[which] = part = np.asarray(part, dtype=W.dtype)
        np.matmul(part, W[features], out=self.partials[which])

    def prepared_for(self, X: np.ndarray, rows: np.ndarray, version: int) -> None:
        """Both halves of `prepare` have run for X[rows] with the weights of this `version`."""
        self._prepared = (rows.copy(), X, version)  # the caller may reuse its rows array

    def forward(
        self,
        X: np.ndarray,
        rows: np.ndarray | None,
        W: np.ndarray,
        version: int,
        out: np.ndarray,
        lanes: Lanes | None,
    ) -> np.ndarray:
        """X[rows] @ W into `out`, W at `version`; from the halves `prepare` left if they are
        for the same rows of the same X at the same version."""
        prepared, self._prepared = self._prepared, None
        if (
            rows is None
            or prepared is None
            or prepared[1] is not X
            or prepared[2] != version
            or not np.array_equal(prepared[0], rows)
        ):
            each_gathers = lanes is not None and lanes.helping  # once: both halves must agree
            run_halves(lambda which: self.prepare(which, X, rows, W, each_gathers), lanes)
        return np.add(self.partials[0], self.partials[1], out=out)

    def weight_gradient(
        self,
        G: np.ndarray,
        out: np.ndarray,
        lanes: Lanes | None,
        then: Callable[[int], None] | None,
        meanwhile: Callable[[], None] | None = None,
    ) -> None:
        """H.T @ G into `out` for the batch H of the last forward pass, by halves of out's rows;
        each lane goes on with `then(half)`."""

        def half(which: int) -> None:
            np.matmul(self.inputs[which].T, G, out=out[self.features[which]])
            if then is not None:
                then(which)

        run_halves(half, lanes, meanwhile)

    def decay_and_step(self, which: int, W: np.ndarray, step: np.ndarray, decay: float) -> float:
        """`_decay_and_step` on one half of W's rows."""
        features = self.features[which]
        return _decay_and_step(W[features], step[features], decay)


def _decay_and_step(W: np.ndarray, step: np.ndarray, decay: float) -> float:
    """W <- decay * W - step, in place; returns the sum of squares of W before the update.

    The sum is taken in W's dtype (a BLAS dot product), not in float64 as `weight_penalty`
    does: in float64 the sum for W1 took longer than every other elementwise operation of the
    step together, and the cost of a step only serves to notice divergence.
    """
    flat = W.ravel(order="K")
    penalty = float(np.dot(flat, flat))
    if decay != 1.0:
        W *= decay
    W -= step
    return penalty


def _softmax_cross_entropy_grad(
    scores: np.ndarray, y: np.ndarray, rows: np.ndarray, scale: float, out: np.ndarray
) -> float:
    """Mean cross-entropy of a batch, with `scale` times d(loss)/d(scores) written into `out`.

    One pass for both, where the loss and the softmax each used to shift and exponentiate the
    scores. `scores` is overwritten.
    """
    n = scores.shape[0]
    # The ufuncs' own reductions: the ndarray.max/sum and np.mean wrappers cost more than the
    # arithmetic on a 100 x 10 array.
    scores -= np.maximum.reduce(scores, axis=1, keepdims=True)
    picked = scores[rows, y]
    np.exp(scores, out=scores)
    sums = np.add.reduce(scores, axis=1, keepdims=True)
    loss = float(np.add.reduce(np.log(sums[:, 0]) - picked)) / n
    np.divide(scores, sums, out=out)
    out[rows, y] -= 1.0
    out *= scale / n
    return loss


def _batch_norm_backward(
    G: np.ndarray,
    buf: _LayerBuffers,
    gamma: np.ndarray,
    grad_gamma: np.ndarray,
    grad_beta: np.ndarray,
) -> np.ndarray:
    """Gradients of gamma and beta, and G taken back through the normalization, in place.

    With g_hat = gamma * G = dL/ds_hat and variance dividing by n:
    dL/ds = inv_std * (g_hat - mean(g_hat) - s_hat * mean(g_hat * s_hat)).
    The two means are gamma * grad_beta / n and gamma * grad_gamma / n, so no further reduction
    over the batch is needed once the parameter gradients are known.
    """
    s_hat, scratch = buf.s_hat, buf.scratch
    assert s_hat is not None and scratch is not None and buf.inv_std is not None
    n = G.shape[0]
    np.add.reduce(np.multiply(G, s_hat, out=scratch), axis=0, out=grad_gamma)
    np.add.reduce(G, axis=0, out=grad_beta)
    factor = gamma * buf.inv_std[0]  # dL/ds = factor * (G - grad_beta/n - s_hat * grad_gamma/n)
    G *= factor
    factor /= n
    G -= factor * grad_beta
    np.multiply(s_hat, factor * grad_gamma, out=scratch)
    G -= scratch
    return G


def _consecutive(flat: np.ndarray, sizes: Sequence[tuple[str, int]]) -> dict[str, np.ndarray]:
    """Views of consecutive pieces of `flat`, by name."""
    views, start = {}, 0
    for name, size in sizes:
        views[name] = flat[start : start + size]
        start += size
    return views


def parameter_shapes(arch: Architecture) -> dict[str, tuple[int, ...]]:
    """Every parameter's name and shape, in the order of `Network.params`."""
    shapes: dict[str, tuple[int, ...]] = {}
    widths = arch.widths
    for layer in range(1, arch.n_layers + 1):
        fan_in, fan_out = widths[layer - 1], widths[layer]
        shapes[f"W{layer}"] = (fan_in, fan_out)
        shapes[f"b{layer}"] = (fan_out,)
        if arch.normalized(layer):
            shapes[f"gamma{layer}"] = (fan_out,)
            shapes[f"beta{layer}"] = (fan_out,)
    return shapes


def initial_parameters(
    arch: Architecture, init: str, sigma: float, seed: int, dtype: np.dtype
) -> dict[str, np.ndarray]:
    """Draw weights in float64 and then cast, so float32 and float64 networks share a start."""
    rng = np.random.default_rng(seed)
    params: dict[str, np.ndarray] = {}
    for name, shape in parameter_shapes(arch).items():
        if name.startswith("W"):
            std = np.sqrt(2.0 / shape[0]) if init == "he" else sigma
            params[name] = (std * rng.standard_normal(shape)).astype(dtype)
        elif name.startswith("gamma"):
            params[name] = np.ones(shape, dtype=dtype)
        else:
            params[name] = np.zeros(shape, dtype=dtype)
    return params


def softmax(scores: np.ndarray) -> np.ndarray:
    shifted = scores - scores.max(axis=1, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=1, keepdims=True)
    return shifted


def cross_entropy(scores: np.ndarray, y: np.ndarray):
    """Mean cross-entropy from scores via log-sum-exp, finite even for confident wrong answers.

    Scores may carry leading stack axes; the result then has those axes.
    """
    shifted = scores - scores.max(axis=-1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=-1))
    picked = shifted[..., np.arange(len(y)), y]
    loss = np.mean(log_norm - picked, axis=-1)
    return float(loss) if np.ndim(loss) == 0 else loss
