"""What every command line of `knn` shares: options, the one list parser, progress, errors.

Apart from `cli.py` so that the command modules (`cli.py`, `cli_sweeps.py`) import it and not
each other.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

T = TypeVar("T", int, float)


def default_runs_dir() -> str:
    return os.environ.get("KNN_RUNS_DIR", "runs")


def progress_wanted() -> bool:
    """Progress bars on a terminal only, so logs and CI output stay clean."""
    return sys.stderr.isatty()


runs_dir_option = click.option(
    "--runs-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=default_runs_dir,
    show_default="$KNN_RUNS_DIR, else runs",
    help="Parent folder of the new run folder.",
)
dry_run_option = click.option(
    "--dry-run",
    is_flag=True,
    default=False,
    help="Print the resolved config(s), each run's steps and epochs, the memory and the time "
    "it would take on this machine, then stop (nothing is trained, no folder is made).",
)
set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config setting, e.g. --set training.lambda=0.01 (repeatable).",
)


def parse_list(
    text: str,
    kind: Callable[[str], T],
    option: str,
    *,
    valid: Callable[[T], bool],
    example: str,
    count: int | None = None,
    what: str = "values",
) -> tuple[T, ...]:
    """A comma-separated list of `kind` values, each `valid`, `count` of them if given; a
    usage error naming the option and an example otherwise."""
    try:
        values = tuple(kind(part) for part in text.split(",") if part.strip())
    except ValueError:
        values = ()
    wrong_count = count is not None and len(values) != count
    if (not values and count != 0) or wrong_count or not all(valid(v) for v in values):
        need = f"{count} " if count is not None else ""
        raise click.BadParameter(
            f"expected {need}comma-separated {what} like {example}, got {text!r}",
            param_hint=option,
        )
    return values


def with_options(*options: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Apply several click options as one decorator, in the order listed."""

    def decorate(command: Any) -> Any:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


RESUME_COMMAND = "knn_resume_command"  # in click's shared context meta


def remember_resume(command: str, folder: Path) -> None:
    """How to continue the work in `folder`, said if it is interrupted (see `KnnGroup`)."""
    click.get_current_context().meta[RESUME_COMMAND] = f"knn {command} --resume {folder}"
