"""`--dry-run`: the resolved config and the plan of a run or a sweep, said before anything runs,
without training or making a folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

import knn_cli.estimate as estimate
from knn_cli.cli import cli
from knn_cli.config import config_from_dict, load_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.fixture(autouse=True)
def _timed_instantly(monkeypatch: pytest.MonkeyPatch) -> None:
    """A step of 1 ms (alone or a member's share in a population) and an evaluated row of
    10 us, whatever this machine's speed."""
    monkeypatch.setattr(estimate, "measure_speed", lambda *args: (0.001, 0.001, 1e-5))


def dry(tmp_path: Path, *args: str) -> str:
    runs = tmp_path / "runs"
    result = CliRunner().invoke(cli, [*args, "--dry-run", "--runs-dir", str(runs)])
    assert result.exit_code == 0, result.output
    assert not runs.exists()  # nothing made
    return result.output


def test_train_prints_a_config_that_trains_the_same_run_and_its_plan(tmp_path: Path) -> None:
    output = dry(
        tmp_path,
        "train",
        str(CONFIGS / "3layer_bn.yaml"),
        "--set",
        "training.cycles=3",
        "--set",
        "training.optimizer=momentum",
    )
    expected = load_config(
        CONFIGS / "3layer_bn.yaml", ["training.cycles=3", "training.optimizer=momentum"]
    )
    assert config_from_dict(yaml.safe_load(output)) == expected  # every default filled in
    assert "optimizer_settings: {momentum: 0.9}" in output
    plan = [line for line in output.splitlines() if line.startswith("#")]
    assert "13,500 steps (3 cycles of 2 x 2,250) in batches of 100: 30.0 epochs" in plan[1]
    assert "31 evaluations" in plan[1]
    assert plan[2].startswith("# memory: about ")
    # 13,500 steps of 1 ms on two lanes, one last evaluation of 50,000 rows, start and finish.
    seconds = 13_500 * 0.001 / estimate.TWO_LANES_SPEEDUP + 50_000 * 1e-5
    seconds += estimate.START_SECONDS + estimate.FINISH_SECONDS
    assert f"time: about {seconds:.0f} s on this machine" in plan[3]


def test_train_dry_run_refuses_resume_and_an_impossible_size(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["train", "--resume", str(tmp_path), "--dry-run"])
    assert result.exit_code == 2 and "drop --resume" in result.output
    huge = CliRunner().invoke(
        cli, ["train", str(CONFIGS / "3layer.yaml"), "--set", "model.hidden=[4000000000]",
              "--dry-run", "--runs-dir", str(tmp_path / "runs")],
    )  # fmt: skip
    assert huge.exit_code == 2 and huge.output.startswith("error: ") and "of memory" in huge.output
    assert not (tmp_path / "runs").exists()


def test_lambda_search_lists_its_trials_with_the_coarse_lambdas_it_will_draw(
    tmp_path: Path,
) -> None:
    output = dry(
        tmp_path, "lambda-search", "--coarse", "--fine", "--final", "--trials", "3",
        "--final-seeds", "2", "--workers", "2", "--config", str(CONFIGS / "3layer_bn.yaml"),
    )  # fmt: skip
    plan = [line for line in output.splitlines() if line.startswith("#")]
    # Each stage's trials in populations that fill the 2 workers: 2 + 1, 2 + 1, 1 + 1.
    assert plan[0].endswith("8 runs in 6 populations")
    assert [line.split(":")[0].split()[1] for line in plan[1:9]] == [
        "000-coarse", "001-coarse", "002-coarse", "003-fine", "004-fine", "005-fine",
        "006-final", "007-final",
    ]  # fmt: skip
    assert "lambda=" in plan[1] and "lambda=" not in plan[4]  # fine lambdas come from results
    assert "14,700 steps, 30.0 epochs of 49,000 images" in plan[7]  # 3 cycles, 1,000 held out
    assert "with 2 workers" in plan[-1]
    populations = plan[plan.index(next(p for p in plan if "populations (--population auto" in p)) :]
    assert populations[1:7] == [
        "#   000-coarse, 001-coarse", "#   002-coarse", "#   003-fine, 004-fine", "#   005-fine",
        "#   006-final", "#   007-final",
    ]  # fmt: skip
    alone = dry(
        tmp_path, "lambda-search", "--coarse", "--trials", "3", "--population", "off",
        "--config", str(CONFIGS / "3layer_bn.yaml"),
    )  # fmt: skip
    assert "3 runs in 3 populations" in alone and "--population off" in alone
    spec = yaml.safe_load(output)["spec"]
    assert spec["trials"] == 3 and spec["final_validation_size"] == 1000


def test_init_sensitivity_and_a_sweep_plan_list_every_run(tmp_path: Path) -> None:
    grid = dry(tmp_path, "init-sensitivity", "--depths", "3", "--sigmas", "1e-1,1e-3")
    assert grid.count("# ") and "4 runs" in grid and "001-k3-nobn-sigma0.001" in grid
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        f"name: two\nseeds: 2\nruns:\n  - {CONFIGS / '3layer.yaml'}\n"
        f"  - {{config: {CONFIGS / '9layer.yaml'}, seeds: 1}}\n"
    )
    sweep = dry(tmp_path, "sweep", str(plan))
    assert "3 runs" in sweep and "002-9layer-s0" in sweep
    assert [run["seeds"] for run in yaml.safe_load(sweep)["runs"]] == [2, 1]


