"""`knn report` (and, beside it, `knn study`): the study as one folder and one document."""

from __future__ import annotations

import time
from pathlib import Path

import click

from knn_cli.cli_options import progress_wanted, remember_resume, runs_dir_option, set_option
from knn_cli.cli_sweeps import executor_for, executor_options, populations_for
from knn_cli.errors import RunFailed


def population_sizes(stages: list[list[list[object]]]) -> str:
    """', trained as populations of 5 and 5, then 2 and 1' ('' where each run trains alone)."""
    sizes = [[len(population) for population in stage] for stage in stages]
    if all(size == 1 for stage in sizes for size in stage):
        return ""
    said = [" and ".join(str(size) for size in stage) for stage in sizes if stage]
    return ", trained as populations of " + ", then ".join(said)


@click.command("report")
@click.argument("study_dir", type=click.Path(path_type=Path))
def report(study_dir: Path) -> None:
    """Write STUDY_DIR/report.md and a self-contained report.html: each part of the study with
    its figures and tables, every number beside the published one.

    Works on a study still running or stopped half-way: the parts not run are marked so.
    """
    from knn_cli.study.report import write_report

    for path in write_report(study_dir):
        click.echo(str(path))


@click.command("study")
@set_option
@click.option(
    "--seeds",
    type=click.IntRange(min=1),
    default=None,
    help="Seeds of each config and of the final retrains [3; 2 with --quick].",
)
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Study seed [0].")
@click.option(
    "--quick",
    is_flag=True,
    default=False,
    help="The same study at a small size (short schedules, few trials): a first look in about "
    "a minute; its numbers are not the study's.",
)
@executor_options
@click.option(
    "--dry-run",
    is_flag=True,
    default=False,
    help="Print the plan: each part, its runs and its time on this machine, then stop "
    "(nothing is trained, no folder is made).",
)
@runs_dir_option
def study(
    overrides: tuple[str, ...],
    seeds: int | None,
    seed: int | None,
    quick: bool,
    workers: int | None,
    scheduler: str | None,
    population: str,
    resume: Path | None,
    dry_run: bool,
    runs_dir: Path,
) -> None:
    """The whole study: gradient check, the four configs, the lambda search, the init grid;
    then report.md and report.html beside the published numbers."""
    from knn_cli.formatting import duration
    from knn_cli.kinds.study import read_study_file
    from knn_cli.locks import folder_lock
    from knn_cli.study.folder import start_study, study_settings
    from knn_cli.study.plan import estimate_plan, plan_study
    from knn_cli.study.progress import StudyBar
    from knn_cli.study.report import write_report
    from knn_cli.study.runner import run_study, study_data
    from knn_cli.study.settings import StudySettings, check_overrides

    executor = executor_for(workers, scheduler)
    populations = populations_for(population)
    if resume is not None:
        asked = {"--set": overrides, "--seeds": seeds, "--seed": seed, "--quick": quick}
        given = [name for name, value in {**asked, "--dry-run": dry_run}.items() if value]
        if given:
            raise click.UsageError(
                f"--resume takes the settings from the study folder; drop {', '.join(given)}"
            )
        settings = study_settings(read_study_file(resume))
    else:
        settings = StudySettings(
            quick=quick,
            seeds=seeds or (2 if quick else 3),
            seed=seed or 0,
            overrides=tuple(overrides),
        )
        check_overrides(settings)
    images, features, data = study_data(settings)  # the data first: a missing one fails here
    parts = plan_study(settings, images)
    workers = max(1, executor.workers or 1)
    together = not executor.in_process  # as run_study runs the parts
    estimates, total = estimate_plan(
        parts, workers, features, together=together, population=populations
    )
    quick_kind = "quick study (small sizes: its numbers are not the study's)"
    kind = quick_kind if settings.quick else "study"

    def show_plan() -> None:
        for number, part in enumerate(parts, start=1):
            grouped = population_sizes(part.populations(populations, workers))
            click.echo(
                f"  {number}. {part.name}: {part.description}{grouped} "
                f"(about {duration(estimates[part.name])})"
            )
        how = "the parts together" if together else "one part after another"
        click.echo(
            f"  about {duration(total)} in all on this machine ({executor.workers or 'Dask'} "
            f"workers, {how})"
        )

    if dry_run:
        click.echo(f"{kind}, as planned (nothing was trained and no folder was made):")
        show_plan()
        return
    study_dir = resume or start_study(runs_dir, settings, data)
    with folder_lock(study_dir):
        click.echo(f"{kind}: {study_dir}")
        remember_resume("study", study_dir)
        show_plan()
        started = time.perf_counter()
        planned = sum(len(part.runs) for part in parts)
        # One bar for the whole study (quiet off a terminal); the parts' own bars stay off.
        with StudyBar(study_dir, planned, total, enabled=progress_wanted()) as bar:
            doc = run_study(study_dir, executor, say=bar.say, population=populations)
        elapsed = time.perf_counter() - started
        markdown, html = write_report(study_dir)  # an interrupted study reports when resumed
        click.echo(f"report: {markdown}, {html}")
    failed = [name for name, part in doc["parts"].items() if part["status"] != "finished"]
    seconds = sum(part["seconds"] or 0 for part in doc["parts"].values())
    # Parts run side by side overlap, so their own times add up to more than the wall time.
    click.echo(
        f"this session took {duration(elapsed)}; the parts' own times, with any earlier "
        f"session's, add up to {duration(seconds)}"
    )
    if failed:
        raise RunFailed(f"parts that did not finish: {', '.join(failed)} (see {study_dir})")
