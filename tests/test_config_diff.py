"""How configs differ (knn_cli/config_diff.py), as `knn compare` and `knn sweep`'s table say it."""

from __future__ import annotations

import subprocess
import sys

from knn_cli.config_diff import (
    differences_text,
    differing_settings,
    setting_text,
    short_names,
)
from knn_cli.sweeps.config_runs import changes

A = {"name": "a", "model": {"hidden": [50, 50], "batch_norm": True}, "training": {"seed": 0}}


def test_differing_settings_finds_exactly_the_settings_that_differ() -> None:
    b = {"name": "b", "model": {"hidden": [50, 50], "batch_norm": False}, "training": {"seed": 0}}
    c = {"name": "c", "model": {"hidden": [50, 30], "batch_norm": True}, "training": {"seed": 0}}
    assert differing_settings([A, A]) == []
    assert differing_settings([A, b]) == ["model.batch_norm"]  # the names aside
    assert differing_settings([A, b, c]) == ["model.hidden", "model.batch_norm"]
    older = {"name": "d", "model": {"hidden": [50, 50]}, "training": {"seed": 0}}
    assert differing_settings([A, older]) == ["model.batch_norm"]  # one lacks it
    unset = {**A, "data": {"dir": None}}
    assert differing_settings([A, unset]) == ["data.dir"]  # absent is not the same as null
    assert short_names(["model.seed", "training.seed", "training.lambda"]) == {
        "model.seed": "model.seed",
        "training.seed": "training.seed",
        "training.lambda": "lambda",
    }


def test_what_only_watches_a_run_is_no_difference_unless_asked() -> None:
    watched = {**A, "diagnostics": {"every": 10}, "training": {"seed": 1}}
    assert differing_settings([A, watched]) == ["training.seed"]
    assert differing_settings([A, watched], ignored=()) == ["training.seed", "diagnostics.every"]
    assert differing_settings([A, watched], ignored=("training.seed",)) == ["diagnostics.every"]
    assert differing_settings([A, watched], ignored=("training", "diagnostics")) == []


def test_a_setting_shown_as_yaml_spells_it_and_a_missing_one_as_a_dash() -> None:
    assert setting_text(A, "model.hidden") == "[50,50]"
    assert setting_text(A, "model.batch_norm") == "true"
    assert setting_text(A, "model.sigma") == "-"
    names = short_names(["model.batch_norm", "model.sigma"])
    assert differences_text(A, list(names), names) == "batch_norm=true, sigma=-"
    assert differences_text(A, ["model.hidden"]) == "model.hidden=[50,50]"
    assert differences_text(A, []) == ""


def test_a_sweeps_changes_name_each_setting_changed_but_the_seed() -> None:
    wider = {**A, "model": {"hidden": [100, 50], "batch_norm": True}, "training": {"seed": 3}}
    watched = {**A, "diagnostics": {"every": 10}}
    assert changes(None, A) == "(the start)"
    assert changes(A, {**A, "name": "again"}) == "(nothing)"
    assert changes(A, wider) == "model.hidden=[100,50]"
    assert changes(A, wider, "a") == "model.hidden=[100,50] (from a)"
    assert changes(A, watched) == "diagnostics.every=10"  # a sweep's row says all it changed


def test_the_config_diff_stays_light_for_knn_runs_and_compare() -> None:
    script = (
        "import sys, knn_cli.config_diff;"
        "print(sorted(m for m in ('knn_cli.config', 'yaml', 'matplotlib') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
