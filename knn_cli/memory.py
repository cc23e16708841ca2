"""How much memory a run will need, estimated from its config before anything is allocated.

A config such as `model.hidden=[2000000000]` would otherwise end in a MemoryError traceback
half-way through building the network (or in the OOM killer, later). The estimate counts what
grows with the config -- parameters with their gradients and update-rule state, the activations
of a training step on each lane, an evaluation block -- plus the data (memory-mapped, but every
page is read, so it counts) and the interpreter with its libraries. README's Performance section
compares it with measured peaks.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from knn_cli.config import RunConfig
from knn_cli.data.cifar10 import N_FEATURES, TEST_IMAGES, TRAIN_IMAGES, Dataset
from knn_cli.errors import ConfigError
from knn_cli.formatting import byte_size
from knn_cli.optim import UPDATE_RULES
from knn_cli.stack import Affine, standard_layers_of

CIFAR_IMAGES = TRAIN_IMAGES + TEST_IMAGES  # the validation set is part of the training files
CIFAR_TRAIN_IMAGES = TRAIN_IMAGES - 5_000  # the default 5,000 held out
DATA_ITEMSIZE = 4  # the cache holds float32 whatever the run's dtype
BASELINE_BYTES = 120 * 2**20  # Python, NumPy, matplotlib and the BLAS, before any array
EVALUATION_ROWS = 10_000  # the largest block evaluation and prediction work on
LANES = 2  # training steps computed side by side, each with its own workspace
# Per parameter: its value, one gradient per lane, the copy written to a checkpoint.
COPIES_PER_PARAMETER = 2 + LANES


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes by what they hold; `total` is what is compared with the memory available."""

    parameters: int
    activations: int
    data: int
    baseline: int

    @property
    def total(self) -> int:
        return self.parameters + self.activations + self.data + self.baseline

    def to_dict(self) -> dict[str, float]:
        """In MB, as `summary.json` keeps it beside the measured peak."""
        parts = {key: value / 2**20 for key, value in asdict(self).items()}
        return {
            key: round(value, 1) for key, value in {**parts, "total": self.total / 2**20}.items()
        }


@dataclass(frozen=True)
class DataSize:
    """What the estimate needs of the data: images in all splits, features, training images."""

    images: int = CIFAR_IMAGES
    features: int = N_FEATURES
    train_images: int = CIFAR_TRAIN_IMAGES

    @classmethod
    def of(cls, dataset: Dataset) -> DataSize:
        images = len(dataset.X_train) + len(dataset.X_val) + len(dataset.X_test)
        return cls(images, dataset.n_features, len(dataset.X_train))


CIFAR10 = DataSize()


def estimate_memory(
    config: RunConfig, data: DataSize = CIFAR10, *, members: int = 1
) -> MemoryEstimate:
    """The run's memory need, from its config and the data's size (CIFAR-10's by default); with
    `members`, that of a population of so many runs of its shapes, which share the data and
    hold their parameters and activations side by side."""
    features, train_images = data.features, data.train_images
    itemsize = 8 if config.training.dtype == "float64" else 4
    widths = (features, *config.model.hidden, 10)
    # The layers say what they hold and keep; each buffer is as wide as the units it follows.
    layers = standard_layers_of(widths, asdict(config.model))
    parameter_count = sum(layer.parameter_count() for layer in layers)
    copies = COPIES_PER_PARAMETER + len(UPDATE_RULES[config.training.optimizer].slots)
    copies += config.evaluation.snapshot_ensemble  # the snapshots, loaded together at the end
    buffers, width = 0, features
    for layer in layers:
        width = layer.fan_out if isinstance(layer, Affine) else width
        buffers += layer.step_buffers * width
    batch = config.training.batch_size
    step = batch * (buffers + 2 * features)  # the input, gathered
    evaluation = EVALUATION_ROWS * (2 * max(widths[1:]) + features)
    if config.evaluation.precise_bn and config.model.batch_norm:
        # Precise BN passes every training row through one layer at a time: a layer's input
        # and output for all rows at once.
        evaluation = max(evaluation, 2 * train_images * max(widths[1:]))
    # The rows each run keeps copies of: its probe (diagnostics) and its training-curve sample.
    curve = config.evaluation.train_curve_rows or 0
    probe = config.diagnostics.probe_size if config.diagnostics.layers else 0
    if config.diagnostics.landscape:
        probe += 2 * config.diagnostics.probe_size  # and in float64 for the landscape
    kept_rows = min(curve, train_images) + min(probe, train_images)
    return MemoryEstimate(
        parameters=members * parameter_count * copies * itemsize,
        activations=members * (LANES * step + evaluation) * itemsize,
        data=(data.images + members * kept_rows) * features * DATA_ITEMSIZE,
        baseline=BASELINE_BYTES,
    )


def available_memory() -> int | None:
    """Bytes this process may still take: the machine's available memory, or the container's
    limit less its use where that is lower; None where neither can be read."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = Path("/sys/fs/cgroup/memory.current").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int(used))
    except (OSError, ValueError):
        pass
    if not found and hasattr(os, "sysconf"):
        with contextlib.suppress(ValueError, OSError):
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    return min(found) if found else None


def check_memory(
    config: RunConfig, data: DataSize = CIFAR10, *, members: int = 1
) -> MemoryEstimate:
    """The estimate, or a one-line ConfigError when it cannot fit in the memory available."""
    estimate = estimate_memory(config, data, members=members)
    available = available_memory()
    if available is not None and estimate.total > available:
        who = config.name if members == 1 else f"a population of {members} runs of {config.name}"
        raise ConfigError(
            f"{who} needs about {byte_size(estimate.total)} of memory (parameters "
            f"{byte_size(estimate.parameters)}, activations {byte_size(estimate.activations)}, "
            f"data {byte_size(estimate.data)}); {byte_size(available)} is available: make "
            "model.hidden or training.batch_size smaller"
        )
    return estimate


GRADCHECK_COPIES = 8  # parameters, the engine's and the textbook's gradients, numerical ones


def check_gradcheck_size(widths: tuple[int, ...]) -> None:
    """A one-line ConfigError for a gradient check whose float64 parameters cannot fit."""
    weights = sum(d_in * d_out for d_in, d_out in itertools.pairwise(widths))
    need = weights * 8 * GRADCHECK_COPIES
    available = available_memory()
    if available is not None and need > available:
        raise ConfigError(
            f"a gradient check of widths {list(widths)} needs about {byte_size(need)} of memory; "
            f"{byte_size(available)} is available: use narrower --hidden layers"
        )
