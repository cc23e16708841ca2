"""The parsers of the config's values: each takes the dotted key (for the message) and the raw
YAML value, and returns the typed value or raises a one-line `ConfigError` that names the key,
the value given and what is allowed. The schema (`schema.py`) names one beside each option, so a
declaration reads as its type and bounds.
"""

from __future__ import annotations

import difflib
import math
import numbers
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from knn_cli.errors import ConfigError
from knn_cli.formatting import user_value

Parser = Callable[[str, Any], Any]
NAME_MAX = 100  # keeps `<timestamp>_<name>` run folders well inside file-name limits


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The choice `name` is most likely a typo of, if any: the did-you-mean of every message."""
    found = difflib.get_close_matches(name, list(choices), n=1)
    return found[0] if found else None


def invalid(key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{key} must be {allowed}, got {user_value(value)}")


def integer(low: int, *, below: int | None = None, nullable: bool = False) -> Parser:
    """An integer >= low (and < below); null too where `nullable`."""
    allowed = f"an integer >= {low}" + (f" and < {below}" if below is not None else "")
    allowed += " or null" if nullable else ""

    def parse(key: str, value: Any) -> int | None:
        if value is None and nullable:
            return None
        # bool is an int subclass, but `batch_size: true` is a mistake, not 1.
        if (
            isinstance(value, bool)
            or not isinstance(value, numbers.Integral)
            or value < low
            or (below is not None and value >= below)
        ):
            raise invalid(key, value, allowed)
        return int(value)

    return parse


def as_float(value: Any) -> float | None:
    """The value as a finite float, or None; strings count because YAML reads `1e-5` as one."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real | str):
        return None
    try:
        number = float(value)
    except (ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _infinite_or_nan(value: Any) -> bool:
    try:
        return not isinstance(value, bool) and not math.isfinite(float(value))
    except (TypeError, ValueError, OverflowError):
        return False


def number(
    low: float, *, low_open: bool = False, below: float | None = None, nullable: bool = False
) -> Parser:
    """A finite number >= low (> low where `low_open`; < below); null too where `nullable`."""
    allowed = f"a number {'>' if low_open else '>='} {low}"
    allowed += f" and < {below}" if below is not None else ""
    allowed += " or null" if nullable else ""

    def parse(key: str, value: Any) -> float | None:
        if value is None and nullable:
            return None
        parsed = as_float(value)
        if (
            parsed is None
            or parsed < low
            or (low_open and parsed == low)
            or (below is not None and parsed >= below)
        ):
            finite = " (a finite one)" if _infinite_or_nan(value) else ""
            raise invalid(key, value, allowed + finite)
        return parsed

    return parse


def choice(*options: str | Callable[[], Any]) -> Parser:
    """One of `options`; a callable option is asked at parse time, so a registry that grows
    after import (an update rule added by a user) is read as it is then."""

    def parse(key: str, value: Any) -> str:
        allowed = [o for option in options for o in (option() if callable(option) else [option])]
        if not isinstance(value, str) or value not in allowed:
            raise ConfigError(
                f"{key} must be one of: {', '.join(allowed)}; got {user_value(value)}"
            )
        return str(value)

    return parse


def boolean(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise invalid(key, value, "true or false")
    return value


def mapping_of_numbers(key: str, value: Any) -> dict[str, Any]:
    """A mapping of setting names to values, checked later by whoever declares the names (an
    update rule's settings); null is no settings."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise invalid(key, value, "a mapping of setting names to numbers, e.g. {momentum: 0.9}")
    return dict(value)


def widths(key: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, list | tuple):
        raise invalid(key, value, "a list of hidden-layer widths such as [50, 50], or []")
    width = integer(1)
    return tuple(width(f"{key}[{i}]", w) for i, w in enumerate(value))


def rate_or_rates(key: str, value: Any) -> float | tuple[float, ...]:
    rate = number(0, below=1)
    if isinstance(value, list | tuple):
        return tuple(rate(f"{key}[{i}]", v) for i, v in enumerate(value))
    if as_float(value) is None:
        raise invalid(key, value, "a rate in [0, 1) or a list of them, one per hidden layer")
    return rate(key, value)


def step_sizes_or_null(key: str, value: Any) -> tuple[float, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list | tuple) or not value:
        raise invalid(key, value, "a non-empty list of step sizes > 0, or null")
    step = number(0, low_open=True)
    return tuple(step(f"{key}[{i}]", v) for i, v in enumerate(value))


def folder_or_null(key: str, value: Any) -> str | None:
    # A NUL byte would only fail later, inside os calls, with a ValueError.
    if value is not None and (not isinstance(value, str) or not value or "\0" in value):
        raise invalid(key, value, "a folder path or null")
    return None if value is None else str(value)


_NAME_PATTERN = re.compile(rf"[A-Za-z0-9._-]{{1,{NAME_MAX}}}")


def name(key: str, value: Any) -> str:
    if not isinstance(value, str) or not _NAME_PATTERN.fullmatch(value):
        allowed = f"a name of letters, digits, '.', '_' and '-' (1 to {NAME_MAX} characters)"
        raise invalid(key, value, allowed)
    return str(value)


def name_from_stem(stem: str) -> str:
    """A valid run name from a file name: `my config.yaml` must not fail over an unwritten key."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem)[:NAME_MAX] or "run"
