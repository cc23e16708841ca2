"""The study's whole training protocol in PyTorch, as `knn train CONFIG` runs it in NumPy.

The same network (widths, He init, BatchNorm1d with the config's eps and momentum), the same
loss and L2 term (SGD weight decay 2 lambda on the weights only), the cyclical rate, batch 100,
a new shuffle each epoch, and an evaluation -- cost, loss and accuracy of the whole training and
validation sets, in evaluation mode -- at every evaluation point `knn train` has, then the test
accuracy. It writes no files and draws nothing (`knn train` also writes its curves, plots and
per-layer diagnostics): it is the other side of `bench_train.py --full`'s whole-run ratio, in
a process of its own so that its start-up (Python, torch, the cached data) counts as ours does.

    KNN_DATA_DIR=/path/to/cifar-10-batches-py \
        python benchmarks/torch_protocol.py configs/3layer_bn.yaml
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np


def torch_network(config, n_features: int, n_classes: int = 10):
    """nn.Sequential of the config's network, and its weight matrices (which weight decay hits)."""
    import torch
    from torch import nn

    model_config = config.model
    torch.manual_seed(config.training.seed)
    widths = (n_features, *model_config.hidden, n_classes)
    layers: list[nn.Module] = []
    for layer, (fan_in, fan_out) in enumerate(itertools.pairwise(widths), 1):
        linear = nn.Linear(fan_in, fan_out)
        nn.init.normal_(linear.weight, std=(2.0 / fan_in) ** 0.5)
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if layer < len(widths) - 1:
            if model_config.batch_norm:
                momentum = 1 - model_config.bn_alpha  # ours keeps alpha of the old average
                layers.append(nn.BatchNorm1d(fan_out, eps=model_config.bn_eps, momentum=momentum))
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers)
    weights = [m.weight for m in model if isinstance(m, nn.Linear)]
    return model, weights


def sgd_for(model, weights, lambda_: float, eta: float):
    import torch

    others = [p for p in model.parameters() if all(p is not w for w in weights)]
    groups = [{"params": weights, "weight_decay": 2 * lambda_}, {"params": others}]
    return torch.optim.SGD(groups, lr=eta)


def evaluate(model, weights, X, y, lambda_: float) -> tuple[float, float, float]:
    """(cost, loss, accuracy) of a whole split in evaluation mode, in chunks as ours does."""
    import torch

    model.eval()
    loss_sum, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(X), 5000):
            xb = torch.from_numpy(np.array(X[start : start + 5000]))  # a memmap is read-only
            yb = torch.from_numpy(np.asarray(y[start : start + 5000], dtype=np.int64))
            scores = model(xb)
            loss_sum += float(torch.nn.functional.cross_entropy(scores, yb, reduction="sum"))
            correct += int((scores.argmax(1) == yb).sum())
        penalty = sum(float((w * w).sum()) for w in weights)
    model.train()
    loss = loss_sum / len(X)
    return loss + lambda_ * penalty, loss, correct / len(X)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    args = parser.parse_args()
    start = time.perf_counter()
    import torch

    from knn_cli.config import load_config
    from knn_cli.data import load_cifar10
    from knn_cli.schedule import cyclical_learning_rate, total_steps

    config = load_config(args.config)
    t = config.training
    data = load_cifar10(config.data.dir, config.data.validation_size, download=False)
    X, y = data.X_train, np.asarray(data.y_train, dtype=np.int64)
    n = len(X)
    n_s = t.resolve_n_s(n)
    every = t.resolve_eval_every(n_s)
    steps = total_steps(n_s, t.cycles)
    model, weights = torch_network(config, X.shape[1])
    model.train()
    optimizer = sgd_for(model, weights, t.lambda_, t.eta_min)
    loss_fn = torch.nn.CrossEntropyLoss()
    rng = np.random.default_rng(t.seed)
    per_epoch = n // t.batch_size
    evaluations = 0
    for step in range(steps + 1):
        if step % every == 0 or step == steps:
            evaluate(model, weights, X, y, t.lambda_)
            evaluate(model, weights, data.X_val, data.y_val, t.lambda_)
            evaluations += 1
        if step == steps:
            break
        if step % per_epoch == 0:
            order = rng.permutation(n)
        batch = order[(step % per_epoch) * t.batch_size : (step % per_epoch + 1) * t.batch_size]
        eta = cyclical_learning_rate(step, t.eta_min, t.eta_max, n_s)
        for group in optimizer.param_groups:
            group["lr"] = eta
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(torch.from_numpy(X[batch])), torch.from_numpy(y[batch]))
        loss.backward()
        optimizer.step()
        if not np.isfinite(loss.item()):
            raise SystemExit("PyTorch run diverged")
    _, _, test_accuracy = evaluate(model, weights, data.X_test, data.y_test, t.lambda_)
    seconds = time.perf_counter() - start
    print(
        f"{config.name}: test accuracy {test_accuracy:.2%}, {steps} steps, {evaluations}"
        f" evaluations, {seconds:.1f} s from importing torch to the end"
    )


if __name__ == "__main__":
    main()
