"""Training speed of the NumPy core against PyTorch on the CPU, and against the hardware.

For the 3-layer and 9-layer networks, with and without batch norm (batch 100, 45,000 training
rows), it prints:

- seconds per epoch of training (forward, backward and update; no evaluation), as the trainer
  runs it -- the first layer's products shared by two lanes (threads) -- and, as `1 lane`, with
  the step kept to one thread as it is while an evaluation runs; the same for PyTorch -- same
  widths, batch norm, batch size, plain SGD with the same weight decay and cyclical rate, the
  same mini-batches -- measured in this process, alternating with ours epoch by epoch so that a
  change in machine load hits both alike;
- a lower bound: the floating-point work of one epoch divided by the matrix-multiply throughput
  this machine reaches at the step's own shapes (measured here, float32, at the best BLAS thread
  count), so "x bound" says how close to the hardware an epoch is;
- with `--full`, the wall time and peak memory (max RSS) of a whole `knn train` of each
  default config (evaluations included), each in its own process, as a user would run it.

    KNN_DATA_DIR=/path/to/cifar-10-batches-py python benchmarks/bench_train.py [--full]

Medians of `--repeats` runs. Without PyTorch the comparison is skipped, saying so; without the
real data the epochs run on random data of the same shape and `--full` is skipped, saying so;
either way it exits 0. The machine's load average is printed beside the figures: another job on
a 2-core machine changes them a lot.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from knn_cli.config import load_config
from knn_cli.errors import DataError
from knn_cli.experiment import build_network
from knn_cli.trainer import Splits, train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from torch_protocol import sgd_for, torch_network  # a script beside this one

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ("3layer", "3layer_bn", "9layer", "9layer_bn")
N_TRAIN = 45_000
BATCH = 100
PAUSE_S = 0.3  # between timed runs, so neither side inherits the other's spinning threads


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def median(values: list[float]) -> float:
    return statistics.median(values)


# -- data ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Data:
    X: np.ndarray
    y: np.ndarray
    real: bool


def training_data() -> Data:
    """The real training split (memory-mapped cache) or, without it, random rows of its shape."""
    from knn_cli.data import load_cifar10

    try:
        dataset = load_cifar10(None, 5000, download=False)
        return Data(dataset.X_train, dataset.y_train, real=True)
    except DataError as error:
        print(f"real CIFAR-10 not found ({str(error).split(';')[0]}):")
        print("  epochs run on random data of the same shape; whole `knn train` runs are skipped")
        rng = np.random.default_rng(0)
        X = rng.standard_normal((N_TRAIN, 3072), dtype=np.float32)
        return Data(X, rng.integers(0, 10, N_TRAIN), real=False)


# -- BLAS threads --------------------------------------------------------------------------------


def blas_limits() -> Callable[[int | None], object]:
    """A context manager factory limiting BLAS threads, or one that does nothing without
    threadpoolctl (the counts are then whatever the environment says)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return lambda _n: nullcontext()
    return lambda n: nullcontext() if n is None else threadpool_limits(n, user_api="blas")


def blas_description() -> str:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "threadpoolctl not installed: BLAS threads as the environment sets them"
    pools = [p for p in threadpool_info() if p["user_api"] == "blas"]
    return "; ".join(
        f"{p['internal_api']} {p.get('version')} {p.get('architecture')} {p['num_threads']} threads"
        for p in pools
    )


# -- floating-point work and the matrix-multiply bound ------------------------------------------


def step_matmuls(widths: tuple[int, ...], n: int) -> list[tuple[tuple[int, int, int], str]]:
    """(m, k, n) of every matrix product in one step: forward H @ W, weight gradient H.T @ G,
    input gradient G @ W.T (not for the first layer, whose input gradient is never needed)."""
    shapes = []
    for layer, (fan_in, fan_out) in enumerate(itertools.pairwise(widths), 1):
        shapes.append(((n, fan_in, fan_out), "forward"))
        shapes.append(((fan_in, n, fan_out), "weight_grad"))
        if layer > 1:
            shapes.append(((n, fan_out, fan_in), "input_grad"))
    return shapes


