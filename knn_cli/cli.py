"""The `knn` command line: parse, load a config, call one experiment, turn known errors into a
one-line message and an exit code. No arithmetic and no file formats here.

Exit codes: 0 success; 1 a run failed (diverged) or a check failed; 2 bad usage or input;
130 interrupted (Ctrl-C, SIGTERM or SIGHUP), after saving what was computed.
"""

from __future__ import annotations

import errno
import signal
from pathlib import Path
from typing import Any, NoReturn

import click

from knn_cli import __version__
from knn_cli.cli_browse import compare, list_runs
from knn_cli.cli_options import (
    RESUME_COMMAND,
    dry_run_option,
    parse_list,
    progress_wanted,
    remember_resume,
    runs_dir_option,
    set_option,
)
from knn_cli.cli_range import lr_range
from knn_cli.cli_study import report, study
from knn_cli.cli_sweeps import init_sensitivity, lambda_search, sweep
from knn_cli.data.cifar10 import BATCH_IMAGES, N_FEATURES
from knn_cli.errors import KnnError, RunFailed
from knn_cli.interrupts import STOP_SIGNALS
from knn_cli.locks import folder_lock

EXIT_INTERRUPTED = 130
# Failures of the disk rather than of the code: reported in one line, not as a traceback.
DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


class UserFacingError(click.ClickException):
    """A known error shown as one line (`error: ...`) with the exit code its kind calls for."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class KnnGroup(click.Group):
    """Turns the project's own errors and interrupts into messages and exit codes, in one place,
    so that click's test runner sees exactly what a user would."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KnnError as error:
            raise UserFacingError(str(error), error.exit_code) from None
        except KeyboardInterrupt:
            resume = ctx.meta.get(RESUME_COMMAND)
            again = f"; continue with: {resume}" if resume else ""
            raise UserFacingError(
                f"interrupted; what was computed so far is saved{again}", EXIT_INTERRUPTED
            ) from None
        except MemoryError as error:  # a size no estimate caught (train and sweeps check first)
            raise UserFacingError(
                f"not enough memory: {str(error) or 'an allocation failed'}; make the network "
                "or the batch smaller",
                2,
            ) from None
        except OSError as error:
            if error.errno not in DISK_ERRORS:
                raise
            where = f" {error.filename}" if error.filename else ""
            # A permission error may come from reading (`knn runs` on a folder it cannot open).
            verb = "cannot use" if error.errno in (errno.EACCES, errno.EPERM) else "cannot write"
            raise UserFacingError(
                f"{verb}{where}: {error.strerror}; what was written before is intact", 1
            ) from None


@click.group(cls=KnnGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="knn")
def cli() -> None:
    """Train and study k-layer networks with and without batch normalization on CIFAR-10."""


