"""`knn lambda-search` and `knn init-sensitivity`: parse, plan, hand to `sweeps`, print the table.

With `--resume SWEEP_DIR` the plan comes from the sweep folder's `sweep.json`; only the executor
(`--workers`, `--scheduler`) may be chosen anew, so a resumed sweep cannot silently become a
different one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from knn_cli.cli_options import (
    dry_run_option,
    parse_list,
    progress_wanted,
    remember_resume,
    runs_dir_option,
    set_option,
    with_options,
)

DEFAULT_SEARCH_CONFIG = Path("configs/3layer_bn.yaml")
EXECUTOR_OPTIONS = ("workers", "scheduler", "population", "resume", "runs_dir")


executor_options = with_options(
    click.option(
        "--workers",
        type=click.IntRange(min=1),
        default=None,
        help="Local worker processes (default: one per core; 1 runs trials in this process).",
    ),
    click.option(
        "--scheduler",
        metavar="tcp://HOST:PORT",
        default=None,
        help="Run the trials on this Dask distributed scheduler instead (pip install -e "
        "'.[dask]' in the checkout).",
    ),
    click.option(
        "--population",
        metavar="auto|off|N",
        default="auto",
        show_default=True,
        help="Train the runs that differ only in seed, lambda, rates or init side by side, one "
        "step for all (each still its own run, with the numbers it gets alone): auto groups "
        "as many as fit, off trains each alone, N at most N together.",
    ),
    click.option(
        "--resume",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Continue an interrupted folder this command made, skipping what finished.",
    ),
)


def resumed_sweep(resume: Path, kind: str) -> Any:
    """The sweep folder's recorded plan, refusing plan options given with --resume: a changed
    --trials would be silently ignored."""
    from knn_cli.sweeps.folder import load_sweep_of_kind

    ctx = click.get_current_context()
    given = [
        f"--{name.replace('_', '-')}"
        for name, value in ctx.params.items()
        if name not in EXECUTOR_OPTIONS
        and ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT
        and value is not None
    ]
    if given:
        raise click.UsageError(
            f"--resume takes the plan from the sweep folder; drop {', '.join(given)}"
        )
    return load_sweep_of_kind(resume, kind)


def executor_for(workers: int | None, scheduler: str | None) -> Any:
    from knn_cli.executors import make_executor

    if workers is not None and scheduler:
        raise click.UsageError("choose --workers or --scheduler, not both")
    executor = make_executor(workers, scheduler)
    executor.check()  # before a sweep folder is made for it
    return executor


def populations_for(text: str) -> Any:
    """--population as the sweeps take it; a usage error naming the option otherwise."""
    from knn_cli.errors import ConfigError
    from knn_cli.sweeps.populations import Populations

    try:
        return Populations.parse(text)
    except ConfigError as error:
        raise click.BadParameter(
            str(error).removeprefix("--population "), param_hint="--population"
        ) from None


def _search_base(config_path: Path | None, overrides: Sequence[str]) -> dict[str, Any]:
    """The base config: the given file, else the study's 3-layer BN config (its built-in defaults
    when run outside the repository)."""
    from knn_cli.config import config_from_dict, config_to_dict, load_config
    from knn_cli.memory import check_memory

    if config_path is None and DEFAULT_SEARCH_CONFIG.is_file():
        config_path = DEFAULT_SEARCH_CONFIG
    if config_path is None:
        config = config_from_dict({"name": "3layer_bn"}, overrides)
    else:
        config = load_config(config_path, overrides)
    check_memory(config)  # before a sweep folder is made, not in every trial
    return config_to_dict(config)


@click.command("lambda-search")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=f"Base config (default: {DEFAULT_SEARCH_CONFIG}).",
)
@set_option
@click.option("--coarse", is_flag=True, default=None, help="Search a wide log-uniform range.")
@click.option("--fine", is_flag=True, default=None, help="Search around the best coarse trials.")
@click.option(
    "--from",
    "source",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="With --fine alone: refine this earlier coarse sweep (with its --cycles and --n-s "
    "unless given).",
)
@click.option(
    "--range",
    "log_range",
    type=(float, float),
    default=None,
    metavar="LO HI",
    help="Coarse range of log10(lambda).  [default: -5 -1]",
)
@click.option("--trials", type=click.IntRange(min=1), default=None, help="Trials per stage [10].")
@click.option("--cycles", type=click.IntRange(min=1), default=None, help="Search cycles [2].")
@click.option(
    "--n-s",
    type=click.IntRange(min=1),
    default=None,
    help="Search steps per half cycle [the config's: 5 epochs, 2250 on CIFAR-10].",
)
@click.option("--final", is_flag=True, default=None, help="Retrain the best lambda and test it.")
@click.option(
    "--final-cycles",
    type=click.IntRange(min=1),
    default=None,
    help="Cycles of the final retrain [3].",
)
@click.option(
    "--final-seeds",
    type=click.IntRange(min=1),
    default=None,
    help="Retrain the best lambda this many times, seeds apart; report mean and spread [3].",
)
@click.option(
    "--final-validation-size",
    type=click.IntRange(min=1),
    default=None,
    help="Images the final retrain holds out for validation; it trains on the rest "
    "[1000, or the config's hold-out if smaller].",
)
@click.option(
    "--final-n-s",
    type=click.IntRange(min=1),
    default=None,
    help="Steps per half cycle of the final retrain, to shorten it for a quick try [the config's].",
)
@click.option(
    "--choose",
    type=click.Choice(["best", "fit"]),
    default=None,
    help="What --final retrains: the best trial's lambda (the study's protocol), or the peak of "
    "a fit of validation accuracy against log10 lambda through the trials near it [best].",
)
@click.option(
    "--stratified",
    is_flag=True,
    default=None,
    help="Draw the coarse trials one in each of --trials equal parts of the range, so that few "
    "draws cannot bunch together [uniform draws, as the study].",
)
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Sweep seed [0].")
@executor_options
@dry_run_option
@runs_dir_option
def lambda_search(
    config_path: Path | None,
    overrides: tuple[str, ...],
    coarse: bool | None,
    fine: bool | None,
    source: Path | None,
    log_range: tuple[float, float] | None,
    trials: int | None,
    cycles: int | None,
    n_s: int | None,
    final: bool | None,
    final_cycles: int | None,
    final_seeds: int | None,
    final_validation_size: int | None,
    final_n_s: int | None,
    choose: str | None,
    stratified: bool | None,
    seed: int | None,
    workers: int | None,
    scheduler: str | None,
    population: str,
    resume: Path | None,
    dry_run: bool,
    runs_dir: Path,
) -> None:
    """Coarse-to-fine random search for lambda on validation accuracy, each trial a run."""
    from knn_cli.sweeps.folder import load_sweep_of_kind
    from knn_cli.sweeps.lambda_search import run_lambda_search
    from knn_cli.sweeps.plan import LAMBDA_SEARCH, LambdaSearchSpec
    from knn_cli.sweeps.tables import lambda_table

    running = running_for(workers, scheduler, population)
    if resume is not None:
        spec, sweep_dir = resumed_sweep(resume, LAMBDA_SEARCH), resume
    else:
        if not coarse and not fine:
            raise click.UsageError("choose --coarse, --fine (with --from), or both")
        if fine and not coarse and source is None:
            raise click.UsageError("--fine alone needs --from SWEEP_DIR (an earlier coarse sweep)")
        if coarse and source is not None:
            raise click.UsageError("--from refines an earlier sweep; drop --coarse")
        if log_range is not None and log_range[0] >= log_range[1]:
            raise click.BadParameter("LO must be below HI", param_hint="--range")
        final_options = {"--final-cycles": final_cycles, "--final-seeds": final_seeds}
        final_options["--final-validation-size"] = final_validation_size
        final_options["--final-n-s"] = final_n_s
        final_options["--choose"] = choose
        given = [name for name, value in final_options.items() if value is not None]
        if given and not final:
            raise click.UsageError(f"{', '.join(given)} set(s) the final retrain; add --final")
        if source is not None:  # refining it: search as it searched, so trials rank alike
            refined = load_sweep_of_kind(source, LAMBDA_SEARCH)
            cycles, n_s = cycles or refined.cycles, n_s or refined.n_s
        spec = LambdaSearchSpec.plan(
            _search_base(config_path, overrides),
            coarse=bool(coarse),
            fine=bool(fine),
            final=bool(final),
            log_range=log_range,
            trials=trials,
            cycles=cycles,
            n_s=n_s,
            final_cycles=final_cycles,
            final_seeds=final_seeds,
            final_validation_size=final_validation_size,
            final_n_s=final_n_s,
            choose=choose,
            stratified=stratified,
            seed=seed,
            source=str(source.resolve()) if source is not None else None,
        )
        if spec.final:
            _check_final_settings(spec)
        if dry_run:
            from knn_cli.dry_run import lambda_search_plan

            workers_ = running.executor.workers or 1
            click.echo(lambda_search_plan(spec, workers_, running.population), nl=False)
            return
        sweep_dir = new_sweep_folder(runs_dir, LAMBDA_SEARCH, spec, [spec.base])
    result = run_sweep("lambda-search", sweep_dir, run_lambda_search, spec, running)
    # table.md ends with the finals' mean +- sd; here that line comes last, after each final's.
    click.echo(lambda_table([*result.records, *result.finals]))
    if result.fine_log_range is not None:
        low, high = result.fine_log_range
        click.echo(f"fine range: lambda in [{10**low:.3g}, {10**high:.3g}]")
    if result.best is not None:
        click.echo(
            f"best lambda {result.best.trial.lambda_:.5g}: validation accuracy "
            f"{result.best.score:.2%}"
        )
    if result.fit is not None:
        click.echo(result.fit.summary())
    if result.finals:
        _echo_finals(result.finals)
    click.echo(f"written: {sweep_dir}/trials.csv, table.md, lambda_vs_accuracy.png")
    _fail_unless_usable(result.records, sweep_dir)


def running_for(workers: int | None, scheduler: str | None, population: str) -> Any:
    """How the command's runs are run, from its executor options."""
    from knn_cli.sweeps.running import Running

    executor = executor_for(workers, scheduler)
    return Running(executor, populations_for(population), progress_wanted())


