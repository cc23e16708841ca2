"""Tables: markdown for people, CSV for programs, written atomically into a run folder."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from knn_cli.gradcheck import GradientComparison
from knn_cli.runs import SUMMARY_FILE, atomic_write_json, atomic_write_text


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


GRADCHECK_HEADERS = (
    "variant",
    "parameter",
    "shape",
    "max abs error",
    "max rel error",
    "judged by",
    "result",
)


def _gradcheck_rows(results: Mapping[str, Sequence[GradientComparison]]) -> list[list[Any]]:
    return [
        [
            variant,
            row.name,
            "x".join(map(str, row.shape)),
            f"{row.max_abs_error:.2e}",
            f"{row.max_rel_error:.2e}",
            row.judged_by,
            "pass" if row.passed else "FAIL",
        ]
        for variant, rows in results.items()
        for row in rows
    ]


def gradcheck_table(results: Mapping[str, Sequence[GradientComparison]]) -> str:
    return markdown_table(GRADCHECK_HEADERS, _gradcheck_rows(results))


def write_gradcheck(
    run_dir: Path, results: Mapping[str, Sequence[GradientComparison]], settings: Mapping[str, Any]
) -> None:
    rows = _gradcheck_rows(results)
    atomic_write_text(run_dir / "gradcheck.md", markdown_table(GRADCHECK_HEADERS, rows))
    atomic_write_text(run_dir / "gradcheck.csv", csv_text(GRADCHECK_HEADERS, rows))
    passed = all(row.passed for rows in results.values() for row in rows)
    atomic_write_json(
        run_dir / SUMMARY_FILE,
        {"command": "gradcheck", "status": "passed" if passed else "failed", **settings},
    )
