"""A k-layer fully connected network: parameters and moving averages by name, over a stack of
layers described once, as data (`stack.py`).

From the stack follow the parameter names and shapes (W1 b1 gamma1 beta1 ... Wk bk, held in one
dict so that generic code serves them all), the forward and backward passes written as a
textbook writes them, the batch-norm statistics kept for evaluation, which gradients are exactly
zero, and where the ReLU kinks are for the gradient check. It is the model alone: training
steps run on the fast engine (`knn_cli/engine`), which whoever trains builds over a network and
which computes the same numbers faster; the network knows nothing of it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from knn_cli import layers as L
from knn_cli.stack import (
    INITS,
    LAYER_OPTIONS,
    TRAINING,
    Affine,
    BatchNorm,
    Init,
    Layer,
    Mode,
    standard_layers_of,
    zero_gradient_parameters,
)

DTYPES = ("float32", "float64")


class Network:
    """Parameters and moving averages of one network, with its passes.

    Every pass (`scores`, `forward`, `cost`, `cost_of`, `cost_and_gradients`) walks the layers
    as written in `layers.py`. A training step is the update rule's `step` on these gradients,
    then `update_moving_averages`; `knn_cli.engine.Engine` computes the same step faster
    (tests/test_engine.py holds it to that).
    """

    def __init__(
        self, input_dim: int, hidden: Sequence[int], n_classes: int, **options: Any
    ) -> None:
        """The study's stack (`standard_layers`) for widths (input_dim, *hidden, n_classes).

        `options` are the config's model settings by name (`knn_cli.config.ModelConfig`) plus
        `seed`, `dtype` and `label_smoothing`: those `standard_layers` takes shape the layers,
        the rest reach `from_layers`; each has its default in the one function that takes it.
        """
        widths = (int(input_dim), *(int(w) for w in hidden), int(n_classes))
        rest = {key: value for key, value in options.items() if key not in LAYER_OPTIONS}
        self._build(standard_layers_of(widths, options), **rest)

    @classmethod
    def from_layers(cls, stack: Sequence[Layer], **options: Any) -> Network:
        """A network of any stack of layers, e.g. one with a layer of your own; `options` as
        `_build` takes them."""
        network = cls.__new__(cls)
        network._build(list(stack), **options)
        return network

    def _build(
        self,
        stack: Sequence[Layer],
        *,
        init: str = "he",
        sigma: float = 0.1,
        seed: int = 0,
        dtype: str = "float32",
        bn_alpha: float = 0.8,
        label_smoothing: float = 0.0,
    ) -> None:
        """Parameters drawn for the stack: He or normal(`sigma`) weights from `seed`, held in
        `dtype`; `bn_alpha` is the moving averages' momentum."""
        stack = list(stack)
        init = Init(init, float(sigma))
        if init.scheme not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init.scheme!r}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        affine = [layer for layer in stack if isinstance(layer, Affine)]
        if not affine:
            raise ValueError("a network needs at least one Affine layer")
        self.layers: tuple[Layer, ...] = tuple(stack)
        self.input_dim, self.n_classes = affine[0].fan_in, affine[-1].fan_out
        self.dtype = np.dtype(dtype)
        self.bn_alpha = float(bn_alpha)
        # The training loss's label smoothing (0: plain cross-entropy against one-hot labels).
        self.label_smoothing = float(label_smoothing)
        self.shapes = {name: s for layer in stack for name, s in layer.parameters().items()}
        self.statistic_shapes = {n: s for layer in stack for n, s in layer.statistics().items()}
        self.decayed = tuple(name for layer in stack for name in layer.decayed())
        self.zero_gradients = zero_gradient_parameters(stack)
        # Weights are drawn in float64 and then cast, so float32 and float64 networks share a
        # start; layers draw in stack order from one generator.
        rng = np.random.default_rng(seed)
        self.params: dict[str, np.ndarray] = {}
        for layer in stack:
            for name, value in layer.initial_values(rng, init).items():
                self.params[name] = np.asarray(value).astype(self.dtype)
        # Empty until the first training batch: the study starts the averages from that batch's
        # statistics rather than from an arbitrary 0/1 guess.
        self.moving_averages: dict[str, np.ndarray] = {}

    @property
    def batch_norm(self) -> bool:
        return any(isinstance(layer, BatchNorm) for layer in self.layers)

    # -- parameters by name -------------------------------------------------------------------

    def get_params(self) -> dict[str, np.ndarray]:
        """A copy, so callers can keep a snapshot while training goes on."""
        return {name: value.copy() for name, value in self.params.items()}

    def set_params(self, values: Mapping[str, np.ndarray]) -> None:
        """Replace parameters by name (new arrays, never written into the old ones); names and
        shapes must match the layers'."""
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
        return clone

    def astype(self, dtype: str) -> Network:
        """An independent copy computing in `dtype` (e.g. float64 for a measurement whose
        differences float32 would drown in rounding)."""
        clone = self.snapshot()
        clone.dtype = np.dtype(dtype)
        clone.params = {name: value.astype(dtype) for name, value in clone.params.items()}
        clone.moving_averages = {k: v.astype(dtype) for k, v in clone.moving_averages.items()}
        return clone

    def state(self) -> dict[str, np.ndarray]:
        """Everything needed to restore the network: parameters and moving averages."""
        return {**self.get_params(), **{k: v.copy() for k, v in self.moving_averages.items()}}

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        self.set_params({k: v for k, v in state.items() if k in self.params})
        self.moving_averages = {
            name: np.asarray(state[name], dtype=self.dtype).copy()
            for name in self.statistic_shapes
            if name in state
        }

    # -- the textbook passes ------------------------------------------------------------------

    def forward_pass(
        self, X: np.ndarray, mode: Mode, params: Mapping[str, np.ndarray] | None = None
    ) -> tuple[np.ndarray, list[Any]]:
        """Class scores and every layer's cache, layer by layer."""
        p = self.params if params is None else params
        H = np.asarray(X, dtype=self.dtype)
        caches = []
        for layer in self.layers:
            H, cache = layer.forward(H, p, mode)
            caches.append(cache)
        return H, caches

    def backward_pass(
        self,
        dscores: np.ndarray,
        caches: Sequence[Any],
        params: Mapping[str, np.ndarray] | None = None,
    ) -> dict[str, np.ndarray]:
        """dL/d(every parameter), from dL/dscores, layer by layer from the last (at `params`
        where the forward pass was taken at other parameters than the network's)."""
        p = self.params if params is None else params
        grads: dict[str, np.ndarray] = {}
        G = dscores
        for layer, cache in zip(reversed(self.layers[1:]), reversed(caches[1:]), strict=True):
            G, layer_grads = layer.backward(G, cache, p)
            grads.update(layer_grads)
        # The first layer's input is the data: its gradient is never needed.
        grads.update(self.layers[0].parameter_gradients(G, caches[0], p))
        return {name: grads[name] for name in self.params}

    def cost_and_gradients(
        self, X: np.ndarray, y: np.ndarray, lambda_: float, noise: tuple[int, ...] = (0,)
    ) -> tuple[float, dict[str, np.ndarray]]:
        """Cost and its exact gradient for every parameter, by name, in training mode (dropout's
        masks drawn from `noise`), through the layers as written: the reference for the engine.

        Leaves the moving averages alone, so that it is a pure function of the parameters, which
        is what a numerical gradient check needs.
        """
        scores, caches = self.forward_pass(X, Mode(train=True, noise=noise))
        smoothing = self.label_smoothing
        dscores = L.softmax_cross_entropy_backward(scores, y, smoothing)
        grads = self.backward_pass(dscores, caches)
        for name in self.decayed:
            grads[name] = grads[name] + 2.0 * lambda_ * self.params[name]
        return L.cross_entropy(scores, y, smoothing) + lambda_ * self.weight_penalty(), grads

    # The name the gradient check and the tests use beside the engine's gradients.
    textbook_gradients = cost_and_gradients

    def batch_statistics(
        self, X: np.ndarray, noise: tuple[int, ...] = (0,)
    ) -> dict[str, np.ndarray]:
        """The statistics a training step on the batch X measures, by name."""
        _scores, caches = self.forward_pass(X, Mode(train=True, noise=noise))
        stats: dict[str, np.ndarray] = {}
        for layer, cache in zip(self.layers, caches, strict=True):
            stats.update(layer.batch_statistics(cache))
        return stats

    def precise_statistics(self, X: np.ndarray, block_size: int = 10_000) -> dict[str, np.ndarray]:
        """Batch norm's statistics over all of X ("precise BN", Wu and Johnson, 2021), to use in
        place of the moving averages, which average batches seen while the parameters still
        moved: layer by layer, each measured on its input over every row, computed in evaluation
        mode with the statistics of the layers before it already replaced. One pass through the
        network, keeping one layer's activations of all the rows at a time."""
        stats: dict[str, np.ndarray] = {}
        mode = Mode(train=False, averages=stats)
        blocks = [
            np.asarray(X[start : start + block_size], dtype=self.dtype)
            for start in range(0, len(X), block_size)
        ]
        for layer in self.layers:
            stats.update(layer.population_statistics(blocks))
            blocks = [layer.forward(block, self.params, mode)[0] for block in blocks]
        return stats

    def update_moving_averages(self, batch_stats: Mapping[str, np.ndarray]) -> None:
        """average <- alpha average + (1 - alpha) batch statistic; the first batch's start them."""
        alpha = self.bn_alpha
        for name, value in batch_stats.items():
            if name in self.moving_averages:
                average = self.moving_averages[name]
                average *= alpha
                average += (1.0 - alpha) * value
            else:
                self.moving_averages[name] = value.copy()

    # -- forward: scores, probabilities, predictions, cost -------------------------------------

    def scores(self, X: np.ndarray, *, train: bool = False) -> np.ndarray:
        """Unnormalized class scores. Evaluation mode uses the moving averages where they exist."""
        mode = TRAINING if train else Mode(train=False, averages=self.moving_averages)
        return self.forward_pass(X, mode)[0]

    def forward(self, X: np.ndarray, *, train: bool = False) -> np.ndarray:
        """Class probabilities, shape (n, n_classes)."""
        return L.softmax(self.scores(X, train=train))

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
        """(cost, loss): mean cross-entropy (label-smoothed as in training) plus lambda times
        the sum of squared weights."""
        loss = L.cross_entropy(self.scores(X, train=train), y, self.label_smoothing)
        return loss + lambda_ * self.weight_penalty(), loss

    def weight_penalty(self, params: Mapping[str, np.ndarray] | None = None) -> Any:
        """sum(w^2) over the decayed parameters (per variant, for stacked parameters)."""
        p = self.params if params is None else params
        total = sum(
            np.sum(np.square(p[name], dtype=np.float64), axis=(-2, -1)) for name in self.decayed
        )
        return float(total) if np.ndim(total) == 0 else total

    def cost_of(
        self,
        params: Mapping[str, np.ndarray],
        X: np.ndarray,
        y: np.ndarray,
        lambda_: float,
        noise: tuple[int, ...] = (0,),
    ) -> np.ndarray:
        """Training-mode cost for parameter sets stacked along a leading axis, shape (P,).

        Every array in `params` has shape (P, *shape): P variants of the network evaluated in one
        pass, which lets a numerical gradient check perturb hundreds of entries per call. Vectors
        get a row axis, (P, 1, m), to broadcast over the batch's rows.
        """
        stacked = {
            name: value[:, None, :] if len(self.shapes[name]) == 1 else value
            for name, value in params.items()
        }
        scores, _caches = self.forward_pass(X, Mode(train=True, noise=noise), stacked)
        loss = L.cross_entropy(scores, y, self.label_smoothing)
        return loss + lambda_ * self.weight_penalty(params)
