"""What a study is asked for (`StudySettings`, kept in study.json so that a resumed study is the
same one), how long each part trains at that size, and the study's configs as the checkout
ships them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from knn_cli.config import RunConfig, load_config
from knn_cli.errors import KnnError

CONFIG_NAMES = ("3layer", "3layer_bn", "9layer", "9layer_bn")
CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs"  # the checkout's configs/
GRADCHECK_DEPTHS = (2, 3, 4, 9)
# The study drew lambda = 10^U with U uniform in [-4, -1] (its section 4).
STUDY_LOG_RANGE = (-4.0, -1.0)
QUICK_N_S = 100  # steps per half cycle of every run of a quick study
# The study's runs measure their training-set curve on a sample of the training rows (the last
# point on all of them): a figure's curve, at a tenth of the cost of measuring every row.
STUDY_OVERRIDES = ("evaluation.train_curve_rows=5000",)


@dataclass(frozen=True)
class Sizes:
    """How long each part trains: the study's protocol, or a quick look at it."""

    search_trials: int
    search_cycles: int
    search_n_s: int | None  # None: the config's (5 epochs a half cycle)
    final_cycles: int
    final_n_s: int | None
    run_overrides: tuple[str, ...]  # on the four configs and the 9-layer retrain
    grid_cycles: int
    grid_n_s: int | None


FULL = Sizes(10, 2, None, 3, None, (), 2, None)
QUICK = Sizes(
    3, 1, QUICK_N_S, 1, QUICK_N_S, (f"training.n_s={QUICK_N_S}", "training.cycles=1"), 1, QUICK_N_S
)


@dataclass(frozen=True)
class StudySettings:
    """What a study is asked for; kept in study.json so that a resumed study is the same one."""

    quick: bool = False
    seeds: int = 3
    seed: int = 0
    overrides: tuple[str, ...] = ()  # --set, applied to every config of the study
    configs_dir: str = str(CONFIGS_DIR)

    @property
    def sizes(self) -> Sizes:
        return QUICK if self.quick else FULL


def study_config(settings: StudySettings, name: str, *extra: str) -> RunConfig:
    """One of the study's configs as the checkout ships it, with the study's overrides."""
    path = Path(settings.configs_dir) / f"{name}.yaml"
    if not path.is_file():
        raise KnnError(f"the study's config {path} is missing: run knn study from a checkout")
    overrides = [*STUDY_OVERRIDES, *settings.overrides, *settings.sizes.run_overrides, *extra]
    return load_config(path, [*overrides, f"training.seed={settings.seed}"])