def new_sweep_folder(
    runs_dir: Path,
    kind: str,
    spec: Any,
    configs: Sequence[Mapping[str, Any]],
    name: str | None = None,
) -> Path:
    """The new sweep's folder, made only once its data is found: a sweep that cannot start
    fails in one line and leaves nothing behind."""
    from knn_cli.sweeps.folder import start_sweep

    data_found(configs)
    return start_sweep(runs_dir, kind, spec, name)


def run_sweep(command: str, sweep_dir: Path, run: Any, spec: Any, running: Any) -> Any:
    """Run the sweep in its folder (locked), saying where and how to continue it."""
    from knn_cli.sweeps.running import run_sweep_in

    def announce() -> None:
        click.echo(f"sweep folder: {sweep_dir}")
        remember_resume(command, sweep_dir)

    return run_sweep_in(sweep_dir, run, spec, running, started=announce)


def data_found(configs: Sequence[Mapping[str, Any]]) -> None:
    """Find (or fetch) the data each config names, before a new sweep makes its folder: a
    sweep whose data cannot be had fails in one line and leaves nothing behind."""
    from knn_cli.data.locate import find_data_dir

    for folder in dict.fromkeys((c.get("data") or {}).get("dir") for c in configs):
        find_data_dir(folder, progress=progress_wanted())


