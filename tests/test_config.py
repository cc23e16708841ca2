"""Tests for knn_cli.config: YAML and overrides in, validated frozen dataclasses out."""

from __future__ import annotations

import dataclasses
import datetime
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from knn_cli.config import (
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainingConfig,
    config_from_dict,
    config_to_dict,
    dump_config,
    load_config,
    with_overrides,
)
from knn_cli.errors import ConfigError
from knn_cli.schedule import total_steps


def write(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(doc: Any, overrides: list[str] | tuple[str, ...] = ()) -> str:
    with pytest.raises(ConfigError) as info:
        config_from_dict(doc, overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


# A config with every value away from its default, so a dropped field cannot hide.
NON_DEFAULT = {
    "name": "sweep-3.b_x",
    "model": {
        "hidden": [30, 20, 10],
        "batch_norm": False,
        "bn_position": "after_relu",
        "bn_alpha": 0.5,
        "bn_eps": 1e-8,
        "init": "normal",
        "sigma": 0.001,
        "dropout": 0.25,
    },
    "training": {
        "lambda": 0.0123,
        "batch_size": 64,
        "eta_min": 0.0,
        "eta_max": 0.5,
        "n_s": 800,
        "n_s_factor": 2.5,
        "cycles": 3,
        "seed": 42,
        "eval_every": 17,
        "dtype": "float64",
        "label_smoothing": 0.05,
        "checkpoint_minutes": 0.5,
        "optimizer": "adamw",
        "optimizer_settings": {"beta1": 0.8, "beta2": 0.99, "eps": 1e-6},
    },
    "augment": {"flip": True, "translate": 3, "padding": "edge"},
    "evaluation": {
        "precise_bn": True,
        "test_time_flip": True,
        "snapshot_ensemble": 2,
        "train_curve_rows": 5000,
    },
    "diagnostics": {
        "layers": False,
        "probe_size": 500,
        "landscape": True,
        "landscape_steps": [0.001, 0.01],
        "percentile_layer": 1,
    },
    "data": {"dir": "/data/cifar-10-batches-py", "validation_size": 1000},
}


# --- defaults and loading --------------------------------------------------------------------


def test_defaults_follow_the_schema() -> None:
    cfg = load_config(None)
    assert cfg.name == "run"
    assert cfg.model == ModelConfig(
        hidden=(50, 50), batch_norm=True, bn_alpha=0.8, bn_eps=1e-12, init="he", sigma=0.1
    )
    t = cfg.training
    assert (t.lambda_, t.batch_size, t.eta_min, t.eta_max) == (0.005, 100, 1e-5, 0.1)
    assert (t.n_s, t.n_s_factor, t.cycles, t.seed, t.eval_every) == (None, 5, 2, 0, None)
    assert t.dtype == "float32"
    assert cfg.data == DataConfig(dir=None, validation_size=5000)
    assert cfg.data.n_train == 45000
    assert config_from_dict({}) == cfg == RunConfig()


def test_configs_are_frozen() -> None:
    cfg = load_config(None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.training.batch_size = 5  # type: ignore[misc]


def test_load_file_reads_values_and_names_run_after_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "model:\n  hidden: []\n  batch_norm: false\n"
        "training:\n  lambda: 0.02\n  eta_min: 1e-4\n  cycles: 3\n"
        "data:\n  validation_size: 1000\n",
        name="linear_k1.yaml",
    )
    cfg = load_config(path)
    assert cfg.name == "linear_k1"
    assert cfg.model.hidden == ()
    assert cfg.model.batch_norm is False
    assert cfg.training.lambda_ == 0.02
    assert cfg.training.eta_min == 1e-4  # PyYAML reads `1e-4` as a string
    assert cfg.training.cycles == 3
    assert cfg.training.batch_size == 100  # untouched keys keep their defaults
    assert cfg.data.n_train == 49000


def test_name_in_file_wins_over_file_stem(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "name: mine\n")).name == "mine"


def test_file_stem_that_is_not_a_valid_name_is_cleaned(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "", name="my config (2).yaml")).name == "my_config_2_"


def test_empty_file_and_empty_sections_mean_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "# nothing yet\n")).model == ModelConfig()
    assert load_config(write(tmp_path, "model:\ntraining:\n")).training == TrainingConfig()


