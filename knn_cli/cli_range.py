"""`knn lr-range`: the learning-rate range test of a config (`knn_cli/range_test.py`)."""

from __future__ import annotations

from pathlib import Path

import click

from knn_cli.cli_options import (
    dry_run_option,
    progress_wanted,
    remember_resume,
    runs_dir_option,
    set_option,
)
from knn_cli.errors import KnnError, RunFailed
from knn_cli.locks import folder_lock


@click.command("lr-range")
@click.argument("config_path", metavar="CONFIG", required=False, type=click.Path(path_type=Path))
@set_option
@click.option("--low", type=float, default=1e-5, show_default=True, help="First rate.")
@click.option("--high", type=float, default=10.0, show_default=True, help="Last rate.")
@click.option(
    "--schedule",
    type=click.Choice(["exponential", "linear"]),
    default="exponential",
    show_default=True,
    help="Rise by equal factors over 1000 steps (as fastai), or in equal steps over 8 epochs "
    "(as Smith; its first validation point is already at --high/100).",
)
@click.option("--steps", type=int, default=None, help="Steps of the rise (default: as above).")
@click.option("--seeds", type=int, default=1, show_default=True, help="Seeds, side by side.")
@click.option(
    "--smoothing",
    type=float,
    default=0.98,
    show_default=True,
    help="Beta of the loss's moving average.",
)
@click.option(
    "--diverge-factor",
    type=float,
    default=4.0,
    show_default=True,
    help="Stop a seed once its smoothed loss passes this multiple of its lowest.",
)
@click.option("--eval-every", type=int, default=None, help="Steps between validation points.")
@click.option(
    "--grid",
    is_flag=True,
    help="Also train one run at each of 12 constant rates over the range, as long as the test.",
)
@click.option(
    "--write-config",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    metavar="OUT.yaml",
    help="Write the config with the suggested eta_min and eta_max.",
)
@click.option(
    "--resume",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    metavar="TEST_DIR",
    help="Continue an interrupted range test in its folder.",
)
@dry_run_option
@runs_dir_option
def lr_range(
    config_path: Path | None,
    overrides: tuple[str, ...],
    low: float,
    high: float,
    schedule: str,
    steps: int | None,
    seeds: int,
    smoothing: float,
    diverge_factor: float,
    eval_every: int | None,
    grid: bool,
    write_config: Path | None,
    resume: Path | None,
    dry_run: bool,
    runs_dir: Path,
) -> None:
    """Find the cyclical schedule's bounds: train CONFIG's network while the rate rises from
    --low to --high, and suggest eta_min and eta_max (Smith 2017, section 3.3).

    Writes lr_range.csv, lr_range.png and summary.json (every seed's suggestions and their
    spread) to a new folder; knn compare overlays several tests.
    """
    from knn_cli.config import dump_config, load_config
    from knn_cli.data import load_cifar10
    from knn_cli.range_test import (
        RangeSettings,
        resumable_range_test,
        run_range_test,
        suggested_config,
        write_settings,
    )
    from knn_cli.runs import CONFIG_FILE, atomic_write_text, new_run_dir

    if config_path is not None and resume is not None:
        raise click.UsageError("give a CONFIG to test or --resume TEST_DIR, not both")
    if config_path is None and resume is None:
        raise click.UsageError("give a CONFIG to test, or --resume TEST_DIR to continue a test")
    if resume is not None and dry_run:
        raise click.UsageError("--dry-run shows a new test; drop --resume")
    if resume is not None:
        given = [name for name in RANGE_OPTIONS if _given(name)]
        if given or overrides:
            shown = ", ".join(f"--{n.replace('_', '-')}" for n in given) or "--set"
            raise click.UsageError(f"--resume continues the test as it was; drop {shown}")
        settings = resumable_range_test(resume)
        config = load_config(resume / CONFIG_FILE)
    else:
        if eval_every is not None and eval_every < 1:
            raise KnnError(f"--eval-every must be at least 1, got {eval_every}")
        settings = RangeSettings(
            low=low,
            high=high,
            schedule=schedule,
            steps=steps,
            seeds=seeds,
            smoothing=smoothing,
            diverge_factor=diverge_factor,
            eval_every=eval_every,
            grid=grid,
        )
        settings.check()
        config = load_config(config_path, overrides)
    if write_config is not None and not write_config.parent.is_dir():
        raise KnnError(f"cannot write {write_config}: {write_config.parent} is not a folder")
    if dry_run:
        from knn_cli.dry_run import range_plan

        click.echo(range_plan(config, settings), nl=False)
        return
    dataset = load_cifar10(config.data.dir, config.data.validation_size, progress=progress_wanted())
    schedule_used = settings.planned(len(dataset.X_train), config.training.batch_size)
    run_dir = resume or new_run_dir(runs_dir, f"lr-range-{config.name}")
    click.echo(
        f"{'continuing' if resume else 'range test folder:'} {run_dir}\n"
        f"{config.name}: rate {schedule_used.low:g} to {schedule_used.high:g}, "
        f"{schedule_used.shape}, {schedule_used.steps} steps, {settings.seeds} seed(s)"
    )
    remember_resume("lr-range", run_dir)
    with folder_lock(run_dir):
        if resume is None:
            write_settings(run_dir, settings)
        summary = run_range_test(
            config,
            settings,
            run_dir,
            dataset,
            resume=resume is not None,
            progress=progress_wanted(),
            stop_between_steps=True,
        )
    click.echo(range_report(summary))
    click.echo(f"figure: {run_dir / 'lr_range.png'}")
    if summary["status"] != "finished":
        raise RunFailed(f"no suggestion: {summary['message']} (see {run_dir})")
    if write_config is not None:
        atomic_write_text(write_config, dump_config(suggested_config(config, summary)))
        click.echo(f"config with the suggested bounds: {write_config}")


