"""What data augmentation costs a training epoch of the study's [50, 50] BN network.

Times epochs (45,000 rows, batch 100, as `knn train` runs them: two lanes, no evaluation) with
and without augmentation (mirror and shifts of up to 3 pixels), alternating, and prints the
medians and the ratio taken within each repeat; then, per batch of 100 images, the readable
`augment.augment` against the fast gather the engine uses (`engine/batches.py`).

    KNN_DATA_DIR=/path/to/cifar-10-batches-py python benchmarks/bench_augment.py [--repeats 9]

Without the real data it trains on random rows of the same shape.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from knn_cli.augment import Augmentation, augment, draw
from knn_cli.config import load_config
from knn_cli.engine.batches import AugmentedBatch
from knn_cli.errors import DataError
from knn_cli.experiment import build_network
from knn_cli.trainer import Splits, train

ROOT = Path(__file__).resolve().parent.parent
AUGMENTATION = Augmentation(flip=True, translate=3)


def training_rows() -> tuple[np.ndarray, np.ndarray]:
    from knn_cli.data import load_cifar10

    try:
        dataset = load_cifar10(None, 5000, download=False)
        return np.asarray(dataset.X_train), np.asarray(dataset.y_train)
    except DataError:
        print("real CIFAR-10 not found: random rows of its shape")
        rng = np.random.default_rng(0)
        return rng.standard_normal((45_000, 3072), dtype=np.float32), rng.integers(0, 10, 45_000)


def epoch_runner(X: np.ndarray, y: np.ndarray, augmentation: Augmentation | None, lanes: bool):
    config = load_config(ROOT / "configs" / "3layer_bn.yaml")
    network = build_network(config, X.shape[1])
    schedule = replace(config.training, batch_size=100, n_s=225, cycles=1, eval_every=10**9,
                       seed=0)  # fmt: skip
    splits = Splits(X, y, X[:0], y[:0])

    def run() -> float:
        start = time.perf_counter()
        outcome = train(network, splits, schedule, augmentation=augmentation, two_lanes=lanes)
        assert outcome.status == "finished"
        return time.perf_counter() - start

    run()  # warm: workspaces, pages of the data
    return run


def per_batch(X: np.ndarray, repeats: int = 300) -> tuple[float, float, float]:
    """Median microseconds to gather a batch of 100: plain, readable augment, fast gather."""
    rng = np.random.default_rng(0)
    times: dict[str, list[float]] = {"plain": [], "readable": [], "fast": []}
    for _ in range(repeats):
        rows = rng.integers(1, len(X) - 1, 100)
        draws = draw(AUGMENTATION, 100, rng)
        jobs = {
            "plain": lambda rows=rows: X[rows],
            "readable": lambda rows=rows, draws=draws: augment(X[rows], AUGMENTATION, draws),
            "fast": lambda rows=rows, draws=draws: AugmentedBatch(
                X, rows, AUGMENTATION, draws
            ).whole(),
        }
        for name, job in jobs.items():
            start = time.perf_counter()
            job()
            times[name].append(time.perf_counter() - start)
    return tuple(statistics.median(times[n]) * 1e6 for n in ("plain", "readable", "fast"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    X, y = training_rows()
    print(f"load average {os.getloadavg()[0]:.2f}; 3layer_bn, batch 100, 450 steps an epoch")
    for lanes in (True, False):
        plain = epoch_runner(X, y, None, lanes)
        augmented = epoch_runner(X, y, AUGMENTATION, lanes)
        pairs = []
        for repeat in range(args.repeats):
            first, second = (plain, augmented) if repeat % 2 == 0 else (augmented, plain)
            a, b = first(), second()
            pairs.append((a, b) if first is plain else (b, a))
        ratios = [b / a for a, b in pairs]
        label = "2 lanes" if lanes else "1 lane "
        print(
            f"{label}: plain {statistics.median(a for a, _ in pairs):.3f} s/epoch,"
            f" augmented {statistics.median(b for _, b in pairs):.3f}, augmented/plain"
            f" {statistics.median(ratios):.3f} (repeats: "
            + " ".join(f"{r:.2f}" for r in ratios)
            + ")",
            flush=True,
        )
    plain_us, readable_us, fast_us = per_batch(X)
    print(
        f"a batch of 100: plain gather {plain_us:.0f} us, readable augment {readable_us:.0f} us,"
        f" fast gather {fast_us:.0f} us"
    )


if __name__ == "__main__":
    main()
