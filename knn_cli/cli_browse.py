"""`knn runs` and `knn compare`: look at what earlier commands left, without training anything.

The reading is in `listing` and `compare`; here only the arguments and where output goes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import click

from knn_cli.cli_options import default_runs_dir
from knn_cli.errors import KnnError


@click.command("runs")
@click.argument("folder", metavar="[DIR]", required=False, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON, for scripts.")
def list_runs(folder: Path | None, as_json: bool) -> None:
    """List the runs, sweeps and studies under DIR, newest first.

    DIR defaults to $KNN_RUNS_DIR, else runs. A sweep or study is one line; give its folder as
    DIR to list its trials or parts. Accuracies are the final model's (for a sweep: its best
    trial's validation accuracy and the final retrain's test accuracy). A run's time is its wall
    time; a sweep's or a study's is the sum of its trials' (parts'), which with several workers
    is more than the time it took.
    """
    from knn_cli.listing import list_rows, rows_json, rows_table

    if folder is None:
        folder = Path(default_runs_dir())
        if not folder.is_dir():
            raise KnnError(f"no folder {folder} here; give a DIR, or set $KNN_RUNS_DIR")
    rows, others = list_rows(folder)
    if as_json:
        click.echo(rows_json(rows))
        return
    if rows:
        click.echo(rows_table(rows), nl=False)
    else:
        click.echo(f"no runs, sweeps or studies under {folder}")
    if others:
        click.echo(f"({len(others)} other folder{'s' * (len(others) > 1)} there not made by knn)")
        holding = holding_knn_folders(others)
        if holding:
            shown = ", ".join(str(path) for path in holding[:3])
            more = ", ..." if len(holding) > 3 else ""
            click.echo(f"(knn folders one level down: knn runs {shown}{more})")


@click.command("compare")
@click.argument(
    "folders", metavar="RUN_OR_SWEEP...", nargs=-1, required=True, type=click.Path(path_type=Path)
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the figure here (any format matplotlib writes: .png, .pdf, .svg, .jpg, ...; "
    "missing folders are made) and the table beside it (.md).  "
    "[default: compare.png and compare.md in a new folder RUNS_DIR/<stamp>_compare]",
)
@click.option(
    "--runs-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=default_runs_dir,
    show_default="$KNN_RUNS_DIR, else runs",
    help="Parent of the new folder the figure and table go to, without --out.",
)
def compare(folders: Sequence[Path], out: Path | None, runs_dir: Path) -> None:
    """Overlay the cost, loss and accuracy curves of runs in one figure, and print a table of
    the settings they differ in, their accuracies and wall times.

    A sweep folder stands for all its trials.
    """
    from knn_cli.compare import read_compared, write_comparison
    from knn_cli.runs import check_folder_can_be_made, new_run_dir

    if out is not None:
        _check_figure_format(out)
        check_folder_can_be_made(out.parent, f"--out {out}")
    if _range_tests(folders):
        from knn_cli.range_plots import compare_range_tests

        figure = out if out is not None else new_run_dir(runs_dir, "compare") / "compare.png"
        table, written = compare_range_tests(folders, figure)
        click.echo(table, nl=False)
        click.echo(f"written: {', '.join(map(str, written))}")
        return
    runs = read_compared(folders)  # bad input fails here, before any folder is made
    figure = out if out is not None else new_run_dir(runs_dir, "compare") / "compare.png"
    table, written = write_comparison(runs, figure)
    click.echo(table, nl=False)
    click.echo(f"written: {', '.join(map(str, written))}")


def _range_tests(folders: Sequence[Path]) -> bool:
    """Whether the folders are range tests (compared as such); a mix with runs is refused."""
    from knn_cli.kinds import kind_of, range_test

    kinds = [kind_of(f) is range_test.KIND if f.is_dir() else False for f in folders]
    if any(kinds) and not all(kinds):
        raise KnnError("compare range tests with range tests, and runs with runs, not a mix")
    return all(kinds)


def _check_figure_format(path: Path) -> None:
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    if path.suffix.lstrip(".").lower() not in formats:
        raise KnnError(f"--out {path}: name a figure file, e.g. ending in .png, .pdf or .svg")


def holding_knn_folders(folders: list[Path]) -> list[Path]:
    """Those of `folders` (none made by knn) that hold folders knn made (a folder of runs
    folders): where `knn runs` should look instead."""
    from knn_cli.kinds import kind_of

    return [f for f in folders if any(g.is_dir() and kind_of(g) is not None for g in f.iterdir())]
