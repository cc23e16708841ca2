"""`knn train` and `knn evaluate` as functions: config in, run folder out.

This is the layer that joins the pure core to the edges -- data loading, the run folder, the
progress bar -- and it is what sweeps call once per trial.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from knn_cli.augment import Augmentation
from knn_cli.config import RunConfig, dump_config, load_config
from knn_cli.data import N_CLASSES, Dataset, load_cifar10
from knn_cli.errors import ConfigError, RunFolderError
from knn_cli.gradcheck import GradientComparison, check_network_paths, choose_check_point
from knn_cli.interrupts import StopRequests
from knn_cli.memory import check_memory
from knn_cli.network import Network
from knn_cli.optim import UpdateRule, make_update_rule
from knn_cli.plots import plot_run
from knn_cli.progress import TrainingBar
from knn_cli.reports import write_gradcheck
from knn_cli.runs import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    MODEL_FILE,
    SUMMARY_FILE,
    MetricsLog,
    atomic_save_npz,
    atomic_write_json,
    atomic_write_text,
    keep_metrics_through,
    provenance,
    read_checkpoint,
    read_summary,
    require_run_dir,
    write_checkpoint,
)
from knn_cli.trainer import (
    Checkpointing,
    Schedule,
    Splits,
    TrainingOutcome,
    accuracy,
    train,
)

OPTIMIZER_PREFIX = "optimizer."


def build_network(config: RunConfig, input_dim: int) -> Network:
    model = config.model
    return Network(
        input_dim,
        model.hidden,
        N_CLASSES,
        batch_norm=model.batch_norm,
        bn_position=model.bn_position,
        init=model.init,
        sigma=model.sigma,
        seed=config.training.seed,
        dtype=config.training.dtype,
        bn_eps=model.bn_eps,
        bn_alpha=model.bn_alpha,
        dropout=model.dropout,
        label_smoothing=config.training.label_smoothing,
    )


def build_update_rule(config: RunConfig) -> UpdateRule:
    return make_update_rule(config.training.optimizer, config.training.optimizer_settings)


def saved_state(network: Network, rule: UpdateRule) -> dict[str, np.ndarray]:
    """What model.npz holds: parameters and moving averages by name, and the update rule's
    state under `optimizer.` (e.g. `optimizer.velocity.W1`, `optimizer.steps`)."""
    optimizer = {f"{OPTIMIZER_PREFIX}{key}": value for key, value in rule.state_dict().items()}
    return {**network.state(), **optimizer}


def resolve_schedule(config: RunConfig, n_train: int) -> Schedule:
    training = config.training
    if training.batch_size > n_train:
        raise ConfigError(
            f"training.batch_size ({training.batch_size}) is larger than the training set "
            f"({n_train})"
        )
    n_s = training.resolve_n_s(n_train)
    return Schedule(
        lambda_=training.lambda_,
        batch_size=training.batch_size,
        eta_min=training.eta_min,
        eta_max=training.eta_max,
        n_s=n_s,
        cycles=training.cycles,
        eval_every=training.resolve_eval_every(n_s),
        seed=training.seed,
    )


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
    started = time.time()
    if not resume:
        atomic_write_text(run_dir / CONFIG_FILE, dump_config(config))
    if dataset is None:
        dataset = load_cifar10(config.data.dir, config.data.validation_size, progress=progress)
    schedule = resolve_schedule(config, len(dataset.X_train))
    images = len(dataset.X_train) + len(dataset.X_val) + len(dataset.X_test)
    memory = check_memory(
        config, images=images, features=dataset.X_train.shape[1], train_images=len(dataset.X_train)
    )
    network = build_network(config, dataset.X_train.shape[1])
    rule = build_update_rule(config)
    splits = Splits(dataset.X_train, dataset.y_train, dataset.X_val, dataset.y_val)
    start_step, earlier_seconds, earlier_records = 0, 0.0, []
    if resume:
        start_step, earlier_seconds, earlier_records = _restore(run_dir, network, rule)

    log = MetricsLog(run_dir)
    best: dict[str, Any] = {"val_accuracy": None, "step": None}
    latest: dict[str, Any] = {}
    bar = TrainingBar(schedule.total_steps, initial=start_step, desc=config.name, enabled=progress)

    def note(records: list[dict[str, Any]]) -> None:
        for record in records:
            latest[record["split"]] = record
        val = latest["val"]
        if best["val_accuracy"] is None or val["accuracy"] > best["val_accuracy"]:
            best.update(val_accuracy=val["accuracy"], step=val["step"])
        bar.evaluated(val["accuracy"], val["eta"])

    def on_evaluation(records: list[dict[str, Any]]) -> None:
        log.append(records)
        note(records)

    if earlier_records:
        note(earlier_records)
    steps_done = {"n": start_step}

    def save_checkpoint(done: int) -> None:
        seconds = earlier_seconds + time.time() - started
        write_checkpoint(run_dir, saved_state(network, rule), {"step": done, "seconds": seconds})

    def on_step(step: int, eta: float) -> None:
        steps_done["n"] = step
        bar.step(step, eta)

    outcome = TrainingOutcome("failed", 0)
    minutes = config.training.checkpoint_minutes
    stop_context = StopRequests() if stop_between_steps else nullcontext(lambda: False)
    # Active until the run is saved: a stop asked for after the last step, or during the final
    # measurements, waits for the summary instead of cutting it short, and is not lost.
    with stop_context as stopping:
        try:
            checkpointing = Checkpointing(
                save_checkpoint, None if minutes is None else 60.0 * minutes, stopping
            )
            outcome = train(
                network,
                splits,
                schedule,
                on_evaluation=on_evaluation,
                on_step=on_step,
                optimizer=rule,
                augmentation=Augmentation(**asdict(config.augment)),
                start_step=start_step,
                checkpointing=checkpointing,
                background_evaluation=background_evaluation,
            )
        except KeyboardInterrupt:
            outcome = TrainingOutcome("interrupted", 0, "interrupted (Ctrl-C or a stop signal)")
            raise
        except BaseException as error:
            outcome = TrainingOutcome("failed", 0, f"{type(error).__name__}: {error}")
            raise
        finally:
            bar.close()
            log.close()
            measured: dict[str, float] = {}
            if outcome.status == "finished":
                measured = final_measurements(network, dataset, config, evaluate_test)
            atomic_save_npz(run_dir / MODEL_FILE, saved_state(network, rule))
            summary = {
                "name": config.name,
                "status": outcome.status,
                "message": outcome.message,
                "steps": steps_done["n"],
                "total_steps": schedule.total_steps,
                "n_s": schedule.n_s,
                "n_train": len(dataset.X_train),
                "final_train_accuracy": latest.get("train", {}).get("accuracy"),
                "final_val_accuracy": latest.get("val", {}).get("accuracy"),
                "best_val_accuracy": best["val_accuracy"],
                "best_val_step": best["step"],
                "test_accuracy": measured.pop("test_accuracy", None),
                **measured,
                "wall_seconds": round(earlier_seconds + time.time() - started, 3),
                "peak_memory_mb": peak_memory_mb(),
                "memory_estimate_mb": memory.to_dict(),
                "seed": config.training.seed,
                "data": dataset.source,
                "versions": provenance(),
            }
            atomic_write_json(run_dir / SUMMARY_FILE, summary)
            if outcome.status in ("finished", "diverged"):  # nothing left to continue
                (run_dir / CHECKPOINT_FILE).unlink(missing_ok=True)
            if latest:
                plot_run(run_dir)
        if getattr(stopping, "requested", False):
            raise KeyboardInterrupt  # the run is saved, finished; the caller still stops
    return summary


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


def peak_memory_mb() -> float | None:
    """This process's peak resident memory so far (in a sweep's own process, the peak of all
    its runs so far), or None where the platform does not say."""
    try:
        import resource
    except ImportError:  # not on Unix
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)  # bytes or KiB


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
    network: Network, dataset: Dataset, config: RunConfig, evaluate_test: bool
) -> dict[str, float]:
    """The finished network's test accuracy, and what `config.evaluation` asks for beside it.

    With precise BN the network's moving averages are replaced, so the saved model keeps the
    precise statistics, and the accuracy with the moving averages is reported apart; so is the
    accuracy averaged over each image and its mirror (test-time augmentation).
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


