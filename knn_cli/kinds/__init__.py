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
        return row(folder, kind.shown_as(folder), status, "", written=FIRST_WRITTEN)


__all__ = ["KINDS", "Kind", "Row", "kind_of", "summary"]
