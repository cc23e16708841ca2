"""What kind of folder knn left -- a study, a sweep, a gradient check, a learning-rate range
test or a training run -- each described by a module of its own here: the file that marks it,
how to recognise it, how to read its records, and its row in `knn runs`. `listing`, `compare`
and the report ask these modules rather than knowing the folders themselves.

Every module here is light (json and the standard library; the sweep machinery only when a
sweep's trials are read): `knn runs` reads many folders and must start at once. The modules that
write the folders (`runs`, `gradcheck_run`, `range_test`, `sweeps.folder`, `study.folder`) take
their file names and readers from here, so each is said once.
"""

from __future__ import annotations

from pathlib import Path

from knn_cli.errors import KnnError, RunFolderError
from knn_cli.kinds import gradcheck, range_test, run, study, sweep
from knn_cli.kinds.base import Kind, Row, row

# In the order a folder is asked: a gradient check and a range test leave a run's files too
# (summary.json, config.yaml), so they are asked before a run is assumed.
KINDS = (study.KIND, sweep.KIND, gradcheck.KIND, range_test.KIND, run.KIND)
# An unreadable folder's start, where its name has no stamp: when the first of these was written.
FIRST_WRITTEN = (run.CONFIG_FILE, sweep.SWEEP_FILE, run.METRICS_FILE, run.SUMMARY_FILE)


def kind_of(folder: Path) -> Kind | None:
    """The kind of `folder`, or None for a folder knn did not make."""
    return next((kind for kind in KINDS if kind.recognise(folder)), None)


def summary(folder: Path) -> Row:
    """The folder's row; a folder whose files cannot be read still gets one, the reason as its
    status, so that one damaged folder does not hide the others."""
    kind = kind_of(folder)
    if kind is None:
        raise RunFolderError(f"{folder} is not a run, sweep or study folder")
    try:
        return kind.summary(folder)
    except KnnError as error:
        status = f"unreadable: {error}"
    # A file of the right name but not the shape this version writes (edited, cut short).
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        status = f"unreadable: {type(error).__name__}: {error}"
    return row(folder, kind.shown_as(folder), status, "", written=FIRST_WRITTEN)


# Files that mark a folder as derived from runs rather than an experiment: `knn compare`'s.
DERIVED_MARKERS = ("compare.md",)


def rows_in(folder: Path) -> tuple[list[Row], list[Path]]:
    """What `knn runs FOLDER` lists, and the folders there knn did not make: the folder's
    contents where its kind says them (a study's parts), its own row where it holds no folders
    (a run, a gradient check, a range test), else a row for each folder under it knn made (a
    runs folder, a sweep's trials)."""
    kind = kind_of(folder)
    if kind is not None and kind.contents is not None:
        return kind.contents(folder), []
    if kind is not None and not kind.holds_folders:
        return [summary(folder)], []
    rows: list[Row] = []
    others: list[Path] = []
    for child in sorted(folder.iterdir()):
        if not child.is_dir() or child.name.startswith("."):
            continue
        if kind_of(child) is not None:
            rows.append(summary(child))
        elif not any((child / name).is_file() for name in DERIVED_MARKERS):
            others.append(child)
    return rows, others


def curves_of(folder: Path) -> list[Path]:
    """The run folders whose training curves `knn compare` draws for `folder`."""
    kind = kind_of(folder) if folder.is_dir() else None
    if kind is None:
        raise RunFolderError(f"{folder} is not a run, sweep or study folder")
    if kind.curves is None:
        raise RunFolderError(f"{folder} {kind.no_curves.format(folder=folder)}")
    return kind.curves(folder)


__all__ = ["KINDS", "Kind", "Row", "curves_of", "kind_of", "rows_in", "summary"]