# The options that make a test what it is: a --resume continues the test as it was started.
RANGE_OPTIONS = (
    "low", "high", "schedule", "steps", "seeds", "smoothing", "diverge_factor", "eval_every",
    "grid",
)  # fmt: skip


def _given(name: str) -> bool:
    source = click.get_current_context().get_parameter_source(name)
    return source is click.core.ParameterSource.COMMANDLINE


def range_report(summary: dict) -> str:
    """The suggestions as a few lines: each seed's, then over seeds with their spread."""
    lines = []
    for seed in summary["seeds"]:
        stop = (
            f"diverged at {seed['diverged_eta']:.3g} (step {seed['diverged_step']})"
            if seed["diverged_step"] is not None
            else "did not diverge"
        )
        if "suggestions" in seed:
            s = seed["suggestions"]
            steepest = "-" if s["steepest"] is None else f"{s['steepest']:.3g}"
            lines.append(
                f"seed {seed['seed']}: eta_min {s['eta_min']:.3g}, eta_max {s['eta_max']:.3g}; "
                f"steepest descent at {steepest}, lowest loss at {s['lowest_loss']:.3g}; "
                f"peak val accuracy (smoothed) {s['peak_accuracy']:.2%}, {collapse_text(s)}; "
                f"loss {stop}"
            )
        else:
            lines.append(f"seed {seed['seed']}: no suggestion: {seed['error']}")
    suggested = summary.get("suggested") or {}
    if suggested and len(summary["seeds"]) > 1:
        seeds = len(summary["seeds"])
        parts = [
            f"{key} {value['value']:.3g} ({value['low']:.3g} to {value['high']:.3g}"
            + (
                f", {value['seeds']} of {seeds} seeds)"
                if value.get("seeds", seeds) < seeds
                else ")"
            )
            for key, value in suggested.items()
            if value["value"] is not None
        ]
        lines.append("over seeds (geometric mean, lowest to highest): " + ", ".join(parts))
    if suggested:
        lines.append(
            f"suggested bounds: eta_min {suggested['eta_min']['value']:.3g}, "
            f"eta_max {suggested['eta_max']['value']:.3g} (config: "
            f"{summary['config_bounds']['eta_min']:g} to {summary['config_bounds']['eta_max']:g})"
        )
        floor = first_point_floor(summary.get("schedule") or {}, suggested["eta_min"]["value"])
        if floor is not None:
            lines.append(floor)
    for point in summary.get("grid", []):
        accuracy = point["final_val_accuracy"]
        shown = "diverged" if accuracy is None else f"{accuracy:.2%}"
        lines.append(f"  constant rate {point['eta']:.3g}: final val accuracy {shown}")
    return "\n".join(lines)


def first_point_floor(schedule: dict, eta_min: float) -> str | None:
    """A caveat where a linear rise's eta_min is its first validation points' rate: the test
    saw nothing below about --high/100, so the real bound may lie lower."""
    from knn_cli.lr_range import LINEAR, RangeSchedule

    if schedule.get("shape") != LINEAR:
        return None
    rise = RangeSchedule(schedule["low"], schedule["high"], schedule["steps"], LINEAR)
    first = rise.rate(schedule["eval_every"])
    if eta_min > 2 * first:
        return None
    return (
        f"note: a linear rise measures its first validation point at rate {first:.3g}, so "
        f"eta_min {eta_min:.3g} may lie lower; the exponential schedule (the default) sees it"
    )


def collapse_text(suggestions: dict) -> str:
    if suggestions["collapse"] is None:
        return "no collapse of its accuracy before the test ended"
    learns, collapse = suggestions["still_learns"], suggestions["collapse"]
    return f"learns up to {learns:.3g}, collapses at {collapse:.3g}"
