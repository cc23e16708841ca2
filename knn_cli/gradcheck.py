"""Analytic gradients against centred differences, generic over a parameter dict.

One loop serves every parameter (W, b, gamma, beta, or whatever a network holds), because the
checker only needs a cost function of the parameters and the dict it reads them from.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

import numpy as np

from knn_cli.network import Network


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
    chunk: int = 256,
) -> dict[str, np.ndarray]:
    """Centred differences (c(p + h e_i) - c(p - h e_i)) / 2h for every entry of every parameter.

    `cost` takes the parameter dict with every array stacked along a new leading axis of P
    variants and returns P costs. Entries are perturbed `chunk` at a time: each variant moves one
    entry up or down by h, the other parameters are broadcast views, so a deep network's check
    costs a few hundred calls rather than tens of thousands.
    """
    grads: dict[str, np.ndarray] = {}
    for name, value in params.items():
        flat_grad = np.zeros(value.size, dtype=np.float64)
        for start in range(0, value.size, chunk):
            entries = np.arange(start, min(start + chunk, value.size))
            count = len(entries)
            stacked = {
                other: np.broadcast_to(array, (2 * count, *array.shape))
                for other, array in params.items()
                if other != name
            }
            perturbed = np.repeat(value.reshape(1, -1), 2 * count, axis=0)
            perturbed[np.arange(count), entries] += h
            perturbed[count + np.arange(count), entries] -= h
            stacked[name] = perturbed.reshape(2 * count, *value.shape)
            costs = cost(stacked)
            flat_grad[entries] = (costs[:count] - costs[count:]) / (2.0 * h)
        grads[name] = flat_grad.reshape(value.shape)
    return grads


def compare_gradients(
    analytic: Mapping[str, np.ndarray],
    numeric: Mapping[str, np.ndarray],
    *,
    rel_tol: float = 1e-6,
    abs_tol: float = 1e-8,
    floor: float = 1e-4,
    judge_by_absolute: Collection[str] = (),
) -> list[GradientComparison]:
    """Relative error |a - n| / max(floor, |a| + |n|) per entry, its maximum per parameter.

    The floor is the scale below which centred differences cannot resolve a relative error of
    1e-6: with h = 1e-5 in float64 the rounding error of the difference quotient is about 1e-10,
    so entries smaller than 1e-4 are in effect held to an absolute error of 1e-10.

    Parameters whose true gradient is exactly zero (biases feeding a batch-norm layer) make any
    relative error meaningless, so those named in `judge_by_absolute` pass on absolute error.
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


def check_network(
    network: Network,
    X: np.ndarray,
    y: np.ndarray,
    lambda_: float,
    *,
    h: float = 1e-5,
    rel_tol: float = 1e-6,
    abs_tol: float = 1e-8,
    floor: float = 1e-4,
) -> list[GradientComparison]:
    """Check every parameter of `network` on (X, y) in training mode (batch statistics)."""
    _cost, analytic = network.cost_and_gradients(X, y, lambda_)
    numeric = numerical_gradients(
        lambda stacked: network.cost_of(stacked, X, y, lambda_), network.params, h
    )
    zero_gradient = [
        f"b{layer}"
        for layer in range(1, network.arch.n_layers + 1)
        if network.arch.normalized(layer)
    ]
    return compare_gradients(
        analytic,
        numeric,
        rel_tol=rel_tol,
        abs_tol=abs_tol,
        floor=floor,
        judge_by_absolute=zero_gradient,
    )
