"""A plain document (YAML, a saved run's config, a sweep's trial) in, a validated `RunConfig`
out, and back.

Validation happens once, here, so the network, trainer and sweeps can trust every value without
re-checking it. Anything a user can get wrong becomes a one-line `ConfigError` that names the key,
the value given and what is allowed; no other exception escapes for any document or override.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from knn_cli.errors import ConfigError
from knn_cli.formatting import one_line, user_value, value_kind

from . import values as v
from .overrides import (
    Overrides,
    apply_overrides,
    as_overrides,
    did_you_mean,
    section_mapping,
)
from .rule_settings import LEGACY_RULE_KEYS, resolve_rule_settings
from .schema import RunConfig, check_together, options, sections
from .yaml_io import dump_yaml, load_yaml


def _reject_unknown(
    mapping: Mapping[Any, Any], allowed: list[str], prefix: str, schema: type
) -> None:
    for key in mapping:
        if not isinstance(key, str) or key not in allowed:
            dotted = prefix + (key if isinstance(key, str) else user_value(key))
            hint = did_you_mean(key, allowed, prefix, schema)
            raise ConfigError(f"unknown config key {user_value(dotted)}{hint}")


def parse_options(cls: type, raw: Mapping[Any, Any], prefix: str, schema: type) -> dict[str, Any]:
    """The declared options of `cls` found in `raw`, each through its parser, by attribute."""
    declared = options(cls)
    _reject_unknown(raw, [o.key for o in declared], prefix, schema)
    return {o.attr: o.parse(f"{prefix}{o.key}", raw[o.key]) for o in declared if o.key in raw}


def _parse_section(name: str, cls: type, raw: Any, schema: type) -> Any:
    """The section's options, each through its parser; in `training`, the rule's settings are
    then checked against the rule chosen (`rule_settings.py`), the one option whose allowed
    values depend on another."""
    settings = dict(section_mapping(name, raw))
    legacy = {}
    if name == "training":
        legacy = {key: settings.pop(key) for key in LEGACY_RULE_KEYS if key in settings}
    parsed = parse_options(cls, settings, f"{name}.", schema)
    if name == "training":
        parsed["optimizer_settings"] = resolve_rule_settings(
            parsed.get("optimizer", "sgd"), parsed.get("optimizer_settings", {}), legacy
        )
    return cls(**parsed)


def config_from_dict(
    doc: Mapping[Any, Any] | None,
    overrides: Overrides = (),
    default_name: str = "run",
    *,
    schema: type = RunConfig,
) -> Any:
    """Validate a parsed YAML document (overrides applied on top) into a `RunConfig` (or into
    `schema`, a subclass declaring options of its own)."""
    if doc is None:
        doc = {}
    if not isinstance(doc, Mapping):
        raise ConfigError(f"a config must be a mapping of settings, got {value_kind(doc)}")
    doc = dict(doc)
    apply_overrides(doc, as_overrides(overrides), schema)
    found = sections(schema)
    _reject_unknown(doc, [*(o.key for o in options(schema)), *found], "", schema)
    top = {key: value for key, value in doc.items() if key not in found}
    top.setdefault("name", default_name)
    values = parse_options(schema, top, "", schema)
    for name, (cls, _) in found.items():
        values[name] = _parse_section(name, cls, doc.get(name), schema)
    cfg = schema(**values)
    check_together(cfg)
    return cfg


def load_config(
    path: str | Path | None, overrides: Overrides = (), *, schema: type = RunConfig
) -> Any:
    """Read a YAML config file (None: all defaults); the run is named after the file by default."""
    if path is None:
        return config_from_dict({}, overrides, schema=schema)
    path = Path(path)
    shown = repr(str(path))  # in full: a cut path does not say which file
    try:
        source = path.read_bytes()  # bytes, so PyYAML can honour a UTF-16 byte-order mark
    except FileNotFoundError as err:
        raise ConfigError(f"config file not found: {shown}") from err
    except (OSError, ValueError) as err:  # ValueError: a NUL byte in the path
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise ConfigError(f"cannot read config file {shown}: {one_line(reason)}") from err
    doc = load_yaml(source, f"config file {shown}")
    if doc is not None and not isinstance(doc, Mapping):
        raise ConfigError(
            f"config file {shown} must hold a mapping of settings, got {value_kind(doc)}"
        )
    return config_from_dict(doc, overrides, default_name=v.name_from_stem(path.stem), schema=schema)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain data under the YAML key names, so a saved config loads back to an equal one."""
    schema = type(cfg)
    doc: dict[str, Any] = {o.key: _plain(getattr(cfg, o.attr)) for o in options(schema)}
    for name, (cls, _) in sections(schema).items():
        values = getattr(cfg, name)
        doc[name] = {o.key: _plain(getattr(values, o.attr)) for o in options(cls)}
    return doc


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    return list(value) if isinstance(value, tuple) else value


def with_overrides(cfg: Any, overrides: Overrides) -> Any:
    """A validated variant of `cfg`, e.g. a sweep trial; `dataclasses.replace` would skip checks."""
    return config_from_dict(config_to_dict(cfg), overrides, schema=type(cfg))


def dump_config(cfg: Any) -> str:
    """YAML text in schema order, for the run folder and for `knn`'s users to copy from."""
    return dump_yaml(config_to_dict(cfg))
