"""What a member of a population costs: per-member training step time against the population's
size P, for `3layer_bn` and `9layer_bn`, members sharing their batch (the same seed) and each
drawing its own, on one BLAS thread as a sweep's worker trains.

For each P it prints the per-member step (median of `--repeats`, each timed over `--steps`
steps), its ratio to a lone one-lane step timed in the same repeat (P = 1 is the lone engine),
the matrix-multiply bound of the population's own products (the step's FLOPs over the throughput
of the very products the engine calls, stacked as it stacks them: `X @ W` for P members at
once) and the step's ratio to it, and the peak memory the population's arrays add (tracemalloc
of the engine's step, NumPy's allocations). Where PyTorch is installed, the same P networks
trained as its ensembling tutorial does (`torch.func.stack_module_state`, `functional_call`,
`vmap` of `grad`; batch norm without running statistics, `replace_all_batch_norm_modules_`),
the same SGD step, per member. `--figure PATH` draws the per-member cost against P.

    KNN_DATA_DIR=/path/to/cifar-10-batches-py python benchmarks/bench_population.py \\
        [--repeats 3] [--steps 40] [--sizes 1,2,4,8,16,32] [--figure population.png]

Without the real data the batches are random rows of the same shape (the speed is the same).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from knn_cli.config import load_config
from knn_cli.engine import Engine
from knn_cli.engine.batches import Batch
from knn_cli.network import Network
from knn_cli.optim import SGD
from knn_cli.runs import machine

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import step_flops, step_matmuls, training_data  # a script beside this one

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ("3layer_bn", "9layer_bn")
BATCH = 100


def networks(config_name: str, members: int, features: int) -> list[Network]:
    config = load_config(ROOT / "configs" / f"{config_name}.yaml")
    model = config.model
    return [
        Network(features, model.hidden, 10, batch_norm=model.batch_norm, seed=seed)
        for seed in range(members)
    ]


class Population:
    """P networks on one engine, stepping through the data's batches: shared (one seed) or each
    its own."""

    def __init__(self, config_name: str, members: int, shared: bool, X, y) -> None:
        self.nets = networks(config_name, members, X.shape[1])
        self.rules = [SGD() for _ in self.nets]
        self.groups = 1 if shared else members
        self.engine = Engine(self.nets, groups=[0 if shared else k for k in range(members)])
        self.X, self.y = X, y
        self.orders = [
            np.random.default_rng([k, 1]).permutation(len(X)) for k in range(self.groups)
        ]
        self.step_number = 0
        self.P = members

    def steps(self, count: int) -> float:
        """Seconds per member-step over `count` steps."""
        start = time.perf_counter()
        for _ in range(count):
            at = (self.step_number * BATCH) % (len(self.X) - BATCH)
            batches = [Batch(self.X, order[at : at + BATCH]) for order in self.orders]
            self.engine.step(
                batches,
                [self.y[b.rows] for b in batches],
                0.005,
                0.01,
                self.rules,
                noise=[(k, 2, self.step_number) for k in range(self.groups)],
            )
            self.step_number += 1
        return (time.perf_counter() - start) / count / self.P

    def peak_bytes(self) -> int:
        """What one step allocates at its peak beyond what it keeps (tracemalloc, NumPy's own
        allocations), plus the stacked parameters and workspaces it keeps."""
        tracemalloc.start()
        self.steps(1)
        _current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        kept = sum(a.nbytes for a in self.engine.params.values())
        work = self.engine.workspace(BATCH)
        kept += sum(g.nbytes for g in work.grads.values()) + work.loss_grad.nbytes
        return peak + kept


def bound_per_member(config_name: str, members: int, shared: bool) -> float:
    """Seconds per member-step: the step's FLOPs over the throughput of the population's own
    products, stacked as the engine stacks them."""
    config = load_config(ROOT / "configs" / f"{config_name}.yaml")
    widths = (3072, *config.model.hidden, 10)
    mm_flops, other_flops = step_flops(widths, BATCH, config.model.batch_norm)
    rng = np.random.default_rng(0)
    seconds = 0.0
    for index, ((m, k, p), kind) in enumerate(step_matmuls(widths, BATCH)):
        first = index < 2  # the first layer's forward and weight gradient read the batch
        lead = (1 if shared else members) if first else members
        if kind == "forward":
            a = rng.standard_normal((lead, m, k), dtype=np.float32)
            b = rng.standard_normal((members, k, p), dtype=np.float32)
        elif kind == "weight_grad":
            a = rng.standard_normal((lead, k, m), dtype=np.float32).transpose(0, 2, 1)
            b = rng.standard_normal((members, k, p), dtype=np.float32)
        else:
            a = rng.standard_normal((members, m, k), dtype=np.float32)
            b = rng.standard_normal((members, p, k), dtype=np.float32).transpose(0, 2, 1)
        if lead == 1 and members > 1:
            a = a[0]
        out = np.empty((members, m, p), dtype=np.float32)
        reps = max(3, int(1e8 / (2 * m * k * p * members + 1e5)))
        times = []
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(reps):
                np.matmul(a, b, out=out)
            times.append((time.perf_counter() - start) / reps)
        seconds += statistics.median(times)
    return seconds / members * (mm_flops + other_flops) / mm_flops


class TorchPopulation:
    """The same P networks in PyTorch, trained as its ensembling tutorial trains models side by
    side: parameters stacked by `stack_module_state`, the loss's gradient by `vmap(grad(...))`
    over a `functional_call`, and SGD on the stacked tensors."""

    def __init__(self, config_name: str, members: int, shared: bool, X, y) -> None:
        import torch
        from torch.func import (
            functional_call,
            grad,
            replace_all_batch_norm_modules_,
            stack_module_state,
            vmap,
        )
        from torch_protocol import torch_network

        config = load_config(ROOT / "configs" / f"{config_name}.yaml")
        models = [torch_network(config, X.shape[1])[0] for _ in range(members)]
        for model in models:
            replace_all_batch_norm_modules_(model)  # vmap cannot update running statistics
        self.params, self.buffers = stack_module_state(models)
        base = models[0]
        lambda_ = config.training.lambda_

        def loss(params, buffers, xb, yb):
            scores = functional_call(base, (params, buffers), (xb,))
            penalty = sum((w * w).sum() for name, w in params.items() if name.endswith("weight")
                          and w.dim() == 2)  # fmt: skip
            return torch.nn.functional.cross_entropy(scores, yb) + lambda_ * penalty

        in_dims = (0, 0, None, None) if shared else (0, 0, 0, 0)
        self.gradient = vmap(grad(loss), in_dims=in_dims, randomness="same")
        self.torch = torch
        self.X = torch.from_numpy(np.array(X[:5000]))  # writable: a memmap's rows are not
        self.y = torch.from_numpy(np.asarray(y[:5000], dtype=np.int64))
        self.shared, self.P = shared, members
        self.step_number = 0

    def steps(self, count: int) -> float:
        torch = self.torch
        start = time.perf_counter()
        for _ in range(count):
            at = (self.step_number * BATCH) % (len(self.X) - BATCH * self.P)
            if self.shared:
                xb, yb = self.X[at : at + BATCH], self.y[at : at + BATCH]
            else:
                xb = self.X[at : at + BATCH * self.P].reshape(self.P, BATCH, -1)
                yb = self.y[at : at + BATCH * self.P].reshape(self.P, BATCH)
            grads = self.gradient(self.params, self.buffers, xb, yb)
            with torch.no_grad():
                for name, value in self.params.items():
                    value -= 0.01 * grads[name]
            self.step_number += 1
        return (time.perf_counter() - start) / count / self.P


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per repeat")
    parser.add_argument("--sizes", default="1,2,4,8,16,32", help="population sizes P")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch side")
    parser.add_argument("--figure", type=Path, default=None, help="draw cost against P here")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    torch_ok = False
    if not args.no_torch:
        try:
            import torch

            torch.set_num_threads(1)
            torch_ok = True
            print(f"PyTorch {torch.__version__}, 1 thread")
        except ImportError:
            print("PyTorch not installed: its side is skipped (pip install torch to add it)")
    data = training_data()
    X, y = np.asarray(data.X), np.asarray(data.y)
    print(f"{machine()}; numpy {np.__version__}; one BLAS thread; batch {BATCH}; "
          f"median of {args.repeats} repeats of {args.steps} steps")  # fmt: skip
    header = (f"{'config':<10} {'batches':<8} {'P':>3} {'us/member':>9} {'x lone':>7} "
              f"{'bound us':>8} {'x bound':>7} {'MB':>6}")  # fmt: skip
    if torch_ok:
        header += f" {'torch us':>8} {'torch/ours':>10}"
    print(header)
    found: dict[tuple[str, str], list[tuple[int, float]]] = {}
    with threadpool_limits(1, user_api="blas"):
        for config_name in args.configs:
            lone = Population(config_name, 1, True, X, y)
            lone.steps(20)  # warm: workspaces, the pages of the data it reads
            for shared in (True, False):
                kind = "shared" if shared else "own"
                for P in sizes:
                    population = Population(config_name, P, shared, X, y)
                    population.steps(5)
                    theirs = TorchPopulation(config_name, P, shared, X, y) if torch_ok else None
                    if theirs is not None:
                        theirs.steps(2)
                    rows: dict[str, list[float]] = {}
                    for _ in range(args.repeats):
                        # The lone step timed just before and just after: the machine's speed
                        # drifts within seconds.
                        before = lone.steps(args.steps)
                        member = population.steps(args.steps)
                        alone = (before + lone.steps(args.steps)) / 2
                        bound = bound_per_member(config_name, P, shared)
                        row = {"member": member, "lone": member / alone, "bound": bound,
                               "x bound": member / bound}  # fmt: skip
                        if theirs is not None:
                            torch_member = theirs.steps(max(5, args.steps // 4))
                            row |= {"torch": torch_member, "torch/ours": torch_member / member}
                        for key, value in row.items():
                            rows.setdefault(key, []).append(value)
                    m = {key: statistics.median(v) for key, v in rows.items()}
                    megabytes = population.peak_bytes() / 2**20
                    line = (f"{config_name:<10} {kind:<8} {P:>3} {m['member'] * 1e6:9.0f} "
                            f"{m['lone']:7.2f} {m['bound'] * 1e6:8.0f} {m['x bound']:7.2f} "
                            f"{megabytes:6.1f}")  # fmt: skip
                    if theirs is not None:
                        line += f" {m['torch'] * 1e6:8.0f} {m['torch/ours']:10.2f}"
                    print(line, flush=True)
                    found.setdefault((config_name, kind), []).append((P, m["member"]))
    print("us/member: seconds per member-step; x lone: over a lone one-lane step of the same "
          "repeat; bound: the step's FLOPs over the throughput of the population's own stacked "
          "products; MB: the step's arrays, kept and at their peak")  # fmt: skip
    if args.figure is not None:
        draw(found, args.figure)


def draw(found: dict[tuple[str, str], list[tuple[int, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.0, 4.5), dpi=120)
    for (config_name, kind), points in found.items():
        sizes, seconds = zip(*points, strict=True)
        style = "-" if kind == "shared" else "--"
        batches = "one batch shared" if kind == "shared" else "a batch each"
        ax.plot(sizes, [s * 1e6 for s in seconds], style, marker="o",
                label=f"{config_name}, {batches}")  # fmt: skip
    ax.set_xscale("log", base=2)
    sizes_drawn = sorted({size for points in found.values() for size, _ in points})
    ax.set_xticks(sizes_drawn, [str(size) for size in sizes_drawn])
    ax.set_xlabel("members in the population (P)")
    ax.set_ylabel("microseconds per member-step")
    ax.set_title(f"A member's training step against the population's size\n{machine()}",
                 fontsize=10)  # fmt: skip
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    print(f"figure: {path}")


if __name__ == "__main__":
    main()