# --- overrides ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "section", "attr", "expected"),
    [
        ("training.lambda=0.01", "training", "lambda_", 0.01),
        ("training.eta_min=1e-6", "training", "eta_min", 1e-6),
        ("training.batch_size=250", "training", "batch_size", 250),
        ("training.n_s=800", "training", "n_s", 800),
        ("training.dtype=float64", "training", "dtype", "float64"),
        ("model.hidden=[50,30, 20]", "model", "hidden", (50, 30, 20)),
        ("model.hidden=[]", "model", "hidden", ()),
        ("model.batch_norm=false", "model", "batch_norm", False),
        ("model.init=normal", "model", "init", "normal"),
        ("data.dir=/tmp/cifar", "data", "dir", "/tmp/cifar"),
        ("data.dir=null", "data", "dir", None),
        (" data.validation_size = 2000", "data", "validation_size", 2000),
    ],
)
def test_each_kind_of_override(override: str, section: str, attr: str, expected: Any) -> None:
    cfg = config_from_dict({"data": {"dir": "/somewhere"}}, [override])
    assert getattr(getattr(cfg, section), attr) == expected


def test_name_override() -> None:
    assert config_from_dict({}, ["name=lambda-search"]).name == "lambda-search"


def test_overrides_apply_after_the_file_in_order(tmp_path: Path) -> None:
    path = write(tmp_path, "training:\n  lambda: 0.1\n  cycles: 4\n")
    cfg = load_config(path, ["training.lambda=0.2", "training.lambda=0.3"])
    assert cfg.training.lambda_ == 0.3
    assert cfg.training.cycles == 4


def test_override_keeps_other_keys_of_the_section() -> None:
    cfg = config_from_dict({"model": {"sigma": 0.01}}, ["model.init=normal"])
    assert (cfg.model.init, cfg.model.sigma) == ("normal", 0.01)


def test_with_overrides_returns_a_validated_copy() -> None:
    base = config_from_dict(NON_DEFAULT)
    changed = with_overrides(base, ["training.lambda=0.5", "model.hidden=[10]"])
    assert changed.training.lambda_ == 0.5
    assert changed.model.hidden == (10,)
    assert changed.name == base.name
    assert base.training.lambda_ == 0.0123
    with pytest.raises(ConfigError, match=r"training\.lambda"):
        with_overrides(base, ["training.lambda=-1"])


# --- round trip --------------------------------------------------------------------------------


def test_round_trip_through_dict_and_yaml(tmp_path: Path) -> None:
    cfg = config_from_dict(NON_DEFAULT)
    doc = config_to_dict(cfg)
    assert doc == NON_DEFAULT  # YAML key names (`lambda`), lists not tuples
    assert config_from_dict(doc) == cfg
    text = dump_config(cfg)
    assert yaml.safe_load(text) == NON_DEFAULT
    assert load_config(write(tmp_path, text, name="other.yaml")) == cfg


def test_dump_keeps_schema_order() -> None:
    text = dump_config(RunConfig())
    keys = [line.split(":")[0] for line in text.splitlines() if not line.startswith(" ")]
    assert keys == ["name", "model", "training", "augment", "evaluation", "diagnostics", "data"]


# --- derived values ----------------------------------------------------------------------------


def test_resolve_n_s_from_factor() -> None:
    cfg = config_from_dict({})
    assert cfg.training.resolve_n_s(cfg.data.n_train) == 2250  # 5 * 45000 / 100
    half = config_from_dict({}, ["training.batch_size=200"]).training
    assert half.resolve_n_s(45000) == 1125
    assert config_from_dict({}, ["training.n_s=700"]).training.resolve_n_s(45000) == 700


def test_eval_every_and_total_steps() -> None:
    training = config_from_dict({}).training
    assert training.resolve_eval_every(2250) == 450  # 10 points per cycle of 2 * 2250 steps
    assert training.resolve_eval_every(2) == 1  # never 0
    assert total_steps(2250, training.cycles) == 2 * 2250 * 2
    explicit = config_from_dict({}, ["training.eval_every=33"]).training
    assert explicit.resolve_eval_every(2250) == 33


# --- bad input: one test per rule, checking the message names key, value and what is allowed ---


def test_unknown_key_suggests_the_close_one() -> None:
    message = error_of({"training": {"lamda": 0.1}})
    assert message == "unknown config key 'training.lamda' (did you mean 'training.lambda'?)"


