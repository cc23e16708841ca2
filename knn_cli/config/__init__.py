"""Run settings: YAML plus `key=value` overrides in, frozen and validated dataclasses out.

`schema.py` declares every option once (default, parser, help); `values.py` holds the parsers;
`rule_settings.py` checks the update rule's settings against the rule chosen (and reads the keys
earlier versions wrote for them); `overrides.py` is the one `key=value` grammar; `loading.py`
turns documents into configs and back; `docs.py` writes every key with its help (`knn config`,
the README's block); `yaml_io.py` reads a user's YAML and writes it as people write it.
"""

from .docs import commented_yaml, defaults_yaml
from .loading import (
    config_from_dict,
    config_to_dict,
    dump_config,
    load_config,
    with_overrides,
)
from .overrides import Override
from .schema import (
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
    "with_overrides",
]
