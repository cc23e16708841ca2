"""The layers a network is described with, as data: each names its parameters (W1 b1 gamma1
beta1 ... in the order the network lists them) and calls its forward/backward pair in
`layers.py`; `standard_layers` builds the study's stack.

    {affine - [batch norm] - relu - [dropout]} x (k - 1) - affine - softmax   (before_relu)
    {affine - relu - [batch norm] - [dropout]} x (k - 1) - affine - softmax   (after_relu)

A new operation is one `Layer` subclass (and its pair in `layers.py`); the network, the engine,
the gradient check and saving take it as it is (README, Development).
"""

from __future__ import annotations

import inspect
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from knn_cli import layers as L

INITS = ("he", "normal")
BN_POSITIONS = ("before_relu", "after_relu")


@dataclass(frozen=True)
class Mode:
    """What a forward pass is for: training (batch statistics) or evaluation (the moving
    averages, by name); and, in training, the seed of its noise (dropout's masks).

    Every layer draws from its own generator, seeded by `noise` and the layer's index, so the
    same seed gives the same masks in the engine and on the textbook path, and in every pass of
    a gradient check (a fixed mask). The trainer seeds each step by the run's seed and the step.
    """

    train: bool
    averages: Mapping[str, np.ndarray] = field(default_factory=dict)
    noise: tuple[int, ...] = (0,)

    def generator(self, index: int) -> np.random.Generator:
        return np.random.default_rng([*self.noise, index])


TRAINING = Mode(train=True)


@dataclass(frozen=True)
class Init:
    """How weights are drawn: He (std sqrt(2 / fan_in)) or normal with a fixed sigma."""

    scheme: str = "he"
    sigma: float = 0.1