def step_flops(widths: tuple[int, ...], n: int, batch_norm: bool) -> tuple[float, float]:
    """(matrix-product FLOPs, all other FLOPs) of one training step, counted by hand.

    Elementwise work per hidden unit and sample: bias, ReLU and its mask (3), batch norm forward
    (mean, centre, square, variance, scale, shift: 6) and backward (6); softmax and its gradient
    (about 5 per score); the update (2 per parameter, 3 per weight with the decay).
    """
    mm = sum(2.0 * m * k * p for (m, k, p), _ in step_matmuls(widths, n))
    hidden = sum(widths[1:-1])
    other = n * hidden * (3 + (12 if batch_norm else 0)) + 5.0 * n * widths[-1]
    weights = sum(a * b for a, b in itertools.pairwise(widths))
    other += 3.0 * weights + 2.0 * (sum(widths[1:]) + (2 * hidden if batch_norm else 0))
    return mm, other


def time_matmul(m: int, k: int, p: int, kind: str, dtype=np.float32) -> float:
    """Median seconds of one product at this shape and memory layout, as the step does it."""
    rng = np.random.default_rng(0)
    if kind == "forward":  # H (m x k) @ W (k x p)
        a, b = rng.standard_normal((m, k), dtype=dtype), rng.standard_normal((k, p), dtype=dtype)
    elif kind == "weight_grad":  # H.T @ G, H is (k x m) row-major
        a = rng.standard_normal((k, m), dtype=dtype).T
        b = rng.standard_normal((k, p), dtype=dtype)
    else:  # G @ W.T, W is (p x k) row-major
        a = rng.standard_normal((m, k), dtype=dtype)
        b = rng.standard_normal((p, k), dtype=dtype).T
    out = np.empty((m, p), dtype=dtype)
    reps = max(5, int(2e8 / (2 * m * k * p + 1e5)))
    times = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(reps):
            np.matmul(a, b, out=out)
        times.append((time.perf_counter() - start) / reps)
    return median(times)


@dataclass(frozen=True)
class Bound:
    seconds: float  # lower bound for one epoch
    matmul_seconds: float  # the epoch's matrix products alone, at the measured speed
    gflops: float  # matrix-multiply throughput reached at the step's shapes
    threads: int | None


def matmul_bounds(widths: tuple[int, ...], batch_norm: bool, limits, threads) -> list[Bound]:
    """Per BLAS thread count: epoch FLOPs / matrix-multiply throughput at the step's shapes."""
    steps = N_TRAIN // BATCH
    mm_flops, other_flops = step_flops(widths, BATCH, batch_norm)
    bounds = []
    for count in threads:
        with limits(count):
            seconds = sum(time_matmul(*shape, kind) for shape, kind in step_matmuls(widths, BATCH))
        gflops = mm_flops / seconds / 1e9
        total = steps * (mm_flops + other_flops) / (gflops * 1e9)
        bounds.append(Bound(total, steps * seconds, gflops, count))
    return bounds


# -- one epoch, ours and PyTorch's ---------------------------------------------------------------


def ours_epoch(config_name: str, data: Data, two_lanes: bool = True) -> Callable[[], float]:
    """One epoch through the real trainer (the gather, the schedule, the step), no evaluation."""
    config = load_config(ROOT / "configs" / f"{config_name}.yaml")
    network = build_network(config, data.X.shape[1])
    splits = Splits(data.X, data.y, data.X[:0], data.y[:0])
    schedule = replace(config.training, batch_size=BATCH, n_s=N_TRAIN // BATCH // 2, cycles=1,
                       eval_every=10**9, seed=0)  # fmt: skip

    def run() -> float:
        start = time.perf_counter()
        outcome = train(network, splits, schedule, two_lanes=two_lanes)
        seconds = time.perf_counter() - start
        assert outcome.status == "finished", outcome
        return seconds

    return run