# -- gradient check -------------------------------------------------------------------------------

ASSIGNMENT_HIDDEN = {3: (50, 50), 9: (50, 30, 20, 20, 10, 10, 10, 10)}


def default_hidden(layers: int) -> tuple[int, ...]:
    """The assignment's widths for k = 3 and 9; k - 1 layers of 50 otherwise."""
    return ASSIGNMENT_HIDDEN.get(layers, (50,) * (layers - 1))


@dataclass(frozen=True)
class GradientCheck:
    """One network's check: the engine's gradients parameter by parameter, the textbook
    layers' in one verdict."""

    label: str
    margin: float  # distance of the nearest ReLU input from the kink
    engine: list[GradientComparison]
    textbook_worst: float  # largest relative error of the textbook layers' gradients
    textbook_passed: bool


def gradient_check(
    X: np.ndarray,
    y: np.ndarray,
    hidden: Sequence[int],
    batch_norm: bool,
    bn_position: str | None,
    lambda_: float,
    h: float,
    tolerance: float,
    seed: int,
) -> GradientCheck:
    """Check a float64 network of these widths at a point away from special values and kinks."""
    network = Network(
        X.shape[1],
        hidden,
        N_CLASSES,
        batch_norm=batch_norm,
        bn_position=bn_position or "before_relu",
        dtype="float64",
        seed=seed,
    )
    margin = choose_check_point(network, X, np.random.default_rng(seed))
    checked = check_network_paths(network, X, y, lambda_, h=h, rel_tol=tolerance)
    label = "without BN" if not batch_norm else "with BN"
    label += " after ReLU" if batch_norm and bn_position == "after_relu" else ""
    textbook = checked["textbook"]
    worst = max((row.max_rel_error for row in textbook if row.judged_by == "relative"), default=0)
    return GradientCheck(
        label, margin, checked["engine"], worst, all(row.passed for row in textbook)
    )


