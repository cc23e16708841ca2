"""How much faster a sweep runs with two local worker processes than with one.

Runs the same small lambda sweep (same trials, same seeds) on real CIFAR-10 with
`ProcessExecutor(1)` and `ProcessExecutor(2)`, alternating them so a change in machine load
hits both alike, and prints the seconds and the ratio. Both use single-threaded BLAS workers,
so the figure is about running trials side by side, not about BLAS threading. For comparison it
also times what `--workers 1` does: the trials one after another in this process, where each
training uses the second core for its evaluations and, between them, for half of its step.

    KNN_DATA_DIR=/path/to/cifar-10-batches-py python benchmarks/sweep_speedup.py [--trials 4]

Exits 0 with a message when the data is absent, so it can sit in any CI job.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from knn_cli.config import config_from_dict, config_to_dict
from knn_cli.data.locate import find_data_dir
from knn_cli.errors import DataError
from knn_cli.executors import ProcessExecutor, SerialExecutor
from knn_cli.sweeps.folder import start_sweep
from knn_cli.sweeps.plan import LAMBDA_SEARCH, LambdaSearchSpec, lambda_trials
from knn_cli.sweeps.running import prepare_data, run_trials


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


IN_PROCESS = 0  # "workers" key of the in-process serial run


def timed_sweep(workers: int, trials: list, parent: Path) -> tuple[float, float]:
    """Wall seconds of the whole sweep, and the mean seconds of one trial inside it (their gap
    is start-up: spawning workers, importing numpy, opening the cache)."""
    spec = LambdaSearchSpec(base=trials[0].config)
    sweep_dir = start_sweep(parent, LAMBDA_SEARCH, spec)
    executor = SerialExecutor() if workers == IN_PROCESS else ProcessExecutor(workers)
    started = time.perf_counter()
    records = run_trials(sweep_dir, trials, executor)
    seconds = time.perf_counter() - started
    failed = [r for r in records if not r.finished]
    if failed:
        sys.exit(f"trial {failed[0].trial.folder} {failed[0].status}: {failed[0].message}")
    return seconds, statistics.mean(r.get("wall_seconds") for r in records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4, help="trials per sweep")
    # The search's own n_s: each worker's start-up (spawn, imports, opening the cache, about 2 s)
    # weighs on very short trials, so at n_s 900 two workers gained 1.56x where they gain 1.9x
    # on trials of the length a search runs.
    parser.add_argument("--n-s", type=int, default=2250, help="steps per half cycle")
    parser.add_argument("--repeats", type=int, default=2, help="timed sweeps per worker count")
    args = parser.parse_args()

    base = config_to_dict(config_from_dict({"name": "bench", "training": {"cycles": 1}}))
    trials = lambda_trials(
        base, "coarse", (-4, -2), range(args.trials), seed=0, cycles=1, n_s=args.n_s
    )
    try:
        find_data_dir(None, download=False)
    except DataError as error:
        print(f"skipped: this benchmark needs real CIFAR-10 ({error})")
        return
    prepare_data(trials)  # build the cache outside the timings

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"{args.trials} trials of {2 * args.n_s} steps, {cores} cores, load {load()}")
    times: dict[int, list[float]] = {1: [], 2: [], IN_PROCESS: []}
    names = {1: "1 worker process", 2: "2 worker processes", IN_PROCESS: "in-process (--workers 1)"}
    with tempfile.TemporaryDirectory(prefix="knn-bench-") as parent:
        for repeat in range(args.repeats):
            for workers in times:
                seconds, per_trial = timed_sweep(workers, trials, Path(parent))
                times[workers].append(seconds)
                print(
                    f"repeat {repeat + 1}: {names[workers]:<25} {seconds:6.1f} s, "
                    f"{per_trial:5.1f} s per trial (load {load()})"
                )
    one, two, here = (statistics.median(times[w]) for w in (1, 2, IN_PROCESS))
    print(f"median: 1 worker {one:.1f} s, 2 workers {two:.1f} s, speedup {one / two:.2f}x")
    print(f"median: in-process {here:.1f} s; 2 workers against it: {here / two:.2f}x")


if __name__ == "__main__":
    main()
