"""What a sweep runs: its trials, each a full config, planned deterministically -- a trial's lambda
and seed follow from the sweep seed, its stage and its index, never from which worker ran it or
when -- and the specs that `--resume` rebuilds a sweep from."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from knn_cli.config import config_from_dict, config_to_dict
from knn_cli.stack import default_hidden

LAMBDA_SEARCH = "lambda-search"
INIT_SENSITIVITY = "init-sensitivity"
CONFIG_SWEEP = "sweep"
GRID_NAME = "init"  # the grid's base config, and the first word of each cell's name
STAGE_CODES = {"coarse": 1, "fine": 2, "final": 3, "grid": 4, "runs": 5}
SEARCH_STAGES = ("coarse", "fine")
CHOICES = ("best", "fit")  # the lambda the final retrain takes: the best trial's, or the fit's
# Images the final retrain holds out: the course's protocol for the final model.
FINAL_HOLD_OUT = 1000


@dataclass(frozen=True)
class Trial:
    """One planned training run: its full config, so a worker needs nothing else."""

    index: int
    stage: str
    label: str
    config: dict[str, Any]
    folder: str
    evaluate_test: bool

    @property
    def lambda_(self) -> float:
        return float(self.config["training"]["lambda"])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Trial:
        return cls(**doc)


@dataclass(frozen=True)
class TrialJob:
    """What travels to a worker: the trial and the folder this attempt is to train in."""

    trial: Trial
    run_dir: str
    # In the sweep's own process, one trial at a time: the trial may use both cores (evaluation
    # on a second thread) and stops between two steps on Ctrl-C; workers leave Ctrl-C to the
    # sweep, and share the cores.
    in_process: bool = False
    # How the folder is found: NEW (absent: the worker makes it), RESUME (an interrupted attempt
    # with a checkpoint, continued in place) or RETRIED (made by the sweep, holding only the
    # earlier attempts it replaces).
    start: str = "new"


NEW, RESUME, RETRIED = "new", "resume", "retried"


def trial_config(base: Mapping[str, Any], name: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """`base` named `name`, with the dotted `settings` applied as overrides: validated like a
    user's `--set`, returned as plain data."""
    return config_to_dict(config_from_dict(base, {"name": name, **settings}))


def sample_log_lambda(
    seed: int,
    stage: str,
    index: int,
    low: float,
    high: float,
    stratum: tuple[int, int] | None = None,
) -> float:
    """lambda = 10^u, u ~ Uniform(low, high), from a generator seeded by (seed, stage, index);
    with `stratum` (k, n), u ~ Uniform over the k-th of n equal parts of [low, high].

    Seeding by index alone means trial 7 gets the same lambda whether the sweep has 8 trials or
    80, whichever worker runs it, and in whatever order trials complete. Strata keep a few
    draws from bunching together (three uniform draws land within a third of the range of each
    other one time in three).
    """
    rng = np.random.default_rng([seed, STAGE_CODES[stage], index])
    if stratum is not None:
        k, n = stratum
        width = (high - low) / n
        low, high = low + k * width, low + (k + 1) * width
    return float(10.0 ** rng.uniform(low, high))


def lambda_trials(
    base: Mapping[str, Any],
    stage: str,
    log_range: tuple[float, float],
    indices: Iterable[int],
    *,
    seed: int,
    cycles: int,
    n_s: int | None,
    stratified: bool = False,
) -> list[Trial]:
    """Search trials of one stage: a sampled lambda each (the k-th of n trials in the k-th of
    n parts of the range when `stratified`), on the short search schedule."""
    trials = []
    indices = list(indices)
    for k, index in enumerate(indices):
        stratum = (k, len(indices)) if stratified else None
        value = sample_log_lambda(seed, stage, index, *log_range, stratum=stratum)
        trials.append(_lambda_trial(base, stage, index, value, seed=seed, cycles=cycles, n_s=n_s))
    return trials


