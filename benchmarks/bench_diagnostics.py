"""What the per-layer diagnostics cost a whole `knn train` run: the same config with them off
(`--set diagnostics.layers=false`), on (the default), and with the landscape measures too
(`--set diagnostics.landscape=true`), run in turn -- off, on, landscape; on, landscape, off; ...
-- so that the machine's drift hits all alike, the ratios taken within each round.

    KNN_DATA_DIR=/path/to/cifar-10-batches-py python benchmarks/bench_diagnostics.py \\
        [--repeats 5] [--configs 3layer_bn 9layer_bn] [--no-landscape]

Wall time of the whole process (Python's start, loading the cached data, training, the final
measurements and the plots), as a user waits for it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from knn_cli.runs import machine

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {
    "off": ["--set", "diagnostics.layers=false"],
    "on": [],
    "landscape": ["--set", "diagnostics.landscape=true"],
}


def run_seconds(config: str, extra: list[str], runs_dir: str) -> float:
    command = [sys.executable, "-m", "knn_cli", "train", f"configs/{config}.yaml", *extra]
    started = time.perf_counter()
    subprocess.run(
        [*command, "--runs-dir", runs_dir], cwd=ROOT, check=True, capture_output=True, text=True
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--configs", nargs="+", default=["3layer_bn", "9layer_bn"])
    parser.add_argument("--no-landscape", action="store_true", help="time off and on only")
    args = parser.parse_args()
    kinds = [k for k in SETTINGS if not (args.no_landscape and k == "landscape")]
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.2f}")
    times: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as runs_dir:
        for repeat in range(args.repeats):
            order = kinds[repeat % len(kinds) :] + kinds[: repeat % len(kinds)]
            for config in args.configs:
                for kind in order:
                    seconds = run_seconds(config, SETTINGS[kind], runs_dir)
                    times.setdefault((config, kind), []).append(seconds)
            print(f"repeat {repeat + 1}/{args.repeats} done", file=sys.stderr, flush=True)
    print(f"\nwhole `knn train` runs, seconds, medians of {args.repeats}; ratios to 'off' "
          "taken within each round")  # fmt: skip
    for config in args.configs:
        off = times[(config, "off")]
        line = f"{config:<10} off {statistics.median(off):6.2f}"
        for kind in kinds[1:]:
            these = times[(config, kind)]
            ratios = [a / b for a, b in zip(these, off, strict=True)]
            line += (
                f"   {kind} {statistics.median(these):6.2f} (x{statistics.median(ratios):.3f}: "
                + " ".join(f"{r:.3f}" for r in ratios)
                + ")"
            )
        print(line)


if __name__ == "__main__":
    main()
