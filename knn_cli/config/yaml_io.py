"""YAML in and out: a user's text read into plain data with any failure as one line, and plain
data written as people write configs (lists on one line)."""

from __future__ import annotations

from typing import Any

import yaml

from knn_cli.errors import ConfigError
from knn_cli.formatting import one_line


def load_yaml(source: str | bytes, where: str) -> Any:
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


class _Dumper(yaml.SafeDumper):
    """Safe YAML that keeps lists on one line (`hidden: [50, 50]`), as people write them."""


_Dumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, True)
)


def dump_yaml(doc: Any) -> str:
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False)
