"""The learning-rate range test: its schedules, smoothing and rules on constructed curves with a
known answer, and `knn lr-range` as a user meets it (on the tiny fake CIFAR-10)."""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from test_cli import assert_one_line_error, run, write

from knn_cli.cli import EXIT_INTERRUPTED
from knn_cli.lr_range import (
    MIN_POINTS,
    RangeSchedule,
    RangeTestError,
    SmoothedLoss,
    steepest_descent,
    suggest,
)

# -- the schedules -------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["linear", "exponential"])
@pytest.mark.parametrize("low, high", [(1e-5, 10.0), (3e-7, 7.3), (0.001, 0.0011)])
def test_both_schedules_are_exact_at_both_ends_and_rise(
    shape: str, low: float, high: float
) -> None:
    schedule = RangeSchedule(low, high, 977, shape)
    rates = [schedule.rate(step) for step in range(977)]
    assert rates[0] == low and rates[-1] == high
    assert all(b > a for a, b in itertools.pairwise(rates))


def test_linear_rises_in_equal_steps_and_exponential_by_equal_factors() -> None:
    linear = [RangeSchedule(0.1, 1.1, 21, "linear").rate(s) for s in range(21)]
    assert np.allclose(np.diff(linear), 0.05, rtol=1e-12)
    exponential = [RangeSchedule(1e-4, 1.0, 17, "exponential").rate(s) for s in range(17)]
    assert np.allclose(exponential[::4], [1e-4, 1e-3, 1e-2, 1e-1, 1.0], rtol=1e-12)
    assert np.allclose(np.diff(np.log10(exponential)), 0.25, rtol=1e-12)


@pytest.mark.parametrize(
    "low, high, steps, fragment",
    [
        (0.1, 0.1, 100, "must be below"),
        (1.0, 0.1, 100, "must be below"),
        (0.0, 1.0, 100, "--low must be a positive rate"),
        (-1e-3, 1.0, 100, "--low must be a positive rate"),
        (1e-3, float("inf"), 100, "--high must be a positive rate"),
        (1e-3, 1.0, 2 * MIN_POINTS - 1, "too few to suggest anything"),
    ],
)
def test_a_schedule_that_cannot_suggest_anything_is_refused(
    low: float, high: float, steps: int, fragment: str
) -> None:
    with pytest.raises(RangeTestError, match=fragment):
        RangeSchedule(low, high, steps)


# -- the smoothing and the stop ------------------------------------------------------------------


def test_the_bias_correction_makes_the_average_start_at_the_first_loss() -> None:
    smoothed = SmoothedLoss(0.98)
    assert smoothed.add(2.5) == pytest.approx(2.5, rel=1e-14)  # uncorrected: 0.05
    for _ in range(30):  # a constant stays itself at every step, not rising towards it
        assert smoothed.add(2.5) == pytest.approx(2.5, rel=1e-12)
    by_hand, average = SmoothedLoss(0.9), 0.0
    for t, loss in enumerate([3.0, 1.0, 2.0, 5.0], start=1):
        average = 0.9 * average + 0.1 * loss
        assert by_hand.add(loss) == pytest.approx(average / (1 - 0.9**t), rel=1e-14)


def test_divergence_is_a_multiple_of_the_lowest_smoothed_loss_or_not_finite() -> None:
    smoothed = SmoothedLoss(0.0)  # no smoothing: each value as it is
    for loss in (2.0, 1.0, 3.9):
        assert not smoothed.diverged(smoothed.add(loss), 4.0)
    assert smoothed.diverged(smoothed.add(4.1), 4.0)
    assert smoothed.diverged(smoothed.add(math.nan), 4.0)


# -- the rules, on curves with a known answer ----------------------------------------------------

RISE_FROM, RISE_TO = 1e-3, 1e-1  # accuracy climbs from 10% to 50% between these rates
POINTS = np.geomspace(1e-5, 10.0, 121)  # 20 validation points a decade
SPACING = 1.0 / 20  # decades between points


def constructed_accuracy(rates: np.ndarray, fall_from: float | None = None) -> np.ndarray:
    """10% up to RISE_FROM, rising linearly in log(rate) to 50% at RISE_TO, flat after (or
    falling back linearly from `fall_from`, reaching 10% a decade later)."""
    x = np.log10(rates)
    climb = np.clip((x - np.log10(RISE_FROM)) / (np.log10(RISE_TO) - np.log10(RISE_FROM)), 0, 1)
    accuracy = 0.1 + 0.4 * climb
    if fall_from is not None:
        accuracy -= 0.4 * np.clip(x - np.log10(fall_from), 0, 1)
    return accuracy