@cli.command()
@click.argument("config_path", metavar="CONFIG", required=False, type=click.Path(path_type=Path))
@set_option
@runs_dir_option
@click.option(
    "--resume",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    metavar="RUN_DIR",
    help="Continue an interrupted run in its folder, from its last checkpoint.",
)
@dry_run_option
def train(
    config_path: Path | None,
    overrides: tuple[str, ...],
    runs_dir: Path,
    resume: Path | None,
    dry_run: bool,
) -> None:
    """Train the network CONFIG describes; write curves, metrics and the model to a run folder.

    With --resume RUN_DIR, continue that run instead (its config as saved) to the numbers it
    would have reached uninterrupted. With --dry-run, print the resolved config (a config file
    that trains the same run) and the run's plan, and stop.
    """
    from knn_cli.config import load_config
    from knn_cli.data import load_cifar10
    from knn_cli.experiment import resumable, train_run
    from knn_cli.memory import check_memory
    from knn_cli.runs import CONFIG_FILE, new_run_dir

    if config_path is not None and resume is not None:
        raise click.UsageError("give a CONFIG to train or --resume RUN_DIR, not both")
    if config_path is None and resume is None:
        raise click.UsageError("give a CONFIG to train, or --resume RUN_DIR to continue a run")
    if resume is not None and overrides:
        raise click.UsageError("--resume continues the run as configured; drop --set")
    if resume is not None and dry_run:
        raise click.UsageError("--dry-run shows a new run; drop --resume")
    if resume is not None:
        resumable(resume)  # fail now, before loading the data
    config = load_config(resume / CONFIG_FILE if resume else config_path, overrides)
    check_memory(config)  # an impossible size stops here, before the data is loaded
    if dry_run:
        from knn_cli.dry_run import train_plan

        click.echo(train_plan(config), nl=False)
        return
    # The data first: a missing data folder should not leave an empty run folder behind.
    dataset = load_cifar10(config.data.dir, config.data.validation_size, progress=progress_wanted())
    run_dir = resume or new_run_dir(runs_dir, config.name)
    click.echo(f"{'continuing' if resume else 'run folder:'} {run_dir}")
    remember_resume("train", run_dir)
    with folder_lock(run_dir):  # a second --resume of a run still training must not join it
        if resume is not None:
            resumable(resume)  # again: it may have finished while this process loaded the data
        summary = train_run(
            config,
            run_dir,
            dataset=dataset,
            progress=progress_wanted(),
            stop_between_steps=True,
            resume=resume is not None,
        )
    if summary["status"] != "finished":
        raise RunFailed(f"run {summary['status']}: {summary['message']} (see {run_dir})")
    ensemble = summary.get("test_accuracy_snapshot_ensemble")
    if ensemble is not None:
        click.echo(f"snapshot ensemble of the last cycles' networks: test accuracy {ensemble:.2%}")
    click.echo(
        f"test accuracy {summary['test_accuracy']:.2%}, final validation accuracy "
        f"{summary['final_val_accuracy']:.2%} (best {summary['best_val_accuracy']:.2%}) "
        f"in {summary['wall_seconds']:.1f} s"
    )


@cli.command(name="config")
@click.argument("config_path", metavar="CONFIG", required=False, type=click.Path(path_type=Path))
@set_option
def show_config(config_path: Path | None, overrides: tuple[str, ...]) -> None:
    """Print every config key with its value and what it does: CONFIG's with the --set
    overrides, else the defaults. The output is a config file that loads back to the same."""
    from knn_cli.config import commented_yaml, load_config

    click.echo(commented_yaml(load_config(config_path, overrides)), nl=False)


