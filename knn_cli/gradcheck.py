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
    cost: Callable[[], float], params: Mapping[str, np.ndarray], h: float = 1e-5
) -> dict[str, np.ndarray]:
    """Centred differences (c(p + h) - c(p - h)) / 2h, perturbing each entry in place."""
    grads: dict[str, np.ndarray] = {}
    for name, value in params.items():
        grad = np.zeros(value.shape, dtype=np.float64)
        flat = value.reshape(-1)  # a view: writing to it perturbs the live parameter
        for i in range(flat.size):
            original = flat[i]
            flat[i] = original + h
            cost_plus = cost()
            flat[i] = original - h
            cost_minus = cost()
            flat[i] = original
            grad.flat[i] = (cost_plus - cost_minus) / (2.0 * h)
        grads[name] = grad
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
        lambda: network.cost(X, y, lambda_, train=True)[0], network.params, h
    )
    zero_gradient = [
        f"b{layer}" for layer in range(1, network.arch.n_layers + 1) if network.arch.normalized(layer)
    ]
    return compare_gradients(
        analytic, numeric, rel_tol=rel_tol, abs_tol=abs_tol, floor=floor,
        judge_by_absolute=zero_gradient,
    )