def _check_final_settings(spec: Any) -> None:
    """Plan a stand-in final retrain now: a hold-out the config cannot take should stop the
    command before the search, not after it."""
    from knn_cli.errors import ConfigError

    try:
        spec.stage_trials("final", 0, lambda_=1e-3)
    except ConfigError as error:
        raise click.BadParameter(str(error), param_hint="--final-validation-size") from None


def _fail_unless_usable(records: Any, sweep_dir: Path) -> None:
    """Exit 1 when a trial broke with an error, or when no trial finished. A diverged trial is
    a result (an init that cannot train), not a failure of the sweep."""
    from knn_cli.errors import RunFailed

    broken = [r for r in records if r.status == "failed"]
    if broken:
        raise RunFailed(
            f"{len(broken)} trial(s) failed, e.g. {broken[0].trial.folder}: {broken[0].message}; "
            f"fix the cause and continue with --resume {sweep_dir}"
        )
    if not any(r.finished for r in records):
        raise RunFailed(f"no trial finished (see {sweep_dir}/)")


def _cycles(count: int) -> str:
    return "1 cycle" if count == 1 else f"{count} cycles"


def _echo_finals(records: Sequence[Any]) -> None:
    """One line per retrain, then their mean and spread; exit 1 if any of them did not finish."""
    from knn_cli.errors import RunFailed
    from knn_cli.sweeps.tables import final_summary_line, final_test_summary

    for record in records:
        training, data = record.trial.config["training"], record.trial.config["data"]
        if record.finished:
            click.echo(
                f"final retrain (seed {training['seed']}, {_cycles(training['cycles'])}, "
                f"{data['validation_size']} held out): test accuracy "
                f"{record.get('test_accuracy'):.2%}, validation "
                f"{record.get('final_val_accuracy'):.2%}"
            )
    summary = final_test_summary(records)
    if summary is not None:
        click.echo(final_summary_line(summary))
    unfinished = [r for r in records if not r.finished]
    if unfinished:
        first = unfinished[0]
        raise RunFailed(f"final retrain {first.status}: {first.message} (see {first.folder})")


