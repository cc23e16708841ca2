"""Fast kernels: each layer's training-mode forward and backward for a population of networks,
in buffers kept from step to step.

A kernel computes what its layer's pair in `layers.py` computes, for every member at once: its
arrays carry the members on a leading axis -- activations (P, n, m), a matrix (P, d, m), a
vector (P, 1, m) -- and it sums over the rows of each member, never across members, so each
member's numbers are those it would get alone (a population of one is the lone network). It
computes what the layer does, to rounding (tests/test_engine.py compares them element by
element; batch norm is fused, its passes rearranged), writes into arrays it owns (`out=`)
and, where the input is not needed afterwards, works in place: a training step of the study's
networks is two large matrix products and a hundred small operations whose NumPy call overhead
outweighs their arithmetic, so every allocation and pass saved shows, and stacking the members
pays that overhead once for all of them (benchmarks/bench_population.py). Sums over a batch's
rows are products with a row of ones (`sums_over_rows`), other reductions call the ufuncs' own
`reduce`, whose wrappers (np.mean, ndarray.sum) cost more than the arithmetic.

`kernel_for` picks the fast kernel of a layer's class, and `LayerKernel`, which calls the layer's
own forward and backward member by member, for any other: a new layer trains without a kernel
of its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from knn_cli.engine.batches import MemberGroups
from knn_cli.stack import Affine, BatchNorm, Dropout, Layer, Mode, ReLU

Params = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class KernelSetup:
    """What a kernel needs to know beyond its layer, for one batch size."""

    n: int
    dtype: np.dtype
    first: bool  # the first layer: its input is the groups' batches, its input gradient unused
    zero_gradients: frozenset[str]  # parameters whose gradient is exactly zero (left at 0)
    statistics: Mapping[str, np.ndarray]  # where the batch statistics go, by name: (P, size)
    groups: MemberGroups  # which members draw the same batch
    shapes: Mapping[str, tuple[int, ...]]  # each parameter's shape in one network

    @property
    def members(self) -> int:
        return self.groups.members


class Kernel(Protocol):
    # Whether forward writes its output over its input (so the input must be the step's own).
    in_place: bool

    def forward(self, x: np.ndarray, params: Params, modes: Sequence[Mode]) -> np.ndarray:
        """The training-mode output (modes: each group's, with the step's noise)."""
        ...

    def backward(
        self, g: np.ndarray, params: Params, grads: dict[str, np.ndarray]
    ) -> np.ndarray | None:
        """dL/dx from dL/dout (None for the first layer), parameter gradients into `grads`;
        may overwrite `g`."""
        ...


def sums_over_rows(setup: KernelSetup) -> np.ndarray:
    """A row of ones, (1, n): `sums @ x` adds up each member's rows of x (P, n, m) in one matrix
    product, several times faster than np.add.reduce over axis -2 at these shapes (NumPy walks
    that axis a few units at a time; benchmarks/bench_population.py --parts)."""
    return np.ones((1, setup.n), dtype=setup.dtype)


class AffineKernel:
    """x W + b into its own buffer; keeps x (the previous kernel's buffer) for dW = x^T g. As
    the first layer, x is each group's batch, (G, n, d), multiplied by its members' W."""

    in_place = False

    def __init__(self, layer: Affine, setup: KernelSetup) -> None:
        self.W, self.b = layer.W, layer.b
        P, n = setup.members, setup.n
        self.groups = setup.groups if setup.first else None
        self.out = np.empty((P, n, layer.fan_out), dtype=setup.dtype)
        self.dx = None if setup.first else np.empty((P, n, layer.fan_in), dtype=setup.dtype)
        self.constant_bias = layer.b in setup.zero_gradients
        self.sums = sums_over_rows(setup)
        self.x = self.out[..., :0]

    def forward(self, x: np.ndarray, params: Params, modes: Sequence[Mode]) -> np.ndarray:
        self.x = x
        if self.groups is not None:
            out = self.groups.product(x, params[self.W], self.out)
        else:
            out = np.matmul(x, params[self.W], out=self.out)
        out += params[self.b]
        return out

    def backward(self, g, params, grads):
        if not self.constant_bias:
            np.matmul(self.sums, g, out=grads[self.b])
        xT = self.x.transpose(0, 2, 1)
        if self.groups is not None:
            self.groups.product(xT, g, grads[self.W])
        else:
            np.matmul(xT, g, out=grads[self.W])
        if self.dx is None:
            return None
        return np.matmul(g, params[self.W].transpose(0, 2, 1), out=self.dx)


class BatchNormKernel:
    """Batch norm over each member's rows, the output written over the input; its backward
    needs only the centred input, 1 / std and gamma / std. Mean and variance land where the
    moving averages are folded from.

    Fused: the sums over the rows are products with a row of 1 / n (`sums_over_rows`), the
    output is centred x times gamma / std in one pass (x_hat is never formed), and the backward
    pass works from the centred input: four passes over the layer's activations forward and
    five backward where `layers.py` takes seven and nine."""

    in_place = True

    def __init__(self, layer: BatchNorm, setup: KernelSetup) -> None:
        self.gamma, self.beta, mean, var = layer.names
        self.eps = layer.eps
        P, n = setup.members, setup.n
        self.centred = np.empty((P, n, layer.width), dtype=setup.dtype)
        self.scratch = np.empty_like(self.centred)
        self.inv_std = np.empty((P, 1, layer.width), dtype=setup.dtype)
        self.scale = np.empty_like(self.inv_std)  # gamma / std
        self.averaging = sums_over_rows(setup) / n
        self.sums = sums_over_rows(setup)
        self.mean = setup.statistics[mean][:, None, :]
        self.var = setup.statistics[var][:, None, :]

    def forward(self, x: np.ndarray, params: Params, modes: Sequence[Mode]) -> np.ndarray:
        """mu = mean(x), var = mean((x - mu)^2), out = (x - mu) (gamma / std) + beta."""
        mean = np.matmul(self.averaging, x, out=self.mean)
        centred = np.subtract(x, mean, out=self.centred)
        np.matmul(self.averaging, np.square(centred, out=self.scratch), out=self.var)
        inv_std = np.add(self.var, self.eps, out=self.inv_std)
        np.sqrt(inv_std, out=inv_std)
        np.reciprocal(inv_std, out=inv_std)
        scale = np.multiply(params[self.gamma], inv_std, out=self.scale)
        out = np.multiply(centred, scale, out=x)
        out += params[self.beta]
        return out

    def backward(self, g, params, grads):
        """layers.batch_norm_backward rearranged: with x_hat = centred / std, its two means
        over the rows are gamma dbeta / n and gamma dgamma / n, so
        dx = (gamma / std) (g - dbeta / n - centred dgamma / (n std))."""
        centred, scratch, inv_std, scale = self.centred, self.scratch, self.inv_std, self.scale
        dbeta = np.matmul(self.sums, g, out=grads[self.beta])
        dgamma = np.matmul(self.sums, np.multiply(g, centred, out=scratch), out=grads[self.gamma])
        dgamma *= inv_std
        g *= scale
        factor = scale / g.shape[-2]
        g -= factor * dbeta
        factor *= inv_std
        factor *= dgamma
        g -= np.multiply(centred, factor, out=scratch)
        return g


class ReLUKernel:
    """max(x, 0) over its input, and the mask of active units for the backward pass."""

    in_place = True

    def __init__(self, layer: ReLU, setup: KernelSetup) -> None:
        self.active = np.empty((0, 0, 0), dtype=bool)  # its width is known at the first forward

    def forward(self, x: np.ndarray, params: Params, modes: Sequence[Mode]) -> np.ndarray:
        if self.active.shape != x.shape:
            self.active = np.empty(x.shape, dtype=bool)
        np.maximum(x, 0, out=x)
        np.greater(x, 0, out=self.active)
        return x

    def backward(self, g, params, grads):
        g *= self.active
        return g


class DropoutKernel:
    """Inverted dropout in place, each group's mask drawn as `layers.dropout_forward` draws it
    (members that share a batch share its masks, as they share its seed)."""

    in_place = True

    def __init__(self, layer: Dropout, setup: KernelSetup) -> None:
        self.index, self.keep = layer.index, 1.0 - layer.rate
        self.groups = setup.groups
        self.mask = np.empty((0, 0, 0), dtype=setup.dtype)

    def forward(self, x: np.ndarray, params: Params, modes: Sequence[Mode]) -> np.ndarray:
        drawn = np.stack(
            [mode.generator(self.index).random(x.shape[1:], dtype=np.float32) for mode in modes]
        )
        mask = np.less(drawn, self.keep).astype(x.dtype)
        mask /= self.keep
        self.mask = mask if self.groups.count == self.groups.members else self.groups.expand(mask)
        x *= self.mask
        return x

    def backward(self, g, params, grads):
        g *= self.mask
        return g


class LayerKernel:
    """Any layer without a kernel of its own, through its own forward and backward, member by
    member (with the member's parameters and its group's noise).

    Outputs are copied: the kernels that work in place must never write into an array the
    layer may have kept in its cache.
    """

    in_place = False

    def __init__(self, layer: Layer, setup: KernelSetup) -> None:
        self.layer = layer
        self.statistics = setup.statistics
        self.groups = setup.groups
        self.shapes = setup.shapes
        self.first = setup.first
        self.caches: list[object] = []

    def _member(self, params: Params, i: int) -> dict[str, np.ndarray]:
        return {
            name: params[name][i].reshape(self.shapes[name]) for name in self.layer.parameters()
        }

    def forward(self, x: np.ndarray, params: Params, modes: Sequence[Mode]) -> np.ndarray:
        outs, self.caches = [], []
        for i, group in enumerate(self.groups.group_of):
            member_x = x[group] if self.first else x[i]
            out, cache = self.layer.forward(member_x, self._member(params, i), modes[group])
            self.caches.append(cache)
            for name, value in self.layer.batch_statistics(cache).items():
                self.statistics[name][i] = value
            outs.append(np.array(out, dtype=x.dtype))
        return np.stack(outs)

    def backward(self, g, params, grads):
        dxs = []
        for i, cache in enumerate(self.caches):
            dx, layer_grads = self.layer.backward(g[i], cache, self._member(params, i))
            for name, value in layer_grads.items():
                grads[name][i] = np.reshape(value, grads[name].shape[1:])
            dxs.append(dx)
        if self.first:
            return None
        return np.stack(dxs).astype(g.dtype)


FAST_KERNELS: dict[type[Layer], type] = {
    Affine: AffineKernel,
    BatchNorm: BatchNormKernel,
    ReLU: ReLUKernel,
    Dropout: DropoutKernel,
}


def kernel_for(layer: Layer, setup: KernelSetup) -> Kernel:
    """The layer's fast kernel; subclasses of a layer class get LayerKernel, as they may have
    changed its math. A first layer other than an affine one is the generic kernel, which
    reads each member's rows from its group's batch."""
    if setup.first and type(layer) is not Affine:
        return LayerKernel(layer, setup)
    return FAST_KERNELS.get(type(layer), LayerKernel)(layer, setup)


def softmax_cross_entropy_grad(
    scores: np.ndarray,
    labels: np.ndarray,
    row_starts: np.ndarray,
    scale: np.ndarray,
    out: np.ndarray,
    smoothing: float = 0.0,
) -> np.ndarray:
    """Each member's mean cross-entropy of its batch (with label smoothing), with `scale` times
    d(loss)/d(scores) written into `out`.

    scores (P, n, C), labels (P, n), scale (P, 1, 1) in out's dtype -> losses (P,) float64. One
    pass for both (layers.cross_entropy and softmax_cross_entropy_backward each shift and
    exponentiate the scores). `scores` is overwritten. `row_starts` (P, n) is where each row of
    scores starts in the flat array, so that row + label picks its label's score.
    """
    n, classes = scores.shape[-2:]
    # Each row's largest score, from the columns (np.maximum.reduce over a short last axis
    # walks it one row at a time: 6x slower for 10 classes); a maximum is exact either way.
    scores -= np.maximum.reduce([scores[..., k] for k in range(classes)])[..., None]
    at_labels = row_starts + labels
    picked = scores.reshape(-1)[at_labels]
    if smoothing:
        mean_score = np.add.reduce(scores, axis=-1) / classes
        picked = (1.0 - smoothing) * picked + smoothing * mean_score
    np.exp(scores, out=scores)
    sums = np.add.reduce(scores, axis=-1, keepdims=True)
    losses = np.add.reduce(np.log(sums[..., 0]) - picked, axis=-1).astype(np.float64) / n
    np.divide(scores, sums, out=out)
    out.reshape(-1)[at_labels] -= 1.0 - smoothing
    if smoothing:
        out -= smoothing / classes
    out *= scale
    return losses


def sums_of_squares(w: np.ndarray) -> np.ndarray:
    """Each member's sum(w^2) in w's dtype, (P,), for the cost a step reports: a BLAS dot
    product per member.

    In float64, as `Network.weight_penalty` sums, this took longer than every other elementwise
    operation of a step together; the step's cost only serves to notice divergence.
    """
    flat = w.reshape(len(w), -1)
    if len(flat) == 1:  # a lone network: one dot product, without a batched product's setup
        return np.array([np.dot(flat[0], flat[0])])
    return np.matmul(flat[:, None, :], flat[:, :, None])[:, 0, 0]
