"""Measuring networks in evaluation mode, in blocks of rows: the loss and accuracy of a
population on a split (the trainer's evaluation points), the accuracy of one network, with
test-time mirroring, and of an ensemble's mean prediction (a snapshot ensemble's)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from knn_cli.augment import mirror
from knn_cli.layers import cross_entropy, softmax
from knn_cli.network import Network
from knn_cli.stack import Mode

# Rows per forward pass of a measurement: small enough that a block's activations stay in the
# cache, large enough that the per-block Python cost is nothing beside its matrix product.
EVAL_BLOCK = 1_000


def evaluate_members(
    networks: Sequence[Network], X: np.ndarray, y: np.ndarray, lambdas: Sequence[float]
) -> list[tuple[float, float, float]]:
    """Each network's (cost, loss, accuracy) in evaluation mode, in blocks so a 45,000-row split
    stays cheap; networks of the same shapes at once, their parameters stacked, each block's
    products for all of them in one call, each network's numbers those it gets alone."""
    first, P = networks[0], len(networks)
    params = {
        name: np.stack([n.params[name] for n in networks]).reshape(
            (P, 1, *shape) if len(shape) == 1 else (P, *shape)
        )
        for name, shape in first.shapes.items()
    }
    averages = {
        name: np.stack([n.moving_averages[name] for n in networks])[:, None]
        for name in first.statistic_shapes
        if all(name in n.moving_averages for n in networks)
    }
    mode = Mode(train=False, averages=averages)
    X = np.asarray(X)  # a memmap's subclass costs on every slice; its plain view does not
    total_loss = np.zeros(P)
    correct = np.zeros(P, dtype=np.int64)
    for start in range(0, len(X), EVAL_BLOCK):
        scores, _ = first.forward_pass(X[start : start + EVAL_BLOCK], mode, params)
        labels = y[start : start + EVAL_BLOCK]
        correct += np.count_nonzero(scores.argmax(axis=-1) == labels, axis=-1)
        losses = cross_entropy(scores, labels, first.label_smoothing)
        total_loss += np.asarray(losses, dtype=np.float64) * len(labels)  # each block's sum
    found = []
    for i, (network, lambda_) in enumerate(zip(networks, lambdas, strict=True)):
        loss = float(total_loss[i] / len(X))
        found.append((loss + lambda_ * network.weight_penalty(), loss, int(correct[i]) / len(X)))
    return found


def accuracy(network: Network, X: np.ndarray, y: np.ndarray, *, mirrored: bool = False) -> float:
    """Accuracy in evaluation mode; with `mirrored`, of the class probabilities averaged over
    each image and its mirror image (test-time augmentation): an ensemble of one."""
    if not mirrored:
        return float(np.mean(network.predict(X) == y))
    return ensemble_accuracy([network], X, y, mirrored=True)


def class_probabilities(network: Network, X: np.ndarray, *, mirrored: bool = False) -> np.ndarray:
    """Softmax probabilities in evaluation mode, (n, n_classes); with `mirrored`, the mean of
    each image's and its mirror image's."""
    probabilities = softmax(network.scores(X))
    if mirrored:
        probabilities = (probabilities + softmax(network.scores(mirror(X)))) / 2
    return probabilities


def ensemble_accuracy(
    networks: Sequence[Network], X: np.ndarray, y: np.ndarray, *, mirrored: bool = False
) -> float:
    """Accuracy of the mean of the networks' class probabilities: a snapshot ensemble's (Huang
    et al. 2017, the networks at the ends of a cyclical schedule's cycles). With `mirrored`,
    each network's probabilities are first averaged over each image and its mirror image."""
    X = np.asarray(X)
    correct = 0
    for start in range(0, len(X), EVAL_BLOCK):
        block = X[start : start + EVAL_BLOCK]
        mean = np.mean([class_probabilities(n, block, mirrored=mirrored) for n in networks], axis=0)
        correct += int(np.count_nonzero(mean.argmax(axis=1) == y[start : start + len(block)]))
    return correct / len(X)