def test_unknown_section_and_top_level_key() -> None:
    assert "did you mean 'training'" in error_of({"trainig": {}})
    assert "did you mean 'training.lambda'" in error_of({"lambda": 0.1})
    assert "unknown config key 'colour'" in error_of({"colour": "red"})


def test_unknown_override_key_suggests_the_close_one() -> None:
    message = error_of({}, ["training.lamda=0.1"])
    assert "unknown config key 'training.lamda'" in message
    assert "did you mean 'training.lambda'" in message


@pytest.mark.parametrize("override", ["training.lambda", "=3", " =3", ""])
def test_malformed_override(override: str) -> None:
    assert "key=value" in error_of({}, [override])


def test_override_of_a_whole_section_is_refused() -> None:
    assert "model.hidden" in error_of({}, ["model=[1]"])


def test_override_value_that_is_not_yaml() -> None:
    message = error_of({}, ["model.hidden=[50,"])
    assert "model.hidden=[50," in message
    assert "not valid YAML" in message


@pytest.mark.parametrize("value", ["abc", True, 2.5, None, 0, -3])
def test_batch_size_must_be_a_positive_integer(value: Any) -> None:
    message = error_of({"training": {"batch_size": value}})
    assert message.startswith("training.batch_size must be an integer >= 1, got ")
    assert message.endswith({True: "true", None: "null"}.get(value, repr(value)))


def test_batch_size_cannot_exceed_training_images() -> None:
    message = error_of({"training": {"batch_size": 45001}})
    assert "training.batch_size" in message
    assert "45000" in message
    assert "45001" in message
    assert config_from_dict({"training": {"batch_size": 45000}}).training.batch_size == 45000


def test_numeric_strings_are_accepted_for_floats_only() -> None:
    assert config_from_dict({"training": {"lambda": "1e-5"}}).training.lambda_ == 1e-5
    assert config_from_dict({"training": {"eta_max": 1}}).training.eta_max == 1.0
    assert "got 'abc'" in error_of({"training": {"lambda": "abc"}})
    assert "got '100'" in error_of({"training": {"batch_size": "100"}})


def test_eta_min_above_eta_max() -> None:
    message = error_of({"training": {"eta_min": 0.2, "eta_max": 0.1}})
    assert message == "training.eta_min (0.2) must be <= training.eta_max (0.1)"


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("lambda", -0.1, ">= 0"),
        ("eta_min", -1e-5, ">= 0"),
        ("eta_max", 0, "> 0"),
        ("n_s_factor", 0, "> 0"),
        ("lambda", float("nan"), ">= 0 (a finite one)"),
        ("eta_max", float("inf"), "> 0 (a finite one)"),
        ("lambda", ".inf", ">= 0"),
        pytest.param("lambda", 10**5000, ">= 0", id="huge-int"),
    ],
)
def test_bad_training_numbers(key: str, value: Any, allowed: str) -> None:
    message = error_of({"training": {key: value}})
    assert message.startswith(f"training.{key} must be a number {allowed}, got ")


@pytest.mark.parametrize(
    ("key", "value"),
    [("n_s", 0), ("cycles", 0), ("eval_every", -1), ("seed", -1), ("cycles", 1.5)],
)
def test_bad_training_integers(key: str, value: Any) -> None:
    message = error_of({"training": {key: value}})
    assert f"training.{key} must be an integer" in message
    assert message.endswith(f"got {value!r}")


def test_n_s_factor_that_gives_no_steps() -> None:
    assert "training.n_s_factor" in error_of({"training": {"n_s_factor": 1e-9}})


def test_hidden_must_be_a_list() -> None:
    message = error_of({"model": {"hidden": 50}})
    assert message.startswith("model.hidden must be a list")
    assert message.endswith("got 50")


@pytest.mark.parametrize(
    ("width", "shown"), [(None, "null"), ("", "''"), ("wide", "'wide'"), (0, "0"), (-5, "-5")]
)
def test_hidden_width_must_be_a_positive_integer(width: Any, shown: str) -> None:
    message = error_of({"model": {"hidden": [50, width]}})
    assert message == f"model.hidden[1] must be an integer >= 1, got {shown}"


@pytest.mark.parametrize("sigma", [0, -0.1, "x"])
def test_sigma_must_be_positive(sigma: Any) -> None:
    assert error_of({"model": {"sigma": sigma}}).startswith("model.sigma must be a number > 0")