@click.command("init-sensitivity")
@click.option("--depths", default=None, metavar="K1,K2", help="Layer counts k [3,9].")
@click.option(
    "--batch-norm",
    "batch_norm",
    type=click.Choice(["both", "on", "off"]),
    default=None,
    help="Batch norm settings to compare [both].",
)
@click.option("--sigmas", default=None, metavar="S1,S2,...", help="Init stds [1e-1,1e-3,1e-4].")
@click.option("--cycles", type=click.IntRange(min=1), default=None, help="Cycles [2].")
@click.option(
    "--n-s",
    type=click.IntRange(min=1),
    default=None,
    help="Steps per half cycle [the study's: 5 epochs, 2250 on CIFAR-10].",
)
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Sweep seed [0].")
@click.option(
    "--seeds",
    type=click.IntRange(min=1),
    default=None,
    help="Seeds per cell, the same for every cell (seed, seed + 1, ...); each cell shows each "
    "and their mean +- sd [1].",
)
@set_option
@executor_options
@dry_run_option
@runs_dir_option
def init_sensitivity(
    depths: str | None,
    batch_norm: str | None,
    sigmas: str | None,
    cycles: int | None,
    n_s: int | None,
    seed: int | None,
    seeds: int | None,
    overrides: tuple[str, ...],
    workers: int | None,
    scheduler: str | None,
    population: str,
    resume: Path | None,
    dry_run: bool,
    runs_dir: Path,
) -> None:
    """Train from normal(0, sigma) inits instead of He, with and without batch norm."""
    from knn_cli.config import Override
    from knn_cli.sweeps.init_grid import run_init_sensitivity
    from knn_cli.sweeps.plan import INIT_SENSITIVITY, GridSpec

    running = running_for(workers, scheduler, population)
    if resume is not None:
        spec, sweep_dir = resumed_sweep(resume, INIT_SENSITIVITY), resume
    else:
        if any(Override.key_of(o) == "model.hidden" for o in overrides):
            raise click.UsageError(
                "the grid's widths come from --depths (the study's networks); drop "
                "--set model.hidden"
            )
        choices = {"both": (False, True), "on": (True,), "off": (False,)}
        spec = GridSpec.plan(
            overrides,
            depths=parse_list(
                depths, int, "--depths", valid=lambda k: k >= 1, example="3,9", what="depths >= 1"
            )
            if depths
            else None,
            batch_norms=choices[batch_norm] if batch_norm else None,
            sigmas=parse_list(
                sigmas,
                float,
                "--sigmas",
                valid=lambda v: v > 0,
                example="1e-1,1e-3",
                what="positive sigmas",
            )
            if sigmas
            else None,
            cycles=cycles,
            n_s=n_s,
            seed=seed,
            seeds=seeds,
        )
        if dry_run:
            from knn_cli.dry_run import planned_sweep
            from knn_cli.sweeps.init_grid import grid_plan

            resolved = {"spec": asdict(spec)}
            workers_ = running.executor.workers or 1
            click.echo(
                planned_sweep(resolved, grid_plan(spec), workers_, running.population), nl=False
            )
            return
        sweep_dir = new_sweep_folder(runs_dir, INIT_SENSITIVITY, spec, [spec.base])
    records = run_sweep("init-sensitivity", sweep_dir, run_init_sensitivity, spec, running)
    click.echo("final test accuracy (rows: layers and batch norm; columns: init sigma)")
    click.echo((sweep_dir / "results.md").read_text())
    failed = [r for r in records if r.status not in ("finished",)]
    for record in failed:
        click.echo(f"{record.trial.label}: {record.status} {record.message}".rstrip())
    click.echo(f"written: {sweep_dir}/results.csv, results.md, loss_curves.png")
    _fail_unless_usable(records, sweep_dir)