def falling_loss(rates: np.ndarray) -> np.ndarray:
    """2.3 falling to 1.3 along a tanh in log(rate), steepest exactly at 1e-2."""
    return 1.8 - 0.5 * np.tanh(2.0 * (np.log10(rates) - np.log10(1e-2)))


def decades(a: float, b: float) -> float:
    return abs(math.log10(a) - math.log10(b))


def test_the_bounds_are_where_accuracy_starts_to_rise_and_stops_rising() -> None:
    found = suggest(POINTS, falling_loss(POINTS), POINTS, constructed_accuracy(POINTS), None)
    # A tenth of the climb: a tenth of the two decades above 1e-3.
    assert decades(found.eta_min, 10 ** (-3 + 0.2)) <= SPACING
    # Within one point (1%) of the 50% plateau: 97.5% of the climb.
    assert decades(found.eta_max, 10 ** (-3 + 2 * 0.975)) <= 2 * SPACING
    assert found.collapse is None and found.still_learns == POINTS[-1]
    assert found.last_stable is None
    assert found.peak_accuracy == pytest.approx(0.5)


def test_a_peak_then_a_fall_gives_the_peak_and_the_collapse() -> None:
    accuracy = constructed_accuracy(POINTS, fall_from=1.0)
    found = suggest(POINTS, falling_loss(POINTS), POINTS, accuracy, None)
    # Back below half the climb (30%) half a decade past 1.0.
    assert decades(found.collapse, 10**0.5) <= SPACING
    assert found.still_learns < found.collapse
    assert decades(found.still_learns, found.collapse) <= SPACING + 1e-9


def test_the_steepest_descent_is_where_the_loss_falls_fastest_against_log_rate() -> None:
    rates = np.geomspace(1e-5, 10.0, 601)
    found = suggest(rates, falling_loss(rates), POINTS, constructed_accuracy(POINTS), None)
    assert decades(found.steepest, 1e-2) <= 0.02
    assert found.lowest_loss == rates[-1]  # the loss falls to the end


@pytest.mark.parametrize("seed", range(5))
def test_the_smoothing_rides_out_noise_that_single_steps_would_follow(seed: int) -> None:
    rates = np.geomspace(1e-5, 10.0, 3000)  # 500 steps a decade
    rng = np.random.default_rng(seed)
    noisy = falling_loss(rates) + rng.normal(0.0, 0.3, len(rates))
    smoothed = SmoothedLoss(0.98)
    curve = np.array([smoothed.add(loss) for loss in noisy])
    assert not any(smoothed.diverged(value, 4.0) for value in curve)
    found = suggest(rates, curve, POINTS, constructed_accuracy(POINTS), None, memory=50)
    # The average lags by about 1 / (1 - beta) = 50 steps, a tenth of a decade; the noise
    # left in a slope across 200 steps moves the steepest point by up to about 0.2 more.
    assert -0.1 <= math.log10(found.steepest / 1e-2) <= 0.4
    raw = [rates[steepest_descent(noisy, rates, 1)] for noisy in noisy_copies(rates, 5)]
    assert max(decades(r, 1e-2) for r in raw) > 1.0  # unsmoothed, it lands decades away
    noisy_accuracy = constructed_accuracy(POINTS) + rng.normal(0.0, 0.01, len(POINTS))
    found = suggest(rates, curve, POINTS, noisy_accuracy, None, memory=50)
    assert decades(found.eta_min, 10 ** (-3 + 0.2)) <= 3 * SPACING


