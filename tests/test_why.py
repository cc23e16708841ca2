"""The report's section on what batch norm does: its sentences about the study's claim, each
written from constructed numbers whose verdict is known."""

from __future__ import annotations

from pathlib import Path

from knn_cli.runs import diagnostics_log
from knn_cli.study.why import Watched, claim_sentences, grid_reason, landscape_sentence
from knn_cli.sweeps.folder import TrialRecord
from knn_cli.sweeps.plan import Trial


def record(
    accuracy: float, folder: Path = Path("000-cell"), batch_norm: bool = False
) -> TrialRecord:
    """A finished run (its folder is read only by grid_reason)."""
    config = {"model": {"hidden": [50] * 8, "batch_norm": batch_norm}, "training": {}}
    trial = Trial(0, "grid", "cell", config, "000-cell", True)
    return TrialRecord(trial, folder, {"status": "finished", "test_accuracy": accuracy})


def rows(gradients: list[float], step: int = 0, **more: list[float]) -> list[dict]:
    found = [
        {"step": step, "layer": str(layer), "quantity": "grad_norm", "value": value}
        for layer, value in enumerate(gradients, start=1)
    ]
    for quantity, values in more.items():
        found += [
            {"step": step, "layer": str(layer), "quantity": quantity, "value": value}
            for layer, value in enumerate(values, start=1)
        ]
    return found


HE = Watched(
    False, "He", record(0.469), tuple(rows([1.2, 0.5, 0.3, 0.2, 0.2, 0.1, 0.1, 0.1, 0.077]))
)
SMALL = Watched(False, "sigma 0.001", record(0.10), tuple(rows([5.2e-21] * 4 + [2.5e-21] * 5)))
SMALL_BN = Watched(
    True, "sigma 0.001", record(0.50, batch_norm=True), tuple(rows([0.33] * 8 + [0.085]))
)
STUCK = Watched(False, "sigma 0.1", record(0.10), tuple(rows([5e-5] * 9)))


def test_the_claim_holds_where_gradients_vanish_and_fails_where_they_do_not() -> None:
    lines = claim_sentences([HE, SMALL, SMALL_BN, STUCK])
    text = " ".join(lines)
    assert "Without batch norm, He: the gradients do not vanish (layer 1 1.2, layer 9 0.077" in text
    assert "it learns (46.90%)" in text
    assert (
        "every layer's gradient is 2.5e-21 to 5.2e-21 at step 0 -- vanished in every layer" in text
    )
    assert "it stays at chance (10.00%)" in text
    assert "With batch norm, sigma 0.001: gradients 0.085 to 0.33 at step 0, and it learns" in text
    verdict = lines[-1]
    assert verdict.startswith("So the study's explanation holds at sigma 0.001")
    assert "does not hold at He" in verdict
    assert "does not explain sigma 0.1: the gradients did not vanish" in verdict


def test_a_run_that_learns_a_little_is_not_said_to_stay_at_chance() -> None:
    slow = Watched(True, "sigma 0.001", record(0.19, batch_norm=True), SMALL_BN.rows)
    (line,) = claim_sentences([slow])
    assert "it barely learns (19.00%)" in line


def test_vanishing_mostly_in_early_layers_is_said_so() -> None:
    early = Watched(False, "sigma 0.01", record(0.1), tuple(rows([1e-12] + [1e-8] * 7 + [1e-7])))
    assert "most in the early layers" in claim_sentences([early])[0]


def test_the_landscape_sentence_follows_the_medians() -> None:
    def measures(values: float) -> list[dict]:
        return [
            {"step": step, "layer": "all", "quantity": q, "value": values}
            for step in (0, 10)
            for q in ("loss_range", "grad_change", "beta_smoothness")
        ]

    smoother = landscape_sentence({False: measures(2.0), True: measures(1.0)})
    assert "loss range, grad change and beta smoothness are smaller" in smoother
    assert "This agrees with Santurkar" in smoother
    rougher = landscape_sentence({False: measures(1.0), True: measures(2.0)})
    assert "This disagrees with Santurkar" in rougher
    mixed = measures(2.0)
    for row in mixed:
        if row["quantity"] == "grad_change":
            row["value"] = 0.5
    partly = landscape_sentence({False: measures(1.0), True: mixed})
    assert "the median grad change is smaller" in partly
    assert "loss range and beta smoothness are not smaller" in partly
    assert "This partly agrees with Santurkar" in partly


def test_a_grid_cell_says_why_from_its_folder(tmp_path: Path) -> None:
    log = diagnostics_log(tmp_path)
    log.append(rows([5e-5] * 9, dead_fraction=[0.1] * 7 + [1.0]))
    log.close()
    reason = grid_reason(record(0.10, folder=tmp_path))
    assert (
        reason
        == "chance: gradients 5e-05 to 5e-05 at step 0; every unit of layer 8 dead at the end"
    )
    assert grid_reason(record(0.45, folder=tmp_path)).startswith("learned: gradients 5e-05")
