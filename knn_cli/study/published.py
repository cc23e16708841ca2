"""The published numbers (published.yaml, shipped with the package), who published them, and how
a result of ours compares with them.

A result is judged against the range of the public solutions that follow the study's protocol,
where at least two do, and else against the study's own value: a single number is a range of
one point, so "inside" then means "equal", and the miss says how far off we are. The range of
every solution that reports the number, protocols differing, is shown beside it, never judged
against.
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
class Source:
    """Who published numbers we compare with: the study, or a public solution (by number)."""

    key: str
    who: str
    file: str
    differs: str  # where its protocol differs from the default one


@dataclass(frozen=True)
class Published:
    """One published number: the study's own `value`, the `range` of the solutions that follow
    the protocol (at least two) and which (`range_from`), the `wider` range of every solution
    reporting it and which, and which part of the study it belongs to."""

    key: str
    part: str
    what: str
    unit: str
    value: float | None
    range: tuple[float, float] | None = None
    range_from: tuple[str, ...] = ()
    wider: tuple[float, float] | None = None
    wider_from: tuple[str, ...] = ()
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
    return format_range(low, high, published.unit)


def format_range(low: float, high: float, unit: str) -> str:
    """'52.90-54.00%', '0.0041-0.0093'; one number where low and high are one."""
    if low == high:
        return format_value(low, unit)
    if unit == PERCENT:
        return f"{low:.2f}-{high:.2f}%"
    return f"{format_value(low, unit)}-{format_value(high, unit)}"


@cache
def published_numbers() -> tuple[dict[str, Published], dict[str, PublishedTable]]:
    """The numbers and tables of the packaged published.yaml, read once."""
    return parse_published(_document())


@cache
def published_sources() -> dict[str, Source]:
    """Who published the numbers, by key, in the file's order."""
    return parse_sources(_document())


def _document() -> Any:
    text = resources.files(__package__).joinpath(PUBLISHED_FILE).read_text(encoding="utf-8")
    return yaml.safe_load(text)


def parse_sources(doc: Mapping[str, Any]) -> dict[str, Source]:
    return {
        str(key): Source(str(key), entry["who"], entry["file"], entry["differs"])
        for key, entry in doc["sources"].items()
    }


def parse_published(
    doc: Mapping[str, Any],
) -> tuple[dict[str, Published], dict[str, PublishedTable]]:
    """Entries checked here, once: a typo in the data file should fail its test, not a report."""
    sources = parse_sources(doc)
    numbers = {}
    for key, entry in doc["numbers"].items():
        number = Published(
            key=key,
            part=entry["part"],
            what=entry["what"],
            unit=entry["unit"],
            value=_number(entry.get("value")),
            range=_range(entry.get("range")),
            range_from=tuple(str(s) for s in entry.get("range_from", ())),
            wider=_range(entry.get("wider")),
            wider_from=tuple(str(s) for s in entry.get("wider_from", ())),
            scale=entry.get("scale", "linear"),
            note=entry.get("note", ""),
        )
        if number.value is None and number.range is None:
            raise ValueError(f"{PUBLISHED_FILE}: {key} has neither a value nor a range")
        for bounds in (number.range, number.wider):
            if bounds is not None and bounds[0] > bounds[1]:
                raise ValueError(f"{PUBLISHED_FILE}: {key} has a range upside down")
        if (number.range is None) != (not number.range_from) or (
            (number.wider is None) != (not number.wider_from)
        ):
            raise ValueError(
                f"{PUBLISHED_FILE}: {key}: a range needs its sources, and sources a range"
            )
        if (
            number.range is not None
            and len(number.range_from) < 2
            and number.range_from != ("study",)
        ):
            raise ValueError(
                f"{PUBLISHED_FILE}: {key}: a range needs two sources that follow the protocol"
            )
        unknown = set(number.range_from + number.wider_from) - set(sources)
        if unknown:
            raise ValueError(f"{PUBLISHED_FILE}: {key} cites unknown sources {sorted(unknown)}")
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
