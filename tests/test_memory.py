"""The memory estimate: what it counts, and that an impossible size is one line, not a traceback."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

import knn_cli.memory as memory
from knn_cli.cli import cli
from knn_cli.config import config_from_dict
from knn_cli.errors import ConfigError
from knn_cli.experiment import build_network
from knn_cli.memory import DataSize, check_memory, estimate_memory


def config(**settings: object):  # type: ignore[no-untyped-def]
    return config_from_dict({"name": "m"}, [f"{key}={value}" for key, value in settings.items()])


def test_the_parameters_counted_are_the_networks() -> None:
    run = config(**{"model.hidden": "[50, 40]", "model.dropout": 0.1})
    estimate = estimate_memory(run)
    network = build_network(run, 3072)
    shapes = [*network.shapes.values(), *network.statistic_shapes.values()]
    count = sum(math.prod(shape) for shape in shapes)
    # W: 3072x50, 50x40, 40x10, biases, and per BN unit gamma, beta, mean and variance.
    assert count == 3072 * 50 + 50 * 40 + 40 * 10 + (50 + 40 + 10) + 4 * (50 + 40)
    copies = memory.COPIES_PER_PARAMETER  # SGD keeps no state
    assert estimate.parameters == count * copies * 4
    # The data, and the probe's 1,000 rows the run keeps a copy of.
    assert estimate.data == (60_000 + 1000) * 3072 * 4
    small = estimate_memory(config(**{"model.hidden": "[50, 50]"}), DataSize(10, train_images=10))
    assert small.data == (10 + 10) * 3072 * 4


def test_a_population_shares_the_data_and_keeps_each_runs_arrays_and_rows() -> None:
    run = config(**{"evaluation.train_curve_rows": 5000, "diagnostics.landscape": "true"})
    one, nine = estimate_memory(run), estimate_memory(run, members=9)
    assert nine.parameters == 9 * one.parameters and nine.activations == 9 * one.activations
    kept = (5000 + 3 * 1000) * 3072 * 4  # curve sample, probe, and the probe in float64
    assert one.data == 60_000 * 3072 * 4 + kept and nine.data == 60_000 * 3072 * 4 + 9 * kept
    assert nine.baseline == one.baseline


def test_the_estimate_grows_with_what_the_config_adds() -> None:
    base = estimate_memory(config())
    assert estimate_memory(config(**{"training.optimizer": "adam"})).parameters > base.parameters
    wide = estimate_memory(config(**{"model.hidden": "[1024, 512]"}))
    assert wide.parameters > 10 * base.parameters and wide.activations > base.activations
    assert estimate_memory(config(**{"training.batch_size": 1000})).activations > base.activations
    doubled = estimate_memory(config(**{"training.dtype": "float64"}))
    assert doubled.parameters == 2 * base.parameters and doubled.data == base.data


def test_a_config_that_cannot_fit_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "available_memory", lambda: 500 * 2**20)
    with pytest.raises(ConfigError) as error:
        check_memory(config())
    assert "needs about" in str(error.value) and "500.0 MB is available" in str(error.value)
    assert "\n" not in str(error.value)
    monkeypatch.setattr(memory, "available_memory", lambda: None)  # unknown: no refusal
    assert check_memory(config()).total > 0


def test_knn_train_refuses_an_impossible_size_before_making_a_run_folder(
    tmp_path: Path, fake_cifar_dir: Path
) -> None:
    runs = tmp_path / "runs"
    result = CliRunner().invoke(
        cli,
        ["train", "configs/3layer_bn.yaml", "--set", "model.hidden=[2000000000]",
         "--set", f"data.dir={fake_cifar_dir}", "--runs-dir", str(runs)],
    )  # fmt: skip
    assert result.exit_code == 2
    assert result.output.startswith("error: 3layer_bn needs about ")
    assert "TB of memory" in result.output and len(result.output.splitlines()) == 1
    assert not runs.exists()


def test_the_summary_keeps_the_estimate_beside_the_measured_peak(
    tmp_path: Path, fake_cifar_dir: Path
) -> None:
    runs = tmp_path / "runs"
    result = CliRunner().invoke(
        cli,
        ["train", "configs/3layer_bn.yaml", "--set", "training.n_s=5", "--set", "training.cycles=1",
         "--set", "data.validation_size=30", "--set", f"data.dir={fake_cifar_dir}",
         "--runs-dir", str(runs)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (run_dir,) = runs.iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    estimate = summary["memory_estimate_mb"]
    # The fake data's 150 + 30 images, and its probe: all 120 training images.
    assert estimate["data"] == round((180 + 120) * 3072 * 4 / 2**20, 1)
    assert estimate["total"] == pytest.approx(
        estimate["parameters"] + estimate["activations"] + estimate["data"] + estimate["baseline"],
        abs=0.2,
    )


def test_precise_bn_counts_a_layer_of_every_training_row_in_and_out() -> None:
    wide = {"model.hidden": "[1024, 512]"}
    plain = estimate_memory(config(**wide))
    precise = estimate_memory(config(**wide, **{"evaluation.precise_bn": "true"}))
    assert precise.activations >= 2 * 45_000 * 1024 * 4 > plain.activations
    assert precise.parameters == plain.parameters
    no_bn = {**wide, "model.batch_norm": "false"}
    precise_no_bn = estimate_memory(config(**no_bn, **{"evaluation.precise_bn": "true"}))
    assert precise_no_bn.activations == estimate_memory(config(**no_bn)).activations  # no BN
    # A step keeps, per example and unit, the affine output and gradient, and batch norm's
    # normalized input, output and gradient: 3 more buffers per hidden unit with BN.
    bn_buffers = 3 * (1024 + 512) * 100 * memory.LANES * 4
    assert plain.activations - estimate_memory(config(**no_bn)).activations == bn_buffers


@pytest.mark.parametrize(
    "args",
    [
        ["gradcheck", "--layers", "2", "--hidden", "2000000000"],
        # The study's networks are its own (it refuses model.hidden): here a machine with 1 MiB.
        ["study", "--quick", "--workers", "1"],
    ],
)
def test_other_commands_refuse_an_impossible_size_in_one_line(
    args: list[str], tmp_path: Path, fake_cifar_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = tmp_path / "runs"
    data = ["--set", f"data.dir={fake_cifar_dir}", "--set", "data.validation_size=30"]
    data = data if args[0] == "study" else []
    if args[0] == "study":
        monkeypatch.setattr("knn_cli.memory.available_memory", lambda: 2**20)
    result = CliRunner().invoke(cli, [*args, *data, "--runs-dir", str(runs)])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and "of memory" in result.output
    assert len(result.output.splitlines()) == 1
    assert not runs.exists()


def test_a_memory_error_nothing_foresaw_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import knn_cli.gradcheck_run as gradcheck_run

    def exhausted(*args: object, **kwargs: object) -> None:
        raise MemoryError("Unable to allocate 3.5 TiB")

    monkeypatch.setattr(gradcheck_run, "gradient_check", exhausted)
    result = CliRunner().invoke(cli, ["gradcheck", "--layers", "2", "--runs-dir", "/tmp/knn-x"])
    assert result.exit_code == 2
    assert result.output.splitlines()[-1] == (
        "error: not enough memory: Unable to allocate 3.5 TiB; make the network or the batch "
        "smaller"
    )
