"""The update rule's settings, the one option whose allowed values depend on another: every
setting `training.optimizer`'s rule declares (`UpdateRule.settings`), checked against it; and the
keys earlier versions wrote for them, still read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from knn_cli.errors import ConfigError
from knn_cli.formatting import user_value
from knn_cli.optim import UPDATE_RULES

from . import values as v

# The update rules' settings as earlier versions spelled them, one key each beside
# `training.optimizer`; config files of earlier runs hold all four. Each reaches the rule that
# declares the setting of that name, and is ignored by the others, as it was.
LEGACY_RULE_KEYS = {"momentum": "momentum", "beta1": "beta1", "beta2": "beta2", "adam_eps": "eps"}
# What the version with those keys wrote into every run's config.yaml, whatever the rule: a key
# the chosen rule does not use still loads when it holds this value.
LEGACY_DEFAULTS = {"momentum": 0.9, "beta1": 0.9, "beta2": 0.999, "adam_eps": 1e-8}


def _rules_with(setting: str) -> list[str]:
    return [name for name, rule in UPDATE_RULES.items() if setting in rule.settings]


def resolve_rule_settings(
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
        if unused and v.as_float(value) != LEGACY_DEFAULTS[old_key]:
            users = _rules_with(LEGACY_RULE_KEYS[old_key])
            raise ConfigError(
                f"training.{old_key} ({user_value(value)}): the {optimizer} rule has no setting "
                f"{LEGACY_RULE_KEYS[old_key]!r}; it is used by training.optimizer "
                f"{', '.join(users)}"
            )
    for name in given:
        if name not in declared:
            close = v.closest(name, declared)
            users = _rules_with(name)
            hint = (
                f" (did you mean {close!r}?)"
                if close
                else f" (it is a setting of training.optimizer {', '.join(users)})"
                if users
                else ""
            )
            known = ", ".join(declared) or "none"
            raise ConfigError(
                f"{where}: {optimizer} has no setting {user_value(name)}{hint}; "
                f"its settings: {known}"
            )
    resolved = {}
    for name, setting in declared.items():
        old_key = next((k for k, value in LEGACY_RULE_KEYS.items() if value == name), None)
        if name in given:
            key, value = f"{where}.{name}", given[name]
            if old_key in legacy and v.as_float(legacy[old_key]) != v.as_float(value):
                raise ConfigError(
                    f"training.{old_key} ({user_value(legacy[old_key])}) and {key} "
                    f"({user_value(value)}) disagree; keep {key} alone"
                )
        elif old_key in legacy:
            key, value = f"training.{old_key}", legacy[old_key]
        else:
            resolved[name] = setting.default
            continue
        number = v.as_float(value)
        if number is None or not setting.allows(number):
            raise v.invalid(key, value, setting.describe())
        resolved[name] = number
    return resolved
