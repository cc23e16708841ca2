"""How values are written for people, in one place: tables (Markdown, and CSV for programs),
accuracies in percent, a result over seeds as mean +- sd, durations, byte counts, a setting's
value in a table or a label, and a user's raw value in an error message, so that the terminal,
the tables of a sweep, `knn runs`, `knn compare` and the study's report all say a value the same
way."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers], *[[_cell(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        for row in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines) + "\n"


def csv_text(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(headers)
    writer.writerows(rows)
    return buffer.getvalue()


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-3 and value != 0 else f"{value:.4g}"
    return str(value)


def percent(fraction: float | None) -> str | None:
    """0.5381 as '53.81%' (None stays None: a table shows it as '-')."""
    return None if fraction is None else f"{100 * fraction:.2f}%"


def in_points(fraction: float | None) -> float | None:
    """A fraction as the percent a reader sees, rounded to 2 decimals, so that a comparison
    with a published number is about the number shown."""
    return None if fraction is None else round(100 * float(fraction), 2)


def seed_statistics(values: Sequence[float | None]) -> tuple[float, float, int] | None:
    """Mean, sample standard deviation (0 for one value) and count of the values given (None:
    a run that did not finish); None when there are none. One seed alone can be half a point
    off or more, so results over seeds are always shown with their spread."""
    numbers = [float(v) for v in values if v is not None]
    if not numbers:
        return None
    import numpy as np  # here: `knn runs` imports this module and should not load NumPy

    spread = float(np.std(numbers, ddof=1)) if len(numbers) > 1 else 0.0
    return float(np.mean(numbers)), spread, len(numbers)


def mean_and_spread(values: Sequence[float | None]) -> str:
    """Fractions over seeds as '53.81% +- 0.25' (one value alone as it is; none: '-')."""
    found = seed_statistics(values)
    if found is None:
        return "-"
    mean, spread, count = found
    if count == 1:
        return f"{100 * mean:.2f}%"
    return f"{100 * mean:.2f}% +- {100 * spread:.2f}"


def duration(seconds: float | None) -> str | None:
    """'9.4 s', '54 s', '2.5 min', '1.2 h'; None for a duration nobody measured."""
    if seconds is None or not math.isfinite(seconds):
        return None
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def byte_size(size: float) -> str:
    """A count of bytes in binary units: '512 B', '12 KB', '1.5 MB', '2.0 GB' (whole bytes and
    kilobytes, a decimal above), for memory needs and what is available."""
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(size) < 1024 or unit == "PB":
            return f"{size:.0f} {unit}" if unit in ("B", "KB") else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def setting_value(value: Any) -> str:
    """A config setting's value in a table cell, a legend or a list of changes, as YAML spells
    it and short: `true`, `null`, `0.01`, `[50,50]`, `{beta1: 0.9, eps: 1e-08}` (a number to 4
    significant digits, so that a rate made by arithmetic, 0.0031622776601683794, reads
    0.003162)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(setting_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {setting_value(v)}" for k, v in value.items()) + "}"
    return "null" if value is None else str(value)


USER_VALUE_LIMIT = 60  # characters of a user's value an error message quotes


def user_value(value: Any) -> str:
    """A value a user wrote (anything YAML can make) quoted in an error message: on one line,
    at most USER_VALUE_LIMIT characters, and never raising, whatever the value: an integer of
    thousands of digits or a list nested thousands deep (which `repr` refuses) is described
    instead of shown."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and value.bit_length() > 200:  # repr fails past 4300 digits
        return f"an integer of about {int(value.bit_length() * math.log10(2))} digits"
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # a huge integer inside, or thousands of levels deep
        return f"{value_kind(value)} too large or too deeply nested to show"
    # Cut, not made one line: repr already escapes newlines, and a user's spaces are kept.
    limit = USER_VALUE_LIMIT
    return text if len(text) <= limit else text[: limit - 3] + "..."


_KINDS = {list: "a list", tuple: "a list", dict: "a mapping", str: "a string", bool: "a boolean"}
_KINDS |= {int: "an integer", float: "a number", type(None): "null"}


def value_kind(value: Any) -> str:
    """What kind of YAML value a user gave, in words ('a list', 'a mapping', 'an integer'), for
    a message that says what was expected instead."""
    return _KINDS.get(type(value), f"a {type(value).__name__}")


def one_line(text: str, limit: int = 200) -> str:
    """`text` on one line (its whitespace runs made single spaces), cut to `limit` characters
    with an ellipsis: short enough for an error line, a table cell and a terminal."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
