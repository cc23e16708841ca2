"""A small study folder made by `knn study --quick` on the fake CIFAR-10, for the report's
tests to read, and a way to mark its parts as a half-finished study would have them."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from knn_cli.cli import cli

SEEDS = 2  # --quick's default


def build_study(root: Path, data_dir: Path) -> Path:
    """`root/<stamp>_quick-study` with every part finished; needs KNN_CACHE_DIR set by the
    caller."""
    result = CliRunner().invoke(
        cli,
        ["study", "--quick", "--workers", "1", "--set", f"data.dir={data_dir}",
         "--set", "data.validation_size=60", "--runs-dir", str(root)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (study,) = root.glob("*_quick-study")
    return study


def set_statuses(study: Path, **statuses: str) -> None:
    """Mark parts in study.json (keys with `_` for `-`: lambda_9layer="pending"), their wall
    time unknown, as a study stopped before them would have them."""
    path = study / "study.json"
    doc = json.loads(path.read_text())
    for key, status in statuses.items():
        part = doc["parts"][key.replace("_", "-")]
        part["status"] = status
        if status in ("pending", "running"):
            part["seconds"] = None
    doc["finished"] = None
    path.write_text(json.dumps(doc, indent=2) + "\n")
