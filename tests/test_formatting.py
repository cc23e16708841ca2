"""How values are written for people (knn_cli/formatting.py): each rendering for what it is for."""

from __future__ import annotations

from typing import Any

import pytest

from knn_cli.formatting import (
    USER_VALUE_LIMIT,
    byte_size,
    setting_value,
    user_value,
    value_kind,
)


@pytest.mark.parametrize(
    "size, text",
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1 KB"),
        (1536 * 1024, "1.5 MB"),
        (2 * 2**30, "2.0 GB"),
        (3 * 2**60, "3072.0 PB"),  # no unit above petabytes
    ],
)
def test_byte_size_in_binary_units(size: float, text: str) -> None:
    assert byte_size(size) == text


@pytest.mark.parametrize(
    "value, text",
    [
        (True, "true"),
        (None, "null"),
        (0.01, "0.01"),
        (3.0, "3"),
        (0.0031622776601683794, "0.003162"),  # a rate made by arithmetic
        ([50, 50], "[50,50]"),
        ([True, None, 0.5], "[true,null,0.5]"),
        ([[1, 2], [3]], "[[1,2],[3]]"),
        ("he", "he"),
        (12, "12"),
        ({"beta1": 0.9, "eps": 1e-08}, "{beta1: 0.9, eps: 1e-08}"),  # a rule's settings
    ],
)
def test_setting_value_as_yaml_spells_it(value: Any, text: str) -> None:
    assert setting_value(value) == text


def _nested(depth: int) -> list[Any]:
    deep: list[Any] = []
    for _ in range(depth):
        deep = [deep]
    return deep


@pytest.mark.parametrize(
    "value, text",
    [
        (None, "null"),
        (False, "false"),
        ("abc", "'abc'"),
        ("two\nlines", "'two\\nlines'"),  # one line, the newline shown as YAML's escape would
        ({"a": [1, 2]}, "{'a': [1, 2]}"),
        # More digits than repr converts, or deeper than it recurses (ids: pytest cannot either).
        pytest.param(10**5000, "an integer of about 5000 digits", id="huge-integer"),
        pytest.param([10**5000], "a list too large or too deeply nested to show", id="in-a-list"),
        pytest.param(
            _nested(100_000), "a list too large or too deeply nested to show", id="deep-list"
        ),
        (list(range(100)), repr(list(range(100)))[: USER_VALUE_LIMIT - 3] + "..."),
    ],
)
def test_user_value_is_short_one_line_and_never_raises(value: Any, text: str) -> None:
    shown = user_value(value)
    assert shown == text
    assert len(shown) <= USER_VALUE_LIMIT and "\n" not in shown


@pytest.mark.parametrize(
    "value, kind",
    [
        ([], "a list"),
        ((1,), "a list"),
        ({}, "a mapping"),
        ("x", "a string"),
        (True, "a boolean"),
        (1, "an integer"),
        (1.5, "a number"),
        (None, "null"),
        ({1}, "a set"),
    ],
)
def test_value_kind_in_words(value: Any, kind: str) -> None:
    assert value_kind(value) == kind
