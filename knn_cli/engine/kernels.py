"""Fast kernels: each layer's training-mode forward and backward, in buffers kept from step to step.

A kernel computes what its layer's pair in `layers.py` computes, with the same operations in the
same order where that costs nothing (tests/test_engine.py compares them element by element), but
writes into arrays it owns (`out=`) and, where the input is not needed afterwards, in place: a
training step of the study's networks is two large matrix products and a hundred small
operations whose NumPy call overhead outweighs their arithmetic, so every allocation and pass
saved shows (benchmarks/bench_train.py). Reductions call the ufuncs' own `reduce`, whose wrappers
(np.mean, ndarray.sum) cost more than the arithmetic on arrays this small.

`kernel_for` picks the fast kernel of a layer's class, and `LayerKernel`, which calls the layer's
own forward and backward, for any other: a new layer trains without a kernel of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from knn_cli.stack import Affine, BatchNorm, Dropout, Layer, Mode, ReLU

Params = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class KernelSetup:
    """What a kernel needs to know beyond its layer, for one batch size."""

    n: int
    dtype: np.dtype
    first: bool  # the first layer: its input gradient is never needed
    zero_gradients: frozenset[str]  # parameters whose gradient is exactly zero (left at 0)
    statistics: Mapping[str, np.ndarray]  # where the batch statistics go, by name


class Kernel(Protocol):
    # Whether forward writes its output over its input (so the input must be the step's own).
    in_place: bool

    def forward(self, x: np.ndarray, params: Params, mode: Mode) -> np.ndarray:
        """The training-mode output (mode: the step's noise)."""
        ...

    def backward(
        self, g: np.ndarray, params: Params, grads: dict[str, np.ndarray]
    ) -> np.ndarray | None:
        """dL/dx from dL/dout (None for the first layer), parameter gradients into `grads`;
        may overwrite `g`."""
        ...


class AffineKernel:
    """x W + b into its own buffer; keeps x (the previous kernel's buffer) for dW = x^T g."""

    in_place = False

    def __init__(self, layer: Affine, setup: KernelSetup) -> None:
        self.W, self.b = layer.W, layer.b
        self.out = np.empty((setup.n, layer.fan_out), dtype=setup.dtype)
        self.dx = None if setup.first else np.empty((setup.n, layer.fan_in), dtype=setup.dtype)
        self.constant_bias = layer.b in setup.zero_gradients
        self.x = self.out[:, :0]

    def forward(self, x: np.ndarray, params: Params, mode: Mode) -> np.ndarray:
        self.x = x
        out = np.matmul(x, params[self.W], out=self.out)
        out += params[self.b]
        return out

    def backward(self, g, params, grads):
        if not self.constant_bias:
            np.add.reduce(g, axis=0, out=grads[self.b])
        np.matmul(self.x.T, g, out=grads[self.W])
        if self.dx is None:
            return None
        return np.matmul(g, params[self.W].T, out=self.dx)


class BatchNormKernel:
    """Batch norm over the rows, the output written over the input (its backward needs only
    x_hat and 1 / std); mean and variance land where the moving averages are folded from."""

    in_place = True

    def __init__(self, layer: BatchNorm, setup: KernelSetup) -> None:
        self.gamma, self.beta, mean, var = layer.names
        self.eps = layer.eps
        self.x_hat = np.empty((setup.n, layer.width), dtype=setup.dtype)
        self.scratch = np.empty_like(self.x_hat)
        self.inv_std = np.empty((1, layer.width), dtype=setup.dtype)
        self.mean = setup.statistics[mean][None, :]
        self.var = setup.statistics[var][None, :]

    def forward(self, x: np.ndarray, params: Params, mode: Mode) -> np.ndarray:
        inv_n = 1.0 / x.shape[0]
        mean = np.add.reduce(x, axis=0, keepdims=True, out=self.mean)
        mean *= inv_n
        x_hat = np.subtract(x, mean, out=self.x_hat)
        var = np.add.reduce(np.square(x_hat, out=self.scratch), axis=0, keepdims=True, out=self.var)
        var *= inv_n
        inv_std = np.add(var, self.eps, out=self.inv_std)
        np.sqrt(inv_std, out=inv_std)
        np.reciprocal(inv_std, out=inv_std)
        x_hat *= inv_std
        out = np.multiply(x_hat, params[self.gamma], out=x)
        out += params[self.beta]
        return out

    def backward(self, g, params, grads):
        """layers.batch_norm_backward rearranged: its two means over the rows are
        gamma dbeta / n and gamma dgamma / n, so once the parameter gradients are known no
        further reduction is needed: dx = gamma inv_std (g - dbeta / n - x_hat dgamma / n)."""
        x_hat, scratch = self.x_hat, self.scratch
        dgamma, dbeta = grads[self.gamma], grads[self.beta]
        np.add.reduce(np.multiply(g, x_hat, out=scratch), axis=0, out=dgamma)
        np.add.reduce(g, axis=0, out=dbeta)
        factor = params[self.gamma] * self.inv_std[0]
        g *= factor
        factor /= g.shape[0]
        g -= factor * dbeta
        np.multiply(x_hat, factor * dgamma, out=scratch)
        g -= scratch
        return g


class ReLUKernel:
    """max(x, 0) over its input, and the mask of active units for the backward pass."""

    in_place = True

    def __init__(self, layer: ReLU, setup: KernelSetup) -> None:
        self.active = np.empty((0, 0), dtype=bool)  # its width is known at the first forward

    def forward(self, x: np.ndarray, params: Params, mode: Mode) -> np.ndarray:
        if self.active.shape != x.shape:
            self.active = np.empty(x.shape, dtype=bool)
        np.maximum(x, 0, out=x)
        np.greater(x, 0, out=self.active)
        return x

    def backward(self, g, params, grads):
        g *= self.active
        return g


class DropoutKernel:
    """Inverted dropout in place, the mask drawn as `layers.dropout_forward` draws it."""

    in_place = True

    def __init__(self, layer: Dropout, setup: KernelSetup) -> None:
        self.index, self.keep = layer.index, 1.0 - layer.rate
        self.mask = np.empty((0, 0), dtype=setup.dtype)

    def forward(self, x: np.ndarray, params: Params, mode: Mode) -> np.ndarray:
        drawn = mode.generator(self.index).random(x.shape, dtype=np.float32)
        self.mask = np.less(drawn, self.keep).astype(x.dtype)
        self.mask /= self.keep
        x *= self.mask
        return x

    def backward(self, g, params, grads):
        g *= self.mask
        return g


class LayerKernel:
    """Any layer without a kernel of its own, through its own forward and backward.

    Outputs are copied: the kernels that work in place must never write into an array the
    layer may have kept in its cache.
    """

    in_place = False

    def __init__(self, layer: Layer, setup: KernelSetup) -> None:
        self.layer = layer
        self.statistics = setup.statistics
        self.cache: object = None

    def forward(self, x: np.ndarray, params: Params, mode: Mode) -> np.ndarray:
        out, self.cache = self.layer.forward(x, params, mode)
        for name, value in self.layer.batch_statistics(self.cache).items():
            self.statistics[name][...] = value
        return np.array(out, dtype=x.dtype)

    def backward(self, g, params, grads):
        dx, layer_grads = self.layer.backward(g, self.cache, params)
        for name, value in layer_grads.items():
            grads[name][...] = value
        return np.array(dx, dtype=g.dtype)


FAST_KERNELS: dict[type[Layer], type] = {
    Affine: AffineKernel,
    BatchNorm: BatchNormKernel,
    ReLU: ReLUKernel,
    Dropout: DropoutKernel,
}


def kernel_for(layer: Layer, setup: KernelSetup) -> Kernel:
    """The layer's fast kernel; subclasses of a layer class get LayerKernel, as they may have
    changed its math."""
    return FAST_KERNELS.get(type(layer), LayerKernel)(layer, setup)


def softmax_cross_entropy_grad(
    scores: np.ndarray,
    y: np.ndarray,
    rows: np.ndarray,
    scale: float,
    out: np.ndarray,
    smoothing: float = 0.0,
) -> float:
    """Mean cross-entropy of a batch (with label smoothing), with `scale` times
    d(loss)/d(scores) written into `out`.

    One pass for both (layers.cross_entropy and softmax_cross_entropy_backward each shift and
    exponentiate the scores). `scores` is overwritten. `rows` is np.arange(n).
    """
    n, classes = scores.shape
    scores -= np.maximum.reduce(scores, axis=1, keepdims=True)
    picked = scores[rows, y]
    if smoothing:
        mean_score = np.add.reduce(scores, axis=1) / classes
        picked = (1.0 - smoothing) * picked + smoothing * mean_score
    np.exp(scores, out=scores)
    sums = np.add.reduce(scores, axis=1, keepdims=True)
    loss = float(np.add.reduce(np.log(sums[:, 0]) - picked)) / n
    np.divide(scores, sums, out=out)
    out[rows, y] -= 1.0 - smoothing
    if smoothing:
        out -= smoothing / classes
    out *= scale / n
    return loss


def sum_of_squares(w: np.ndarray) -> float:
    """sum(w^2) in w's dtype (a BLAS dot product), for the cost a step reports.

    In float64, as `Network.weight_penalty` sums, this took longer than every other elementwise
    operation of a step together; the step's cost only serves to notice divergence.
    """
    flat = w.ravel(order="K")
    return float(np.dot(flat, flat))
