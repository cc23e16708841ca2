"""The one override grammar: `key=value` with a dotted key the schema declares and a YAML value.

`--set`, sweep trials, the study's parts and the tests all change a config through an
`Override` applied to the plain document before it is validated, so a value any part sets is
checked exactly as a user's is. A mapping option (a rule's `optimizer_settings`) is set one
entry at a time: `training.optimizer_settings.momentum=0.95`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from knn_cli.errors import ConfigError
from knn_cli.formatting import user_value, value_kind

from . import values as v
from .rule_settings import LEGACY_RULE_KEYS
from .schema import options, sections
from .yaml_io import load_yaml


class Override(NamedTuple):
    """One setting to change: its dotted key and its value (already YAML-parsed)."""

    key: str
    value: Any
    text: str  # as written, for messages

    @classmethod
    def parse(cls, text: Any) -> Override:
        """`training.lambda=0.01` -> key and value; the value is YAML (`[50, 30]`, `null`)."""
        key, raw = cls._split(text)
        return cls(key, load_yaml(raw, f"the value in override {user_value(text)}"), text)

    @classmethod
    def key_of(cls, text: Any) -> str:
        """The key an override sets, its value left unread (asking whether `--set` names one)."""
        return cls._split(text)[0]

    @staticmethod
    def _split(text: Any) -> tuple[str, str]:
        if not isinstance(text, str):
            raise ConfigError(
                f"an override must be a string like 'training.lambda=0.01', got {user_value(text)}"
            )
        key, equals, raw = text.partition("=")
        key = key.strip()
        if not equals or not key:
            raise ConfigError(
                f"override {user_value(text)} must look like key=value, e.g. training.lambda=0.01"
            )
        return key, raw

    @classmethod
    def of(cls, key: str, value: Any) -> Override:
        """An override made by code (a sweep's trial), shown as the user would have typed it."""
        return cls(key, value, f"{key}={user_value(value)}")


Overrides = Sequence[str | Override] | Mapping[str, Any] | str


def as_overrides(given: Overrides) -> list[Override]:
    """Text, `Override`s, or a mapping of dotted keys to values, as one list of `Override`s."""
    if isinstance(given, str):
        given = [given]
    if isinstance(given, Mapping):
        return [Override.of(key, value) for key, value in given.items()]
    return [o if isinstance(o, Override) else Override.parse(o) for o in given]


def setting_keys(schema: type) -> list[str]:
    """Every dotted key `--set` accepts, in schema order (earlier versions' rule keys last)."""
    keys = [o.key for o in options(schema)]
    for name, (cls, _) in sections(schema).items():
        keys += [f"{name}.{o.key}" for o in options(cls)]
    keys += (
        [f"training.{key}" for key in LEGACY_RULE_KEYS] if "training" in sections(schema) else []
    )
    return keys


def did_you_mean(key: Any, allowed: Sequence[str], prefix: str, schema: type) -> str:
    if not isinstance(key, str):
        return ""
    close = v.closest(key, allowed)
    if close:
        return f" (did you mean {prefix + close!r}?)"
    # A setting written outside its section, e.g. `lambda: 0.01` at the top level.
    if prefix == "":
        for name, (cls, _) in sections(schema).items():
            if key in {o.key for o in options(cls)}:
                return f" (did you mean '{name}.{key}'?)"
    return ""


def section_mapping(section: str, raw: Any) -> Mapping[Any, Any]:
    """The section's settings; an empty `model:` (null) means all defaults, as it reads."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{section} must be a mapping of settings, got {value_kind(raw)}")
    return raw


def apply_overrides(doc: dict[Any, Any], overrides: Iterable[Override], schema: type) -> None:
    """Set each override's value in the plain document, in order; the key must be declared."""
    found = sections(schema)
    keys = setting_keys(schema)
    for override in overrides:
        key, shown = override.key, user_value(override.text)
        if key in found:
            first = options(found[key][0])[0].key
            raise ConfigError(f"override {shown} must set one setting, e.g. {key}.{first}=...")
        holder, _, entry = key.rpartition(".")
        if holder in keys and entry and _is_mapping_option(holder, schema):
            section, _, option = holder.partition(".")
            settings = dict(section_mapping(section, doc.get(section)))
            held = settings.get(option)
            settings[option] = {
                **(held if isinstance(held, Mapping) else {}),
                entry: override.value,
            }
            doc[section] = settings
            continue
        if key not in keys:
            hint = did_you_mean(key, keys, "", schema)
            raise ConfigError(f"override {shown}: unknown config key {user_value(key)}{hint}")
        section, _, leaf = key.rpartition(".")
        if section:
            doc[section] = {**section_mapping(section, doc.get(section)), leaf: override.value}
        else:
            doc[leaf] = override.value


def _is_mapping_option(dotted: str, schema: type) -> bool:
    section, _, key = dotted.partition(".")
    cls = sections(schema).get(section, (None,))[0]
    return cls is not None and any(
        o.key == key and isinstance(o.default, Mapping) for o in options(cls)
    )
