"""Analytic gradients against centred differences, generic over a parameter dict.

One loop serves every parameter (W, b, gamma, beta, or whatever a network holds), because the
checker only needs a cost function of the parameters and the dict it reads them from.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from knn_cli.engine import Engine
from knn_cli.network import Network
from knn_cli.stack import TRAINING


@dataclass(frozen=True)
class GradientComparison:
    """One parameter's verdict; `judged_by` says which error decided it."""

    name: str
    shape: tuple[int, ...]
    max_abs_error: float
    max_rel_error: float
    judged_by: str
    passed: bool


def numerical_gradients(
    cost: Callable[[Mapping[str, np.ndarray]], np.ndarray],
    params: Mapping[str, np.ndarray],
    h: float = 1e-5,
    chunk: int = 128,
) -> dict[str, np.ndarray]:
    """Fourth-order centred differences for every entry of every parameter:
    (8 (c(p + h) - c(p - h)) - (c(p + 2h) - c(p - 2h))) / 12h.

    The two-point difference has a truncation error h^2 c'''(p) / 6 that batch norm on small
    batches makes large enough (measured: 3e-8 on entries of 0.02) to blur a 1e-6 comparison;
    this stencil's error is O(h^4). `cost` takes the parameter dict with every array stacked
    along a new leading axis of variants and returns one cost per variant. Entries are perturbed
    `chunk` at a time, the untouched parameters being broadcast views, so a deep network's check
    costs a few hundred calls rather than tens of thousands.
    """
    offsets = np.array([h, -h, 2 * h, -2 * h])
    grads: dict[str, np.ndarray] = {}
    for name, value in params.items():
        flat_grad = np.zeros(value.size, dtype=np.float64)
        for start in range(0, value.size, chunk):
            entries = np.arange(start, min(start + chunk, value.size))
            variants = len(offsets) * len(entries)
            stacked = {
                other: np.broadcast_to(array, (variants, *array.shape))
                for other, array in params.items()
                if other != name
            }
            perturbed = np.repeat(value.reshape(1, -1), variants, axis=0)
            perturbed[np.arange(variants), np.tile(entries, len(offsets))] += np.repeat(
                offsets, len(entries)
            )
            stacked[name] = perturbed.reshape(variants, *value.shape)
            plus, minus, plus2, minus2 = cost(stacked).reshape(len(offsets), len(entries))
            flat_grad[entries] = (8.0 * (plus - minus) - (plus2 - minus2)) / (12.0 * h)
        grads[name] = flat_grad.reshape(value.shape)
    return grads


def compare_gradients(
    analytic: Mapping[str, np.ndarray],
    numeric: Mapping[str, np.ndarray],
    *,
    rel_tol: float = 1e-6,
    abs_tol: float = 1e-8,
    floor: float = 1e-3,
    judge_by_absolute: Collection[str] = (),
) -> list[GradientComparison]:
    """Relative error |a - n| / max(floor, |a| + |n|) per entry, its maximum per parameter.

    The floor is the scale below which centred differences cannot resolve a relative error of
    1e-6: with h = 1e-5 in float64 the rounding error of one difference quotient is about
    eps * cost / h, 1e-10 to 5e-10 for the costs of these networks (measured), so entries
    smaller than 1e-3 are in effect held to an absolute error of 1e-9 instead.

    Parameters whose true gradient is exactly zero (biases feeding a batch-norm layer: see
    `Network.zero_gradients`) make any relative error meaningless, so those named in
    `judge_by_absolute` pass on absolute error.
    """
    rows = []
    for name, a in analytic.items():
        n = numeric[name]
        diff = np.abs(a - n)
        max_abs = float(diff.max(initial=0.0))
        max_rel = float((diff / np.maximum(floor, np.abs(a) + np.abs(n))).max(initial=0.0))
        if name in judge_by_absolute:
            judged_by, passed = "absolute", max_abs <= abs_tol
        else:
            judged_by, passed = "relative", max_rel <= rel_tol
        rows.append(GradientComparison(name, a.shape, max_abs, max_rel, judged_by, passed))
    return rows


def move_off_special_points(
    params: Mapping[str, np.ndarray], rng: np.random.Generator, scale: float = 0.05
) -> None:
    """Add small noise to every parameter, in place, before a check.

    At initialization biases are 0 and gamma is 1. Zero biases put units whose inputs are all
    zero exactly on the ReLU kink, and gamma = 1 would hide a backward pass that forgets to
    multiply by gamma. A random point avoids both.
    """
    for value in params.values():
        value += scale * rng.standard_normal(value.shape)


def kink_margin(network: Network, X: np.ndarray) -> float:
    """Smallest distance of any layer's input from a kink of that layer (for ReLU: the smallest
    |pre-activation| of any hidden unit) on the batch, in training mode.

    A centred difference straddling a kink averages two slopes and disagrees with the exact
    gradient for reasons that have nothing to do with the code under test. This walks the
    textbook layers, apart from the engine whose gradients are checked.
    """
    H, margin = np.asarray(X, dtype=np.float64), np.inf
    for layer in network.layers:
        margin = min(margin, layer.distance_to_kink(H))
        H, _cache = layer.forward(H, network.params, TRAINING)
    return margin


def choose_check_point(
    network: Network,
    X: np.ndarray,
    rng: np.random.Generator,
    min_margin: float = 6e-4,
    attempts: int = 100,
) -> float:
    """Move the network to a random point near its initialization whose pre-activations all
    stay at least `min_margin` (30 stencil reaches of 2h) from the ReLU kink; return the margin.
    """
    start = network.get_params()
    margin = 0.0
    for _ in range(attempts):
        network.set_params(start)
        move_off_special_points(network.params, rng)
        margin = kink_margin(network, X)
        if margin >= min_margin:
            break
    return margin


GRADIENT_PATHS = ("engine", "textbook")


def check_network_paths(
    network: Network,
    X: np.ndarray,
    y: np.ndarray,
    lambda_: float,
    *,
    paths: Sequence[str] = GRADIENT_PATHS,
    h: float = 1e-5,
    rel_tol: float = 1e-6,
    abs_tol: float = 1e-8,
    floor: float = 1e-3,
) -> dict[str, list[GradientComparison]]:
    """Check every parameter's gradient on (X, y) in training mode, by each path: "engine" (what
    trains, `Engine.cost_and_gradients`) and "textbook" (the layers as written,
    `Network.textbook_gradients`), against centred differences of the textbook forward pass,
    computed once for both."""
    numeric = numerical_gradients(
        lambda stacked: network.cost_of(stacked, X, y, lambda_), network.params, h
    )
    compute = {
        "engine": Engine(network).cost_and_gradients,
        "textbook": network.textbook_gradients,
    }
    return {
        path: compare_gradients(
            compute[path](X, y, lambda_)[1],
            numeric,
            rel_tol=rel_tol,
            abs_tol=abs_tol,
            floor=floor,
            judge_by_absolute=network.zero_gradients,
        )
        for path in paths
    }


def check_network(
    network: Network, X: np.ndarray, y: np.ndarray, lambda_: float, **options: Any
) -> list[GradientComparison]:
    """`check_network_paths` for the engine's gradients, the ones training uses."""
    return check_network_paths(network, X, y, lambda_, paths=("engine",), **options)["engine"]
