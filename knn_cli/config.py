"""Run settings: YAML plus `key=value` overrides in, frozen and validated dataclasses out.

Validation happens once, here, so the network, trainer and sweeps can trust every value without
re-checking it. Anything a user can get wrong becomes a one-line `ConfigError` that names the key,
the value given and what is allowed; no other exception escapes for any document or override.
"""

from __future__ import annotations

import difflib
import math
import numbers
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import yaml

from knn_cli.augment import PADDINGS
from knn_cli.data.cifar10 import TRAIN_IMAGES
from knn_cli.errors import ConfigError
from knn_cli.formatting import one_line
from knn_cli.network import DTYPES
from knn_cli.optim import UPDATE_RULES
from knn_cli.schedule import check_batch_size
from knn_cli.stack import BN_POSITIONS, INITS

_NAME_MAX = 100  # keeps `<timestamp>_<name>` run folders well inside file-name limits


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """Shape and initialisation of the network: `Network`'s keywords, by the same names."""

    hidden: tuple[int, ...] = (50, 50)
    batch_norm: bool = True
    bn_position: str = "before_relu"
    bn_alpha: float = 0.8
    bn_eps: float = 1e-12
    init: str = "he"
    sigma: float = 0.1
    dropout: float | tuple[float, ...] = 0.0  # one rate for every hidden layer, or one each


@dataclass(frozen=True, slots=True)
class TrainingConfig:
    """Mini-batch gradient descent with a cyclical learning rate."""

    lambda_: float = 0.005
    batch_size: int = 100
    eta_min: float = 1e-5
    eta_max: float = 0.1
    n_s: int | None = None
    n_s_factor: float = 5.0
    cycles: int = 2
    seed: int = 0
    eval_every: int | None = None
    dtype: str = "float32"
    label_smoothing: float = 0.0
    checkpoint_minutes: float | None = 5.0  # how often to save for --resume; null: never
    optimizer: str = "sgd"
    # The rule's hyperparameters by the names its class declares (`UpdateRule.settings`), every
    # one of them filled in; {} for SGD.
    optimizer_settings: Mapping[str, float] = field(default_factory=dict)

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
class DataConfig:
    """Where CIFAR-10 lives and how much of the training set is held out."""

    dir: str | None = None
    validation_size: int = 5000

    @property
    def n_train(self) -> int:
        """Training images left once the validation set has been held out."""
        return TRAIN_IMAGES - self.validation_size


@dataclass(frozen=True, slots=True)
class AugmentConfig:
    """Random changes to each training image, drawn anew every time it is used."""

    flip: bool = False  # mirror left to right with probability 1/2
    translate: int = 0  # shift by up to this many pixels each way
    padding: str = "zero"  # what shifts in: zero (the training mean) or the edge pixels


@dataclass(frozen=True, slots=True)
class EvaluationConfig:
    """What is measured at the end beyond the plain test accuracy."""

    precise_bn: bool = False  # batch-norm statistics of the whole training set, not averages
    test_time_flip: bool = False  # also the accuracy averaging each image with its mirror
    # The networks at the ends of the last m cycles, saved, and the accuracy of their mean
    # prediction reported (a snapshot ensemble, Huang et al. 2017); 0: none.
    snapshot_ensemble: int = 0
    # Training rows the training-set curve is measured on at every evaluation point but the
    # last: null, all of them; a number, a fixed sample (the last point measures them all); 0,
    # no training-set curve (a search trial, whose curve nothing reads).
    train_curve_rows: int | None = None