class Layer:
    """One operation of the stack: names its parameters and calls its pair in `layers.py`.

    Subclasses override what applies to them; the defaults describe an operation without
    parameters, statistics or kinks.
    """

    # A layer whose training-mode output ignores a constant added to each input unit (batch
    # norm subtracts the batch mean): a bias feeding it has a gradient of exactly zero.
    removes_input_shift = False

    def parameters(self) -> dict[str, tuple[int, ...]]:
        """Name and shape of every parameter, in the order the network lists them."""
        return {}

    def statistics(self) -> dict[str, tuple[int, ...]]:
        """Name and shape of every moving average kept for evaluation mode."""
        return {}

    def decayed(self) -> tuple[str, ...]:
        """The parameters the L2 penalty lambda * sum(w^2) applies to."""
        return ()

    def shift(self) -> str | None:
        """The parameter that adds a constant to each output unit (a bias), if any."""
        return None

    def initial_values(self, rng: np.random.Generator, init: Init) -> dict[str, np.ndarray]:
        return {name: np.zeros(shape) for name, shape in self.parameters().items()}

    def forward(
        self, x: np.ndarray, params: Mapping[str, np.ndarray], mode: Mode
    ) -> tuple[np.ndarray, Any]:
        raise NotImplementedError

    def backward(
        self, dout: np.ndarray, cache: Any, params: Mapping[str, np.ndarray]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """dL/dx and dL/d(each parameter), from dL/dout and the forward pass's cache."""
        raise NotImplementedError

    def parameter_gradients(
        self, dout: np.ndarray, cache: Any, params: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """dL/d(each parameter) without dL/dx, for the first layer (see `Affine`)."""
        return self.backward(dout, cache, params)[1]

    def batch_statistics(self, cache: Any) -> dict[str, np.ndarray]:
        """The statistics a training-mode pass measured, by the names of `statistics()`."""
        return {}

    def population_statistics(self, blocks: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """The statistics of `statistics()` measured over every row of its input, given in
        blocks (see `Network.precise_statistics`)."""
        return {}

    def distance_to_kink(self, x: np.ndarray) -> float:
        """How far the input is from a point where the layer is not differentiable."""
        return math.inf

    # -- what it costs: the memory estimate (`knn_cli/memory.py`) asks each layer --------------

    def parameter_count(self) -> int:
        """Numbers the layer holds for good: its parameters and its moving averages."""
        shapes = [*self.parameters().values(), *self.statistics().values()]
        return sum(math.prod(shape) for shape in shapes)

    # Arrays as wide as the layer's output that a training step keeps per example: the output
    # and the gradient flowing back through it, and what the backward pass caches beyond them.
    step_buffers = 2


@dataclass(frozen=True)
class Affine(Layer):
    """out = x W + b, the layer's weights W{index} and bias b{index}."""

    index: int
    fan_in: int
    fan_out: int

    @property
    def W(self) -> str:
        return f"W{self.index}"

    @property
    def b(self) -> str:
        return f"b{self.index}"

    def parameters(self) -> dict[str, tuple[int, ...]]:
        return {self.W: (self.fan_in, self.fan_out), self.b: (self.fan_out,)}

    def decayed(self) -> tuple[str, ...]:
        return (self.W,)

    def shift(self) -> str:
        return self.b

    def initial_values(self, rng: np.random.Generator, init: Init) -> dict[str, np.ndarray]:
        std = math.sqrt(2.0 / self.fan_in) if init.scheme == "he" else init.sigma
        weights = std * rng.standard_normal((self.fan_in, self.fan_out))
        return {self.W: weights, self.b: np.zeros(self.fan_out)}

    def forward(self, x, params, mode):
        return L.affine_forward(x, params[self.W], params[self.b])

    def backward(self, dout, cache, params):
        dx, dW, db = L.affine_backward(dout, cache)
        return dx, {self.W: dW, self.b: db}

    def parameter_gradients(self, dout, cache, params):
        dW, db = L.affine_parameter_gradients(dout, cache)
        return {self.W: dW, self.b: db}


@dataclass(frozen=True)
class BatchNorm(Layer):
    """Batch normalization of the hidden layer `index`: gamma{index}, beta{index}, and the moving
    averages mu{index}, var{index} that evaluation mode uses."""

    index: int
    width: int
    eps: float = 1e-12

    removes_input_shift = True
    step_buffers = 3  # the normalized input too

    @property
    def names(self) -> tuple[str, str, str, str]:
        """gamma, beta, mean and variance of this layer."""
        i = self.index
        return f"gamma{i}", f"beta{i}", f"mu{i}", f"var{i}"

    def parameters(self) -> dict[str, tuple[int, ...]]:
        gamma, beta, _, _ = self.names
        return {gamma: (self.width,), beta: (self.width,)}

    def statistics(self) -> dict[str, tuple[int, ...]]:
        _, _, mean, var = self.names
        return {mean: (self.width,), var: (self.width,)}

    def initial_values(self, rng: np.random.Generator, init: Init) -> dict[str, np.ndarray]:
        gamma, beta, _, _ = self.names
        return {gamma: np.ones(self.width), beta: np.zeros(self.width)}

    def forward(self, x, params, mode):
        gamma, beta, mean, var = self.names
        # Before the first training batch there are no averages: the batch's statistics serve.
        if mode.train or mean not in mode.averages:
            return L.batch_norm_forward(x, params[gamma], params[beta], self.eps)
        averages = mode.averages
        out = L.batch_norm_evaluate(
            x, params[gamma], params[beta], averages[mean], averages[var], self.eps
        )
        return out, None

    def backward(self, dout, cache, params):
        gamma, beta, _, _ = self.names
        dx, dgamma, dbeta = L.batch_norm_backward(dout, cache)
        return dx, {gamma: dgamma, beta: dbeta}

    def batch_statistics(self, cache: L.BatchNormCache) -> dict[str, np.ndarray]:
        _, _, mean, var = self.names
        return {mean: cache.mean, var: cache.var}

    def population_statistics(self, blocks: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """Mean and (biased) variance over all the rows, summed in float64."""
        _, _, mean_name, var_name = self.names
        n, dtype = sum(len(block) for block in blocks), blocks[0].dtype
        mean = sum(block.sum(axis=0, dtype=np.float64) for block in blocks) / n
        var = sum(np.square(block - mean).sum(axis=0) for block in blocks) / n
        return {mean_name: mean.astype(dtype), var_name: var.astype(dtype)}


@dataclass(frozen=True)
class Dropout(Layer):
    """Inverted dropout after hidden layer `index`, at `rate`; the identity in evaluation."""

    index: int
    rate: float

    def forward(self, x, params, mode):
        if not mode.train:
            return x, None
        return L.dropout_forward(x, self.rate, mode.generator(self.index))

    def backward(self, dout, cache, params):
        return (dout if cache is None else L.dropout_backward(dout, cache)), {}


@dataclass(frozen=True)
class ReLU(Layer):
    """max(x, 0), element by element."""

    def forward(self, x, params, mode):
        return L.relu_forward(x)

    def backward(self, dout, cache, params):
        return L.relu_backward(dout, cache), {}

    def distance_to_kink(self, x: np.ndarray) -> float:
        return float(np.abs(x).min())


def standard_layers(
    widths: Sequence[int],
    *,
    batch_norm: bool = False,
    bn_position: str = "before_relu",
    bn_eps: float = BatchNorm.eps,
    dropout: float | Sequence[float] = 0.0,
) -> list[Layer]:
    """The study's stack for widths (d, m1, ..., C): every hidden layer affine, ReLU and, with
    `batch_norm`, batch norm before or after the ReLU, then dropout where its rate (one for
    every hidden layer, or one each) is above 0; the output layer affine alone."""
    if bn_position not in BN_POSITIONS:
        raise ValueError(f"bn_position must be one of {BN_POSITIONS}, got {bn_position!r}")
    k = len(widths) - 1
    rates = [dropout] * (k - 1) if isinstance(dropout, int | float) else list(dropout)
    if len(rates) != k - 1 or not all(0.0 <= rate < 1.0 for rate in rates):
        raise ValueError(f"dropout needs {k - 1} rates in [0, 1), got {dropout!r}")
    stack: list[Layer] = []
    for index in range(1, k + 1):
        stack.append(Affine(index, widths[index - 1], widths[index]))
        if index == k:
            break
        block: list[Layer] = [ReLU()]
        if bool(batch_norm):
            norm = BatchNorm(index, widths[index], float(bn_eps))
            block = [norm, *block] if bn_position == "before_relu" else [*block, norm]
        if rates[index - 1] > 0:
            block.append(Dropout(index, float(rates[index - 1])))
        stack.extend(block)
    return stack


# The network options that shape the stack, those `standard_layers` takes.
LAYER_OPTIONS = frozenset(inspect.signature(standard_layers).parameters) - {"widths"}


def standard_layers_of(widths: Sequence[int], options: Mapping[str, Any]) -> list[Layer]:
    """`standard_layers` for a network's options (the config's model section), of which it
    takes those that shape the stack."""
    return standard_layers(widths, **{k: v for k, v in options.items() if k in LAYER_OPTIONS})


def zero_gradient_parameters(stack: Sequence[Layer]) -> frozenset[str]:
    """Parameters whose gradient is exactly zero: the shift (bias) of a layer feeding one that
    removes its input's shift (batch norm in training mode subtracts the batch mean)."""
    return frozenset(
        shift
        for before, after in itertools.pairwise(stack)
        if after.removes_input_shift and (shift := before.shift()) is not None
    )


# The assignment's hidden widths for its 3- and 9-layer networks.
ASSIGNMENT_HIDDEN = {3: (50, 50), 9: (50, 30, 20, 20, 10, 10, 10, 10)}


def default_hidden(layers: int) -> tuple[int, ...]:
    """The assignment's widths for k = 3 and 9; k - 1 layers of 50 otherwise."""
    return ASSIGNMENT_HIDDEN.get(layers, (50,) * (layers - 1))