def noisy_copies(rates: np.ndarray, count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(100)
    return [falling_loss(rates) + rng.normal(0.0, 0.3, len(rates)) for _ in range(count)]


def test_the_divergence_point_stops_the_test_and_gives_the_last_stable_rate() -> None:
    rates = np.geomspace(1e-5, 100.0, 1401)
    loss = falling_loss(rates) * np.exp(np.clip(np.log10(rates) - 0.0, 0, None) * 3.0)
    smoothed = SmoothedLoss(0.9)
    stop = None
    for step, value in enumerate(loss):
        if smoothed.diverged(smoothed.add(value), 4.0):
            stop = step
            break
    assert stop is not None
    # Past rate 1 the loss (1.3 there, its lowest) grows as exp(3 log10 r): 4 times its lowest
    # at log10 r = ln(4) / 3 = 0.46, the smoothed loss a little later.
    assert 0.46 <= math.log10(rates[stop]) <= 0.46 + 0.15
    kept = rates[:stop]
    points = POINTS[kept[-1] > POINTS]
    found = suggest(kept, loss[:stop], points, constructed_accuracy(points), stop)
    assert found.last_stable == rates[stop - 1]


def test_curves_that_cannot_carry_a_suggestion_are_said_so() -> None:
    flat = np.full(len(POINTS), 2.3)
    with pytest.raises(RangeTestError, match="the loss never fell"):
        suggest(POINTS, flat, POINTS, constructed_accuracy(POINTS), None)
    with pytest.raises(RangeTestError, match="too few to suggest anything"):
        suggest(POINTS, falling_loss(POINTS), POINTS[:5], constructed_accuracy(POINTS[:5]), None)
    with pytest.raises(RangeTestError, match="never rose"):
        suggest(POINTS, falling_loss(POINTS), POINTS, np.full(len(POINTS), 0.1), None)


# -- knn lr-range on the fake CIFAR-10 -----------------------------------------------------------

TINY = """
name: tiny
model: {hidden: [16], batch_norm: true}
training: {batch_size: 10, seed: 3}
data: {validation_size: 20}
"""
TEST_ARGS = ("--steps", "120", "--eval-every", "3", "--low", "1e-4", "--high", "30")


def lr_range(tmp_path: Path, data: Path, runs: str, *extra: str):
    config = write(tmp_path, TINY)
    return run(
        "lr-range", config, "--set", f"data.dir={data}", "--runs-dir", str(tmp_path / runs),
        *TEST_ARGS, *extra,
    )  # fmt: skip


def only_folder(parent: Path) -> Path:
    (folder,) = parent.iterdir()
    return folder


def test_lr_range_writes_its_folder_and_suggests_bounds(
    tmp_path: Path, fake_cifar_dir: Path
) -> None:
    out = tmp_path / "suggested.yaml"
    result = lr_range(tmp_path, fake_cifar_dir, "runs", "--write-config", str(out))
    assert result.exit_code == 0, result.output
    folder = only_folder(tmp_path / "runs")
    for name in ("config.yaml", "lr_range.json", "lr_range.csv", "lr_range.png", "summary.json"):
        assert (folder / name).is_file(), name
    assert not (folder / "checkpoint.npz").exists()
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["command"] == "lr-range" and summary["status"] == "finished"
    bounds = summary["seeds"][0]["suggestions"]
    assert 1e-4 <= bounds["eta_min"] <= bounds["eta_max"] <= 30
    assert "suggested bounds: eta_min" in result.output
    from knn_cli.config import load_config

    written = load_config(out)
    assert written.training.eta_min == float(f"{bounds['eta_min']:.3g}")
    assert written.training.eta_max == float(f"{bounds['eta_max']:.3g}")
    listed = run("runs", str(tmp_path / "runs"))
    assert "lr-range" in listed.output, listed.output
    (folder / "lr_range.png").unlink()
    redrawn = run("plot", str(folder))
    assert redrawn.exit_code == 0 and (folder / "lr_range.png").is_file(), redrawn.output


def test_seeds_side_by_side_are_each_the_test_alone(tmp_path: Path, fake_cifar_dir: Path) -> None:
    """Two seeds train as a population; each seed's rows are those it gets alone."""
    both = lr_range(tmp_path, fake_cifar_dir, "both", "--seeds", "2")
    alone = lr_range(tmp_path, fake_cifar_dir, "alone", "--set", "training.seed=4")
    assert both.exit_code == 0 and alone.exit_code == 0, both.output + alone.output
    from knn_cli.kinds.range_test import read_range_rows

    rows = read_range_rows(only_folder(tmp_path / "both"))
    assert {row["seed"] for row in rows} == {3, 4}
    second = [row for row in rows if row["seed"] == 4]
    assert second == read_range_rows(only_folder(tmp_path / "alone"))
    summary = json.loads((only_folder(tmp_path / "both") / "summary.json").read_text())
    assert len(summary["seeds"]) == 2 and summary["suggested"]["eta_min"]["spread"] >= 1.0


def test_a_stopped_range_test_resumes_to_the_uninterrupted_result(
    tmp_path: Path, fake_cifar_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = lr_range(tmp_path, fake_cifar_dir, "whole", "--seeds", "2", "--grid")
    assert whole.exit_code == 0, whole.output
    from knn_cli.runs import CsvLog

    real_append = CsvLog.append
    sent: list[int] = []

    def append(self, rows):  # Ctrl-C once the range test's 50th step is written
        real_append(self, rows)
        if self.path.name == "lr_range.csv" and rows and rows[0]["step"] == 49 and not sent:
            sent.append(1)
            os.kill(os.getpid(), signal.SIGINT)

    with monkeypatch.context() as patch:
        patch.setattr(CsvLog, "append", append)
        cut = lr_range(tmp_path, fake_cifar_dir, "cut", "--seeds", "2", "--grid")
    assert_one_line_error(cut, EXIT_INTERRUPTED, "interrupted")
    folder = only_folder(tmp_path / "cut")
    assert f"knn lr-range --resume {folder}" in cut.output
    assert (folder / "checkpoint.npz").is_file()
    said = json.loads((folder / "summary.json").read_text())
    assert said["status"] == "interrupted" and said["steps"] == 50
    assert "interrupted" in run("runs", str(tmp_path / "cut")).output
    resumed = run("lr-range", "--resume", str(folder))
    assert resumed.exit_code == 0, resumed.output
    reference = only_folder(tmp_path / "whole")
    assert (folder / "lr_range.csv").read_bytes() == (reference / "lr_range.csv").read_bytes()
    mine, theirs = (json.loads((f / "summary.json").read_text()) for f in (folder, reference))
    assert mine["seeds"] == theirs["seeds"] and mine["suggested"] == theirs["suggested"]
    assert [g["final_val_accuracy"] for g in mine["grid"]] == [
        g["final_val_accuracy"] for g in theirs["grid"]
    ]
    again = run("lr-range", "--resume", str(folder))
    assert_one_line_error(again, 2, "nothing to continue")


def test_a_killed_range_test_resumes_from_its_last_periodic_checkpoint(
    tmp_path: Path, fake_cifar_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash (as kill -9: nothing saved at the end) after step 70: the checkpoint saved every
    step (checkpoint_minutes tiny) has the seeds after step 69; rows past it are written again."""
    often = ("--set", "training.checkpoint_minutes=1e-9")
    whole = lr_range(tmp_path, fake_cifar_dir, "whole", "--seeds", "2", *often)
    assert whole.exit_code == 0, whole.output
    from knn_cli.runs import CsvLog

    real_append = CsvLog.append

    def append(self, rows):
        real_append(self, rows)
        if self.path.name == "lr_range.csv" and rows and rows[0]["step"] == 70:
            raise RuntimeError("killed")

    with monkeypatch.context() as patch, pytest.raises(RuntimeError, match="killed"):
        patch.setattr(CsvLog, "append", append)
        lr_range(tmp_path, fake_cifar_dir, "cut", "--seeds", "2", *often)
    folder = only_folder(tmp_path / "cut")
    assert "70," in (folder / "lr_range.csv").read_text()  # a row past the checkpoint
    resumed = run("lr-range", "--resume", str(folder))
    assert resumed.exit_code == 0, resumed.output
    reference = only_folder(tmp_path / "whole")
    assert (folder / "lr_range.csv").read_bytes() == (reference / "lr_range.csv").read_bytes()


def test_the_grid_trains_a_dozen_constant_rates_beside_the_test(
    tmp_path: Path, fake_cifar_dir: Path
) -> None:
    result = lr_range(tmp_path, fake_cifar_dir, "runs", "--grid")
    assert result.exit_code == 0, result.output
    folder = only_folder(tmp_path / "runs")
    summary = json.loads((folder / "summary.json").read_text())
    rates = [point["eta"] for point in summary["grid"]]
    assert len(rates) == 12 and rates[0] == pytest.approx(1e-4) and rates[-1] == pytest.approx(30)
    from knn_cli.config import load_config

    for point in summary["grid"]:
        load_config(folder / point["folder"] / "config.yaml")  # an ordinary run's, valid
        run_summary = json.loads((folder / point["folder"] / "summary.json").read_text())
        assert run_summary["test_accuracy"] is None  # a model choice never looks at the test set
        assert run_summary["total_steps"] == 120
        metrics = (folder / point["folder"] / "metrics.csv").read_text().splitlines()[1:]
        etas = {float(line.split(",")[2]) for line in metrics}
        assert etas == {point["eta"]}  # constant


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (("--low", "1", "--high", "0.1"), "must be below --high"),
        (("--low", "0"), "--low must be a positive rate"),
        (("--high", "-1"), "--high must be a positive rate"),
        (("--steps", "10"), "too few to suggest anything"),
        (("--seeds", "0"), "--seeds must be at least 1"),
        (("--smoothing", "1"), "--smoothing must be in [0, 1)"),
        (("--diverge-factor", "1"), "--diverge-factor must be above 1"),
        (("--eval-every", "20"), "give 6 points: too few to suggest anything"),
    ],
)
def test_bad_settings_get_one_line_and_nothing_written(
    tmp_path: Path, fake_cifar_dir: Path, extra: tuple[str, ...], fragment: str
) -> None:
    result = lr_range(tmp_path, fake_cifar_dir, "runs", *extra)
    assert_one_line_error(result, 2, fragment)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_loss_that_never_falls_is_said_so(tmp_path: Path, fake_cifar_dir: Path) -> None:
    out = tmp_path / "suggested.yaml"
    result = lr_range(
        tmp_path,
        fake_cifar_dir,
        "runs",
        "--low",
        "1e-9",
        "--high",
        "2e-9",
        "--write-config",
        str(out),
    )
    assert_one_line_error(result, 1, "no suggestion", "the loss never fell")
    assert not out.exists()
    folder = only_folder(tmp_path / "runs")  # what was measured is kept
    assert json.loads((folder / "summary.json").read_text())["status"] == "no suggestion"


def test_usage_errors_of_lr_range(tmp_path: Path) -> None:
    assert_one_line_error(run("lr-range"), 2, "give a CONFIG to test, or --resume")
    both = run("lr-range", "c.yaml", "--resume", str(tmp_path))
    assert_one_line_error(both, 2, "not both")
    missing = run("lr-range", "--resume", str(tmp_path / "nowhere"))
    assert_one_line_error(missing, 2, "not a range-test folder")
    changed = run("lr-range", "--resume", str(tmp_path), "--seeds", "3", "--high", "2")
    assert_one_line_error(changed, 2, "continues the test as it was; drop --high, --seeds")
    changed = run("lr-range", "--resume", str(tmp_path), "--set", "training.lambda=0.1")
    assert_one_line_error(changed, 2, "drop --set")


def test_a_test_too_short_for_a_slope_has_no_steepest_descent() -> None:
    rates = np.geomspace(1e-5, 10.0, 200)
    found = suggest(
        rates, falling_loss(rates), POINTS, constructed_accuracy(POINTS), None, memory=50
    )
    assert found.steepest is None  # 5 x 50 steps needed before the lowest loss
    assert found.eta_min is not None and found.lowest_loss == rates[-1]


def test_knn_compare_overlays_range_tests_and_tabulates_them(
    tmp_path: Path, fake_cifar_dir: Path
) -> None:
    for runs, extra in (("a", ()), ("b", ("--set", "model.batch_norm=false"))):
        assert lr_range(tmp_path, fake_cifar_dir, runs, *extra).exit_code == 0
    figure = tmp_path / "out" / "compare.png"
    folders = [str(only_folder(tmp_path / runs)) for runs in ("a", "b")]
    result = run("compare", *folders, "--out", str(figure))
    assert result.exit_code == 0, result.output
    assert "batch_norm=true" in result.output and "batch_norm=false" in result.output
    assert figure.is_file() and "learns up to" in figure.with_suffix(".md").read_text()
    mixed = run("compare", folders[0], str(tmp_path))
    assert_one_line_error(mixed, 2)


def test_a_linear_rise_says_its_eta_min_may_lie_below_its_first_point() -> None:
    from knn_cli.cli_range import first_point_floor

    linear = {"shape": "linear", "low": 1e-5, "high": 10.0, "steps": 3600, "eval_every": 36}
    note = first_point_floor(linear, 0.197)  # the second point: at the floor
    assert note is not None and "first validation point at rate 0.1," in note
    assert first_point_floor(linear, 0.5) is None  # well above the first points
    exponential = {**linear, "shape": "exponential", "steps": 1000, "eval_every": 10}
    assert first_point_floor(exponential, 1e-4) is None
