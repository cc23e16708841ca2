"""Where a training step's time goes with two lanes: stamps taken on both threads.

For the 3-layer and 9-layer BN networks (batch 100, as `knn train` runs them, data from the
real cache or random rows of its shape), it trains 1,500 steps with the helper lane and prints
the medians, in microseconds, of: the part of the step before the first layer's job is handed
over (forward pass, loss, backward pass down to the first layer: one thread), each lane's half
of the job, how long the helper took to start its half, the caller's `meanwhile` work, and how
long the caller then waited. It is the profile behind the "why the bound stays out of reach"
paragraph of the README; it changes nothing in the package (it wraps `Lanes.split` in this
process only).

    KNN_DATA_DIR=/path/to/cifar-10-batches-py python benchmarks/step_timeline.py
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable

import numpy as np
from threadpoolctl import threadpool_limits

from knn_cli.engine import Engine
from knn_cli.engine import lanes as lanes_module
from knn_cli.engine.batches import Batch
from knn_cli.engine.lanes import Lanes
from knn_cli.errors import DataError
from knn_cli.network import Network
from knn_cli.stack import default_hidden

STEPS, WARM_UP, BATCH = 1_500, 100, 100
WIDTHS = {"3layer_bn": default_hidden(3), "9layer_bn": default_hidden(9)}


def training_rows() -> tuple[np.ndarray, np.ndarray]:
    from knn_cli.data import load_cifar10

    try:
        dataset = load_cifar10(None, 5000, download=False)
        return np.asarray(dataset.X_train), np.asarray(dataset.y_train)
    except DataError:
        print("real CIFAR-10 not found: random rows of its shape")
        rng = np.random.default_rng(0)
        return rng.standard_normal((45_000, 3072), dtype=np.float32), rng.integers(0, 10, 45_000)


def stamped_split(stamps: dict[str, float]) -> Callable[..., None]:
    """`Lanes.split`, noting when each part of the job starts and ends."""
    split = Lanes.split

    def timed(lanes: Lanes, half: Callable[[int], None], meanwhile=None) -> None:  # type: ignore[no-untyped-def]
        stamps["posted"] = time.perf_counter()

        def timed_half(which: int) -> None:
            if which == 1:
                stamps["helper_start"] = time.perf_counter()
                stamps["on_helper"] = threading.current_thread() is not threading.main_thread()
            half(which)
            stamps["helper_end" if which == 1 else "caller_half_end"] = time.perf_counter()

        def timed_meanwhile() -> None:
            meanwhile()
            stamps["meanwhile_end"] = time.perf_counter()

        split(lanes, timed_half, timed_meanwhile if meanwhile else None)
        stamps["joined"] = time.perf_counter()

    return timed


def _medians(records: list[dict[str, float]]) -> Callable[[str, str], float]:
    def median(first: str, last: str) -> float:
        return statistics.median(r[last] - r[first] for r in records) * 1e6

    return median


def main() -> None:
    X, y = training_rows()
    rng = np.random.default_rng(0)
    order = np.concatenate([rng.permutation(len(X)) for _ in range(STEPS * BATCH // len(X) + 2)])
    stamps: dict[str, float] = {}
    lanes_module.Lanes.split = stamped_split(stamps)  # type: ignore[method-assign]
    print(f"medians over {STEPS - WARM_UP} steps, microseconds")
    for name, hidden in WIDTHS.items():
        network = Network(X.shape[1], hidden, 10, batch_norm=True)
        records = []
        with threadpool_limits(1, user_api="blas"), Engine(network, two_lanes=True) as engine:
            for step in range(STEPS):
                at = step * BATCH
                stamps.clear()
                stamps["start"] = time.perf_counter()
                rows = order[at : at + BATCH]
                following = Batch(X, order[at + BATCH : at + 2 * BATCH])
                engine.step(Batch(X, rows), y[rows], 0.005, 0.01, following=following)
                stamps["end"] = time.perf_counter()
                if step >= WARM_UP:
                    records.append(dict(stamps))
        median = _medians(records)
        helped = sum(bool(r["on_helper"]) for r in records)
        print(
            f"{name}: step {median('start', 'end'):.0f} = one thread before the hand-over "
            f"{median('start', 'posted'):.0f} + the job {median('posted', 'joined'):.0f} "
            f"+ after {median('joined', 'end'):.0f}\n"
            f"  caller's half {median('posted', 'caller_half_end'):.0f}, then meanwhile "
            f"{median('caller_half_end', 'meanwhile_end'):.0f}, then waits "
            f"{median('meanwhile_end', 'joined'):.0f}\n"
            f"  helper starts after {median('posted', 'helper_start'):.0f}, its half "
            f"{median('helper_start', 'helper_end'):.0f}; the caller resumes "
            f"{median('helper_end', 'joined'):.0f} after it ends; helper ran {helped} of "
            f"{len(records)} second halves"
        )


if __name__ == "__main__":
    main()
