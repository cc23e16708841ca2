"""The step's two lanes: both halves always run, errors come back, and who ran a half never
changes a number."""

from __future__ import annotations

import os
import threading
import warnings

import numpy as np
import pytest

from knn_cli import trainer as trainer_module
from knn_cli.lanes import Lanes, run_halves
from knn_cli.network import SPLIT_MIN_MULTIPLY_ADDS, Network
from knn_cli.trainer import Schedule, Splits, train


def test_both_halves_run_once_each_whether_or_not_the_helper_helps() -> None:
    with Lanes() as lanes:
        for helping in (True, False, True):
            lanes.helping = helping
            for _ in range(200):
                calls: list[int] = []
                lanes.split(calls.append)
                assert sorted(calls) == [0, 1]
    calls = []
    run_halves(calls.append, None)
    assert calls == [0, 1]


def test_the_helper_takes_second_halves_when_it_is_free() -> None:
    threads: set[str] = set()
    release = threading.Event()

    def half(which: int) -> None:
        if which == 0:
            release.wait(10.0)  # the caller lingers until the helper has taken half 1
        else:
            threads.add(threading.current_thread().name)
            release.set()

    with Lanes() as lanes:
        lanes.split(half)
    assert threads == {"knn-lane"}


@pytest.mark.parametrize("failing", [0, 1])
def test_an_error_in_either_half_reaches_the_caller_after_both_are_done(failing: int) -> None:
    finished: list[int] = []

    def half(which: int) -> None:
        if which == failing:
            raise ValueError(f"half {which} broke")
        finished.append(which)

    with Lanes() as lanes:
        with pytest.raises(ValueError, match=f"half {failing} broke"):
            lanes.split(half)
        assert finished == [1 - failing]
        lanes.split(lambda _which: None)  # still usable afterwards


def test_close_ends_the_helper_thread() -> None:
    lanes = Lanes()
    lanes.split(lambda _which: None)
    lanes.close()
    assert not any(t.name == "knn-lane" for t in threading.enumerate())
    with pytest.raises(RuntimeError, match="after close"):
        lanes.split(lambda _which: None)


def _problem(batch_norm: bool) -> tuple[Network, Splits]:
    rng = np.random.default_rng(4)
    X = rng.standard_normal((300, 3072)).astype(np.float32)
    y = rng.integers(0, 10, 300)
    network = Network(3072, [50, 20], 10, batch_norm=batch_norm, seed=1, dtype="float32")
    assert X[:100].size * 50 >= SPLIT_MIN_MULTIPLY_ADDS  # the first layer's products are split
    return network, Splits(X[:240], y[:240], X[240:], y[240:])


class CountingLanes(Lanes):
    helped: int = 0

    def split(self, half) -> None:  # type: ignore[no-untyped-def]
        CountingLanes.helped += self.helping
        super().split(half)


two_cores = pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < 2, reason="the trainer uses its helper lane on 2+ cores only"
)


@pytest.fixture
def blas_threads_unpinned(monkeypatch: pytest.MonkeyPatch) -> None:
    """The trainer keeps to one lane where the environment pins BLAS to one thread; starting a
    local Dask cluster (a sweep test does) sets those variables in this process for good."""
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)


@two_cores
@pytest.mark.usefixtures("blas_threads_unpinned")
@pytest.mark.parametrize("batch_norm", [False, True])
def test_training_gives_the_same_bits_with_one_lane_or_two(
    batch_norm: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trainer_module, "Lanes", CountingLanes)
    schedule = Schedule(0.01, 40, 1e-4, 0.05, n_s=12, cycles=1, eval_every=6, seed=2)
    results = []
    for two_lanes in (False, True):
        network, splits = _problem(batch_norm)
        records: list[dict] = []
        CountingLanes.helped = 0
        train(network, splits, schedule, on_evaluation=records.extend, two_lanes=two_lanes)
        results.append((network.state(), records))
        assert (CountingLanes.helped > 0) == two_lanes  # the helper was offered halves
    (one, one_records), (two, two_records) = results
    assert one_records == two_records
    assert one.keys() == two.keys()
    for name in one:
        np.testing.assert_array_equal(one[name], two[name], err_msg=name)


def test_the_helper_handles_floating_point_errors_as_the_caller_does() -> None:
    """NumPy's error state is per thread; the trainer silences overflow and reports divergence,
    so an overflow on the helper must not warn (or, with warnings as errors, raise)."""
    huge = np.full((4, 4), 1e38, dtype=np.float32)
    ran_on: list[str] = []
    helper_done = threading.Event()

    def half(which: int) -> None:
        if which == 0:
            helper_done.wait(10.0)  # linger so that the helper takes half 1
            return
        np.matmul(huge, huge)  # overflows
        ran_on.append(threading.current_thread().name)
        helper_done.set()

    with Lanes() as lanes, np.errstate(over="ignore"), warnings.catch_warnings():
        warnings.simplefilter("error")
        lanes.split(half)
    assert ran_on == ["knn-lane"]


def test_a_split_product_matches_the_whole_one() -> None:
    from knn_cli.network import _product

    rng = np.random.default_rng(0)
    X = rng.standard_normal((100, 3072))
    W = rng.standard_normal((3072, 50))
    G = rng.standard_normal((100, 50))
    with Lanes() as lanes:
        for A, B in ((X, W), (X.T, G)):
            out = np.empty((A.shape[0], B.shape[1]))
            assert _product(A, B, out, lanes) is out
            np.testing.assert_allclose(out, A @ B, rtol=1e-12, atol=1e-10)