@pytest.mark.parametrize("alpha", [-0.1, 1, 1.5])
def test_bn_alpha_range(alpha: Any) -> None:
    message = error_of({"model": {"bn_alpha": alpha}})
    assert message == f"model.bn_alpha must be a number >= 0 and < 1, got {alpha!r}"
    assert config_from_dict({"model": {"bn_alpha": 0}}).model.bn_alpha == 0.0


def test_bn_eps_positive() -> None:
    assert "model.bn_eps must be a number > 0" in error_of({"model": {"bn_eps": 0}})


def test_batch_norm_must_be_boolean() -> None:
    assert "model.batch_norm must be true or false, got 1" in error_of({"model": {"batch_norm": 1}})


def test_unknown_init() -> None:
    message = error_of({"model": {"init": "xavier"}})
    assert message == "model.init must be one of: he, normal; got 'xavier'"


def test_unknown_dtype() -> None:
    message = error_of({"training": {"dtype": "float16"}})
    assert message == "training.dtype must be one of: float32, float64; got 'float16'"


@pytest.mark.parametrize(
    ("value", "kind"), [([1, 2], "a list"), ("big", "a string"), (3, "an integer")]
)
def test_section_must_be_a_mapping(value: Any, kind: str) -> None:
    assert error_of({"model": value}) == f"model must be a mapping of settings, got {kind}"


@pytest.mark.parametrize("name", ["has space", "a/b", "", 7, "x" * 101])
def test_bad_name(name: Any) -> None:
    assert error_of({"name": name}).startswith("name must be a name of letters, digits")


@pytest.mark.parametrize("size", [0, 50000, "5000"])
def test_bad_validation_size(size: Any) -> None:
    message = error_of({"data": {"validation_size": size}})
    assert message.startswith("data.validation_size must be an integer >= 1 and < 50000")


@pytest.mark.parametrize("folder", [3, "", ["a"]])
def test_bad_data_dir(folder: Any) -> None:
    assert error_of({"data": {"dir": folder}}).startswith("data.dir must be a folder path or null")


def test_odd_yaml_values_are_config_errors() -> None:
    assert "datetime.date(2024, 1, 2)" in error_of({"name": datetime.date(2024, 1, 2)})
    assert "unknown config key" in error_of({1: 2})
    assert "too large" in error_of({"name": [10**5000]})
    assert "model.hidden must be a list" in error_of({"model": {"hidden": {1, 2}}})
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    assert "model.hidden[0]" in error_of({"model": {"hidden": deep}})


def test_document_must_be_a_mapping() -> None:
    assert "got a list" in error_of([1, 2])


# --- file problems -----------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"not found.*nope\.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_folder_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path)


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "model:\n  hidden: [50, 50\ntraining: {}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "not valid YAML" in str(info.value)
    assert "line " in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("text", ["- 1\n- 2\n", "just words\n", "42\n"])
def test_file_that_is_not_a_mapping(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match="must hold a mapping of settings"):
        load_config(write(tmp_path, text))


@pytest.mark.parametrize(
    "text",
    [
        "!!python/object:os.system {}\n",
        "a: !!python/name:os.system\n",
        "a: " + "1" * 5000,  # more digits than Python converts to int
        "name: !!timestamp x\n",  # PyYAML fails here with an AttributeError
        "name: !!float abc\n",
    ],
)
def test_unsafe_or_unreadable_yaml(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, text))


def test_deeply_nested_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_config(write(tmp_path, "a: " + "[" * 5000 + "]" * 5000))


# --- property: any document and overrides give a RunConfig or a one-line ConfigError ----------

SETTING_KEYS = ["name"] + [
    f"{s}.{k}" for s, keys in NON_DEFAULT.items() if s != "name" for k in keys
]

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**6), max_value=10**6)
    | st.integers().map(lambda i: i * 10**4400)  # past Python's int-to-str limit
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from(["1e-5", "abc", "he", "normal", "float64", "", "nan", "1e999", "run-1"])
    | st.text(max_size=20)
    | st.dates()
    | st.binary(max_size=5)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.frozensets(st.integers(0, 60), max_size=3)
        | st.dictionaries(st.text(max_size=8) | st.integers(), inner, max_size=3)
    ),
    max_leaves=10,
)
# Near-valid documents reach the deep checks; random ones exercise the shape checks.
near_valid = st.fixed_dictionaries(
    {},
    optional={
        "name": values,
        **{
            section: st.fixed_dictionaries({}, optional=dict.fromkeys(keys, values)) | values
            for section, keys in NON_DEFAULT.items()
            if section != "name"
        },
    },
)
documents = (
    near_valid | st.dictionaries(st.sampled_from(list(NON_DEFAULT)) | scalars, values) | values
)


