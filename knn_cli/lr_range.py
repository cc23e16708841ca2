"""The learning-rate range test (Smith, 2017, "Cyclical Learning Rates for Training Neural
Networks", section 3.3) as pure functions: the rising rate, the smoothed loss that decides when
to stop, and the rules that read suggestions off the curves. `range_test.py` trains with them.

Smith lets the rate rise linearly for a few epochs and reads two bounds off the validation
accuracy: where it starts to rise, and where it stops rising or turns ragged. fastai's `lr_find`
lets it rise exponentially over a hundred steps and reads one rate off an exponentially smoothed
training loss. Both are here, each rule written out so a user can check it against the curves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from knn_cli.errors import KnnError

LINEAR, EXPONENTIAL = "linear", "exponential"
SCHEDULES = (LINEAR, EXPONENTIAL)
# Validation points the accuracy rules need at the least: a start, a rise and a peak, each
# smoothed over a few points.
MIN_POINTS = 8
# How far validation accuracy must climb before it "starts to rise", as a share of its whole
# climb from the start to the peak: small enough to mark the start, large enough to clear noise.
RISE_SHARE = 0.1
# Accuracy points (a fraction) below the peak at which the climb counts as stopped: a curve
# that has come this close to its best has stopped rising, whether it then plateaus or falls.
PLATEAU_GAP = 0.01
# Points each side of a validation point in the accuracy's centred moving average.
ACCURACY_HALF_WINDOW = 2
# Past its peak, validation accuracy has collapsed once it is back below this share of its
# climb from the start: half-way down is far outside the noise of a point, and well before chance.
COLLAPSE_SHARE = 0.5
# The smoothed loss must fall at least this share below where it settled for a "descent": a
# network that trains falls by a third (2.3 to 1.5) in the study's tests, noise by a percent.
MIN_FALL = 0.05


KEYS = ("eta_min", "eta_max", "steepest", "lowest_loss", "last_stable", "still_learns", "collapse")


class RangeTestError(KnnError):
    """A range test that cannot suggest anything (too short, or a loss that never falls)."""


@dataclass(frozen=True)
class RangeSchedule:
    """The rate at each of `steps` steps, rising from `low` at the first to `high` at the last:
    in equal steps (linear) or by equal factors (exponential)."""

    low: float
    high: float
    steps: int
    shape: str = LINEAR

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and self.low > 0):
            raise RangeTestError(f"--low must be a positive rate, got {self.low!r}")
        if not (math.isfinite(self.high) and self.high > 0):
            raise RangeTestError(f"--high must be a positive rate, got {self.high!r}")
        if self.low >= self.high:
            raise RangeTestError(f"--low ({self.low:g}) must be below --high ({self.high:g})")
        if self.shape not in SCHEDULES:
            raise RangeTestError(f"--schedule must be one of {', '.join(SCHEDULES)}")
        if self.steps < 2 * MIN_POINTS:
            raise RangeTestError(
                f"{self.steps} steps are too few to suggest anything: a range test needs at "
                f"least {2 * MIN_POINTS} (a larger --steps)"
            )

    def rate(self, step: int) -> float:
        """The rate of update `step` (0-based). Written so that both ends are exact: `low` at
        step 0 and `high` at the last step, in floating point too."""
        t = step / (self.steps - 1)
        if self.shape == LINEAR:
            return self.low * (1.0 - t) + self.high * t
        return self.low ** (1.0 - t) * self.high**t


class SmoothedLoss:
    """An exponential moving average of the step's loss, bias-corrected as Adam's moments are
    (Kingma and Ba, 2015): the average starts at 0, so after t values it is divided by
    1 - beta**t, which makes the first smoothed value the first loss rather than a tenth of it.
    It also keeps the lowest smoothed value, against which divergence is judged."""

    def __init__(self, beta: float) -> None:
        if not 0.0 <= beta < 1.0:
            raise RangeTestError(f"--smoothing must be in [0, 1), got {beta!r}")
        self.beta = beta
        self.average = 0.0
        self.count = 0
        self.lowest = math.inf

    def add(self, loss: float) -> float:
        """Take one step's loss; the smoothed loss so far."""
        self.count += 1
        self.average = self.beta * self.average + (1.0 - self.beta) * loss
        smoothed = self.average / (1.0 - self.beta**self.count)
        self.lowest = min(self.lowest, smoothed)
        return smoothed

    def diverged(self, smoothed: float, factor: float) -> bool:
        """Whether the loss has run away: not finite, or `factor` times its lowest."""
        return not math.isfinite(smoothed) or smoothed > factor * self.lowest