def test_study_dry_run_prints_its_plan_and_makes_no_folder(
    tmp_path: Path, fake_cifar_dir: Path
) -> None:
    output = dry(tmp_path, "study", "--quick", "--set", f"data.dir={fake_cifar_dir}",
                 "--set", "data.validation_size=30")  # fmt: skip
    assert "as planned (nothing was trained and no folder was made)" in output
    assert "5. init-sensitivity" in output and "in all on this machine" in output


def test_lr_range_prints_its_config_and_the_test_as_planned(tmp_path: Path) -> None:
    output = dry(
        tmp_path, "lr-range", str(CONFIGS / "3layer_bn.yaml"), "--seeds", "2", "--grid",
        "--set", "training.batch_size=50",
    )  # fmt: skip
    expected = load_config(CONFIGS / "3layer_bn.yaml", ["training.batch_size=50"])
    assert config_from_dict(yaml.safe_load(output)) == expected
    plan = [line for line in output.splitlines() if line.startswith("#")]
    assert plan[1] == (
        "# rate 1e-05 to 10, exponential, 1,000 steps in batches of 50: 1.1 epochs of 45,000 "
        "training images"
    )
    assert plan[2] == "# validation every 10 steps: 100 points; 2 seeds side by side"
    assert plan[3] == "# then 12 runs at constant rates over the range, side by side"
    assert plan[4].startswith("# memory: about ") and "for 12 runs side by side" in plan[4]
    assert plan[5].startswith("# time: about ")
    linear = dry(tmp_path, "lr-range", str(CONFIGS / "9layer.yaml"), "--schedule", "linear")
    assert "linear, 3,600 steps in batches of 100: 8.0 epochs" in linear  # 8 epochs of 450


def test_lr_range_dry_run_refuses_too_few_points_and_resume(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    few = CliRunner().invoke(
        cli, ["lr-range", str(CONFIGS / "9layer.yaml"), "--steps", "100", "--eval-every", "20",
              "--dry-run", "--runs-dir", str(runs)],
    )  # fmt: skip
    assert few.exit_code == 2 and len(few.output.splitlines()) == 1
    assert "give 5 points: too few to suggest anything" in few.output
    resumed = CliRunner().invoke(cli, ["lr-range", "--resume", str(tmp_path), "--dry-run"])
    assert resumed.exit_code == 2 and "--dry-run shows a new test; drop --resume" in resumed.output
    assert not runs.exists()
