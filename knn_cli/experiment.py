"""`knn train` and `knn evaluate` as functions: config in, run folder out.

This is the layer that joins the pure core to the edges -- data loading, the run folder, the
progress bar -- and it is what sweeps call once per trial.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from knn_cli.augment import Augmentation
from knn_cli.config import RunConfig, dump_config, load_config
from knn_cli.data import load_cifar10
from knn_cli.data.cifar10 import N_CLASSES, Dataset
from knn_cli.diagnostics import Probe
from knn_cli.errors import RunFolderError
from knn_cli.evaluation import accuracy, ensemble_accuracy
from knn_cli.interrupts import StopRequests
from knn_cli.memory import DataSize, check_memory, estimate_memory
from knn_cli.network import Network
from knn_cli.optim import UpdateRule, make_update_rule
from knn_cli.recorder import RunFacts, RunRecorder
from knn_cli.runs import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    MODEL_FILE,
    SUMMARY_FILE,
    atomic_write_text,
    keep_metrics_through,
    read_checkpoint,
    read_snapshot,
    read_summary,
    require_run_dir,
)
from knn_cli.schedule import check_batch_size, total_steps
from knn_cli.trainer import (
    Checkpointing,
    Member,
    Splits,
    Trainer,
    TrainingOutcome,
)

OPTIMIZER_PREFIX = "optimizer."


def build_network(config: RunConfig, input_dim: int) -> Network:
    """The network a config describes: the `model` section is the Network's options by name;
    the seed, dtype and label smoothing come from `training`."""
    training = config.training
    return Network(
        input_dim,
        n_classes=N_CLASSES,
        **asdict(config.model),
        seed=training.seed,
        dtype=training.dtype,
        label_smoothing=training.label_smoothing,
    )


def build_update_rule(config: RunConfig) -> UpdateRule:
    return make_update_rule(config.training.optimizer, config.training.optimizer_settings)


def build_probe(config: RunConfig, dataset: Dataset) -> Probe | None:
    """The batch the run's layers are measured on, and what to measure (None: nothing). The
    config refuses a probe larger than CIFAR-10's training split; data with fewer training
    rows (a small test set) is probed whole."""
    settings, training = config.diagnostics, config.training
    steps = settings.steps_for(training.eta_min, training.eta_max) if settings.landscape else None
    if not settings.layers and steps is None:
        return None
    return Probe.of(
        dataset.X_train,
        dataset.y_train,
        settings.probe_size,
        training.seed,
        layers=settings.layers,
        landscape_steps=steps,
    )


def saved_state(network: Network, rule: UpdateRule) -> dict[str, np.ndarray]:
    """What model.npz holds: parameters and moving averages by name, and the update rule's
    state under `optimizer.` (e.g. `optimizer.velocity.W1`, `optimizer.steps`)."""
    optimizer = {f"{OPTIMIZER_PREFIX}{key}": value for key, value in rule.state_dict().items()}
    return {**network.state(), **optimizer}


@dataclass
class OpenRun:
    """A run folder opened for training: its config, the network and update rule (restored
    from its checkpoint when it continues), its recorder, the probe its layers are measured on,
    and the step it starts at. `summary` is set once the run is finished."""

    config: RunConfig
    run_dir: Path
    network: Network
    rule: UpdateRule
    recorder: RunRecorder
    probe: Probe | None
    start_step: int
    evaluate_test: bool
    summary: dict[str, Any] | None = None

    def member(self) -> Member:
        return Member(self.network, self.config.training, self.rule, self.recorder, self.probe)


def open_run(
    config: RunConfig,
    run_dir: Path,
    dataset: Dataset,
    *,
    resume: bool = False,
    progress: bool = False,
    evaluate_test: bool = True,
    population: int = 1,
) -> OpenRun:
    """A run folder ready to train: the config written (a new run) or the checkpoint read (one
    that continues), the network and rule built, the recorder open. `population` is how many
    runs train side by side with it, for its summary."""
    if not resume:
        atomic_write_text(run_dir / CONFIG_FILE, dump_config(config))
    n_train = len(dataset.X_train)
    check_batch_size(config.training.batch_size, n_train, "training images of the data")
    n_s = config.training.resolve_n_s(n_train)
    memory = estimate_memory(config, DataSize.of(dataset), members=population)
    network = build_network(config, dataset.n_features)
    rule = build_update_rule(config)
    start_step, earlier_seconds, earlier_records = 0, 0.0, []
    if resume:
        start_step, earlier_seconds, earlier_records = _restore(run_dir, network, rule)
    probe = build_probe(config, dataset)
    facts = RunFacts(
        name=config.name,
        total_steps=total_steps(n_s, config.training.cycles),
        n_s=n_s,
        n_train=n_train,
        seed=config.training.seed,
        data=dataset.source,
        memory_estimate_mb=memory.to_dict(),
        probe_rows=None if probe is None else len(probe.X),
        population=population,
    )
    recorder = RunRecorder(
        run_dir,
        lambda: saved_state(network, rule),
        facts,
        start_step=start_step,
        earlier_seconds=earlier_seconds,
        earlier_records=earlier_records,
        progress=progress,
        measuring=probe is not None,
        network_state=network.state,
        snapshot_cycles=config.snapshot_cycles,
    )
    return OpenRun(config, run_dir, network, rule, recorder, probe, start_step, evaluate_test)


def train_run(
    config: RunConfig,
    run_dir: Path,
    *,
    dataset: Dataset | None = None,
    progress: bool = False,
    evaluate_test: bool = True,
    background_evaluation: bool = True,
    stop_between_steps: bool = False,
    resume: bool = False,
) -> dict[str, Any]:
    """Train one network as `config` says, recording everything in `run_dir` as it comes.

    `evaluate_test=False` is for model selection (a lambda search), where the test set must not
    be looked at; `test_accuracy` is then None. `background_evaluation=False` keeps the run to
    one core, for sweeps whose workers already share the cores.

    Every `training.checkpoint_minutes` the run is saved in `checkpoint.npz`, from which
    `resume=True` continues it in the same folder to the numbers it would have reached
    uninterrupted. With `stop_between_steps` (the main process of `knn train` or of a sweep)
    Ctrl-C and SIGTERM stop training at the next step boundary, saving a checkpoint there. On
    any interrupt the metrics so far, the latest model and a summary with status `interrupted`
    are saved before the interrupt goes on up.
    """
    if dataset is None:
        dataset = load_cifar10(config.data.dir, config.data.validation_size, progress=progress)
    check_memory(config, DataSize.of(dataset))
    run = open_run(
        config, run_dir, dataset, resume=resume, progress=progress, evaluate_test=evaluate_test
    )
    return train_population(
        [run],
        dataset,
        background_evaluation=background_evaluation,
        stop_between_steps=stop_between_steps,
    )[0]


def train_population(
    runs: Sequence[OpenRun],
    dataset: Dataset,
    *,
    background_evaluation: bool = True,
    stop_between_steps: bool = False,
) -> list[dict[str, Any]]:
    """Train open runs side by side, one population per step they start at (a new run at 0, a
    continued one where its checkpoint was saved), and finish each: its final measurements,
    model, summary and plots; each run's summary, in order.

    The runs must differ only in what a population's members may: seed, lambda, rates and init
    (`knn_cli.sweeps.populations`). A run that diverges is finished at once, the others go on.
    Stops and interrupts as `train_run`'s; on any, every unfinished run is saved as it stands
    (those of a later step too, as they were restored).
    """
    stop_context = StopRequests() if stop_between_steps else nullcontext(lambda: False)
    starts = list(dict.fromkeys(run.start_step for run in runs))
    groups = [[run for run in runs if run.start_step == start] for start in starts]
    # Active until the runs are saved: a stop asked for after the last step, or during the
    # final measurements, waits for the summaries instead of cutting them short, and is not lost.
    with stop_context as stopping:
        for k, together in enumerate(groups):
            try:
                _train_together(together, dataset, stopping, background_evaluation)
            except BaseException as error:
                for run in (run for later in groups[k + 1 :] for run in later):
                    run.recorder.finish_despite(error)
                raise
        if getattr(stopping, "requested", False):
            raise KeyboardInterrupt  # the runs are saved, finished; the caller still stops
    return [run.summary or {} for run in runs]


def _train_together(
    runs: Sequence[OpenRun],
    dataset: Dataset,
    stopping: Callable[[], bool],
    background_evaluation: bool,
) -> None:
    """Runs that start at the same step, as one population."""
    config = runs[0].config
    splits = Splits(dataset.X_train, dataset.y_train, dataset.X_val, dataset.y_val)
    for run in runs:
        run.recorder.on_leaving = _finisher(run)
    trainer = Trainer(
        [run.member() for run in runs],
        splits,
        augmentation=Augmentation(**asdict(config.augment)),
        train_curve=config.evaluation.train_curve_rows,
        background_evaluation=background_evaluation,
    )
    minutes = config.training.checkpoint_minutes
    checkpointing = Checkpointing(None if minutes is None else 60.0 * minutes, stopping)
    try:
        trainer.train(runs[0].start_step, checkpointing)
        measured = [
            final_measurements(
                run.network,
                dataset,
                run.config,
                run.evaluate_test,
                snapshots=load_snapshots(run.run_dir, run.config, dataset.n_features),
            )
            if outcome is not None and outcome.status == "finished"
            else {}
            for run, outcome in zip(runs, trainer.outcomes, strict=True)
        ]
    except BaseException as error:
        for run in runs:
            if run.summary is None:
                run.recorder.finish_despite(error)
        raise
    for run, outcome, found in zip(runs, trainer.outcomes, measured, strict=True):
        if run.summary is None and outcome is not None:
            run.summary = run.recorder.finish(outcome, found)
    for run in runs:
        run.recorder.on_leaving = None  # the run and its recorder hold each other no longer


def _finisher(run: OpenRun) -> Callable[[TrainingOutcome], None]:
    """How a run that leaves its population early (it diverged) is finished, at once."""

    def finish(outcome: TrainingOutcome) -> None:
        run.summary = run.recorder.finish(outcome, {})

    return finish


def resumable(run_dir: Path) -> None:
    """Raise a one-line RunFolderError unless `run_dir` is a run that can be continued."""
    run_dir = require_run_dir(run_dir, CONFIG_FILE)
    status = read_summary(run_dir).get("status") if (run_dir / SUMMARY_FILE).is_file() else None
    if status in ("finished", "diverged"):
        raise RunFolderError(f"{run_dir} has {status}: there is nothing to continue")
    if not (run_dir / CHECKPOINT_FILE).is_file():
        raise RunFolderError(
            f"{run_dir} has no {CHECKPOINT_FILE}: it stopped before its first checkpoint "
            "(start it again)"
        )


def _restore(run_dir: Path, network: Network, rule: UpdateRule) -> tuple[int, float, list]:
    """Network and update rule as the checkpoint left them; the step it was taken after, the
    seconds trained before it, and the metrics recorded up to it (later ones are dropped: the
    continued run computes them again)."""
    state, info = read_checkpoint(run_dir)
    try:
        network.load_state(state)
        rule.load_state_dict(_optimizer_part(state), network.params)
        step, seconds = int(info["step"]), float(info["seconds"])
    except (KeyError, TypeError, ValueError) as error:
        raise RunFolderError(
            f"{run_dir / CHECKPOINT_FILE} does not fit this run: {error}"
        ) from None
    return step, seconds, keep_metrics_through(run_dir, step)


def _optimizer_part(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {
        key.removeprefix(OPTIMIZER_PREFIX): value
        for key, value in state.items()
        if key.startswith(OPTIMIZER_PREFIX)
    }


def final_measurements(
    network: Network,
    dataset: Dataset,
    config: RunConfig,
    evaluate_test: bool,
    *,
    snapshots: Sequence[Network] = (),
) -> dict[str, float]:
    """The finished network's test accuracy, and what `config.evaluation` asks for beside it.

    With precise BN the network's moving averages are replaced, so the saved model keeps the
    precise statistics, and the accuracy with the moving averages is reported apart; so is the
    accuracy averaged over each image and its mirror (test-time augmentation), and that of the
    `snapshots`' ensemble (`snapshot_ensemble_measurements`).
    """
    measured: dict[str, float] = {}
    test, val = (dataset.X_test, dataset.y_test), (dataset.X_val, dataset.y_val)
    if config.evaluation.precise_bn and network.statistic_shapes:
        if evaluate_test:
            measured["test_accuracy_moving_averages"] = accuracy(network, *test)
        network.moving_averages = network.precise_statistics(dataset.X_train)
        measured["final_val_accuracy_precise_bn"] = accuracy(network, *val)
    if evaluate_test:
        measured["test_accuracy"] = accuracy(network, *test)
    if config.evaluation.test_time_flip:
        measured["final_val_accuracy_flip"] = accuracy(network, *val, mirrored=True)
        if evaluate_test:
            measured["test_accuracy_flip"] = accuracy(network, *test, mirrored=True)
    if snapshots:
        measured |= snapshot_ensemble_measurements(snapshots, dataset, config, evaluate_test)
    return measured


def load_snapshots(run_dir: Path, config: RunConfig, input_dim: int) -> list[Network]:
    """The networks a run kept at the ends of its last cycles (`config.snapshot_cycles`), from
    its folder: those written before an interruption count as those written after it."""
    networks = []
    for cycle in config.snapshot_cycles:
        state = read_snapshot(run_dir, cycle)
        network = build_network(config, input_dim)
        try:
            network.load_state(state)
        except (KeyError, ValueError) as error:
            raise RunFolderError(
                f"{run_dir} snapshot of cycle {cycle} does not fit this run: {error}"
            ) from None
        networks.append(network)
    return networks


def snapshot_ensemble_measurements(
    snapshots: Sequence[Network], dataset: Dataset, config: RunConfig, evaluate_test: bool
) -> dict[str, float]:
    """Validation (and test) accuracy of the snapshots' mean prediction, and with
    `test_time_flip` of their mirror-averaged one. Each snapshot is measured as the final
    network is: with precise BN, statistics of its own over the training set (its parameters
    are not the final network's, so neither are its statistics); else its moving averages."""
    if config.evaluation.precise_bn:
        for network in snapshots:
            if network.statistic_shapes:
                network.moving_averages = network.precise_statistics(dataset.X_train)
    splits = {"final_val_accuracy": (dataset.X_val, dataset.y_val)}
    if evaluate_test:
        splits["test_accuracy"] = (dataset.X_test, dataset.y_test)
    measured = {}
    for key, (X, y) in splits.items():
        measured[f"{key}_snapshot_ensemble"] = ensemble_accuracy(snapshots, X, y)
        if config.evaluation.test_time_flip:
            flipped = ensemble_accuracy(snapshots, X, y, mirrored=True)
            measured[f"{key}_snapshot_ensemble_flip"] = flipped
    return measured


def load_trained_network(run_dir: str | Path) -> tuple[RunConfig, Network]:
    """Rebuild a run's network from its config and model.npz (never unpickling anything)."""
    config, network, _rule = load_trained(run_dir)
    return config, network


def load_trained(run_dir: str | Path) -> tuple[RunConfig, Network, UpdateRule]:
    """A run's config, network and update rule with its state, from config.yaml and model.npz
    (never unpickling anything): what evaluating or continuing the run needs."""
    run_dir = require_run_dir(run_dir, CONFIG_FILE, MODEL_FILE)
    config = load_config(run_dir / CONFIG_FILE)
    try:
        with np.load(run_dir / MODEL_FILE, allow_pickle=False) as archive:
            state = {name: archive[name] for name in archive.files}
        network = build_network(config, state["W1"].shape[0])
        network.load_state(state)
        rule = build_update_rule(config)
        rule.load_state_dict(_optimizer_part(state), network.params)
    except (OSError, ValueError, KeyError) as error:
        reason = "corrupt or truncated" if "pickle" in str(error) else str(error)
        raise RunFolderError(
            f"{run_dir / MODEL_FILE} is not a valid model file ({reason})"
        ) from None
    return config, network, rule


def evaluate_run(run_dir: str | Path, *, progress: bool = False) -> float:
    """Test accuracy of a saved model, on the data its config names (or the data found now)."""
    config, network = load_trained_network(run_dir)
    dataset = load_cifar10(config.data.dir, config.data.validation_size, progress=progress)
    if dataset.X_test.shape[1] != network.input_dim:
        raise RunFolderError(
            f"the model expects {network.input_dim} input features, "
            f"the data has {dataset.X_test.shape[1]}"
        )
    return accuracy(network, dataset.X_test, dataset.y_test)
