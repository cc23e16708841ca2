"""Instructions per training step of two checkouts, counted by valgrind's callgrind.

Seconds on a shared virtual machine swing by tens of percent from one minute to the next;
instruction counts do not (callgrind counts the same total for the same program and input,
whatever else the machine is doing). So this measures what a code change costs per step --
Python and NumPy call overhead, and the arithmetic -- free of that noise, on one thread (the
lanes, an OS-scheduling matter, are left to benchmarks/compare_checkouts.py).

Each checkout trains a network of one of the study's configs on random data of CIFAR-10's shape
for SHORT and for LONG steps in its own Python under callgrind; instructions per step are the
difference over LONG - SHORT steps, which cancels the start-up (imports, data, the first
steps' allocations).

    python benchmarks/count_instructions.py --old /path/to/old/checkout \\
        [--old-python /path/to/old/venv/bin/python] [--configs 3layer_bn 9layer_bn]

Needs valgrind. Takes a few minutes (callgrind runs programs some 50 times slower).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHORT, LONG = 20, 120

# Runs in each checkout's own Python: config, network and trainer, as every version has them.
CHILD = r"""
import sys
import numpy as np
from threadpoolctl import threadpool_limits
from knn_cli.config import load_config
from knn_cli.network import Network
from knn_cli.trainer import Splits, train

config_name, steps = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(0)
X = rng.standard_normal((1000, 3072), dtype=np.float32)
y = rng.integers(0, 10, 1000)
config = load_config(f"configs/{config_name}.yaml")
model, t = config.model, config.training
network = Network(3072, model.hidden, 10, batch_norm=model.batch_norm, seed=0)
# One cycle of 2 n_s steps: `steps` steps in all.
try:  # versions before populations had a Schedule of their own
    from knn_cli.trainer import Schedule
    schedule = Schedule(t.lambda_, 100, t.eta_min, t.eta_max, n_s=steps // 2, cycles=1,
                        eval_every=10**9, seed=0)
except ImportError:
    import dataclasses
    schedule = dataclasses.replace(t, batch_size=100, n_s=steps // 2, cycles=1,
                                   eval_every=10**9, seed=0)
with threadpool_limits(1, user_api="blas"):
    outcome = train(network, Splits(X, y, X[:0], y[:0]), schedule, two_lanes=False)
assert outcome.status == "finished"
"""


def instructions(python: str, checkout: Path, config: str, steps: int) -> int:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "callgrind.out"
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                python,
                "-c",
                CHILD,
                config,
                str(steps),
            ],
            cwd=checkout,
            check=True,
            capture_output=True,
            env={"OPENBLAS_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
        )
        text = out.read_text(errors="replace")
    match = re.search(r"^(?:summary|totals):\s+(\d+)", text, re.M)
    if match is None:
        sys.exit("no instruction total in callgrind's output")
    return int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, required=True)
    parser.add_argument("--old-python", default=None, help="[OLD/.venv/bin/python]")
    parser.add_argument("--new", type=Path, default=ROOT)
    parser.add_argument("--new-python", default=sys.executable)
    parser.add_argument("--configs", nargs="+", default=["3layer_bn", "9layer_bn"])
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind not found (Debian: apt-get install valgrind)")
    sides = {
        "old": (args.old_python or str(args.old / ".venv" / "bin" / "python"), args.old),
        "new": (args.new_python, args.new),
    }
    print(f"instructions per step (one thread, batch 100), over {LONG - SHORT} steps")
    print(f"{'config':<10} {'old':>12} {'new':>12} {'new/old':>8}")
    for config in args.configs:
        per_step = {}
        for name, (python, checkout) in sides.items():
            counts = [instructions(python, checkout, config, n) for n in (SHORT, LONG)]
            per_step[name] = (counts[1] - counts[0]) / (LONG - SHORT)
        print(
            f"{config:<10} {per_step['old']:12,.0f} {per_step['new']:12,.0f}"
            f" {per_step['new'] / per_step['old']:8.4f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
