"""Run settings: YAML plus `key=value` overrides in, frozen and validated dataclasses out.

`schema.py` declares every option once (default, parser, help); `values.py` holds the parsers;
`overrides.py` the one `key=value` grammar; `loading.py` turns documents into configs and back;
`docs.py` writes the full set of keys for the README.
"""

from .docs import commented_yaml, defaults_yaml
from .loading import (
    LEGACY_DEFAULTS,
    config_from_dict,
    config_to_dict,
    dump_config,
    load_config,
    with_overrides,
)
from .overrides import LEGACY_RULE_KEYS, Override, setting_keys
from .schema import (
    DTYPES,
    LANDSCAPE_STEPS,
    AugmentConfig,
    DataConfig,
    DiagnosticsConfig,
    EvaluationConfig,
    ModelConfig,
    RunConfig,
    TrainingConfig,
    options,
    section,
    sections,
    setting,
)

__all__ = [
    "DTYPES",
    "LANDSCAPE_STEPS",
    "LEGACY_DEFAULTS",
    "LEGACY_RULE_KEYS",
    "AugmentConfig",
    "DataConfig",
    "DiagnosticsConfig",
    "EvaluationConfig",
    "ModelConfig",
    "Override",
    "RunConfig",
    "TrainingConfig",
    "commented_yaml",
    "config_from_dict",
    "config_to_dict",
    "defaults_yaml",
    "dump_config",
    "load_config",
    "options",
    "section",
    "sections",
    "setting",
    "setting_keys",
    "with_overrides",
]