@click.command("sweep")
@click.argument("plan", type=click.Path(dir_okay=False, path_type=Path), required=False)
@executor_options
@dry_run_option
@runs_dir_option
def sweep(
    plan: Path | None,
    workers: int | None,
    scheduler: str | None,
    population: str,
    resume: Path | None,
    dry_run: bool,
    runs_dir: Path,
) -> None:
    """Train each config of a PLAN file with its seeds; tabulate what each change brought.

    PLAN lists configs (paths relative to it) and how many seeds each; see
    configs/ablation.yaml. Use --workers 1 --population off for wall times that compare with
    `knn train`.
    """
    from knn_cli.config import config_from_dict
    from knn_cli.memory import check_memory
    from knn_cli.sweeps.config_runs import read_plan, run_config_sweep
    from knn_cli.sweeps.folder import load_sweep_of_kind
    from knn_cli.sweeps.plan import CONFIG_SWEEP

    running = running_for(workers, scheduler, population)
    if resume is not None:
        if plan is not None:
            raise click.UsageError("--resume takes the plan from the sweep folder; drop PLAN")
        spec, sweep_dir = load_sweep_of_kind(resume, CONFIG_SWEEP), resume
    else:
        if plan is None:
            raise click.UsageError("give a PLAN file, or --resume SWEEP_DIR")
        spec = read_plan(plan)
        for entry in spec.runs:  # before a sweep folder is made, not in every trial
            check_memory(config_from_dict(entry["config"]))
        if dry_run:
            from knn_cli.dry_run import planned_sweep
            from knn_cli.sweeps.config_runs import config_trials

            resolved = {"name": spec.name, "runs": list(spec.runs)}
            workers_ = running.executor.workers or 1
            click.echo(
                planned_sweep(resolved, config_trials(spec), workers_, running.population),
                nl=False,
            )
            return
        configs = [entry["config"] for entry in spec.runs]
        sweep_dir = new_sweep_folder(runs_dir, CONFIG_SWEEP, spec, configs, name=spec.name)
    records = run_sweep("sweep", sweep_dir, run_config_sweep, spec, running)
    click.echo((sweep_dir / "results.md").read_text())
    click.echo(f"written: {sweep_dir}/results.csv, results.md")
    _fail_unless_usable(records, sweep_dir)
