"""The config's schema: every option declared once, as a dataclass field with its default, its
parser (type and bounds, `values.py`) and a line of help.

The loader, `--set`, the did-you-mean, the dry run and the README's config block all read these
declarations (`options`, `sections`), so adding an option is its declaration here plus the code
that uses it. A subclass adds options from outside (tests/test_extending.py does).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any, NamedTuple

import numpy as np

from knn_cli.augment import PADDINGS
from knn_cli.data.cifar10 import TRAIN_IMAGES
from knn_cli.errors import ConfigError
from knn_cli.network import DTYPES
from knn_cli.optim import UPDATE_RULES
from knn_cli.schedule import check_batch_size
from knn_cli.stack import BN_POSITIONS, INITS

from . import values as v

Help = str | Callable[[], str]  # a callable is asked when shown, for registries that grow


def setting(default: Any, parse: v.Parser, help: Help = "", *, key: str | None = None) -> Any:
    """One option: its default, its parser and its help; `key` where the YAML key cannot be the
    attribute's name (`lambda`)."""
    metadata = {"parse": parse, "help": help, "key": key}
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def section(cls: type, help: Help = "") -> Any:
    """A section of options (`model:`, `training:` ...), all at their defaults unless set."""
    return field(default_factory=cls, metadata={"section": True, "help": help})


class Option(NamedTuple):
    """One declared option as the loader, the overrides and the docs read it."""

    key: str  # as written in YAML and `--set`
    attr: str  # the dataclass attribute
    parse: v.Parser
    help: Help
    default: Any


def _default(declared: Field[Any]) -> Any:
    if declared.default_factory is not MISSING:
        return declared.default_factory()
    return declared.default


def options(cls: type) -> tuple[Option, ...]:
    """The options a section (or the top level) declares, in declaration order."""
    return tuple(
        Option(
            f.metadata["key"] or f.name,
            f.name,
            f.metadata["parse"],
            f.metadata["help"],
            _default(f),
        )
        for f in fields(cls)
        if "parse" in f.metadata
    )


def sections(schema: type) -> dict[str, tuple[type, Help]]:
    """The schema's sections by name: their class and their help."""
    return {
        f.name: (f.default_factory, f.metadata["help"])  # type: ignore[misc]
        for f in fields(schema)
        if f.metadata.get("section")
    }


def help_text(help: Help) -> str:
    return help() if callable(help) else help


def _rule_names() -> list[str]:
    return list(UPDATE_RULES)


def _rules_help() -> str:
    return " | ".join(f"{n} (the study's)" if n == "sgd" else n for n in UPDATE_RULES)


def _rule_settings_help() -> str:
    """Each rule's settings and defaults, grouped where rules share them."""
    groups: dict[str, list[str]] = {}
    for rule_name, rule in UPDATE_RULES.items():
        shown = ", ".join(f"{s}: {setting.default:g}" for s, setting in rule.settings.items())
        groups.setdefault(shown, []).append(rule_name)
    described = [f"{shown} ({', '.join(rules)})" for shown, rules in groups.items() if shown]
    bare = [rules for shown, rules in groups.items() if not shown]
    without = f"; {', '.join(r for rules in bare for r in rules)} has none" if bare else ""
    return (
        "the rule's own settings; empty: its defaults, which are " + "; ".join(described) + without
    )


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """The network's options: `Network`'s keyword arguments, by the same names."""

    hidden: tuple[int, ...] = setting(
        (50, 50), v.widths, "hidden widths; k = len(hidden) + 1 weight layers ([] is allowed)"
    )
    batch_norm: bool = setting(True, v.boolean)
    bn_position: str = setting(
        "before_relu", v.choice(*BN_POSITIONS), "before_relu (the study's) | after_relu"
    )
    bn_alpha: float = setting(0.8, v.number(0, below=1), "moving-average momentum, 0 <= alpha < 1")
    bn_eps: float = setting(
        1e-12,
        v.number(0, low_open=True),
        "small enough that BN still normalizes a sigma = 1e-4 init",
    )
    init: str = setting(
        "he", v.choice(*INITS), "he (std sqrt(2 / fan_in)) | normal (std sigma, every layer)"
    )
    sigma: float = setting(0.1, v.number(0, low_open=True))
    dropout: float | tuple[float, ...] = setting(
        0.0,
        v.rate_or_rates,
        "inverted dropout after each hidden layer: one rate, or one per layer",
    )