def final_trials(
    base: Mapping[str, Any],
    indices: Iterable[int],
    lambda_: float,
    *,
    seed: int,
    cycles: int,
    validation_size: int,
    n_s: int | None = None,
) -> list[Trial]:
    """The chosen lambda retrained for longer, once per index (so once per seed), then tested.

    The retrain holds out only `validation_size` images, as the course protocol trains its final
    model on all the training data but 1,000: lambda is chosen by then, so the rest of the
    validation set is worth more as training data. The schedule is the base config's own n_s
    (a factor of epochs unless the config fixes it), not the search's; `n_s` shortens it for a
    quick try.
    """
    n_s = n_s or base["training"]["n_s"]
    extra = {"data.validation_size": validation_size}
    options = {"seed": seed, "cycles": cycles, "n_s": n_s, "evaluate_test": True, "extra": extra}
    return [_lambda_trial(base, "final", index, lambda_, **options) for index in indices]


def _lambda_trial(
    base: Mapping[str, Any],
    stage: str,
    index: int,
    lambda_: float,
    *,
    seed: int,
    cycles: int,
    n_s: int | None,
    evaluate_test: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> Trial:
    folder = f"{index:03d}-{stage}"
    settings = {
        "training.lambda": lambda_,
        "training.cycles": cycles,
        "training.n_s": n_s,
        # Search trials share the sweep's seed -- the same init, batches and noise, so that
        # they differ in lambda alone (common random numbers), and train as one population
        # sharing their batches; the final retrains each have a seed of their own.
        "training.seed": seed if stage in SEARCH_STAGES else seed + index,
        **(extra or {}),
    }
    if stage in SEARCH_STAGES:  # ranked on validation alone: its training curve is not read
        settings["evaluation.train_curve_rows"] = 0
    return Trial(
        index=index,
        stage=stage,
        label=f"lambda={lambda_:.3g}",
        config=trial_config(base, f"{base['name']}-{folder}", settings),
        folder=folder,
        evaluate_test=evaluate_test,
    )


def grid_trials(
    base: Mapping[str, Any],
    depths: Sequence[int],
    batch_norms: Sequence[bool],
    sigmas: Sequence[float],
    *,
    seed: int,
    cycles: int,
    n_s: int | None,
    seeds: int = 1,
) -> list[Trial]:
    """depth x batch norm x sigma, each from a normal(0, sigma) init, tested at the end, each
    with `seeds` seeds (seed, seed + 1, ...), a cell's seeds one after the other."""
    trials = []
    cells = [(k, bn, s) for k in depths for bn in batch_norms for s in sigmas]
    for depth, batch_norm, sigma in cells:
        for offset in range(seeds):
            index = len(trials)
            folder = f"{index:03d}-k{depth}-{'bn' if batch_norm else 'nobn'}-sigma{sigma:g}"
            label = f"k={depth} {bn_label(batch_norm)} sigma={sigma:g}"
            if seeds > 1:  # one seed: the names of sweeps planned before there were seeds
                folder += f"-s{seed + offset}"
                label += f" seed {seed + offset}"
            settings = {
                "model.hidden": list(default_hidden(depth)),
                "model.batch_norm": batch_norm,
                "model.init": "normal",
                "model.sigma": sigma,
                "training.cycles": cycles,
                "training.n_s": n_s,
                # The same seeds for every cell: the cells then differ by depth, BN and sigma
                # alone (a paired comparison), not also by their draw of weights and batches.
                "training.seed": seed + offset,
            }
            trials.append(
                Trial(
                    index=index,
                    stage="grid",
                    label=label,
                    config=trial_config(base, f"{GRID_NAME}-{folder}", settings),
                    folder=folder,
                    evaluate_test=True,
                )
            )
    return trials


def bn_label(batch_norm: bool) -> str:
    return "BN" if batch_norm else "no BN"


@dataclass(frozen=True)
class LambdaSearchSpec:
    """Everything `--resume` needs to rebuild a lambda search (the executor is chosen anew)."""

    base: dict[str, Any]
    coarse: bool = True
    fine: bool = True
    final: bool = False
    log_range: tuple[float, float] = (-5.0, -1.0)
    trials: int = 10
    cycles: int = 2
    n_s: int | None = None
    final_cycles: int = 3
    final_seeds: int = 3
    final_validation_size: int = FINAL_HOLD_OUT
    final_n_s: int | None = None  # None: the base config's (sweeps planned without it: the same)
    seed: int = 0
    source: str | None = None  # an earlier sweep whose trials --fine refines
    choose: str = "best"  # what --final retrains: the best trial, or the fit's peak
    stratified: bool = False  # coarse draws one per equal part of the range

    @classmethod
    def plan(cls, base: dict[str, Any], **given: Any) -> LambdaSearchSpec:
        """A new search: the options given (None: not given), the defaults for the rest. The
        final retrain holds out FINAL_HOLD_OUT images, or the base config's hold-out if smaller."""
        options = {key: value for key, value in given.items() if value is not None}
        options.setdefault(
            "final_validation_size", min(FINAL_HOLD_OUT, base["data"]["validation_size"])
        )
        return cls(base=base, **options)

    # The search's plan, said once: the commands that run it, show it (--dry-run) and count
    # it (knn runs) ask here.

    @property
    def stages(self) -> tuple[str, ...]:
        """The stages it runs, in order: coarse, fine, final, as asked."""
        asked = (("coarse", self.coarse), ("fine", self.fine), ("final", self.final))
        return tuple(stage for stage, wanted in asked if wanted)

    def stage_size(self, stage: str) -> int:
        return self.final_seeds if stage == "final" else self.trials

    @property
    def total_trials(self) -> int:
        """Trials it will have run when done (the fine and final ones are planned only once
        the stage before has results)."""
        return sum(self.stage_size(stage) for stage in self.stages)

    def stage_trials(
        self,
        stage: str,
        first_index: int,
        *,
        log_range: tuple[float, float] | None = None,
        lambda_: float | None = None,
    ) -> list[Trial]:
        """A stage's trials, numbered from `first_index`: a search stage's lambdas drawn in
        `log_range` (the coarse range unless given: the fine one comes from the results), the
        final retrains at `lambda_`."""
        indices = range(first_index, first_index + self.stage_size(stage))
        if stage == "final":
            if lambda_ is None:
                raise ValueError("the final retrain needs the lambda it retrains")
            return final_trials(
                self.base,
                indices,
                lambda_,
                seed=self.seed,
                cycles=self.final_cycles,
                validation_size=self.final_validation_size,
                n_s=self.final_n_s,
            )
        return lambda_trials(
            self.base,
            stage,
            log_range or self.log_range,
            indices,
            seed=self.seed,
            cycles=self.cycles,
            n_s=self.n_s,
            stratified=self.stratified and stage == "coarse",
        )


@dataclass(frozen=True)
class ConfigSweepSpec:
    """Everything `--resume` needs to rebuild a sweep of configs (`knn sweep`): each config in
    full, and its number of seeds."""

    name: str
    runs: tuple[dict[str, Any], ...]  # {"config": {...}, "seeds": n}
    source: str | None = None


@dataclass(frozen=True)
class GridSpec:
    """Everything `--resume` needs to rebuild an init-sensitivity grid."""

    base: dict[str, Any]
    depths: tuple[int, ...] = (3, 9)
    batch_norms: tuple[bool, ...] = (False, True)
    sigmas: tuple[float, ...] = (1e-1, 1e-3, 1e-4)
    cycles: int = 2
    n_s: int | None = None
    seed: int = 0
    seeds: int = 1  # per cell, the same for every cell (grids planned before: one)

    @classmethod
    def plan(cls, overrides: Sequence[str], **given: Any) -> GridSpec:
        """A new grid, as `knn init-sensitivity` and the study plan it: its base the built-in
        config (no file: each cell's widths come from its depth) with `overrides`, the options
        given (None: not given), the defaults for the rest."""
        base = config_to_dict(config_from_dict({"name": GRID_NAME}, overrides))
        options = {key: value for key, value in given.items() if value is not None}
        return cls(base=base, **options)
