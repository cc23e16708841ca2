"""What a study is asked for (`StudySettings`, kept in study.json so that a resumed study is the
same one), how long each part trains at that size, and the study's configs as the checkout
ships them."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from knn_cli.config import Override, RunConfig, config_from_dict, load_config
from knn_cli.errors import ConfigError, KnnError

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
        if not self.quick:
            return FULL
        if self.sets("training.n_s"):  # the user's half cycle, in every part of a quick study
            quick_cycles = tuple(o for o in QUICK.run_overrides if not o.startswith("training.n_s"))
            return replace(
                QUICK, search_n_s=None, final_n_s=None, grid_n_s=None, run_overrides=quick_cycles
            )
        return QUICK

    def sets(self, key: str) -> bool:
        """Whether a --set of the study names `key`."""
        return any(Override.key_of(text) == key for text in self.overrides)


# Settings the study decides in each part (its protocol): a --set of them would reach some
# parts and not others, so it is refused.
DECIDED_BY_THE_STUDY = {
    "training.seed": "the study seeds its runs itself: use --seed and --seeds",
    "training.cycles": "each part's cycles are the study's protocol (1 in --quick); "
    "train another schedule with knn train or knn sweep",
    "model.hidden": "the study's networks are 3 and 9 layers as its configs say; "
    "train other widths with knn train",
    "model.batch_norm": "the study compares each network with and without batch norm itself",
}


def check_overrides(settings: StudySettings) -> None:
    """Refuse, in one line before anything trains, a --set the study cannot take: a setting it
    decides itself, or a bad value (which would otherwise fail each part in its turn, and in a
    quick study be hidden in some parts by the quick sizes)."""
    for key, why in DECIDED_BY_THE_STUDY.items():
        if settings.sets(key):
            raise ConfigError(f"--set {key}: {why}")
    overrides = [*STUDY_OVERRIDES, *settings.overrides]
    for name in CONFIG_NAMES:
        path = Path(settings.configs_dir) / f"{name}.yaml"
        if path.is_file():  # a missing one is said by study_config, where it is needed
            load_config(path, overrides)
    config_from_dict({"name": "init"}, overrides)  # the init grid's base


def study_config(
    settings: StudySettings, name: str, *extra: str, seed: int | None = None
) -> RunConfig:
    """One of the study's configs as the checkout ships it, with the study's overrides and its
    seed (or `seed`), every value set through the override grammar and so validated."""
    path = Path(settings.configs_dir) / f"{name}.yaml"
    if not path.is_file():
        raise KnnError(f"the study's config {path} is missing: run knn study from a checkout")
    overrides = [*STUDY_OVERRIDES, *settings.overrides, *settings.sizes.run_overrides, *extra]
    chosen = settings.seed if seed is None else seed
    return load_config(path, [*overrides, f"training.seed={chosen}"])
