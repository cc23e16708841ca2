"""The README's promises that a test can hold it to."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_python_api_example_runs() -> None:
    (example,) = re.findall(r"```python\n(.*?)```", README, re.S)[:1]
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    assert namespace["probs"].shape == (100, 10)
    assert set(namespace["grads"]) == set(namespace["net"].params)


def test_quick_start_has_exactly_two_command_lines_and_ci_runs_the_test_line() -> None:
    quick_start = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)```", quick_start, re.S)
    lines = [line for block in commands for line in block.strip().splitlines()]
    assert len(lines) == 2
    assert "knn study" in lines[0] and "pytest" in lines[1]
    ci = (Path(__file__).parent.parent / ".ci" / "run").read_text()
    assert lines[1].strip() in ci
    shlex.split(lines[0])  # well-formed shell words


PLANS = ("ablation.yaml",)  # sweep plans (`knn sweep`), not run configs


def test_every_shipped_config_and_plan_loads() -> None:
    from knn_cli.config import load_config
    from knn_cli.sweeps.config_runs import read_plan

    configs = Path(__file__).parent.parent / "configs"
    paths = [*configs.glob("*.yaml"), *configs.glob("ablation/*.yaml")]
    for path in paths:
        if path.name in PLANS:
            assert read_plan(path).runs
        else:
            assert load_config(path).name == path.stem
    assert len(paths) >= 15
