"""A choice of lambda beside the search's best trial: validation accuracy fitted against
u = log10(lambda) over the trials near the top, its peak, and the lambdas tied with it.

The best of twenty noisy trials is partly the luckiest: each trial trains with a seed of its own,
and one seed moves a result by about half a point, as much as lambdas a factor of two apart
differ. A smooth curve through the trials averages that luck away. Why a quadratic over the
trials within a decade of the best: near its maximum, accuracy against log lambda is smooth and
close to a parabola, while far from it the curve flattens (too little L2 hardly matters) or
falls off a cliff (too much collapses the network), which one parabola cannot follow; the fine
stage puts half the trials in that decade anyway. The trials' scatter about the fit is the
seed-to-seed spread (plus any misfit, which only widens it): the lambdas whose fitted accuracy
lies within that spread of the peak are tied with it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

WINDOW_DECADES = 1.0  # trials within this many decades of the best one are fitted
MIN_TRIALS = 5  # at least this many, the nearest to the best, if the window holds fewer
GRID_POINTS = 2001  # where the fit is evaluated to find its peak and tied range


@dataclass(frozen=True)
class LambdaFit:
    """acc(u) = a u^2 + b u + c over the fitted trials' span of u = log10(lambda)."""

    coefficients: tuple[float, float, float]
    span: tuple[float, float]
    trials: int
    peak: float  # u of the fit's largest value within the span
    peak_accuracy: float
    spread: float  # the trials' standard deviation about the fit
    tied: tuple[float, float]  # u range around the peak where the fit is within `spread` of it

    def accuracy(self, u: float | np.ndarray) -> float | np.ndarray:
        a, b, c = self.coefficients
        return a * np.square(u) + b * np.asarray(u) + c

    @property
    def peak_lambda(self) -> float:
        return float(10.0**self.peak)

    @property
    def tied_lambdas(self) -> tuple[float, float]:
        return float(10.0 ** self.tied[0]), float(10.0 ** self.tied[1])

    def summary(self) -> str:
        low, high = self.tied_lambdas
        return (
            f"fit of validation accuracy against log10 lambda ({self.trials} trials within "
            f"{WINDOW_DECADES:g} decade of the best): peak at lambda {self.peak_lambda:.3g} "
            f"({100 * self.peak_accuracy:.2f}%); tied within the trials' spread "
            f"(sd {100 * self.spread:.2f} points): lambda {low:.3g} to {high:.3g}"
        )


def fit_lambda(points: Sequence[tuple[float, float]]) -> LambdaFit | None:
    """The fit through (lambda, validation accuracy) points near the best one; None when there
    are too few to fit a parabola and still measure the scatter about it (4)."""
    usable = [(math.log10(lam), acc) for lam, acc in points if lam > 0 and math.isfinite(acc)]
    if len(usable) < 4:
        return None
    u_best = max(usable, key=lambda p: p[1])[0]
    by_distance = sorted(usable, key=lambda p: abs(p[0] - u_best))
    near = [p for p in by_distance if abs(p[0] - u_best) <= WINDOW_DECADES]
    if len(near) < MIN_TRIALS:
        near = by_distance[:MIN_TRIALS]
    u = np.array([p[0] for p in near])
    acc = np.array([p[1] for p in near])
    if np.ptp(u) == 0:
        return None
    a, b, c = np.polyfit(u, acc, 2)
    residuals = acc - (a * u**2 + b * u + c)
    spread = float(np.sqrt(np.sum(residuals**2) / max(1, len(near) - 3)))
    span = (float(u.min()), float(u.max()))
    grid = np.linspace(*span, GRID_POINTS)
    fitted = a * grid**2 + b * grid + c
    top = int(np.argmax(fitted))
    tied = fitted >= fitted[top] - spread
    low = top
    while low > 0 and tied[low - 1]:
        low -= 1
    high = top
    while high < len(grid) - 1 and tied[high + 1]:
        high += 1
    return LambdaFit(
        coefficients=(float(a), float(b), float(c)),
        span=span,
        trials=len(near),
        peak=float(grid[top]),
        peak_accuracy=float(fitted[top]),
        spread=spread,
        tied=(float(grid[low]), float(grid[high])),
    )
