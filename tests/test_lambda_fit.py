"""The lambda beside the best trial: a fit of validation accuracy against log10 lambda finds the
peak of a known curve through noise, and the lambdas tied with it widen with the noise; coarse
draws can be stratified; --choose fit retrains the fit's peak."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from test_sweeps import tiny_search

from knn_cli.executors import SerialExecutor
from knn_cli.sweeps.folder import start_sweep
from knn_cli.sweeps.lambda_fit import fit_lambda
from knn_cli.sweeps.lambda_search import run_lambda_search
from knn_cli.sweeps.plan import LAMBDA_SEARCH, sample_log_lambda

PEAK_U = -2.5  # lambda about 0.0032


def curve(u: np.ndarray) -> np.ndarray:
    """A smooth rise and fall of validation accuracy against u = log10 lambda."""
    return 0.55 - 0.02 * (u - PEAK_U) ** 2


def noisy_points(noise: float, seed: int = 0, n: int = 20) -> list[tuple[float, float]]:
    rng = np.random.default_rng(seed)
    u = rng.uniform(-4.0, -1.0, n)
    accuracy = curve(u) + noise * rng.standard_normal(n)
    return [(10.0**x, float(a)) for x, a in zip(u, accuracy, strict=True)]


@pytest.mark.parametrize("seed", range(5))
def test_the_fit_finds_the_peak_of_a_known_curve_through_noise(seed: int) -> None:
    fit = fit_lambda(noisy_points(0.003, seed))
    assert fit is not None
    assert fit.peak == pytest.approx(PEAK_U, abs=0.35)
    assert fit.tied[0] <= PEAK_U <= fit.tied[1]  # the true peak lies in the tied range
    assert fit.spread == pytest.approx(0.003, rel=0.6)


def test_the_tied_range_widens_with_the_noise() -> None:
    widths = []
    for noise in (0.0005, 0.002, 0.006):
        ranges = [fit_lambda(noisy_points(noise, seed)) for seed in range(8)]
        widths.append(np.median([f.tied[1] - f.tied[0] for f in ranges if f is not None]))
    assert widths[0] < widths[1] < widths[2]


def test_without_noise_the_fit_is_the_curve() -> None:
    fit = fit_lambda(noisy_points(0.0))
    assert fit is not None
    assert fit.peak == pytest.approx(PEAK_U, abs=1e-2)
    assert fit.spread < 1e-12 and fit.peak_accuracy == pytest.approx(0.55, abs=1e-9)


def test_too_few_trials_give_no_fit() -> None:
    assert fit_lambda(noisy_points(0.001, n=3)) is None


def test_stratified_draws_cover_each_stratum_once() -> None:
    low, high, n = -4.0, -1.0, 7
    for seed in range(4):
        us = [
            math.log10(sample_log_lambda(seed, "coarse", 10 + k, low, high, stratum=(k, n)))
            for k in range(n)
        ]
        strata = sorted(int((u - low) / (high - low) * n) for u in us)
        assert strata == list(range(n))
    # Without strata, three draws bunch within a third of the range for some seeds.
    bunched = 0
    for seed in range(30):
        us = [math.log10(sample_log_lambda(seed, "coarse", k, low, high)) for k in range(3)]
        bunched += max(us) - min(us) < (high - low) / 3
    assert bunched > 0


def test_choose_fit_retrains_the_fits_peak(tmp_path: Path, fake_cifar_dir: Path) -> None:
    spec = tiny_search(fake_cifar_dir, trials=5, final=True, final_seeds=1, choose="fit")
    sweep_dir = start_sweep(tmp_path, LAMBDA_SEARCH, spec)
    result = run_lambda_search(spec, sweep_dir, SerialExecutor())
    assert result.fit is not None
    assert [r.trial.lambda_ for r in result.finals] == [result.fit.peak_lambda]
    assert result.fit.summary() in (sweep_dir / "table.md").read_text()
