"""The triangular cyclical learning rate (Smith, 2015), as used by the study."""

from __future__ import annotations

import numpy as np

from knn_cli.errors import ConfigError


def cyclical_learning_rate(step: int | np.ndarray, eta_min: float, eta_max: float, n_s: int):
    """Rate at update `step` (0-based): eta_min at 2*l*n_s, eta_max at (2*l + 1)*n_s, linear
    between.

    A pure function of the step, so a resumed or re-plotted run recomputes the same rates.
    """
    if isinstance(step, int | np.integer):  # one step: the same arithmetic, without NumPy's
        distance = abs(int(step) % (2 * n_s) - n_s)  # cost per call (a trainer asks each step)
        return eta_max - (eta_max - eta_min) * distance / n_s
    position = np.mod(step, 2 * n_s)
    distance_from_peak = np.abs(position - n_s)
    eta = eta_max - (eta_max - eta_min) * distance_from_peak / n_s
    return float(eta) if np.ndim(eta) == 0 else eta


def total_steps(n_s: int, cycles: int) -> int:
    """Update steps in a run: each cycle is one rise and one fall of n_s steps."""
    return 2 * n_s * cycles


def check_batch_size(batch_size: int, n_train: int, which: str = "training images") -> None:
    """The one check that a batch fits the training set, for the config (CIFAR-10's split), a
    run (the data it loaded) and the trainer's API callers alike: a batch larger than the data
    would never be drawn."""
    if not 1 <= batch_size <= n_train:
        raise ConfigError(
            f"training.batch_size must be 1 to the {n_train} {which}, got {batch_size}"
        )
