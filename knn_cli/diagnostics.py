"""What the layers of a network see: measurements on a fixed probe batch, in training mode (batch
statistics), as pure functions of (network, batch) that a notebook can call as well as the
trainer, which only decides when (at every evaluation point, on a copy of the network).

- `layer_statistics`: per layer, the scale and spread of each affine layer's output (what batch
  norm or the ReLU receives: its mean, std and 15/50/85th percentiles, the picture of Ioffe and
  Szegedy, 2015, Figure 1), the share of hidden units the ReLU shuts on every probe row, and per
  weight matrix its norm and the norm of the loss's gradient (without the L2 term).
- `update_ratios`: per weight matrix, how far the last training step moved it, over its norm
  (about 1e-3 is the rule of thumb for a healthy rate).
- `landscape`: along the gradient, the variation of the loss, the largest change of the
  gradient and the "effective beta-smoothness" (Santurkar et al., 2018, Figure 4).

Nothing here changes the network: the passes allocate their outputs (`layers.py`), and the
dropout masks come from the probe's own noise seed, apart from training's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from knn_cli import layers as L
from knn_cli.network import Network
from knn_cli.stack import Affine, Mode, ReLU

# The quantities, by layer: every affine layer l = 1..k (its output, the pre-activation)...
ACTIVATION = ("activation_mean", "activation_std", "activation_p15", "activation_p50",
              "activation_p85")  # fmt: skip
PERCENTILES = (15, 50, 85)
# ... each hidden layer's ReLU ...
DEAD = "dead_fraction"
# ... and each weight matrix W_l.
WEIGHT_NORM, GRAD_NORM, UPDATE_RATIO = "weight_norm", "grad_norm", "update_ratio"
# Along the gradient, for the whole network (layer "all").
LANDSCAPE = ("loss_range", "grad_change", "beta_smoothness")
WHOLE = "all"

Measures = dict[tuple[str, str], float]  # (layer, quantity) -> value


def layer_statistics(
    network: Network, X: np.ndarray, y: np.ndarray, *, noise: tuple[int, ...] = (0,)
) -> Measures:
    """The per-layer quantities on the batch (X, y), keyed (layer number as text, quantity):
    a forward pass in training mode, then the backward pass of the mean cross-entropy."""
    mode = Mode(train=True, noise=noise)
    params = network.params
    H = np.asarray(X, dtype=network.dtype)
    caches, found = [], {}
    affine = 0  # the affine layers passed so far: a ReLU after affine l is hidden layer l
    for layer in network.layers:
        out, cache = layer.forward(H, params, mode)
        caches.append(cache)
        if isinstance(layer, Affine):
            affine = layer.index
            found.update(_spread(str(layer.index), out))
        elif isinstance(layer, ReLU):
            # A unit is dead on the probe when its input is <= 0 on every row.
            found[(str(affine), DEAD)] = float(np.mean(~(H > 0).any(axis=0)))
        H = out
    dscores = L.softmax_cross_entropy_backward(H, y, network.label_smoothing)
    grads = network.backward_pass(dscores, caches)
    for layer in network.layers:
        if isinstance(layer, Affine):
            found[(str(layer.index), WEIGHT_NORM)] = _norm(params[layer.W])
            found[(str(layer.index), GRAD_NORM)] = _norm(grads[layer.W])
    return found


def _spread(layer: str, out: np.ndarray) -> Measures:
    values = np.asarray(out, dtype=np.float64)
    p15, p50, p85 = percentiles(out, PERCENTILES)
    return dict(
        zip(
            ((layer, q) for q in ACTIVATION),
            (float(values.mean()), float(values.std()), p15, p50, p85),
            strict=True,
        )
    )


def percentiles(values: np.ndarray, ps: Sequence[float]) -> list[float]:
    """np.percentile's default (linear between the two nearest ranks), from one sort: on the
    probe's 50,000 values np.percentile's selection takes four times as long as a sort, and
    this runs for every layer at every evaluation point."""
    ordered = np.sort(np.ravel(values)).astype(np.float64)
    if ordered.size == 0 or np.isnan(ordered[-1]):  # a sort puts NaN last; np.percentile: NaN
        return [math.nan] * len(ps)
    found = []
    for p in ps:
        position = p / 100 * (ordered.size - 1)
        below = math.floor(position)
        above = min(below + 1, ordered.size - 1)
        low, high = ordered[below], ordered[above]
        found.append(float(low + (high - low) * (position - below)))
    return found


def update_ratios(network: Network, before: Mapping[str, np.ndarray]) -> Measures:
    """||W_l - W_l before|| / ||W_l|| for each weight matrix given in `before` (its value
    before the last training step): what the update rule actually did, whatever the rule."""
    found = {}
    for layer in network.layers:
        if isinstance(layer, Affine) and layer.W in before:
            W = network.params[layer.W]
            change = _norm(np.asarray(W, dtype=np.float64) - before[layer.W])
            found[(str(layer.index), UPDATE_RATIO)] = change / max(_norm(W), 1e-300)
    return found


Params = Mapping[str, np.ndarray]
LossAndGradient = Callable[[Params], tuple[float, Mapping[str, np.ndarray]]]


def landscape(
    loss_and_gradient: LossAndGradient, params: Params, steps: Sequence[float]
) -> Measures:
    """From w = `params` and g = the gradient there, step to w - t g for each t in `steps`:

        loss_range        the largest minus the smallest loss along the path (w included)
        grad_change       max_t ||grad(w - t g) - g||
        beta_smoothness   max_t ||grad(w - t g) - g|| / ||t g||

    For L(w) = beta/2 ||w||^2, beta_smoothness is beta at every t; for a linear loss,
    grad_change is 0.
    """
    loss, g = loss_and_gradient(params)
    g_norm = _norm_of(g)
    losses, changes, betas = [loss], [], []
    for t in steps:
        moved = {name: value - t * g[name] for name, value in params.items()}
        loss_t, g_t = loss_and_gradient(moved)
        change = _norm_of({name: g_t[name] - g[name] for name in g})
        losses.append(loss_t)
        changes.append(change)
        betas.append(change / (t * g_norm) if g_norm > 0 else 0.0)
    return {
        (WHOLE, "loss_range"): float(max(losses) - min(losses)),
        (WHOLE, "grad_change"): float(max(changes)),
        (WHOLE, "beta_smoothness"): float(max(betas)),
    }


def network_landscape(
    network: Network,
    X: np.ndarray,
    y: np.ndarray,
    steps: Sequence[float],
    *,
    noise: tuple[int, ...] = (0,),
) -> Measures:
    """`landscape` of the network's mean cross-entropy on (X, y) in training mode, over all its
    parameters, computed in float64: at the smallest steps a float32 gradient's rounding
    would pass for a change of the gradient."""
    exact = network.astype("float64")
    X64 = np.asarray(X, dtype=np.float64)
    mode = Mode(train=True, noise=noise)

    def loss_and_gradient(params: Params) -> tuple[float, dict[str, np.ndarray]]:
        scores, caches = exact.forward_pass(X64, mode, params)
        dscores = L.softmax_cross_entropy_backward(scores, y, exact.label_smoothing)
        loss = L.cross_entropy(scores, y, exact.label_smoothing)
        return float(loss), exact.backward_pass(dscores, caches, params)

    return landscape(loss_and_gradient, exact.params, steps)


def _norm(array: Any) -> float:
    flat = np.asarray(array, dtype=np.float64).ravel()
    return float(np.sqrt(np.dot(flat, flat)))


def _norm_of(arrays: Mapping[str, np.ndarray]) -> float:
    """The norm of all the arrays as one vector."""
    return float(np.sqrt(sum(_norm(value) ** 2 for value in arrays.values())))


# The probe's own stream of random numbers (its rows, its dropout masks), apart from training's.
PROBE_STREAM = 4


class Probe:
    """The fixed batch a run's layers are measured on, and what to measure: the rows are
    training rows chosen once from the run's seed, so that every evaluation point of a run, and
    of a run continued from a checkpoint, measures on the same images."""

    def __init__(
        self,
        X: np.ndarray,
        y: np.ndarray,
        *,
        seed: int,
        layers: bool = True,
        landscape_steps: Sequence[float] | None = None,
    ) -> None:
        self.X, self.y = X, y
        self.noise = (seed, PROBE_STREAM)
        self.layers = layers
        self.landscape_steps = tuple(landscape_steps) if landscape_steps else None

    @classmethod
    def of(
        cls, X_train: np.ndarray, y_train: np.ndarray, size: int, seed: int, **what: Any
    ) -> Probe:
        rng = np.random.default_rng([seed, PROBE_STREAM])
        rows = np.sort(rng.choice(len(X_train), size=min(size, len(X_train)), replace=False))
        return cls(np.asarray(X_train[rows]), np.asarray(y_train[rows]), seed=seed, **what)

    @property
    def active(self) -> bool:
        return self.layers or self.landscape_steps is not None

    def weights(self, network: Network) -> dict[str, np.ndarray]:
        """A copy of the weight matrices, kept by the trainer before the step whose update
        ratio is measured next."""
        if not self.layers:
            return {}
        return {
            layer.W: network.params[layer.W].copy()
            for layer in network.layers
            if isinstance(layer, Affine)
        }

    def measure(self, network: Network, before: Mapping[str, np.ndarray] | None) -> Measures:
        found: Measures = {}
        if self.layers:
            found.update(layer_statistics(network, self.X, self.y, noise=self.noise))
            if before:
                found.update(update_ratios(network, before))
        if self.landscape_steps is not None:
            steps = self.landscape_steps
            found.update(network_landscape(network, self.X, self.y, steps, noise=self.noise))
        return found


def rows(step: int, measures: Measures) -> list[dict[str, Any]]:
    """diagnostics.csv's rows of one evaluation point: step, layer, quantity, value."""
    return [
        {"step": step, "layer": layer, "quantity": quantity, "value": value}
        for (layer, quantity), value in measures.items()
    ]
