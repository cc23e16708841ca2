"""A k-layer fully connected ReLU network with softmax output and optional batch normalization.

Pure NumPy: arrays in, arrays out, no files and no progress output. Samples are rows (`X` has
shape `(n, d)`), labels are integer class indices. Parameters live in one dict keyed by name
(`W1, b1, gamma1, beta1, ..., Wk, bk`) so that generic code -- the optimizer step, the numerical
gradient checker, saving and loading -- serves every parameter alike. Batch normalization is a
per-layer option inside the same forward/backward loop, not a second code path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

INITS = ("he", "normal")
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
class _LayerCache:
    """What one layer's backward pass needs from its forward pass."""

    inputs: np.ndarray
    s_hat: np.ndarray | None = None
    inv_std: np.ndarray | None = None
    active: np.ndarray | None = None


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
        out, _caches, _stats = self._forward(X, train=train)
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
        scores, _caches, _stats = self._forward(X, train=True, params=params)
        return cross_entropy(scores, y) + lambda_ * self.weight_penalty(params)

    def _forward(
        self,
        X: np.ndarray,
        *,
        train: bool,
        keep_cache: bool = False,
        params: Mapping[str, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, list[_LayerCache], dict[str, np.ndarray]]:
        """The one forward loop for every depth, with and without batch norm.

        Returns the output scores, per-layer caches for the backward pass (when asked) and the
        batch statistics of each normalized layer (in training mode), which the caller may fold
        into the moving averages. Vectors are broadcast with `[..., None, :]` and statistics
        taken over axis -2 so that the same loop serves stacked parameter sets (see `cost_of`).
        """
        p = self.params if params is None else params
        H = np.asarray(X, dtype=self.dtype)
        caches: list[_LayerCache] = []
        batch_stats: dict[str, np.ndarray] = {}
        k = self.arch.n_layers
        for layer in range(1, k + 1):
            cache = _LayerCache(inputs=H)
            S = H @ p[f"W{layer}"]
            S += p[f"b{layer}"][..., None, :]
            if layer == k:
                if keep_cache:
                    caches.append(cache)
                return S, caches, batch_stats
            if self.arch.batch_norm:
                if train or not self.moving_averages:
                    mean = S.mean(axis=-2, keepdims=True)
                    var = S.var(axis=-2, keepdims=True)
                    if train and params is None:
                        batch_stats[f"mu{layer}"] = mean[..., 0, :]
                        batch_stats[f"var{layer}"] = var[..., 0, :]
                else:
                    mean = self.moving_averages[f"mu{layer}"]
                    var = self.moving_averages[f"var{layer}"]
                inv_std = 1.0 / np.sqrt(var + self.arch.bn_eps)
                S -= mean
                S *= inv_std
                if keep_cache:
                    cache.s_hat, cache.inv_std = S.copy(), inv_std
                S *= p[f"gamma{layer}"][..., None, :]
                S += p[f"beta{layer}"][..., None, :]
            np.maximum(S, 0, out=S)
            if keep_cache:
                cache.active = S > 0
                caches.append(cache)
            H = S
        raise AssertionError("unreachable: the output layer returns")

    # -- backward -----------------------------------------------------------------------------

    def cost_and_gradients(
        self, X: np.ndarray, y: np.ndarray, lambda_: float
    ) -> tuple[float, dict[str, np.ndarray]]:
        """Cost and its exact gradient for every parameter, by name, in training mode.

        Leaves the moving averages alone so that it is a pure function of the parameters, which
        is what a numerical gradient check needs.
        """
        cost, grads, _stats = self._cost_gradients_stats(X, y, lambda_)
        return cost, grads

    def train_step(self, X: np.ndarray, y: np.ndarray, lambda_: float, eta: float) -> float:
        """One gradient-descent step on a mini-batch; returns the cost before the step."""
        cost, grads, stats = self._cost_gradients_stats(X, y, lambda_)
        for name, grad in grads.items():
            param = self.params[name]
            param -= eta * grad
        self.update_moving_averages(stats)
        return cost

    def update_moving_averages(self, batch_stats: Mapping[str, np.ndarray]) -> None:
        alpha = self.arch.bn_alpha
        for name, value in batch_stats.items():
            if name in self.moving_averages:
                average = self.moving_averages[name]
                average *= alpha
                average += (1.0 - alpha) * value
            else:
                self.moving_averages[name] = value.copy()

    def _cost_gradients_stats(
        self, X: np.ndarray, y: np.ndarray, lambda_: float
    ) -> tuple[float, dict[str, np.ndarray], dict[str, np.ndarray]]:
        p = self.params
        n = X.shape[0]
        scores, caches, stats = self._forward(X, train=True, keep_cache=True)
        cost = cross_entropy(scores, y) + lambda_ * self.weight_penalty()
        probs = softmax(scores)

        G = probs
        G[np.arange(n), y] -= 1.0
        G /= n  # G is now d(mean loss)/d(scores)
        grads: dict[str, np.ndarray] = {}
        for layer in range(self.arch.n_layers, 0, -1):
            cache = caches[layer - 1]
            if layer < self.arch.n_layers:
                G *= cache.active  # through the ReLU
                if self.arch.batch_norm:
                    grads[f"gamma{layer}"] = np.sum(G * cache.s_hat, axis=0)
                    grads[f"beta{layer}"] = G.sum(axis=0)
                    G = _batch_norm_backward(G * p[f"gamma{layer}"], cache.s_hat, cache.inv_std)
            W = p[f"W{layer}"]
            grads[f"W{layer}"] = cache.inputs.T @ G + (2.0 * lambda_) * W
            grads[f"b{layer}"] = G.sum(axis=0)
            if layer > 1:  # the input layer's gradient is never needed
                G = G @ W.T
        return cost, {name: grads[name] for name in p}, stats


def _batch_norm_backward(g_hat: np.ndarray, s_hat: np.ndarray, inv_std: np.ndarray) -> np.ndarray:
    """Closed-form gradient through (s - mean) / std with batch statistics.

    With g_hat = dL/ds_hat and variance dividing by n:
    dL/ds = inv_std * (g_hat - mean(g_hat) - s_hat * mean(g_hat * s_hat)).
    """
    centred = g_hat - g_hat.mean(axis=0)
    centred -= s_hat * np.mean(g_hat * s_hat, axis=0)
    centred *= inv_std
    return centred


def initial_parameters(
    arch: Architecture, init: str, sigma: float, seed: int, dtype: np.dtype
) -> dict[str, np.ndarray]:
    """Draw weights in float64 and then cast, so float32 and float64 networks share a start."""
    rng = np.random.default_rng(seed)
    params: dict[str, np.ndarray] = {}
    widths = arch.widths
    for layer in range(1, arch.n_layers + 1):
        fan_in, fan_out = widths[layer - 1], widths[layer]
        std = np.sqrt(2.0 / fan_in) if init == "he" else sigma
        params[f"W{layer}"] = (std * rng.standard_normal((fan_in, fan_out))).astype(dtype)
        params[f"b{layer}"] = np.zeros(fan_out, dtype=dtype)
        if arch.normalized(layer):
            params[f"gamma{layer}"] = np.ones(fan_out, dtype=dtype)
            params[f"beta{layer}"] = np.zeros(fan_out, dtype=dtype)
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
