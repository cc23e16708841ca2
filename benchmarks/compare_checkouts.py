"""Seconds per training epoch of two checkouts of knn side by side, and of the update rules.

Each checkout runs in its own child process (its own Python, in which that checkout is
installed), kept alive for the whole measurement; the parent asks them for one epoch at a time,
alternating which goes first, so that the machine's drift from one minute to the next hits both
alike, and the ratios are taken within each repeat. An epoch is 45,000 rows in batches of 100
through the checkout's own trainer (forward, backward, update, the two lanes; no evaluation),
as benchmarks/bench_train.py times it.

    KNN_DATA_DIR=/path/to/cifar-10-batches-py python benchmarks/compare_checkouts.py \\
        --old /path/to/old/checkout [--old-python /path/to/old/venv/bin/python] [--repeats 7]
        [--lanes 1] [--rules sgd,momentum,nesterov,adam,adamw]

`--rules` also times the new checkout with each update rule on 3layer_bn (and 9layer_bn), as
ratios to SGD within each repeat. Without the real data both sides train on random rows of the
same shape.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from knn_cli.runs import machine

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ("3layer", "3layer_bn", "9layer", "9layer_bn")

# Runs inside each checkout's own Python: only API that every version has (config, network,
# trainer), and the update rule where the version knows of rules.
CHILD = r"""
import json, sys, time
import numpy as np
from knn_cli.config import load_config
from knn_cli.experiment import build_network
from knn_cli.trainer import Splits, train
try:  # versions before populations: a Schedule of their own; since, the config's TrainingConfig
    from knn_cli.trainer import Schedule
except ImportError:
    Schedule = None
try:
    from knn_cli.experiment import build_update_rule
except ImportError:
    build_update_rule = None
from knn_cli.errors import DataError
from knn_cli.data import load_cifar10

try:
    data = load_cifar10(None, 5000, download=False)
    X, y = data.X_train, data.y_train
except DataError:
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((45000, 3072), dtype=np.float32), rng.integers(0, 10, 45000)
splits = Splits(X, y, X[:0], y[:0])
runners = {}

def runner(config_name, rule_name, lanes):
    key = (config_name, rule_name, lanes)
    if key not in runners:
        overrides = [] if rule_name == "sgd" else [f"training.optimizer={rule_name}"]
        config = load_config(f"configs/{config_name}.yaml", overrides)
        network = build_network(config, X.shape[1])
        rule = build_update_rule(config) if build_update_rule else None
        t = config.training
        if Schedule is not None:
            schedule = Schedule(t.lambda_, 100, t.eta_min, t.eta_max, n_s=225, cycles=1,
                                eval_every=10**9, seed=0)
            given = {} if rule is None else {"optimizer": rule}
        else:
            import dataclasses
            schedule = dataclasses.replace(t, batch_size=100, n_s=225, cycles=1,
                                           eval_every=10**9, seed=0)
            given = {"rule": rule}
        options = {"two_lanes": lanes == "2"} | given
        runners[key] = lambda: train(network, splits, schedule, **options)
        runners[key]()  # warm: workspaces, pages of the memory map
    return runners[key]

print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    config_name, rule_name, lanes = line.split()
    run = runner(config_name, rule_name, lanes)
    start = time.perf_counter()
    outcome = run()
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "status": outcome.status}), flush=True)
"""


class Side:
    """One checkout's child process, answering one epoch per request."""

    def __init__(self, name: str, checkout: Path, python: str, lanes: int) -> None:
        self.name = name
        self.lanes = lanes
        self.process = subprocess.Popen(
            [python, "-c", CHILD],
            cwd=checkout,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._read()

    def _read(self) -> dict:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            sys.exit(f"the {self.name} checkout's child process ended (see its error above)")
        return json.loads(line)

    def epoch(self, config: str, rule: str = "sgd") -> float:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{config} {rule} {self.lanes}\n")
        self.process.stdin.flush()
        answer = self._read()
        if answer["status"] != "finished":
            sys.exit(f"{self.name} {config} {rule}: {answer['status']}")
        return answer["seconds"]

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=30)


def git_head(checkout: Path) -> str:
    result = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=checkout, capture_output=True, text=True
    )
    return result.stdout.strip() or "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, required=True, help="the other checkout")
    parser.add_argument("--old-python", default=None, help="[OLD/.venv/bin/python]")
    parser.add_argument("--new", type=Path, default=ROOT, help="[this checkout]")
    parser.add_argument("--new-python", default=sys.executable, help="[this Python]")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    parser.add_argument("--rules", default="", help="comma-separated update rules to time too")
    parser.add_argument(
        "--lanes", type=int, choices=(1, 2), default=2, help="2: as knn train; 1: one thread"
    )
    args = parser.parse_args()
    old_python = args.old_python or str(args.old / ".venv" / "bin" / "python")
    rules = [r for r in args.rules.split(",") if r and r != "sgd"]

    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.2f}")
    print(f"old: {args.old} ({git_head(args.old)}), new: {args.new} ({git_head(args.new)})")
    print(f"{args.lanes} lane(s); repeats {args.repeats}")
    old = Side("old", args.old, old_python, args.lanes)
    new = Side("new", args.new, args.new_python, args.lanes)
    times: dict[tuple[str, str, str], list[float]] = {}
    try:
        for repeat in range(args.repeats):
            for config in args.configs:
                sides = (old, new) if repeat % 2 == 0 else (new, old)
                for side in sides:
                    times.setdefault((side.name, config, "sgd"), []).append(side.epoch(config))
                    time.sleep(0.2)
                if config.endswith("_bn"):
                    for rule in rules:
                        times.setdefault(("new", config, rule), []).append(new.epoch(config, rule))
                        time.sleep(0.2)
            print(f"repeat {repeat + 1}/{args.repeats} done", file=sys.stderr, flush=True)
    finally:
        old.close()
        new.close()

    def ratios(a: tuple[str, str, str], b: tuple[str, str, str]) -> list[float]:
        return [x / y for x, y in zip(times[a], times[b], strict=True)]

    print(f"\nseconds per epoch, medians of {args.repeats}; ratios taken within each repeat")
    print(f"{'config':<10} {'old':>7} {'new':>7} {'new/old':>8}  per repeat")
    for config in args.configs:
        o, n = ("old", config, "sgd"), ("new", config, "sgd")
        r = ratios(n, o)
        print(
            f"{config:<10} {statistics.median(times[o]):7.3f} {statistics.median(times[n]):7.3f}"
            f" {statistics.median(r):8.3f}  " + " ".join(f"{x:.3f}" for x in r)
        )
    if rules:
        print("\nupdate rules on the new checkout: seconds per epoch, and rule/SGD")
        for config in [c for c in args.configs if c.endswith("_bn")]:
            for rule in rules:
                key = ("new", config, rule)
                r = ratios(key, ("new", config, "sgd"))
                print(
                    f"{config:<10} {rule:<9} {statistics.median(times[key]):7.3f}"
                    f" {statistics.median(r):6.3f}  " + " ".join(f"{x:.3f}" for x in r)
                )


if __name__ == "__main__":
    main()