@cli.command()
@click.option(
    "--layers",
    "-k",
    type=click.IntRange(1, 50),
    default=3,
    show_default=True,
    help="Number of weight layers k.",
)
@click.option(
    "--hidden",
    default=None,
    metavar="W1,W2,...",
    help="Hidden widths (k-1 of them). Default: the assignment's for k=3 and 9, else 50s.",
)
@click.option(
    "--bn/--no-bn",
    "batch_norm",
    default=None,
    help="Check only with (or only without) batch norm. Default: both.",
)
@click.option(
    "--bn-position",
    type=click.Choice(["before_relu", "after_relu", "both"]),
    default="before_relu",
    show_default=True,
    help="Where batch norm sits, before or after the ReLU (or check both).",
)
@click.option(
    "--dims",
    type=click.IntRange(1, N_FEATURES),
    default=20,
    show_default=True,
    help="Input features used (the first ones of each image).",
)
@click.option(
    "--batch",
    type=click.IntRange(2, BATCH_IMAGES),  # the check reads one batch file
    default=20,
    show_default=True,
    help="Samples in the batch.",
)
@click.option("--lambda", "lambda_", type=click.FloatRange(min=0), default=0.005, show_default=True)
@click.option(
    "--step",
    "h",
    type=click.FloatRange(min=0, min_open=True),
    default=1e-5,
    show_default=True,
    help="Centred-difference step h.",
)
@click.option(
    "--tolerance",
    type=click.FloatRange(min=0, min_open=True),
    default=1e-6,
    show_default=True,
    help="Largest relative error that passes.",
)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option(
    "--data-dir", default=None, help="CIFAR-10 folder (default: $KNN_DATA_DIR or the cache)."
)
@runs_dir_option
def gradcheck(
    layers: int,
    hidden: str | None,
    batch_norm: bool | None,
    bn_position: str,
    dims: int,
    batch: int,
    lambda_: float,
    h: float,
    tolerance: float,
    seed: int,
    data_dir: str | None,
    runs_dir: Path,
) -> None:
    """Compare analytic and centred-difference gradients (float64) for every parameter."""
    from knn_cli.gradcheck_run import (
        GradcheckSettings,
        gradcheck_problem,
        gradcheck_table,
        run_gradcheck,
    )
    from knn_cli.memory import check_gradcheck_size
    from knn_cli.runs import new_run_dir

    widths = None
    if hidden is not None:
        example = ",".join(["50"] * (layers - 1)) or "''"
        widths = parse_list(
            hidden,
            int,
            "--hidden",
            valid=lambda w: w >= 1,
            example=example,
            count=layers - 1,
            what="widths >= 1",
        )
    settings = GradcheckSettings(
        layers=layers,
        hidden=widths,
        batch_norm=batch_norm,
        bn_position=bn_position,
        dims=dims,
        batch=batch,
        lambda_=lambda_,
        h=h,
        tolerance=tolerance,
        seed=seed,
        data_dir=data_dir,
    )
    check_gradcheck_size((dims, *settings.widths, 10))
    problem = gradcheck_problem(settings)  # a data folder named and wrong fails now
    run_dir = new_run_dir(runs_dir, f"gradcheck-k{layers}")  # an unwritable folder fails now
    click.echo(
        f"k={layers}, hidden {list(settings.widths)}, {batch} samples x {dims} features of "
        f"{problem.source}"
    )

    def show(check: Any) -> None:
        click.echo(
            f"{check.label}: nearest ReLU kink {check.margin:.1e} away; textbook layers: "
            f"worst relative error {check.textbook_worst:.1e} "
            f"({'pass' if check.textbook_passed else 'FAIL'})"
        )

    run = run_gradcheck(settings, run_dir, problem, on_check=show)
    click.echo(gradcheck_table(run.checks))
    click.echo(f"table written to {run_dir}")
    if run.failures:
        raise RunFailed(f"gradient check failed for: {', '.join(run.failures)}")
    click.echo("all gradients match")


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
def plot(run_dir: Path) -> None:
    """Redraw a run's cost, loss and accuracy plots from its metrics file (a range test's
    lr_range.png from its lr_range.csv)."""
    from knn_cli.kinds import kind_of, range_test
    from knn_cli.plots import plot_run

    if run_dir.is_dir() and kind_of(run_dir) is range_test.KIND:
        from knn_cli.range_plots import plot_range_test

        click.echo(str(plot_range_test(run_dir)))
        return
    for path in plot_run(run_dir):
        click.echo(str(path))


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
def evaluate(run_dir: Path) -> None:
    """Reload a run's model and print its test accuracy."""
    from knn_cli.experiment import evaluate_run

    click.echo(f"test accuracy {evaluate_run(run_dir, progress=progress_wanted()):.2%}")


def _raise_keyboard_interrupt(signum: int, frame: Any) -> NoReturn:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    """Entry point: SIGTERM and SIGHUP (a closed terminal) are treated like Ctrl-C, so all three
    save what was computed."""
    for number in STOP_SIGNALS[1:]:
        signal.signal(number, _raise_keyboard_interrupt)
    cli.main(args=argv, prog_name="knn")


cli.add_command(lambda_search)
cli.add_command(lr_range)
cli.add_command(init_sensitivity)
cli.add_command(sweep)
cli.add_command(study)
cli.add_command(report)
cli.add_command(list_runs)
cli.add_command(compare)
