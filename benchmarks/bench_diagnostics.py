"""What the per-layer diagnostics cost a whole `knn train` run: the same config with them off
(`--set diagnostics.layers=false`), on (the default), and with the landscape measures too
(`--set diagnostics.landscape=true`), run in turn -- off, on, landscape; on, landscape, off; ...
-- so that the machine's drift hits all alike, the ratios taken within each round.

    KNN_DATA_DIR=/path/to/cifar-10-batches-py python benchmarks/bench_diagnostics.py \\
        [--repeats 5] [--configs 3layer_bn 9layer_bn] [--no-landscape] [--parts]

Wall time of the whole process (Python's start, loading the cached data, training, the final
measurements and the plots), as a user waits for it. `--parts` instead times, inside this
process, what the default measures add to a run: one measurement of the probe (on the trained
network of one run, as at an evaluation point) and drawing layers.png from its diagnostics.csv.
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


def time_parts(configs: list[str], repeats: int) -> None:
    """Medians of `repeats` probe measurements and layers.png drawings, after one run of
    each config made the network and the diagnostics.csv they work on."""
    from knn_cli.data import load_cifar10
    from knn_cli.experiment import build_probe, load_trained
    from knn_cli.plots import plot_layers, run_description
    from knn_cli.runs import read_diagnostics

    for config in configs:
        with tempfile.TemporaryDirectory() as runs_dir:
            run_seconds(config, [], runs_dir)
            (run_dir,) = Path(runs_dir).iterdir()
            run_config, network, _ = load_trained(run_dir)
            dataset = load_cifar10(run_config.data.dir, run_config.data.validation_size)
            probe = build_probe(run_config, dataset)
            assert probe is not None
            before = probe.weights(network)
            evaluation_points = len({row["step"] for row in read_diagnostics(run_dir)})
            probe_ms, drawing_s = [], []
            for _ in range(repeats):
                started = time.perf_counter()
                probe.measure(network, before)
                probe_ms.append(1000 * (time.perf_counter() - started))
                started = time.perf_counter()
                plot_layers(run_dir, "\n".join(run_description(run_dir)))
                drawing_s.append(time.perf_counter() - started)
            probe_ms_median = statistics.median(probe_ms)
            print(
                f"{config:<10} probe {probe_ms_median:5.1f} ms a point x {evaluation_points} "
                f"points = {probe_ms_median * evaluation_points / 1000:.2f} s   "
                f"layers.png {statistics.median(drawing_s):.2f} s   (medians of {repeats})"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--configs", nargs="+", default=["3layer_bn", "9layer_bn"])
    parser.add_argument("--no-landscape", action="store_true", help="time off and on only")
    parser.add_argument("--parts", action="store_true", help="time the probe and layers.png")
    args = parser.parse_args()
    if args.parts:
        print(f"machine: {machine()}; load average {os.getloadavg()[0]:.2f}")
        time_parts(args.configs, args.repeats)
        return
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
