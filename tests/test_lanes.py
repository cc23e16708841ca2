"""The step's two lanes: both halves always run, errors come back, and who ran a half never
changes a number."""

from __future__ import annotations

import os
import signal
import threading
import time
import warnings
from collections.abc import Callable

import numpy as np
import pytest

from knn_cli.augment import Augmentation
from knn_cli.config import TrainingConfig
from knn_cli.engine import Engine
from knn_cli.engine import split as split_module
from knn_cli.engine.batches import Batch
from knn_cli.engine.lanes import Lanes, run_halves
from knn_cli.engine.split import SPLIT_MIN_MULTIPLY_ADDS
from knn_cli.network import Network
from knn_cli.trainer import Callbacks, Splits, train


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


def test_ctrl_c_while_the_caller_waits_for_the_helper_is_raised_once_the_helper_is_done() -> None:
    """The helper writes into the caller's buffers: an interrupt must not let the caller go on
    (or save) while the helper is still writing."""
    finished: list[int] = []
    taken = threading.Event()
    caller = threading.main_thread().ident
    assert caller is not None and threading.current_thread() is threading.main_thread()

    def half(which: int) -> None:
        if which == 0:
            taken.wait(10.0)  # so that the helper has half 1 and the caller must wait for it
            return
        taken.set()
        time.sleep(0.05)  # the caller is waiting by now
        signal.pthread_kill(caller, signal.SIGINT)
        time.sleep(0.2)
        finished.append(which)

    with Lanes() as lanes:
        with pytest.raises(KeyboardInterrupt):
            lanes.split(half)
        assert finished == [1]  # before close(), which waits for the helper anyway


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


def helper_threads() -> set[threading.Thread]:
    """The lanes' helper threads alive now: one starts when a step first offers it a half."""
    return {thread for thread in threading.enumerate() if thread.name == "knn-lane"}


def noting_helpers(found: set[threading.Thread]) -> Callable[[int, float], None]:
    """A listener's `on_step` that notes the helper threads alive between two steps."""

    def note(step: int, eta: float) -> None:
        found.update(helper_threads())

    return note


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
@pytest.mark.parametrize("background", [False, True], ids=["evaluating-here", "background"])
@pytest.mark.parametrize("augmented", [False, True], ids=["plain", "augmented"])
@pytest.mark.parametrize("batch_norm", [False, True])
def test_training_gives_the_same_bits_with_one_lane_or_two(
    batch_norm: bool, augmented: bool, background: bool
) -> None:
    schedule = TrainingConfig(
        lambda_=0.01,
        batch_size=40,
        eta_min=1e-4,
        eta_max=0.01,
        n_s=12,
        cycles=1,
        eval_every=6,
        seed=2,
    )
    augmentation = Augmentation(flip=True, translate=3) if augmented else None
    results = []
    for two_lanes in (False, True):
        network, splits = _problem(batch_norm)
        records: list[dict] = []
        earlier = helper_threads()
        helpers: set[threading.Thread] = set()  # seen between steps, started by this training
        outcome = train(
            network,
            splits,
            schedule,
            listener=Callbacks(records.extend, step=noting_helpers(helpers)),
            augmentation=augmentation,
            two_lanes=two_lanes,
            background_evaluation=background,
        )
        assert outcome.status == "finished"
        results.append((network.state(), records))
        # The helper was offered halves. With evaluations in the background it need not be: one
        # in flight on the other core turns it off for the steps it overlaps, on a slow machine
        # every step.
        if not background:
            assert bool(helpers - earlier) == two_lanes
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


def test_meanwhile_runs_once_on_the_caller_while_the_helper_works() -> None:
    main = threading.current_thread().name
    with Lanes() as lanes:
        for helping in (True, False):
            lanes.helping = helping
            for _ in range(50):
                ran: list[str] = []

                def note(ran: list[str] = ran) -> None:
                    ran.append(threading.current_thread().name)

                lanes.split(lambda _which: None, note)
                assert ran == [main]
    ran = []
    run_halves(lambda _which: None, None, lambda: ran.append("here"))
    assert ran == ["here"]


def test_an_error_in_meanwhile_reaches_the_caller_after_the_halves() -> None:
    finished: list[int] = []

    def meanwhile() -> None:
        raise ValueError("meanwhile broke")

    with Lanes() as lanes, pytest.raises(ValueError, match="meanwhile broke"):
        lanes.split(finished.append, meanwhile)
    assert sorted(finished) == [0, 1]


# -- the first layer split by input features --------------------------------------------------


