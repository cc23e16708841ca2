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
cost three times the arithmetic here). The large products are done as two halves of their
output rows, which the trainer's two lanes can run on both cores at once (see `lanes`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from knn_cli.lanes import Lanes, run_halves

INITS = ("he", "normal")
# A step's product of at least this many multiply-adds is done as two halves of its output rows,
# for two lanes to run at once; a smaller one costs more to hand over than it takes. The first
# layer's (100 x 3072 x 50 = 15M) are split; a hidden layer's (100 x 50 x 50) are not.
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
                    mean=vector() if normalized else None,
                    var=vector() if normalized else None,
                    inv_std=vector() if normalized else None,
                )
            )
        self.rows = np.arange(n)
        # One per parameter, in the parameters' order; shapes are fixed by the architecture.
        self.grads = {
            name: np.empty(shape, dtype=dtype) for name, shape in parameter_shapes(arch).items()
        }


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
        self._workspaces: dict[int, _Workspace] = {}
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

    def snapshot(self) -> Network:
        """An independent copy of parameters and moving averages, to evaluate elsewhere (on
        another thread) while this network goes on training."""
        clone = copy.copy(self)
        clone.params = self.get_params()
        clone.moving_averages = {k: v.copy() for k, v in self.moving_averages.items()}
        clone._workspaces = {}
        return clone

    def state(self) -> dict[str, np.ndarray]:
        """Everything needed to restore the network: parameters and moving averages."""
        return {**self.get_params(), **{k: v.copy() for k, v in self.moving_averages.items()}}

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        self.set_params({k: v for k, v in state.items() if k in self.params})
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
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The one forward loop for every depth, with and without batch norm.

        Returns the output scores and the batch statistics of each normalized layer (in training
        mode), which the caller may fold into the moving averages. With a workspace every result
        lands in its buffers, which then hold what the backward pass needs; without one, arrays
        are allocated. Vectors are broadcast with `[..., None, :]` and statistics taken over
        axis -2 so that the same loop serves stacked parameter sets (see `cost_of`).
        """
        p = self.params if params is None else params
        H = np.asarray(X, dtype=self.dtype)
        batch_stats: dict[str, np.ndarray] = {}
        arch = self.arch
        k = arch.n_layers
        for layer in range(1, k + 1):
            buf = _ALLOCATE if work is None else work.layers[layer - 1]
            S = _product(H, p[f"W{layer}"], buf.out, lanes)
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
        self, X: np.ndarray, y: np.ndarray, lambda_: float, eta: float, lanes: Lanes | None = None
    ) -> float:
        """One gradient-descent step on a mini-batch; returns the cost before the step.

        W becomes W - eta * (dloss/dW + 2 lambda W), done as a decay of W by (1 - 2 eta lambda)
        and the subtraction of eta * dloss/dW. The backward pass is linear in the gradient it
        starts from, so starting it from eta * dloss/dscores yields every step ready-made: each
        parameter costs one pass over its array (two for a weight), where scaling and adding
        the penalty term took four. The penalty in the returned cost is summed in the network's
        dtype (a BLAS dot product), not in float64 as `weight_penalty` does: the float64 sum of
        W1 squared took longer than every other non-matrix-product operation of the step
        together, and the cost of a step only serves to notice divergence. `lanes` only decides
        which threads run the large products' halves, never what they compute.
        """
        H = np.asarray(X, dtype=self.dtype)
        loss, steps, stats = self._loss_gradients_stats(H, y, scale=eta, lanes=lanes)
        p = self.params
        penalty = 0.0
        decay = 1.0 - 2.0 * lambda_ * eta
        for layer in range(1, self.arch.n_layers + 1):
            W = p[f"W{layer}"]
            flat = W.ravel(order="K")
            penalty += float(np.dot(flat, flat))
            if decay != 1.0:
                W *= decay
        for name, step in steps.items():
            if name not in self._constant_biases:
                p[name] -= step
        self.update_moving_averages(stats)
        return loss + lambda_ * penalty

    def update_moving_averages(self, batch_stats: Mapping[str, np.ndarray]) -> None:
        alpha = self.arch.bn_alpha
        for name, value in batch_stats.items():
            if name in self.moving_averages:
                average = self.moving_averages[name]
                average *= alpha
                average += (1.0 - alpha) * value
            else:
                self.moving_averages[name] = value.copy()

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
        self, X: np.ndarray, y: np.ndarray, scale: float, lanes: Lanes | None = None
    ) -> tuple[float, dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Mean cross-entropy, `scale` times its gradient for every parameter (no penalty term),
        and the batch statistics.

        The gradients are the workspace's buffers, valid until the next step of this batch size.
        """
        p = self.params
        n = X.shape[0]
        work = self._workspace(n)
        grads = work.grads
        scores, stats = self._forward(X, train=True, work=work, lanes=lanes)
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
            H = X if layer == 1 else work.layers[layer - 2].out
            _product(H.T, G, grads[f"W{layer}"], lanes)
            if self.arch.normalized(layer):
                # Batch norm subtracts the batch mean, so a bias before it cannot change the
                # training cost: its gradient is exactly 0 (summing G would give rounding noise).
                grads[f"b{layer}"].fill(0.0)
            else:
                np.add.reduce(G, axis=0, out=grads[f"b{layer}"])
            if layer > 1:  # the input layer's gradient is never needed
                G = _product(G, p[f"W{layer}"].T, work.layers[layer - 2].grad, lanes)
        return loss, grads, stats


def _product(
    A: np.ndarray, B: np.ndarray, out: np.ndarray | None, lanes: Lanes | None
) -> np.ndarray:
    """A @ B, into `out` when given. A large 2-D product into a buffer is computed as two halves
    of the output rows whether or not there are lanes to share them, so that the result does not
    depend on who computed it."""
    if (
        out is None
        or out.ndim != 2
        or out.shape[0] < 32
        or A.size * B.shape[-1] < SPLIT_MIN_MULTIPLY_ADDS
    ):
        return np.matmul(A, B, out=out)
    # At a multiple of 16 rows, the blocks OpenBLAS's kernels work in: two halves of a 100-row
    # product then cost 8% more than the whole on one thread, split at row 50 they cost 13% more.
    middle = out.shape[0] // 32 * 16

    def half(which: int) -> None:
        rows = slice(0, middle) if which == 0 else slice(middle, None)
        np.matmul(A[rows], B, out=out[rows])

    run_halves(half, lanes)
    return out


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