def torch_epoch(config_name: str, data: Data) -> Callable[[], float]:
    """The same epoch in PyTorch (`torch_protocol.torch_network`: nn.Linear, BatchNorm1d with
    the same eps and momentum, ReLU), cross-entropy, SGD with 2 lambda weight decay on the
    weights only (our penalty is lambda times the squared weights), the same cyclical rate and
    the same shuffled mini-batches."""
    import torch
    from torch import nn

    from knn_cli.schedule import cyclical_learning_rate

    config = load_config(ROOT / "configs" / f"{config_name}.yaml")
    t = config.training
    model, weights = torch_network(config, data.X.shape[1])
    model.train()
    optimizer = sgd_for(model, weights, t.lambda_, t.eta_min)
    loss_fn = nn.CrossEntropyLoss()
    X = np.asarray(data.X)
    y = np.asarray(data.y, dtype=np.int64)
    rng = np.random.default_rng([0, 1])
    n_s = N_TRAIN // BATCH // 2

    def run() -> float:
        order = rng.permutation(N_TRAIN)
        start = time.perf_counter()
        for step in range(N_TRAIN // BATCH):
            idx = order[step * BATCH : (step + 1) * BATCH]
            xb, yb = torch.from_numpy(X[idx]), torch.from_numpy(y[idx])
            eta = cyclical_learning_rate(step, t.eta_min, t.eta_max, n_s)
            for group in optimizer.param_groups:
                group["lr"] = eta
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            loss.backward()
            optimizer.step()
            if not np.isfinite(loss.item()):  # as our trainer checks every step's cost
                raise RuntimeError("PyTorch run diverged")
        return time.perf_counter() - start

    return run


# -- whole `knn train` runs ----------------------------------------------------------------------


def whole_run(config_name: str, runs_dir: Path, torch: bool = False) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of `knn train CONFIG` in a child process, or with `torch`
    of the same protocol in PyTorch (`torch_protocol.py`)."""
    config = ROOT / "configs" / f"{config_name}.yaml"
    command = [sys.executable, "-m", "knn_cli", "train", str(config), "--runs-dir", str(runs_dir)]
    if torch:
        command = [sys.executable, str(Path(__file__).resolve().parent / "torch_protocol.py"),
                   str(config)]  # fmt: skip
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _pid, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        stderr = child.stderr.read().decode() if child.stderr else ""
        what = "PyTorch" if torch else "knn train"
        sys.exit(f"{what} {config_name} failed ({child.returncode}): {stderr[-500:]}")
    return seconds, usage.ru_maxrss / 1024


# -- main ----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs (and runs) per side")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    parser.add_argument("--full", action="store_true", help="also time whole `knn train` runs")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    parser.add_argument("--verbose", action="store_true", help="print every repeat's figures")
    args = parser.parse_args()

    print(f"load average {load()} ({os.cpu_count()} cores); numpy {np.__version__}")
    print(f"BLAS: {blas_description()}")
    for name in ("OPENBLAS_CORETYPE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        print(f"  {name}={os.environ.get(name, '<unset>')}")
    torch_note = None
    if args.no_torch:
        print("PyTorch comparison skipped (--no-torch)")
    else:
        try:
            import torch

            torch_note = f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads"
            print(torch_note)
        except ImportError:
            print("PyTorch not installed: no comparison (pip install torch to add it)")
    data = training_data()
    limits = blas_limits()
    thread_counts = sorted({1, os.cpu_count() or 1})

    print()
    print(f"Seconds per epoch ({N_TRAIN} rows, batch {BATCH}, float32; median of {args.repeats})")
    header = (
        f"{'config':<10} {'ours':>7} {'bound':>7} {'x bound':>8} {'GF/s mm':>8}"
        f" {'1 lane':>7} {'bound1':>7} {'x bound1':>8} {'1 lane/ours':>11}"
    )
    if torch_note:
        header += f" {'torch':>7} {'torch/ours':>10}"
    print(header + "  load")
    for config_name in args.configs:
        config = load_config(ROOT / "configs" / f"{config_name}.yaml")
        widths = (3072, *config.model.hidden, 10)
        ours, one_lane = ours_epoch(config_name, data), ours_epoch(config_name, data, False)
        ours()  # warm: workspaces, pages of the memory map
        one_lane()
        theirs = torch_epoch(config_name, data) if torch_note else None
        if theirs:
            theirs()
        # Every repeat measures the bounds and all sides anew, one right after the other, and
        # the ratios are taken within a repeat: this machine's speed drifts by tens of percent
        # from one minute to the next, which would otherwise land in the ratios.
        rows: dict[str, list[float]] = {}
        for _ in range(args.repeats):
            bounds = matmul_bounds(widths, config.model.batch_norm, limits, thread_counts)
            bound = min(bounds, key=lambda b: b.seconds)
            single = bounds[0]  # one BLAS thread, as the step runs without the second lane
            time.sleep(PAUSE_S)
            mine = ours()
            time.sleep(PAUSE_S)
            mine1 = one_lane()
            row = {"ours": mine, "bound": bound.seconds, "x bound": mine / bound.seconds}
            row |= {"gflops": bound.gflops, "1 lane": mine1, "bound1": single.seconds}
            row |= {"x bound1": mine1 / single.seconds, "1 lane/ours": mine1 / mine}
            if theirs:
                time.sleep(PAUSE_S)
                torch_seconds = theirs()
                row |= {"torch": torch_seconds, "torch/ours": torch_seconds / mine}
            for key, value in row.items():
                rows.setdefault(key, []).append(value)
        m = {key: median(values) for key, values in rows.items()}
        line = (
            f"{config_name:<10} {m['ours']:7.3f} {m['bound']:7.3f} {m['x bound']:8.2f} "
            f"{m['gflops']:8.1f} {m['1 lane']:7.3f} {m['bound1']:7.3f} {m['x bound1']:8.2f}"
            f" {m['1 lane/ours']:11.2f}"
        )
        if theirs:
            line += f" {m['torch']:7.3f} {m['torch/ours']:10.2f}"
        print(line + f"  {load()}", flush=True)
        if args.verbose:
            for key, values in rows.items():
                print(f"  {key:<10} " + " ".join(f"{v:7.3f}" for v in values))
    print(
        "medians over repeats, ratios taken within each repeat; "
        "bound: epoch FLOPs / matmul throughput measured at the step's shapes, best of "
        f"{thread_counts} BLAS threads; 1 lane: the step on one thread, against bound1 (one BLAS"
        " thread); 1 lane/ours: what the helper thread gains; torch/ours > 1: ours is faster"
    )

    if not args.full:
        return
    print()
    if not data.real:
        print("whole `knn train` runs skipped: they need the real CIFAR-10 (set KNN_DATA_DIR)")
        return
    print(f"Whole `knn train CONFIG` (20 epochs + 21 evaluations); median of {args.repeats}")
    if torch_note:
        print("  torch: the same protocol in PyTorch (torch_protocol.py), alternating with ours")
    header = f"{'config':<10} {'seconds':>8} {'peak MB':>8}"
    if torch_note:
        header += f" {'torch':>7} {'torch/ours':>10} {'torch MB':>8}"
    print(header + "  runs  load")
    with tempfile.TemporaryDirectory() as folder:
        for config_name in args.configs:
            results, theirs = [], []
            for _ in range(args.repeats):
                results.append(whole_run(config_name, Path(folder)))
                if torch_note:
                    theirs.append(whole_run(config_name, Path(folder), torch=True))
            seconds = [s for s, _ in results]
            line = f"{config_name:<10} {median(seconds):8.1f} {max(m for _, m in results):8.0f}"
            if torch_note:
                ratios = [t / s for (t, _), s in zip(theirs, seconds, strict=True)]
                line += f" {median([t for t, _ in theirs]):7.1f} {median(ratios):10.2f}"
                line += f" {max(m for _, m in theirs):8.0f}"
            runs = " ".join(f"{s:.1f}" for s in seconds)
            print(f"{line}  {runs}  {load()}", flush=True)


if __name__ == "__main__":
    main()
