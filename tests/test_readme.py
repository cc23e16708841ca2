"""The README's promises that a test can hold it to."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

README = (Path(__file__).parent.parent / "README.md").read_text()


def python_examples() -> dict[str, str]:
    """Each ```python block of the README, by the heading it stands under."""
    found = {}
    for section in re.split(r"\n## ", README):
        for example in re.findall(r"```python\n(.*?)```", section, re.S):
            found[section.splitlines()[0]] = example
    return found


def run_example(heading: str) -> dict:
    namespace: dict = {}
    exec(compile(python_examples()[heading], "README.md", "exec"), namespace)
    return namespace


def test_python_api_example_runs() -> None:
    namespace = run_example("Python API")
    assert namespace["probs"].shape == (100, 10)
    assert set(namespace["grads"]) == set(namespace["net"].params)


def test_the_diagnostics_example_runs_and_says_what_its_comment_says() -> None:
    namespace = run_example("What the layers see: diagnostics in every run")
    measured = namespace["measured"]
    assert all(measured[(str(layer), "grad_norm")] < 1e-15 for layer in (1, 9))
    assert measured[("1", "grad_norm")] > 1e-25


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


def test_the_configs_full_set_of_keys_is_written_from_the_schema() -> None:
    """The README promises "the full set, with defaults": the block is the schema's own text
    (`knn config`), so a key added, renamed or re-described shows here, and it loads back to
    the defaults."""
    import yaml

    from knn_cli.config import config_from_dict, config_to_dict, defaults_yaml

    configs = README.split("### Configs", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", configs, re.S).group(1)
    assert block == defaults_yaml(), "regenerate the README's block with `knn config`"
    documented = yaml.safe_load(block)
    defaults = config_to_dict(config_from_dict({}, default_name=documented["name"]))
    assert config_to_dict(config_from_dict(documented)) == defaults