@dataclass(frozen=True, slots=True)
class TrainingConfig:
    """Mini-batch gradient descent with a cyclical learning rate."""

    lambda_: float = setting(
        0.005,
        v.number(0),
        "cost = mean cross-entropy + lambda * sum of squared weights",
        key="lambda",
    )
    batch_size: int = setting(100, v.integer(1))
    eta_min: float = setting(1e-5, v.number(0))
    eta_max: float = setting(0.1, v.number(0, low_open=True))
    n_s: int | None = setting(
        None,
        v.integer(1, nullable=True),
        "steps per half cycle; null: n_s_factor * n_train / batch_size",
    )
    n_s_factor: float = setting(5.0, v.number(0, low_open=True))
    cycles: int = setting(2, v.integer(1))
    seed: int = setting(
        0, v.integer(0), "init and shuffling; same config + seed -> identical metrics"
    )
    eval_every: int | None = setting(
        None, v.integer(1, nullable=True), "steps between evaluations; null: 10 points per cycle"
    )
    dtype: str = setting("float32", v.choice(*DTYPES), " | ".join(DTYPES))
    label_smoothing: float = setting(
        0.0, v.number(0, below=1), "the loss's target: (1 - eps) one-hot + eps / 10"
    )
    checkpoint_minutes: float | None = setting(
        5.0,
        v.number(0, low_open=True, nullable=True),
        "how often to save for --resume; null: only when interrupted",
    )
    optimizer: str = setting("sgd", v.choice(_rule_names), _rules_help)
    # The rule's hyperparameters by the names its class declares (`UpdateRule.settings`), every
    # one of them filled in once the rule is known (`loading.resolve_rule_settings`).
    optimizer_settings: Mapping[str, float] = setting({}, v.mapping_of_numbers, _rule_settings_help)

    def resolve_n_s(self, n_train: int) -> int:
        """Steps per half cycle; a factor ties the schedule to epochs whatever the batch size."""
        if self.n_s is not None:
            return self.n_s
        return max(1, round(self.n_s_factor * n_train / self.batch_size))

    def resolve_eval_every(self, n_s: int) -> int:
        """Update steps between evaluations; by default ten points per cycle give smooth curves."""
        if self.eval_every is not None:
            return self.eval_every
        return max(1, 2 * n_s // 10)


@dataclass(frozen=True, slots=True)
class AugmentConfig:
    """Random changes to each training image, drawn anew every time it is used."""

    flip: bool = setting(False, v.boolean, "mirror left to right with probability 1/2")
    translate: int = setting(0, v.integer(0, below=16), "shift by up to this many pixels each way")
    padding: str = setting(
        "zero", v.choice(*PADDINGS), "zero (the training mean at that pixel) | edge"
    )


@dataclass(frozen=True, slots=True)
class EvaluationConfig:
    """What is measured at the end beyond the plain test accuracy."""

    precise_bn: bool = setting(
        False,
        v.boolean,
        "batch-norm statistics of the whole training set replace the moving averages (in the "
        "saved model too); both accuracies reported",
    )
    test_time_flip: bool = setting(
        False, v.boolean, "also the accuracy of each image's and its mirror's mean prediction"
    )
    # A snapshot ensemble, Huang et al. 2017.
    snapshot_ensemble: int = setting(
        0,
        v.integer(0),
        "m: also the accuracy of the mean prediction of the networks at the ends of the last m "
        "cycles (<= cycles; kept in snapshots/); 0: off",
    )
    # A fixed sample keeps the curve's cost down where nothing reads it closely (a search trial).
    train_curve_rows: int | None = setting(
        None,
        v.integer(0, nullable=True),
        "training rows the curves' training points measure; null: all, n: a fixed sample of n "
        "(the last point measures all), 0: none",
    )


LANDSCAPE_STEPS = 5


@dataclass(frozen=True, slots=True)
class DiagnosticsConfig:
    """What is measured of the layers at every evaluation point, on a fixed probe batch
    (`knn_cli/diagnostics.py`); observation only, it never changes what training computes."""

    layers: bool = setting(True, v.boolean)
    probe_size: int = setting(1000, v.integer(1), "training images the measures are taken on")
    landscape: bool = setting(
        False, v.boolean, "also the loss landscape along the gradient (float64, costs more)"
    )
    landscape_steps: tuple[float, ...] | None = setting(
        None, v.step_sizes_or_null, "step sizes it tries; null: five from eta_min to eta_max"
    )
    percentile_layer: int | None = setting(
        None,
        v.integer(1, nullable=True),
        "hidden layer of layers.png's percentile panel; null: the last",
    )

    def steps_for(self, eta_min: float, eta_max: float) -> tuple[float, ...]:
        """The landscape's step sizes: as set, else five spanning the schedule's rates."""
        if self.landscape_steps is not None:
            return self.landscape_steps
        low = eta_min if eta_min > 0 else eta_max / 1e4
        return tuple(float(t) for t in np.geomspace(low, eta_max, LANDSCAPE_STEPS))


@dataclass(frozen=True, slots=True)
class DataConfig:
    """Where CIFAR-10 lives and how much of the training set is held out."""

    dir: str | None = setting(
        None, v.folder_or_null, "cifar-10-batches-py folder; null: $KNN_DATA_DIR, else the cache"
    )
    validation_size: int = setting(
        5000, v.integer(1, below=TRAIN_IMAGES), "the last 5,000 training images"
    )

    @property
    def n_train(self) -> int:
        """Training images left once the validation set has been held out."""
        return TRAIN_IMAGES - self.validation_size


@dataclass(frozen=True, slots=True)
class RunConfig:
    """Everything one training run needs; saved with the run so it can be reproduced."""

    name: str = setting("run", v.name, "used in the run folder's name (default: the file's stem)")
    model: ModelConfig = section(ModelConfig)
    training: TrainingConfig = section(TrainingConfig)
    augment: AugmentConfig = section(
        AugmentConfig, "random changes to each training image, drawn anew each epoch"
    )
    evaluation: EvaluationConfig = section(
        EvaluationConfig, "measured at the end, beside the plain test accuracy"
    )
    diagnostics: DiagnosticsConfig = section(
        DiagnosticsConfig,
        'per-layer measures at every evaluation point (see "What the layers see")',
    )
    data: DataConfig = section(DataConfig)

    @property
    def snapshot_cycles(self) -> range:
        """The cycles at whose ends the snapshot ensemble's networks are kept: the last
        `evaluation.snapshot_ensemble` (none when it is 0)."""
        cycles = self.training.cycles
        return range(cycles - self.evaluation.snapshot_ensemble + 1, cycles + 1)


def check_together(cfg: RunConfig) -> None:
    """Rules that span keys, checked once every key is known to be well-typed."""
    train, n_train = cfg.training, cfg.data.n_train
    dropout, hidden = cfg.model.dropout, cfg.model.hidden
    if isinstance(dropout, tuple) and len(dropout) != len(hidden):
        raise ConfigError(
            f"model.dropout has {len(dropout)} rates for {len(hidden)} hidden layers "
            f"(model.hidden {list(hidden)}); give one rate each, or one number for all"
        )
    if train.eta_min > train.eta_max:
        raise ConfigError(
            f"training.eta_min ({train.eta_min!r}) must be <= training.eta_max ({train.eta_max!r})"
        )
    if cfg.evaluation.snapshot_ensemble > train.cycles:
        raise ConfigError(
            f"evaluation.snapshot_ensemble ({cfg.evaluation.snapshot_ensemble}) must be <= "
            f"training.cycles ({train.cycles}): a snapshot is taken at the end of a cycle"
        )
    which = f"training images left after data.validation_size ({cfg.data.validation_size})"
    check_batch_size(train.batch_size, n_train, which)
    diagnostics = cfg.diagnostics
    if diagnostics.probe_size > n_train:
        raise ConfigError(
            f"diagnostics.probe_size must be <= the {n_train} training images left after "
            f"data.validation_size ({cfg.data.validation_size}), got {diagnostics.probe_size}"
        )
    layer = diagnostics.percentile_layer
    if layer is not None and layer > len(hidden):
        raise ConfigError(
            f"diagnostics.percentile_layer must name a hidden layer, 1 to {len(hidden)} "
            f"(model.hidden {list(hidden)}), got {layer}"
        )
    if train.n_s is None:
        steps = train.n_s_factor * n_train / train.batch_size
        if not math.isfinite(steps) or round(steps) < 1:
            raise ConfigError(
                f"training.n_s_factor ({train.n_s_factor!r}) gives {steps:.3g} steps per half "
                f"cycle with {n_train} images in batches of {train.batch_size}; it must give at "
                "least 1 (or set training.n_s)"
            )
