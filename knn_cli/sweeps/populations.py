"""Which of a sweep's runs train together, as one population (`knn_cli/trainer.py`): runs whose
configs differ only in what a member of a population may have of its own -- its seed, lambda,
learning rates and init -- train side by side in one process, one step for all of them, each
into its own ordinary run folder, with the numbers it gets alone.

`--population auto` (the default) puts every such group in one population, as large as memory
allows and at most AUTO_LIMIT, then splits the largest until every worker has one; `off` trains
each run alone; a number caps the size. A population is one job for the executors, local or
Dask alike.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from knn_cli import memory
from knn_cli.config import config_from_dict
from knn_cli.errors import ConfigError
from knn_cli.memory import estimate_memory

T = TypeVar("T")

# The settings in which members of a population may differ (each is per member in the engine
# and the trainer); every other setting, and whether the test set is looked at, they share.
MEMBER_SETTINGS = (
    ("name",),
    ("training", "lambda"),
    ("training", "seed"),
    ("training", "eta_min"),
    ("training", "eta_max"),
    ("model", "init"),
    ("model", "sigma"),
)
# The most runs `auto` puts in one population: past it a member's step costs no less
# (benchmarks/bench_population.py), and fewer, smaller populations share the workers better.
AUTO_LIMIT = 16
CHOICES_TEXT = "auto, off, or the most runs in one population (a whole number >= 1)"


@dataclass(frozen=True)
class Populations:
    """How a sweep groups its runs: `limit` runs at most in one population (1: each alone,
    `off`), or as many as fit (None, `auto`)."""

    limit: int | None = None

    @classmethod
    def parse(cls, text: str) -> Populations:
        """From `--population`: auto, off or a number; a one-line ConfigError otherwise."""
        word = str(text).strip().lower()
        if word == "auto":
            return cls(None)
        if word == "off":
            return cls(1)
        if word.isdigit() and int(word) >= 1:
            return cls(int(word))
        raise ConfigError(f"--population must be {CHOICES_TEXT}, got {text!r}")

    def __str__(self) -> str:
        return "auto" if self.limit is None else "off" if self.limit == 1 else str(self.limit)


AUTO = Populations()


def shared_settings(config: Mapping[str, Any], looks_at_test: bool) -> str:
    """What members of one population must have in common, as a key."""
    shared = {section: dict(values) if isinstance(values, Mapping) else values
              for section, values in config.items()}  # fmt: skip
    for path in MEMBER_SETTINGS:
        if len(path) == 1:
            shared.pop(path[0], None)
        else:
            shared.get(path[0], {}).pop(path[1], None)
    return json.dumps([shared, looks_at_test], sort_keys=True, default=str)


def memory_limit(config: Mapping[str, Any], workers: int) -> int:
    """The most members of this config that fit in a worker's share of the memory
    available (at least 1: a run that does not fit alone is refused by its own check)."""
    available = memory.available_memory()
    if available is None:
        return AUTO_LIMIT
    run = config_from_dict(config)
    one = estimate_memory(run)
    each = estimate_memory(run, members=2).total - one.total
    share = available / max(1, workers)
    return max(1, int((share - (one.total - each)) // max(1, each)))


def plan_populations(
    items: Sequence[T],
    config_of: Callable[[T], Mapping[str, Any]],
    looks_at_test: Callable[[T], bool],
    policy: Populations,
    workers: int,
) -> list[list[T]]:
    """The items grouped into populations, in plan order: items that may train together, those
    of one seed next to each other (they share their batches), in pieces of at most the
    policy's limit (and what memory allows); then the largest pieces halved until each of
    `workers` workers has one, where there are runs enough."""
    groups: dict[str, list[T]] = {}
    for item in items:
        groups.setdefault(shared_settings(config_of(item), looks_at_test(item)), []).append(item)
    populations: list[list[T]] = []
    for members in groups.values():
        members = sorted(members, key=lambda item: config_of(item)["training"]["seed"])
        limit = policy.limit or min(AUTO_LIMIT, memory_limit(config_of(members[0]), workers))
        populations += _pieces(members, math.ceil(len(members) / limit))
    while len(populations) < workers:
        largest = max(populations, key=len, default=[])
        if len(largest) < 2:
            break
        at = populations.index(largest)
        populations[at : at + 1] = _pieces(largest, 2)
    return populations


def _pieces(members: list[T], count: int) -> list[list[T]]:
    """`members` cut into `count` consecutive pieces of sizes as equal as can be."""
    size, extra = divmod(len(members), count)
    pieces, start = [], 0
    for k in range(count):
        stop = start + size + (k < extra)
        pieces.append(members[start:stop])
        start = stop
    return pieces