def _yaml_text(value: Any) -> str:
    try:
        return yaml.safe_dump(value, default_flow_style=True).strip()
    except (yaml.YAMLError, ValueError, RecursionError):
        return "x"


override_strings = st.builds(
    lambda key, value: f"{key}={value}",
    st.sampled_from(SETTING_KEYS) | st.text(max_size=15),
    st.text(max_size=15) | values.map(_yaml_text),
) | st.text(max_size=30)


tagged_yaml = st.builds(
    "name: {} {}".format,
    st.sampled_from(["!!timestamp", "!!binary", "!!int", "!!float", "!!set", "!!omap", "!!pairs"])
    | st.sampled_from(["!!bool", "!!null", "!!seq", "!!map", "!!merge", "!!value", "!x", "!!"]),
    st.text(max_size=20),
)


def _assert_is_run_config_or_config_error(doc: Any, overrides: list[str]) -> None:
    try:
        cfg = config_from_dict(doc, overrides)
    except ConfigError as err:
        assert "\n" not in str(err)
        return
    assert isinstance(cfg, RunConfig)
    assert config_from_dict(config_to_dict(cfg)) == cfg
    assert config_from_dict(yaml.safe_load(dump_config(cfg))) == cfg
    t = cfg.training
    assert t.eta_min <= t.eta_max
    assert 1 <= t.batch_size <= cfg.data.n_train
    assert all(math.isfinite(x) for x in (t.lambda_, t.eta_min, t.eta_max, cfg.model.sigma))
    assert t.resolve_n_s(cfg.data.n_train) >= 1


@settings(max_examples=200, deadline=None)
@given(doc=documents, overrides=st.lists(override_strings, max_size=3))
def test_any_document_gives_a_config_or_a_config_error(doc: Any, overrides: list[str]) -> None:
    _assert_is_run_config_or_config_error(doc, overrides)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=st.text(max_size=200) | documents.map(_yaml_text) | tagged_yaml)