def gradient_checks(
    X: np.ndarray,
    y: np.ndarray,
    hidden: Sequence[int],
    *,
    batch_norm: bool | None,
    bn_position: str,
    lambda_: float,
    h: float,
    tolerance: float,
    seed: int,
    on_check: Callable[[GradientCheck], None] | None = None,
) -> list[GradientCheck]:
    """The checks `knn gradcheck` runs for one depth: without BN and/or with it, before or after
    the ReLU or both (`bn_position="both"`); `batch_norm=None` checks with and without."""
    positions = ["before_relu", "after_relu"] if bn_position == "both" else [bn_position]
    variants: list[tuple[bool, str | None]] = [(False, None)] if batch_norm is not True else []
    variants += [(True, position) for position in positions] if batch_norm is not False else []
    checks = []
    for bn, position in variants:
        check = gradient_check(X, y, hidden, bn, position, lambda_, h, tolerance, seed)
        if on_check is not None:
            on_check(check)
        checks.append(check)
    return checks


def gradcheck_failures(checks: Sequence[GradientCheck]) -> list[str]:
    """What failed, as `variant parameter` (or `variant (textbook layers)`); empty if all passed."""
    failed = [f"{c.label} {row.name}" for c in checks for row in c.engine if not row.passed]
    return failed + [f"{c.label} (textbook layers)" for c in checks if not c.textbook_passed]


def write_gradcheck_run(
    run_dir: Path, checks: Sequence[GradientCheck], settings: Mapping[str, Any]
) -> None:
    write_gradcheck(
        run_dir,
        {check.label: check.engine for check in checks},
        {**settings, "textbook_passed": {c.label: c.textbook_passed for c in checks}},
    )


def gradcheck_problem(
    dims: int, batch: int, seed: int, data_dir: str | None
) -> tuple[np.ndarray, np.ndarray, str]:
    """A reduced problem: the first `dims` features of `batch` real CIFAR-10 images when the data
    is on this machine (never downloading for a check), random data otherwise; says which."""
    from knn_cli.data import find_data_dir, read_batch
    from knn_cli.errors import DataError

    try:
        folder = find_data_dir(data_dir, download=False)
        pixels, labels = read_batch(folder / "data_batch_1")
    except DataError as error:
        if data_dir is not None or os.environ.get("KNN_DATA_DIR"):
            raise  # a source was named and is wrong: say so rather than check other data
        rng = np.random.default_rng(seed)
        reason = str(error).split(";")[0]
        return (
            rng.standard_normal((batch, dims)),
            rng.integers(0, N_CLASSES, batch),
            f"random data ({reason})",
        )
    features = pixels[:, :dims].astype(np.float64)
    features = (features - features.mean(axis=0)) / features.std(axis=0)
    return features[:batch], labels[:batch].astype(np.int64), f"CIFAR-10 from {folder}"
