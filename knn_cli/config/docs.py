"""The config's full set of keys with their defaults and help, as YAML a user can copy: written
from the schema's declarations, so the README's block (checked against it by
tests/test_readme.py) cannot drift from what the loader knows."""

from __future__ import annotations

import textwrap
from typing import Any

import yaml

from .loading import config_to_dict
from .schema import RunConfig, help_text, options, sections

COMMENT_COLUMN = 24  # where the help starts, as the README's block has it
WIDTH = 99


def _line(text: str, help: str) -> list[str]:
    """`text` with its help beside it; what does not fit goes on under the help's column."""
    if not help:
        return [text]
    first = f"{text:<{COMMENT_COLUMN - 1}} # "  # a space before the '#' however long the text
    rest = " " * COMMENT_COLUMN + "# "
    return textwrap.wrap(help, WIDTH, initial_indent=first, subsequent_indent=rest)


def _value(key: str, value: Any) -> str:
    """`key: value` on one line (a mapping too, `{momentum: 0.9}`), so its help fits beside."""
    flow = yaml.safe_dump({key: value}, default_flow_style=True, width=1000)  # "{key: value}\n"
    return flow.strip()[1:-1]


def commented_yaml(cfg: Any) -> str:
    """Every key of the config with its value and its help: a config file that loads back to
    `cfg`, and says what each line does."""
    values = config_to_dict(cfg)
    schema = type(cfg)
    lines: list[str] = []
    for option in options(schema):
        lines += _line(_value(option.key, values[option.key]), help_text(option.help))
    for section, (cls, help) in sections(schema).items():
        lines += _line(f"{section}:", help_text(help))
        for option in options(cls):
            text = "  " + _value(option.key, values[section][option.key])
            lines += _line(text, help_text(option.help))
    return "\n".join(lines) + "\n"


def defaults_yaml(schema: type = RunConfig) -> str:
    """Every key at its default, each with its help: `knn config`, and the README's block."""
    return commented_yaml(schema())