def test_any_file_gives_a_config_or_a_config_error(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    try:
        cfg = load_config(path)
    except ConfigError as err:
        assert "\n" not in str(err)
    else:
        assert load_config(write(tmp_path, dump_config(cfg))) == cfg


def test_dropout_takes_one_rate_or_one_per_hidden_layer() -> None:
    per_layer = config_from_dict({"model": {"hidden": [30, 20], "dropout": [0.1, 0.2]}})
    assert per_layer.model.dropout == (0.1, 0.2)
    assert config_to_dict(per_layer)["model"]["dropout"] == [0.1, 0.2]
    with pytest.raises(ConfigError, match=r"model.dropout has 1 rates for 2 hidden layers"):
        config_from_dict({"model": {"hidden": [30, 20], "dropout": [0.1]}})
    with pytest.raises(ConfigError, match=r"model.dropout\[1\] must be a number >= 0 and < 1"):
        config_from_dict({"model": {"hidden": [30, 20], "dropout": [0.1, 1.0]}})


# --- update rules' settings ----------------------------------------------------------------


def test_a_rules_settings_are_filled_in_from_its_declared_defaults() -> None:
    assert load_config(None).training.optimizer_settings == {}
    nesterov = config_from_dict({}, ["training.optimizer=nesterov"]).training
    assert nesterov.optimizer_settings == {"momentum": 0.9}
    adam = config_from_dict({}, ["training.optimizer=adam", "training.optimizer_settings.eps=1e-6"])
    assert adam.training.optimizer_settings == {"beta1": 0.9, "beta2": 0.999, "eps": 1e-6}


def test_earlier_spellings_of_the_settings_are_still_read() -> None:
    """Config files of earlier runs hold training.momentum, beta1, beta2 and adam_eps, whatever
    the rule (at their defaults where the rule does not use them): each reaches the rule that
    has it, and the others let it be."""
    old = {"optimizer": "adam", "momentum": 0.9, "beta1": 0.8, "beta2": 0.99, "adam_eps": 1e-6}
    cfg = config_from_dict({"training": old})
    assert cfg.training.optimizer_settings == {"beta1": 0.8, "beta2": 0.99, "eps": 1e-6}
    assert "adam_eps" not in dump_config(cfg) and "momentum" not in dump_config(cfg)
    defaults = {"momentum": 0.9, "beta1": 0.9, "beta2": 0.999, "adam_eps": 1e-8}
    sgd = config_from_dict({"training": {**defaults, "optimizer": "sgd"}})
    assert sgd.training.optimizer_settings == {}


@pytest.mark.parametrize(
    ("training", "expected"),
    [
        ({"optimizer": "sgd", "momentum": 0.5},
         "training.momentum (0.5): the sgd rule has no setting 'momentum'; it is used by "
         "training.optimizer momentum, nesterov"),
        ({"optimizer": "momentum", "beta1": 0.5}, "the momentum rule has no setting 'beta1'"),
        ({"optimizer": "adam", "momentum": 0.99}, "the adam rule has no setting 'momentum'"),
    ],
)  # fmt: skip
def test_an_earlier_spelling_the_rule_does_not_use_is_refused_unless_at_its_default(
    training: dict, expected: str
) -> None:
    assert expected in error_of({"training": training})
    assert config_from_dict({}, ["training.momentum=0.7", "training.optimizer=momentum"]) == (
        config_from_dict(
            {}, ["training.optimizer=momentum", "training.optimizer_settings={momentum: 0.7}"]
        )
    )


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["training.optimizer=sgd", "training.optimizer_settings.momentum=0.5"],
         "training.optimizer_settings: sgd has no setting 'momentum' (it is a setting of "
         "training.optimizer momentum, nesterov); its settings: none"),
        (["training.optimizer=adam", "training.optimizer_settings.betaa1=0.5"],
         "adam has no setting 'betaa1' (did you mean 'beta1'?); its settings: beta1, beta2, eps"),
        (["training.optimizer=momentum", "training.optimizer_settings.momentum=1"],
         "training.optimizer_settings.momentum must be a number >= 0 and < 1, got 1"),
        (["training.optimizer=adam", "training.optimizer_settings.eps=0"],
         "training.optimizer_settings.eps must be a number > 0, got 0"),
        (["training.optimizer=momentum", "training.momentum=x"],
         "training.momentum must be a number >= 0 and < 1, got 'x'"),
        (["training.optimizer=momentum", "training.momentum=0.5",
          "training.optimizer_settings.momentum=0.6"], "disagree"),
        (["training.optimizer_settings=[1]"], "must be a mapping of setting names to numbers"),
    ],
)  # fmt: skip
def test_a_wrong_rule_setting_is_one_line_that_says_what_is_allowed(
    overrides: list[str], expected: str
) -> None:
    assert expected in error_of({}, overrides)


def test_knn_config_prints_every_key_with_its_help_and_loads_back(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from knn_cli.cli import cli
    from knn_cli.config import load_config, options, sections

    configs = Path(__file__).parent.parent / "configs"
    overrides = ["training.lambda=0.01", "training.optimizer=adam"]
    args = ["config", str(configs / "9layer_bn.yaml")]
    for text in overrides:
        args += ["--set", text]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    saved = tmp_path / "9layer_bn.yaml"
    saved.write_text(result.output)
    assert load_config(saved) == load_config(configs / "9layer_bn.yaml", overrides)
    lines = result.output.splitlines()
    for cls, _ in sections(RunConfig).values():
        for option in options(cls):
            (line,) = [x for x in lines if x.startswith(f"  {option.key}: ")]
            assert option.help == "" or "# " in line, line  # its help beside it
    assert "  optimizer_settings: {beta1: 0.9, beta2: 0.999, eps: 1.0e-08}" in result.output

    defaults = CliRunner().invoke(cli, ["config"])
    assert config_from_dict(yaml.safe_load(defaults.output)) == RunConfig()
    bad = CliRunner().invoke(cli, ["config", "--set", "model.hiden=[10]"])
    assert bad.exit_code == 2 and len(bad.output.splitlines()) == 1
    assert "did you mean 'model.hidden'" in bad.output