@dataclass(frozen=True, slots=True)
class DiagnosticsConfig:
    """What is measured of the layers at every evaluation point, on a fixed probe batch
    (`knn_cli/diagnostics.py`); observation only, it never changes what training computes."""

    layers: bool = True  # per-layer activations, dead units, weight and gradient norms
    probe_size: int = 1000  # training rows, chosen once from the run's seed
    landscape: bool = False  # the loss and gradient along the gradient (extra passes)
    landscape_steps: tuple[float, ...] | None = None  # step sizes; null: the schedule's rates
    percentile_layer: int | None = None  # hidden layer of layers.png's percentiles; null: last

    def steps_for(self, eta_min: float, eta_max: float) -> tuple[float, ...]:
        """The landscape's step sizes: as set, else five spanning the schedule's rates."""
        if self.landscape_steps is not None:
            return self.landscape_steps
        low = eta_min if eta_min > 0 else eta_max / 1e4
        return tuple(float(t) for t in np.geomspace(low, eta_max, LANDSCAPE_STEPS))


LANDSCAPE_STEPS = 5


@dataclass(frozen=True, slots=True)
class RunConfig:
    """Everything one training run needs; saved with the run so it can be reproduced."""

    name: str = "run"
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    data: DataConfig = field(default_factory=DataConfig)

    @property
    def snapshot_cycles(self) -> range:
        """The cycles at whose ends the snapshot ensemble's networks are kept: the last
        `evaluation.snapshot_ensemble` (none when it is 0)."""
        cycles = self.training.cycles
        return range(cycles - self.evaluation.snapshot_ensemble + 1, cycles + 1)


# --- one parser per kind of value -------------------------------------------------------------
# A parser takes the dotted key (for the message) and the raw YAML value, and returns the typed
# value or raises ConfigError.

Parser = Callable[[str, Any], Any]


