"""What the training-set curve costs a run in a sweep worker, and what measuring it on a sample
(or not at all) saves: the study's lever `evaluation.train_curve_rows`.

A sweep or study worker has one core and one BLAS thread, and evaluates on the training
thread, so every evaluation adds to the run's time (in `knn train` it runs on the second core).
Each config trains its whole protocol here as a worker does -- one BLAS thread, evaluations in
line, no helper lane -- with the training curve measured on all 45,000 training rows (`all`,
the default), on a fixed sample of 5,000 (`5000`, the study's runs) and not at all (`0`, the
lambda search's trials), in turn, so that the machine's drift hits all three alike; the ratios
are taken within each round. Training computes the same bits in all three (tests/test_train.py).

    KNN_DATA_DIR=/path/to/cifar-10-batches-py python benchmarks/bench_evaluations.py \\
        [--repeats 3] [--configs 3layer_bn 9layer_bn]
"""

from __future__ import annotations

import os

for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_name] = "1"  # as executors.py sets it for a worker, before numpy loads

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from knn_cli.config import load_config  # noqa: E402
from knn_cli.data import load_cifar10  # noqa: E402
from knn_cli.errors import DataError  # noqa: E402
from knn_cli.experiment import train_run  # noqa: E402
from knn_cli.runs import machine  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {"all": "null", "5000": "5000", "0": "0"}


def run_seconds(config_name: str, rows: str, dataset, runs_dir: Path) -> float:
    config = load_config(
        ROOT / "configs" / f"{config_name}.yaml", [f"evaluation.train_curve_rows={rows}"]
    )
    folder = Path(tempfile.mkdtemp(dir=runs_dir))
    started = time.perf_counter()
    summary = train_run(config, folder, dataset=dataset, background_evaluation=False)
    seconds = time.perf_counter() - started
    assert summary["status"] == "finished", summary
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--configs", nargs="+", default=["3layer_bn", "9layer_bn"])
    args = parser.parse_args()
    try:
        dataset = load_cifar10(None, 5000, download=False)
    except DataError as error:
        print(f"skipped: needs the real CIFAR-10 ({str(error).split(';')[0]})")
        return
    print(f"{machine()}; load average {os.getloadavg()[0]:.2f}; one BLAS thread, as a worker")
    order = list(SETTINGS)
    print(f"{'config':<10}" + "".join(f" {name:>8}" for name in order) + "   5000/all    0/all")
    with tempfile.TemporaryDirectory() as runs_dir:
        for config_name in args.configs:
            seconds: dict[str, list[float]] = {name: [] for name in order}
            ratios: dict[str, list[float]] = {"5000": [], "0": []}
            for repeat in range(args.repeats):
                turn = order[repeat % 3 :] + order[: repeat % 3]  # each setting first in turn
                measured = {
                    name: run_seconds(config_name, SETTINGS[name], dataset, Path(runs_dir))
                    for name in turn
                }
                for name, value in measured.items():
                    seconds[name].append(value)
                for name in ratios:
                    ratios[name].append(measured[name] / measured["all"])
            medians = "".join(f" {statistics.median(seconds[n]):8.1f}" for n in order)
            print(
                f"{config_name:<10}{medians}"
                f" {statistics.median(ratios['5000']):10.3f} {statistics.median(ratios['0']):8.3f}",
                flush=True,
            )
    print("seconds per whole run (medians); ratios within each round, their medians")


if __name__ == "__main__":
    main()