def _twin_engines(batch_norm: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[Engine, Engine]:
    """Engines over two networks with the same start: the first splits its first layer (on two
    lanes), the second does not (its workspaces are made while splitting is switched off)."""
    d, n = 640, 40
    assert n * d * 50 >= SPLIT_MIN_MULTIPLY_ADDS
    split, whole = (
        Network(d, [50, 20], 10, batch_norm=batch_norm, seed=3, dtype="float64") for _ in range(2)
    )
    split_engine, whole_engine = Engine(split, two_lanes=True), Engine(whole)
    assert split_engine.workspace(n).split is not None
    with monkeypatch.context() as patch:
        patch.setattr(split_module, "SPLIT_MIN_MULTIPLY_ADDS", 10**12)
        assert whole_engine.workspace(n).split is None
    return split_engine, whole_engine


def _data(rows: int = 200, d: int = 640) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    return rng.standard_normal((rows, d)) / np.sqrt(d) * 3, rng.integers(0, 10, rows)


@pytest.mark.parametrize("batch_norm", [False, True])
def test_a_split_first_layer_gives_the_gradients_of_the_whole_one(
    batch_norm: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The split path's gradients against the unsplit path's, which the centred-difference tests
    check: they differ only in the order of the forward product's additions."""
    split, whole = _twin_engines(batch_norm, monkeypatch)
    X, y = _data()
    with split:
        cost_split, grads_split = split.cost_and_gradients(X[:40], y[:40], 0.01)
    cost_whole, grads_whole = whole.cost_and_gradients(X[:40], y[:40], 0.01)
    assert cost_split == pytest.approx(cost_whole, rel=1e-12)
    assert grads_split.keys() == grads_whole.keys()
    for name in grads_whole:
        np.testing.assert_allclose(grads_split[name], grads_whole[name], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("helping", [False, True])
@pytest.mark.parametrize("batch_norm", [False, True])
def test_pipelined_split_steps_match_plain_gradient_descent(
    batch_norm: bool, helping: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Steps told the next batch (each lane then computes its half of the next first-layer
    product) against gradient descent written out: W - eta * (dJ/dW + 2 lambda W), batch by
    batch, from the unsplit network's gradients."""
    split, whole_engine = _twin_engines(batch_norm, monkeypatch)
    whole = whole_engine.network
    X, y = _data()
    lambda_, batches = 0.02, [Batch(X, np.arange(i, 200, 5)[:40]) for i in range(5)]
    with split:
        split.helping = helping
        for step, batch in enumerate(batches):
            eta = 0.05 * (step + 1)
            following = batches[step + 1] if step + 1 < len(batches) else None
            cost = split.step(batch, y[batch.rows], lambda_, eta, following=following)
            rows = batch.rows
            expected_cost, grads = whole_engine.cost_and_gradients(X[rows], y[rows], lambda_)
            stats = whole.batch_statistics(X[rows])
            assert cost == pytest.approx(expected_cost, rel=1e-9)
            for name, grad in grads.items():
                whole.params[name] -= eta * grad
            whole.update_moving_averages(stats)
            for name in whole.params:
                np.testing.assert_allclose(
                    split.network.params[name], whole.params[name], rtol=1e-9, atol=1e-12,
                    err_msg=name,
                )  # fmt: skip
    assert split.network.moving_averages.keys() == whole.moving_averages.keys()
    for name in whole.moving_averages:
        np.testing.assert_allclose(split.network.moving_averages[name], whole.moving_averages[name])


@pytest.mark.parametrize(
    "change", ["other rows", "set_params", "other batch size", "other X", "no next step"]
)
def test_a_first_product_computed_ahead_is_used_only_for_what_it_was_computed_for(
    change: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step told the wrong next batch, weights set or stepped on another batch size in between,
    or another X, still computes the right step: the halves computed ahead are then stale."""
    split, whole = _twin_engines(True, monkeypatch)
    X, y = _data()
    first, announced, actual = np.arange(40), np.arange(40, 80), np.arange(80, 120)
    with split:
        split.step(Batch(X, first), y[first], 0.01, 0.1, following=Batch(X, announced))
        whole.step(X[first], y[first], 0.01, 0.1)
        assert split.workspace(40).split.ahead  # computed ahead
        rows, source = announced, X
        if change == "other rows":
            rows = actual
        elif change == "set_params":
            for engine in (split, whole):
                engine.network.set_params({"W1": whole.network.params["W1"] * 0.5})
        elif change == "other batch size":
            for engine in (split, whole):
                engine.step(X[actual[:30]], y[actual[:30]], 0.01, 0.1)
        elif change == "other X":
            source = np.roll(X, 1, axis=0)  # other rows under the same indices
        cost = split.step(Batch(source, rows), y[rows], 0.01, 0.1)
    expected = whole.step(source[rows], y[rows], 0.01, 0.1)
    assert cost == pytest.approx(expected, rel=1e-9)
    for name in whole.network.params:
        np.testing.assert_allclose(
            split.network.params[name], whole.network.params[name], rtol=1e-9, atol=1e-12
        )


def test_a_next_batch_of_another_size_is_not_prepared(monkeypatch: pytest.MonkeyPatch) -> None:
    split, whole = _twin_engines(False, monkeypatch)
    X, y = _data()
    with split:
        split.step(Batch(X, np.arange(40)), y[:40], 0.01, 0.1,
                   following=Batch(X, np.arange(40, 70)))  # fmt: skip
    whole.step(X[:40], y[:40], 0.01, 0.1)
    for name in whole.network.params:
        np.testing.assert_allclose(
            split.network.params[name], whole.network.params[name], rtol=1e-9, atol=1e-12
        )
