"""How configs differ, said once: `knn compare` (and its range-test overlay) labels runs by the
settings they differ in, and `knn sweep`'s table says what each config changed from another.

Configs are compared as the dictionaries a run folder keeps (`config.yaml`, sweep.json), one
setting at a time as `section.key`; the name labels a run rather than shapes it, so it is never
a difference. Light on purpose, as `knn runs` and `knn compare` import it: no config parsing,
no plotting.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from knn_cli.formatting import setting_value

MISSING = object()  # a setting a config does not have (made by another version of knn)
# Sections that watch a run rather than shape it: runs that differ only there trained alike.
OBSERVING = ("diagnostics",)


def flat_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """`section.key` -> value for every section's settings (the name aside: it is no section)."""
    return {
        f"{section}.{key}": value
        for section, values in config.items()
        if isinstance(values, Mapping)
        for key, value in values.items()
    }


def differing_settings(
    configs: Sequence[Mapping[str, Any]], *, ignored: Collection[str] = OBSERVING
) -> list[str]:
    """The `section.key` settings whose value is not the same in every config, in config order.

    `ignored` names sections or `section.key` settings that are never a difference: by default
    the sections that only watch a run. A setting one config lacks differs from any value,
    null included (the config came from another version of knn).
    """
    flat = [flat_settings(config) for config in configs]
    keys = [
        key
        for key in dict.fromkeys(key for settings in flat for key in settings)
        if key not in ignored and key.split(".", 1)[0] not in ignored
    ]
    return [key for key in keys if len({_comparable(s.get(key, MISSING)) for s in flat}) > 1]


def _comparable(value: Any) -> Any:
    # Settings may be lists (hidden widths, dropout rates); JSON text compares them by value.
    return value if value is MISSING else json.dumps(value, sort_keys=True, default=str)


def short_names(keys: Sequence[str]) -> dict[str, str]:
    """`training.lambda` -> `lambda`, unless two sections share the key's name."""
    last = [key.rsplit(".", 1)[-1] for key in keys]
    return {
        key: name if last.count(name) == 1 else key for key, name in zip(keys, last, strict=True)
    }


def setting_text(config: Mapping[str, Any], key: str) -> str:
    """The config's value of `section.key` as a table shows it; '-' where it has none."""
    value = flat_settings(config).get(key, MISSING)
    return "-" if value is MISSING else setting_value(value)


def differences_text(
    config: Mapping[str, Any], keys: Sequence[str], names: Mapping[str, str] | None = None
) -> str:
    """'lambda=0.01, batch_norm=false': the config's values of `keys`, each under its name in
    `names` (the key itself by default); '' for no keys."""
    return ", ".join(f"{(names or {}).get(key, key)}={setting_text(config, key)}" for key in keys)


# -- the settings that tell the study's runs apart, in words -----------------------------------


def settings_text(config: Mapping[str, Any], n_s: int | None = None) -> str:
    """The settings that tell the study's runs apart, on one line, defaults left unsaid."""
    return ", ".join([*model_settings(config), *training_settings(config, n_s)])


def model_settings(config: Mapping[str, Any]) -> list[str]:
    model, augment = config.get("model", {}), config.get("augment", {})
    parts = []
    if "hidden" in model:
        parts.append(f"hidden {list(model['hidden'])}")
    if model.get("batch_norm"):
        parts.append("BN after ReLU" if model.get("bn_position") == "after_relu" else "BN")
    elif "batch_norm" in model:
        parts.append("no BN")
    if model.get("init") == "normal":
        parts.append(f"init normal sigma {model.get('sigma', 0):g}")
    dropout = model.get("dropout") or 0
    if any(dropout) if isinstance(dropout, Sequence) else dropout:
        parts.append(f"dropout {dropout}")
    if augment.get("flip"):
        parts.append("flip")
    if augment.get("translate"):
        parts.append(f"translate {augment['translate']}")
    return parts


def training_settings(
    config: Mapping[str, Any], n_s: int | None = None, *, lambda_: bool = True
) -> list[str]:
    """`n_s` is the resolved half cycle (a config may leave it to a factor of the epoch size);
    `lambda_=False` leaves out the one setting a lambda search varies."""
    training = config.get("training", {})
    parts = []
    if lambda_ and "lambda" in training:
        parts.append(f"lambda {training['lambda']:.3g}")
    if training.get("optimizer", "sgd") != "sgd":
        parts.append(str(training["optimizer"]))
    cycles, n_s = training.get("cycles"), n_s or training.get("n_s")
    if cycles:
        parts.append(f"{cycles} cycle{'s' if cycles > 1 else ''}")
    if n_s:
        parts.append(f"n_s {n_s}")
    return parts
