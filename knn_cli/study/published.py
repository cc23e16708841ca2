"""The published numbers (published.yaml, shipped with the package) and how a result of ours
compares with them.

A result is judged against the published range where several published results exist, and
against the study's own value where it alone was published: a single number is a range of one
point, so "inside" then means "equal", and the miss says how far off we are.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import yaml

PUBLISHED_FILE = "published.yaml"
PERCENT = "%"


@dataclass(frozen=True)
class Published:
    """One published number: the study's own `value`, the `range` of several published results
    where they exist, and which part of the study it belongs to."""

    key: str
    part: str
    what: str
    unit: str
    value: float | None
    range: tuple[float, float] | None = None
    range_from: str = ""
    scale: str = "linear"
    note: str = ""

    @property
    def bounds(self) -> tuple[float, float]:
        if self.range is not None:
            return self.range
        assert self.value is not None  # checked when loaded
        return self.value, self.value


@dataclass(frozen=True)
class PublishedTable:
    key: str
    part: str
    what: str
    columns: tuple[str, ...]
    rows: tuple[tuple[float, ...], ...]


@dataclass(frozen=True)
class Check:
    """Where a result falls: `miss` is 0 inside the bounds, else how far outside, signed (below
    is negative) -- in the unit's own terms, or as a factor (> 1) on a log scale."""

    where: str  # inside | below | above
    miss: float
    unit: str
    scale: str = "linear"
    spread: float | None = None  # the result's standard deviation over seeds, where it has one

    @property
    def inside(self) -> bool:
        return self.where == "inside"

    @property
    def verdict(self) -> str:
        """inside | within the seed spread | outside: a result over seeds that misses the range
        by at most two of its standard deviations is not told apart from one inside it."""
        if self.inside:
            return INSIDE
        if self.spread is not None and self.scale != "log" and abs(self.miss) <= 2 * self.spread:
            return WITHIN_SPREAD
        return OUTSIDE

    def text(self) -> str:
        """'inside', 'below by 0.30 points', 'above by a factor of 2.1', and for a result over
        seeds whether the miss is within two standard deviations."""
        if self.inside:
            return "inside"
        if self.scale == "log":
            return f"{self.where} by a factor of {self.miss:.2g}"
        if self.unit == PERCENT:
            text = f"{self.where} by {abs(self.miss):.2f} points"
        else:
            text = f"{self.where} by {abs(self.miss):.2g}"
        if self.spread is None:
            return text
        two_sd = f"{text}; 2 sd = {2 * self.spread:.2f}"
        if self.verdict == WITHIN_SPREAD:
            return f"outside, but within the seed spread ({two_sd})"
        return f"outside by more than two standard deviations ({two_sd})"


INSIDE, WITHIN_SPREAD, OUTSIDE = "inside", "within the seed spread", "outside"


def check(value: float, published: Published, spread: float | None = None) -> Check:
    """Whether `value` (in the entry's unit: percent for accuracies; a mean over seeds with
    standard deviation `spread`, if given) is inside the published bounds, and by how much it
    misses them."""
    low, high = published.bounds
    if low <= value <= high:
        return Check("inside", 0.0, published.unit, published.scale, spread)
    where, edge = ("below", low) if value < low else ("above", high)
    if published.scale == "log":
        miss = max(value, edge) / min(value, edge) if value > 0 and edge > 0 else math.inf
    else:
        miss = value - edge
    return Check(where, miss, published.unit, published.scale, spread)


def format_value(value: float, unit: str) -> str:
    """A number as the report prints it: percentages with 2 decimals, the rest to 3 digits."""
    if unit == PERCENT:
        return f"{value:.2f}%"
    return f"{value:.3g}" if unit == "lambda" else f"{value:.1e}"


def format_published(published: Published) -> str:
    """'52.90-54.00%', 'at most 1.5e-06', or the value alone where no range was published."""
    if published.range is None:
        return format_value(published.bounds[0], published.unit)
    low, high = published.range
    if low == 0:  # a bound, such as a largest error
        return f"at most {format_value(high, published.unit)}"
    if published.unit == PERCENT:
        return f"{low:.2f}-{high:.2f}%"
    return f"{format_value(low, published.unit)}-{format_value(high, published.unit)}"


@cache
def published_numbers() -> tuple[dict[str, Published], dict[str, PublishedTable]]:
    """The numbers and tables of the packaged published.yaml, read once."""
    text = resources.files(__package__).joinpath(PUBLISHED_FILE).read_text(encoding="utf-8")
    return parse_published(yaml.safe_load(text))


def parse_published(
    doc: Mapping[str, Any],
) -> tuple[dict[str, Published], dict[str, PublishedTable]]:
    """Entries checked here, once: a typo in the data file should fail its test, not a report."""
    numbers = {}
    for key, entry in doc["numbers"].items():
        number = Published(
            key=key,
            part=entry["part"],
            what=entry["what"],
            unit=entry["unit"],
            value=_number(entry.get("value")),
            range=_range(entry.get("range")),
            range_from=entry.get("range_from", ""),
            scale=entry.get("scale", "linear"),
            note=entry.get("note", ""),
        )
        if number.value is None and number.range is None:
            raise ValueError(f"{PUBLISHED_FILE}: {key} has neither a value nor a range")
        if number.range is not None and number.range[0] > number.range[1]:
            raise ValueError(f"{PUBLISHED_FILE}: {key} has its range upside down")
        numbers[key] = number
    tables = {
        key: PublishedTable(
            key=key,
            part=entry["part"],
            what=entry["what"],
            columns=tuple(entry["columns"]),
            rows=tuple(tuple(float(v) for v in row) for row in entry["rows"]),
        )
        for key, entry in doc.get("tables", {}).items()
    }
    return numbers, tables


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def _range(value: Sequence[Any] | None) -> tuple[float, float] | None:
    if value is None:
        return None
    low, high = value
    return float(low), float(high)