def _show(value: Any) -> str:
    """A short, single-line rendering of a user's value, safe for any YAML-made object."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and value.bit_length() > 200:  # repr fails past 4300 digits
        return f"an integer of about {int(value.bit_length() * math.log10(2))} digits"
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # a huge integer inside, or thousands of levels deep
        return f"{_kind(value)} too large or too deeply nested to show"
    return text if len(text) <= 60 else text[:57] + "..."


_KINDS = {list: "a list", tuple: "a list", dict: "a mapping", str: "a string", bool: "a boolean"}
_KINDS |= {int: "an integer", float: "a number", type(None): "null"}


def _kind(value: Any) -> str:
    return _KINDS.get(type(value), f"a {type(value).__name__}")


def _invalid(key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{key} must be {allowed}, got {_show(value)}")


def _integer(low: int, below: int | None = None, *, nullable: bool = False) -> Parser:
    allowed = f"an integer >= {low}" + (f" and < {below}" if below is not None else "")
    allowed += " or null" if nullable else ""

    def parse(key: str, value: Any) -> int | None:
        if value is None and nullable:
            return None
        # bool is an int subclass, but `batch_size: true` is a mistake, not 1.
        if (
            isinstance(value, bool)
            or not isinstance(value, numbers.Integral)
            or value < low
            or (below is not None and value >= below)
        ):
            raise _invalid(key, value, allowed)
        return int(value)

    return parse


def _as_float(value: Any) -> float | None:
    """The value as a finite float, or None; strings count because YAML reads `1e-5` as one."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real | str):
        return None
    try:
        number = float(value)
    except (ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _number(low: float, *, low_open: bool = False, below: float | None = None) -> Parser:
    allowed = f"a number {'>' if low_open else '>='} {low}"
    allowed += f" and < {below}" if below is not None else ""

    def parse(key: str, value: Any) -> float:
        number = _as_float(value)
        if (
            number is None
            or number < low
            or (low_open and number == low)
            or (below is not None and number >= below)
        ):
            raise _invalid(key, value, allowed)
        return number

    return parse


def _number_or_null(low: float, *, low_open: bool = False) -> Parser:
    number = _number(low, low_open=low_open)

    def parse(key: str, value: Any) -> float | None:
        return None if value is None else number(key, value)

    return parse


def _choice(*options: str) -> Parser:
    def parse(key: str, value: Any) -> str:
        if not isinstance(value, str) or value not in options:
            raise ConfigError(f"{key} must be one of: {', '.join(options)}; got {_show(value)}")
        return str(value)

    return parse


def _update_rule(key: str, value: Any) -> str:
    """A name in `UPDATE_RULES` as it is now: a rule registered after import counts."""
    return _choice(*UPDATE_RULES)(key, value)


def _settings_mapping(key: str, value: Any) -> dict[str, Any]:
    """A mapping of setting names to values, checked against the rule once it is known
    (`_resolve_optimizer_settings`); null is no settings."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise _invalid(key, value, "a mapping of setting names to numbers, e.g. {momentum: 0.9}")
    return dict(value)


def _boolean(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _invalid(key, value, "true or false")
    return value


def _widths(key: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, list | tuple):
        raise _invalid(key, value, "a list of hidden-layer widths such as [50, 50], or []")
    width = _integer(1)
    return tuple(width(f"{key}[{i}]", w) for i, w in enumerate(value))


def _rate_or_rates(key: str, value: Any) -> float | tuple[float, ...]:
    rate = _number(0, below=1)
    if isinstance(value, list | tuple):
        return tuple(rate(f"{key}[{i}]", v) for i, v in enumerate(value))
    if _as_float(value) is None:
        raise _invalid(key, value, "a rate in [0, 1) or a list of them, one per hidden layer")
    return rate(key, value)


def _step_sizes_or_null(key: str, value: Any) -> tuple[float, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list | tuple) or not value:
        raise _invalid(key, value, "a non-empty list of step sizes > 0, or null")
    step = _number(0, low_open=True)
    return tuple(step(f"{key}[{i}]", v) for i, v in enumerate(value))


def _folder_or_null(key: str, value: Any) -> str | None:
    # A NUL byte would only fail later, inside os calls, with a ValueError.
    if value is not None and (not isinstance(value, str) or not value or "\0" in value):
        raise _invalid(key, value, "a folder path or null")
    return None if value is None else str(value)


_NAME_PATTERN = re.compile(rf"[A-Za-z0-9._-]{{1,{_NAME_MAX}}}")


def _name(key: str, value: Any) -> str:
    if not isinstance(value, str) or not _NAME_PATTERN.fullmatch(value):
        allowed = f"a name of letters, digits, '.', '_' and '-' (1 to {_NAME_MAX} characters)"
        raise _invalid(key, value, allowed)
    return str(value)


# --- the schema: one entry per YAML key; defaults live on the dataclasses ---------------------


class _Field(NamedTuple):
    key: str
    parse: Parser
    rename: str | None = None  # the dataclass attribute, where it differs from the YAML key

    @property
    def attr(self) -> str:
        return self.rename or self.key


_SECTIONS: dict[str, tuple[type, tuple[_Field, ...]]] = {
    "model": (
        ModelConfig,
        (
            _Field("hidden", _widths),
            _Field("batch_norm", _boolean),
            _Field("bn_position", _choice(*BN_POSITIONS)),
            _Field("bn_alpha", _number(0, below=1)),
            _Field("bn_eps", _number(0, low_open=True)),
            _Field("init", _choice(*INITS)),
            _Field("sigma", _number(0, low_open=True)),
            _Field("dropout", _rate_or_rates),
        ),
    ),
    "training": (
        TrainingConfig,
        (
            _Field("lambda", _number(0), rename="lambda_"),
            _Field("batch_size", _integer(1)),
            _Field("eta_min", _number(0)),
            _Field("eta_max", _number(0, low_open=True)),
            _Field("n_s", _integer(1, nullable=True)),
            _Field("n_s_factor", _number(0, low_open=True)),
            _Field("cycles", _integer(1)),
            _Field("seed", _integer(0)),
            _Field("eval_every", _integer(1, nullable=True)),
            _Field("dtype", _choice(*DTYPES)),
            _Field("label_smoothing", _number(0, below=1)),
            _Field("checkpoint_minutes", _number_or_null(0, low_open=True)),
            _Field("optimizer", _update_rule),
            _Field("optimizer_settings", _settings_mapping),
        ),
    ),
    "augment": (
        AugmentConfig,
        (
            _Field("flip", _boolean),
            _Field("translate", _integer(0, 16)),
            _Field("padding", _choice(*PADDINGS)),
        ),
    ),
    "evaluation": (
        EvaluationConfig,
        (
            _Field("precise_bn", _boolean),
            _Field("test_time_flip", _boolean),
            _Field("snapshot_ensemble", _integer(0)),
            _Field("train_curve_rows", _integer(0, nullable=True)),
        ),
    ),
    "diagnostics": (
        DiagnosticsConfig,
        (
            _Field("layers", _boolean),
            _Field("probe_size", _integer(1)),
            _Field("landscape", _boolean),
            _Field("landscape_steps", _step_sizes_or_null),
            _Field("percentile_layer", _integer(1, nullable=True)),
        ),
    ),
    "data": (
        DataConfig,
        (
            _Field("dir", _folder_or_null),
            _Field("validation_size", _integer(1, TRAIN_IMAGES)),
        ),
    ),
}
_TOP_KEYS = ("name", *_SECTIONS)
# The update rules' settings as earlier versions spelled them, one key each beside
# `training.optimizer`; config files of earlier runs hold all four. Still read: each reaches the
# rule that declares the setting of that name, and is ignored by the others, as it was.
LEGACY_RULE_KEYS = {"momentum": "momentum", "beta1": "beta1", "beta2": "beta2", "adam_eps": "eps"}
# What the version with those keys wrote into every run's config.yaml, whatever the rule.
LEGACY_DEFAULTS = {"momentum": 0.9, "beta1": 0.9, "beta2": 0.999, "adam_eps": 1e-8}
_MAPPING_FIELDS = {"training.optimizer_settings"}  # overridden one entry at a time
_SETTING_KEYS = (
    "name",
    *(f"{s}.{f.key}" for s, (_, fs) in _SECTIONS.items() for f in fs),
    *(f"training.{key}" for key in LEGACY_RULE_KEYS),
)


def _did_you_mean(key: Any, allowed: Sequence[str], prefix: str) -> str:
    if not isinstance(key, str):
        return ""
    close = difflib.get_close_matches(key, allowed, n=1)
    if close:
        return f" (did you mean {prefix + close[0]!r}?)"
    # A setting written outside its section, e.g. `lambda: 0.01` at the top level.
    owners = [s for s, (_, fs) in _SECTIONS.items() if prefix == "" and key in {f.key for f in fs}]
    return f" (did you mean '{owners[0]}.{key}'?)" if owners else ""


def _reject_unknown(mapping: Mapping[Any, Any], allowed: Sequence[str], prefix: str) -> None:
    for key in mapping:
        if not isinstance(key, str) or key not in allowed:
            dotted = prefix + (key if isinstance(key, str) else _show(key))
            hint = _did_you_mean(key, allowed, prefix)
            raise ConfigError(f"unknown config key {_show(dotted)}{hint}")


def _section_mapping(section: str, raw: Any) -> Mapping[Any, Any]:
    """The section's settings; an empty `model:` (null) means all defaults, as it reads."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{section} must be a mapping of settings, got {_kind(raw)}")
    return raw


def _parse_section(section: str, raw: Any) -> Any:
    cls, fields = _SECTIONS[section]
    settings = dict(_section_mapping(section, raw))
    legacy = {}
    if section == "training":
        legacy = {key: settings.pop(key) for key in LEGACY_RULE_KEYS if key in settings}
    _reject_unknown(settings, [f.key for f in fields], prefix=f"{section}.")
    values = {
        f.attr: f.parse(f"{section}.{f.key}", settings[f.key]) for f in fields if f.key in settings
    }
    if section == "training":
        values["optimizer_settings"] = _resolve_optimizer_settings(
            values.get("optimizer", "sgd"), values.get("optimizer_settings", {}), legacy
        )
    return cls(**values)


def _resolve_optimizer_settings(
    optimizer: str, given: Mapping[str, Any], legacy: Mapping[str, Any]
) -> dict[str, float]:
    """Every setting the rule declares, from `given`, else from an earlier version's key, else
    its default; a setting the rule does not declare is an error, and so is a legacy key the
    rule does not use unless it holds that version's default (every config that version wrote
    holds all four: those still load)."""
    declared = UPDATE_RULES[optimizer].settings
    where = "training.optimizer_settings"
    for old_key, value in legacy.items():
        unused = LEGACY_RULE_KEYS[old_key] not in declared
        if unused and _as_float(value) != LEGACY_DEFAULTS[old_key]:
            users = [
                n for n, rule in UPDATE_RULES.items() if LEGACY_RULE_KEYS[old_key] in rule.settings
            ]
            raise ConfigError(
                f"training.{old_key} ({_show(value)}): the {optimizer} rule has no setting "
                f"{LEGACY_RULE_KEYS[old_key]!r}; it is used by training.optimizer "
                f"{', '.join(users)}"
            )
    for name in given:
        if name not in declared:
            close = difflib.get_close_matches(name, list(declared), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            known = ", ".join(declared) or "none"
            raise ConfigError(
                f"{where}: {optimizer} has no setting {_show(name)}{hint}; its settings: {known}"
            )
    resolved = {}
    for name, setting in declared.items():
        old_key = next((k for k, v in LEGACY_RULE_KEYS.items() if v == name), None)
        if name in given:
            key, value = f"{where}.{name}", given[name]
            if old_key in legacy and _as_float(legacy[old_key]) != _as_float(value):
                raise ConfigError(
                    f"training.{old_key} ({_show(legacy[old_key])}) and {key} "
                    f"({_show(value)}) disagree; keep {key} alone"
                )
        elif old_key in legacy:
            key, value = f"training.{old_key}", legacy[old_key]
        else:
            resolved[name] = setting.default
            continue
        number = _as_float(value)
        if number is None or not setting.allows(number):
            raise _invalid(key, value, setting.describe())
        resolved[name] = number
    return resolved


def _check_together(cfg: RunConfig) -> None:
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


# --- YAML and overrides -----------------------------------------------------------------------


def _load_yaml(source: str | bytes, where: str) -> Any:
    try:
        return yaml.safe_load(source)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = one_line(err.problem or str(err))
        raise ConfigError(f"{where} is not valid YAML: {problem}{at}") from err
    except Exception as err:
        # Not only YAMLError: PyYAML lets some failures through as plain exceptions, e.g. an
        # integer with more digits than Python converts (ValueError), a document nested
        # thousands of levels deep (RecursionError) or `!!timestamp x` (AttributeError).
        # Whatever the cause, it lies in the user's text, so it is the user's error.
        raise ConfigError(f"{where} is not valid YAML: {one_line(str(err))}") from err


def _apply_override(doc: dict[Any, Any], text: Any) -> None:
    if not isinstance(text, str):
        raise ConfigError(
            f"an override must be a string like 'training.lambda=0.01', got {_show(text)}"
        )
    key, equals, raw = text.partition("=")
    key = key.strip()
    if not equals or not key:
        raise ConfigError(
            f"override {_show(text)} must look like key=value, e.g. training.lambda=0.01"
        )
    if key in _SECTIONS:
        first = _SECTIONS[key][1][0].key
        raise ConfigError(f"override {_show(text)} must set one setting, e.g. {key}.{first}=...")
    mapping, _, entry = key.rpartition(".")
    if mapping in _MAPPING_FIELDS and entry:  # one entry of a mapping, e.g. a rule's setting
        value = _load_yaml(raw, f"the value in override {_show(text)}")
        section, _, field_key = mapping.partition(".")
        settings = dict(_section_mapping(section, doc.get(section)))
        held = settings.get(field_key)
        settings[field_key] = {**(held if isinstance(held, Mapping) else {}), entry: value}
        doc[section] = settings
        return
    if key not in _SETTING_KEYS:
        hint = _did_you_mean(key, _SETTING_KEYS, "")
        raise ConfigError(f"override {_show(text)}: unknown config key {_show(key)}{hint}")
    value = _load_yaml(raw, f"the value in override {_show(text)}")
    section, _, leaf = key.rpartition(".")
    if section:
        doc[section] = {**_section_mapping(section, doc.get(section)), leaf: value}
    else:
        doc[leaf] = value


def _name_from_stem(stem: str) -> str:
    """A valid run name from a file name: `my config.yaml` must not fail over an unwritten key."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem)[:_NAME_MAX] or "run"


# --- public API -------------------------------------------------------------------------------


def config_from_dict(
    doc: Mapping[Any, Any] | None,
    overrides: Sequence[str] = (),
    default_name: str = "run",
) -> RunConfig:
    """Validate a parsed YAML document (overrides applied on top) into a `RunConfig`."""
    if doc is None:
        doc = {}
    if not isinstance(doc, Mapping):
        raise ConfigError(f"a config must be a mapping of settings, got {_kind(doc)}")
    doc = dict(doc)
    for text in [overrides] if isinstance(overrides, str) else overrides:
        _apply_override(doc, text)
    _reject_unknown(doc, _TOP_KEYS, prefix="")
    cfg = RunConfig(
        name=_name("name", doc.get("name", default_name)),
        model=_parse_section("model", doc.get("model")),
        training=_parse_section("training", doc.get("training")),
        augment=_parse_section("augment", doc.get("augment")),
        evaluation=_parse_section("evaluation", doc.get("evaluation")),
        diagnostics=_parse_section("diagnostics", doc.get("diagnostics")),
        data=_parse_section("data", doc.get("data")),
    )
    _check_together(cfg)
    return cfg


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a YAML config file (None: all defaults); the run is named after the file by default."""
    if path is None:
        return config_from_dict({}, overrides)
    path = Path(path)
    shown = repr(str(path))  # in full: a cut path does not say which file
    try:
        source = path.read_bytes()  # bytes, so PyYAML can honour a UTF-16 byte-order mark
    except FileNotFoundError as err:
        raise ConfigError(f"config file not found: {shown}") from err
    except (OSError, ValueError) as err:  # ValueError: a NUL byte in the path
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise ConfigError(f"cannot read config file {shown}: {one_line(reason)}") from err
    doc = _load_yaml(source, f"config file {shown}")
    if doc is not None and not isinstance(doc, Mapping):
        raise ConfigError(f"config file {shown} must hold a mapping of settings, got {_kind(doc)}")
    return config_from_dict(doc, overrides, default_name=_name_from_stem(path.stem))


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    """Plain data under the YAML key names, so a saved config loads back to an equal one."""
    doc: dict[str, Any] = {"name": cfg.name}
    for section, (_, fields) in _SECTIONS.items():
        values = getattr(cfg, section)
        doc[section] = {f.key: _plain(getattr(values, f.attr)) for f in fields}
    return doc


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    return list(value) if isinstance(value, tuple) else value


def with_overrides(cfg: RunConfig, overrides: Sequence[str]) -> RunConfig:
    """A validated variant of `cfg`, e.g. a sweep trial; `dataclasses.replace` would skip checks."""
    return config_from_dict(config_to_dict(cfg), overrides)


class _Dumper(yaml.SafeDumper):
    """Safe YAML that keeps lists on one line (`hidden: [50, 50]`), as people write them."""


_Dumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, True)
)


def dump_config(cfg: RunConfig) -> str:
    """YAML text in schema order, for the run folder and for `knn`'s users to copy from."""
    return yaml.dump(config_to_dict(cfg), Dumper=_Dumper, sort_keys=False)