@dataclass(frozen=True)
class Suggestions:
    """What one range test suggests, each rate with the rule that found it (see `suggest`)."""

    eta_min: float  # where validation accuracy starts to rise
    eta_max: float  # where it stops rising
    steepest: float | None  # where the smoothed loss falls fastest against log(rate)
    lowest_loss: float  # where the smoothed loss is lowest
    last_stable: float | None  # the last rate before the loss diverged (None: it never did)
    still_learns: float  # the largest rate before validation accuracy collapses
    collapse: float | None  # where it falls back below half its climb (None: it never does)
    peak_accuracy: float  # the highest smoothed validation accuracy

    def as_dict(self) -> dict[str, float | None]:
        return asdict(self)


def moving_average(values: Sequence[float], half_window: int) -> np.ndarray:
    """Each value replaced by the mean of it and up to `half_window` neighbours each side
    (fewer at the ends): rides out the noise of single validation points without shifting
    where a rise or a peak is, as a trailing average would."""
    values = np.asarray(values, dtype=np.float64)
    out = np.empty_like(values)
    for i in range(len(values)):
        out[i] = values[max(0, i - half_window) : i + half_window + 1].mean()
    return out


def suggest(
    rates: Sequence[float],
    smoothed_loss: Sequence[float],
    point_rates: Sequence[float],
    val_accuracy: Sequence[float],
    diverged_step: int | None,
    memory: int = 1,
) -> Suggestions:
    """The suggestions of one range test, from every step's rate and smoothed loss (up to where
    it stopped) and the validation accuracy at its evaluation points.

    - eta_min: the first rate at which the (smoothed) validation accuracy has climbed
      `RISE_SHARE` of the way from its start to its peak -- Smith's "starts to increase";
    - eta_max: the first rate at which it comes within `PLATEAU_GAP` of its peak -- Smith's
      "slows, becomes ragged, or starts to fall", whichever of them comes first;
    - steepest: where the smoothed loss falls fastest per unit of log(rate), before its lowest
      point, the loss smoothed with a memory of `memory` steps (fastai's "steep"); None where
      the test has too few steps before that point to take such a slope;
    - lowest_loss: the rate at the smoothed loss's lowest point;
    - last_stable: the rate of the step before the loss diverged;
    - collapse: past the peak, the first rate at which the accuracy has fallen back below
      `COLLAPSE_SHARE` of its climb, and still_learns the rate of the point before it (the
      last point where it never collapses). A network whose units die collapses to chance with
      a loss near log(10) and no blow-up, which the loss's divergence test does not see.

    Raises RangeTestError where the curves cannot carry a suggestion: too few validation
    points, a loss that never falls, an accuracy that never rises.
    """
    if len(point_rates) < MIN_POINTS:
        raise RangeTestError(
            f"only {len(point_rates)} validation points before the test stopped: too few to "
            f"suggest anything (at least {MIN_POINTS}; a lower --low, more steps or a smaller "
            "--eval-every)"
        )
    loss = np.asarray(smoothed_loss, dtype=np.float64)
    lowest = int(np.argmin(loss))
    # Where the average has settled (its first values follow single batches).
    start = min(memory, len(loss) // 4)
    if not loss[start:].min() < (1.0 - MIN_FALL) * loss[start]:
        raise RangeTestError(
            f"the loss never fell by {MIN_FALL:.0%} (from {loss[start]:.4g} it got no lower "
            f"than {loss[start:].min():.4g}) between the rates tried: the range starts too high "
            "or ends too low, or the network does not train (check the init)"
        )
    rate_array = np.asarray(rates, dtype=np.float64)
    steepest = steepest_descent(loss[: lowest + 1], rate_array[: lowest + 1], memory)
    steepest_rate = None if steepest is None else float(rate_array[steepest])
    accuracy = moving_average(val_accuracy, ACCURACY_HALF_WINDOW)
    peak = float(accuracy.max())
    start = float(accuracy[0])
    if not peak > start:
        raise RangeTestError(
            f"validation accuracy never rose above its start ({start:.2%}): no rate in the "
            "range trains this network"
        )
    climb = peak - start
    rising = int(np.argmax(accuracy >= start + RISE_SHARE * climb))
    stopped = int(np.argmax(accuracy >= peak - PLATEAU_GAP))
    top = int(np.argmax(accuracy))
    fallen = np.flatnonzero(accuracy[top:] < start + COLLAPSE_SHARE * climb)
    collapse = None if len(fallen) == 0 else top + int(fallen[0])
    last_stable = None
    if diverged_step is not None and diverged_step >= 1:
        last_stable = float(rate_array[min(diverged_step, len(rate_array)) - 1])
    return Suggestions(
        eta_min=float(point_rates[rising]),
        eta_max=float(point_rates[max(stopped, rising)]),
        steepest=steepest_rate,
        lowest_loss=float(rate_array[lowest]),
        last_stable=last_stable,
        still_learns=float(point_rates[len(point_rates) - 1 if collapse is None else collapse - 1]),
        collapse=None if collapse is None else float(point_rates[collapse]),
        peak_accuracy=peak,
    )


def steepest_descent(loss: np.ndarray, rates: np.ndarray, memory: int) -> int | None:
    """The step at which `loss`, smoothed with a memory of `memory` steps (1 / (1 - beta)),
    falls fastest per unit of log(rate). Each slope is taken across 2 * memory steps each side,
    and the first 3 * memory steps are skipped (until then the bias-corrected average is made
    of few batches): on a constructed tanh descent with noise, narrower windows or a shorter
    skip let the average's wobbles win by decades (tests/test_lr_range.py)."""
    memory = max(1, memory)
    window, skip = 2 * memory, 3 * memory
    last = len(loss) - 1
    centre = np.arange(max(window, skip), last - window + 1)
    if len(centre) == 0:
        return None  # too few steps before the lowest loss for a slope that means anything
    rise = loss[centre + window] - loss[centre - window]
    run = np.log(rates[centre + window]) - np.log(rates[centre - window])
    return int(centre[np.argmin(rise / run)])


def geometric_mean(values: Sequence[float]) -> float:
    """The middle of rates spread over decades: the mean of their logarithms."""
    return float(np.exp(np.mean(np.log(np.asarray(values, dtype=np.float64)))))


def combined(suggestions: Sequence[Suggestions]) -> dict[str, dict[str, float | None]]:
    """Every suggestion over seeds: its geometric mean (the suggestion), lowest and highest,
    and the spread as the ratio highest / lowest."""
    found: dict[str, dict[str, float | None]] = {}
    for key in KEYS:
        values = [getattr(s, key) for s in suggestions if getattr(s, key) is not None]
        if not values:
            found[key] = {"value": None, "low": None, "high": None, "spread": None, "seeds": 0}
            continue
        found[key] = {
            "value": geometric_mean(values),
            "low": min(values),
            "high": max(values),
            "spread": max(values) / min(values),
            "seeds": len(values),  # of len(suggestions): a seed may have none (no divergence)
        }
    return found
