"""Populations: runs trained side by side in one step are the runs they stand for, bit for bit --
in the engine, the trainer and the run folders -- however their batches are shared, with batch
norm or not, dropout and augmentation on, whatever the update rule; a member that diverges
leaves, frozen, and the others go on unchanged; a population stopped and continued ends as an
uninterrupted one; and sweeps group their runs by what may differ within a population."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from test_train import image_dataset, small_config, small_config_doc, synthetic_dataset

from knn_cli.augment import Augmentation
from knn_cli.cli import cli
from knn_cli.config import TrainingConfig, config_from_dict
from knn_cli.diagnostics import Probe
from knn_cli.engine import Engine
from knn_cli.engine.batches import AugmentedBatch, Batch
from knn_cli.errors import ConfigError
from knn_cli.experiment import open_run, train_population, train_run
from knn_cli.network import Network
from knn_cli.optim import UPDATE_RULES, make_update_rule
from knn_cli.runs import new_run_dir
from knn_cli.sweeps.plan import TrialJob, lambda_trials
from knn_cli.sweeps.populations import AUTO, Populations, plan_populations, shared_settings
from knn_cli.sweeps.running import run_population
from knn_cli.trainer import Callbacks, Member, Splits, Trainer

# -- the engine -----------------------------------------------------------------------------------

# Each member's (seed, init sigma, lambda, eta); members of one seed share their batches.
MEMBERS = [(0, 0.1, 0.001, 0.02), (0, 0.05, 0.01, 0.05), (1, 0.1, 0.0, 0.03),
           (1, 0.02, 0.005, 0.01), (2, 0.08, 0.002, 0.04)]  # fmt: skip
VARIANTS = {
    "bn": {"batch_norm": True},
    "bn-after-relu-dropout": {"batch_norm": True, "bn_position": "after_relu", "dropout": 0.2},
    "no-bn-dropout-smoothing": {"batch_norm": False, "dropout": 0.3, "label_smoothing": 0.1},
}


def network(seed: int, sigma: float, d: int, **variant: object) -> Network:
    return Network(d, [12, 9], 10, init="normal", sigma=sigma, seed=seed, **variant)


def rows_of(seed: int, step: int, n_rows: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, step]).permutation(n_rows)[:n]


def batch_of(X: np.ndarray, seed: int, step: int, n: int, augmented: bool) -> Batch:
    rows = rows_of(seed, step, len(X), n)
    if not augmented:
        return Batch(X, rows)
    augmentation = Augmentation(flip=True, translate=2)
    from knn_cli.augment import draw

    draws = draw(augmentation, n, np.random.default_rng([seed, 99, step]))
    return AugmentedBatch(X, rows, augmentation, draws)


def lone_steps(X, y, members, variant, rule_name, steps, n, augmented, two_lanes=False):
    """Each member trained alone, on its own engine."""
    alone = []
    for seed, sigma, lambda_, eta in members:
        net, rule = network(seed, sigma, X.shape[1], **variant), make_update_rule(rule_name)
        with Engine(net, two_lanes=two_lanes) as engine:
            for step in range(steps):
                batch = batch_of(X, seed, step, n, augmented)
                engine.step(batch, y[batch.rows], lambda_, eta, rule, noise=(seed, 2, step))
        alone.append((net, rule))
    return alone


def population_steps(X, y, members, variant, rule_name, steps, n, augmented, two_lanes=False):
    """The members as one population: a batch per seed, shared by the members of that seed."""
    seeds = [seed for seed, *_ in members]
    groups = [sorted(set(seeds)).index(seed) for seed in seeds]
    nets = [network(seed, sigma, X.shape[1], **variant) for seed, sigma, *_ in members]
    rules = [make_update_rule(rule_name) for _ in members]
    with Engine(nets, groups=groups, two_lanes=two_lanes) as engine:
        for step in range(steps):
            batches = [batch_of(X, seed, step, n, augmented) for seed in sorted(set(seeds))]
            engine.step(
                batches,
                [y[b.rows] for b in batches],
                [m[2] for m in members],
                [m[3] for m in members],
                rules,
                noise=[(seed, 2, step) for seed in sorted(set(seeds))],
            )
    return list(zip(nets, rules, strict=True))


def assert_identical(alone, together) -> None:
    for (lone, lone_rule), (member, member_rule) in zip(alone, together, strict=True):
        for name, value in lone.params.items():
            np.testing.assert_array_equal(member.params[name], value, err_msg=name)
        assert member.moving_averages.keys() == lone.moving_averages.keys()
        for name, value in lone.moving_averages.items():
            np.testing.assert_array_equal(member.moving_averages[name], value, err_msg=name)
        assert member_rule.steps == lone_rule.steps
        for slot, by_name in lone_rule.state.items():
            for name, value in by_name.items():
                np.testing.assert_array_equal(member_rule.state[slot][name], value)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("rule_name", UPDATE_RULES)
def test_a_member_steps_as_it_steps_alone_bit_for_bit(variant: str, rule_name: str) -> None:
    """Seeds shared by two, two and one member: batch groups of unequal size."""
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((120, 24)).astype(np.float32), rng.integers(0, 10, 120)
    args = (X, y, MEMBERS, VARIANTS[variant], rule_name, 6, 20, False)
    assert_identical(lone_steps(*args), population_steps(*args))


@pytest.mark.parametrize("two_lanes", [False, True])
@pytest.mark.parametrize("share", ["every batch shared", "one batch each", "two groups of two"])
def test_members_of_a_split_first_layer_on_images_with_augmentation_are_alone_bit_for_bit(
    share: str, two_lanes: bool
) -> None:
    """The first layer large enough to be split between two lanes, augmented image batches."""
    rng = np.random.default_rng(1)
    X, y = rng.standard_normal((200, 3072)).astype(np.float32), rng.integers(0, 10, 200)
    seeds = {"every batch shared": [0, 0, 0, 0], "one batch each": [0, 1, 2, 3],
             "two groups of two": [0, 0, 1, 1]}[share]  # fmt: skip
    members = [(s, 0.02 * (k + 1), 0.001 * k, 0.01 * (k + 1)) for k, s in enumerate(seeds)]
    args = (X, y, members, VARIANTS["bn-after-relu-dropout"], "sgd", 4, 40, True, two_lanes)
    assert_identical(lone_steps(*args), population_steps(*args))


def test_a_population_of_one_is_the_lone_engine() -> None:
    """Engine(net) and Engine([net]) are the same fast path: the same bits, a number and an
    array of one."""
    rng = np.random.default_rng(2)
    X, y = rng.standard_normal((40, 24)).astype(np.float32), rng.integers(0, 10, 40)
    lone, member = network(3, 0.1, 24), network(3, 0.1, 24)
    cost = Engine(lone).step(X, y, 0.01, 0.05)
    costs = Engine([member]).step(X, y, 0.01, 0.05)
    assert isinstance(cost, float) and costs.shape == (1,) and costs[0] == cost
    for name, value in lone.params.items():
        np.testing.assert_array_equal(member.params[name], value)


def test_members_must_have_the_same_shapes_and_one_rule() -> None:
    with pytest.raises(ValueError, match="same layers"):
        Engine([network(0, 0.1, 24), Network(24, [12, 8], 10)])
    engine = Engine([network(0, 0.1, 24), network(1, 0.1, 24)])
    X, y = np.zeros((10, 24), dtype=np.float32), np.zeros(10, dtype=int)
    with pytest.raises(ValueError, match="share one update rule"):
        engine.step([X, X], [y, y], 0.0, 0.01, [make_update_rule("sgd"), make_update_rule("adam")])


# -- the trainer ----------------------------------------------------------------------------------

TRAINING = TrainingConfig(batch_size=25, n_s=6, cycles=1, eval_every=4, lambda_=0.01)


def member_of(seed: int, sigma: float, lambda_: float, eta_max: float, records: list) -> Member:
    training = replace(TRAINING, seed=seed, lambda_=lambda_, eta_max=eta_max)
    net = Network(32, [16, 12], 10, batch_norm=True, init="normal", sigma=sigma, seed=seed,
                  dropout=0.1)  # fmt: skip
    data = synthetic_dataset()
    probe = Probe.of(data.X_train, data.y_train, 50, seed)
    return Member(net, training, make_update_rule("momentum"), Callbacks(records.extend), probe)


def test_a_member_trains_as_it_trains_alone_with_its_evaluations_and_probe() -> None:
    data = synthetic_dataset()
    splits = Splits(data.X_train, data.y_train, data.X_val, data.y_val)
    specs = [(0, 0.1, 0.01, 0.1), (0, 0.05, 0.0, 0.05), (4, 0.1, 0.003, 0.2)]
    alone = []
    for spec in specs:
        records: list = []
        member = member_of(*spec, records)
        Trainer([member], splits, train_curve=100).train()
        alone.append((member, records))
    together_records: list[list] = [[] for _ in specs]
    members = [
        member_of(*spec, records) for spec, records in zip(specs, together_records, strict=False)
    ]
    trainer = Trainer(members, splits, train_curve=100)
    outcomes = trainer.train()
    assert [o.status for o in outcomes] == ["finished"] * 3
    for (lone, lone_records), member, records in zip(
        alone, members, together_records, strict=False
    ):
        assert records == lone_records  # every split, every point, to the last bit
        for name, value in lone.network.state().items():
            np.testing.assert_array_equal(member.network.state()[name], value)


def test_a_diverging_member_leaves_frozen_and_the_others_go_on_unchanged() -> None:
    data = synthetic_dataset()
    splits = Splits(data.X_train, data.y_train, data.X_val, data.y_val)
    specs = [(0, 0.1, 0.01, 0.1), (0, 0.1, 0.01, 1e30), (1, 0.1, 0.0, 0.05)]
    alone = []
    for spec in specs:
        member = member_of(*spec, [])
        outcome = Trainer([member], splits).train()[0]
        alone.append((member, outcome))
    ended = []

    class Leaving(Callbacks):
        def ended(self, outcome):  # type: ignore[no-untyped-def]
            ended.append(outcome)

    members = [member_of(*spec, []) for spec in specs]
    members[1].listener = Leaving()
    outcomes = Trainer(members, splits).train()
    assert [o.status for o in outcomes] == ["finished", "diverged", "finished"]
    # Members of one seed apart (seeds 0, 1, 0): the one between leaves, the others' batches
    # stay theirs.
    apart = [member_of(*spec, []) for spec in (specs[0], (1, 0.1, 0.0, 1e30), specs[0])]
    assert [o.status for o in Trainer(apart, splits).train()] == [
        "finished", "diverged", "finished"
    ]  # fmt: skip
    for name, value in members[0].network.state().items():
        np.testing.assert_array_equal(apart[2].network.state()[name], value)
    assert ended == [outcomes[1]] and outcomes[1] == alone[1][1]  # at the same step, same words
    for (lone, lone_outcome), member, outcome in zip(alone, members, outcomes, strict=False):
        assert outcome == lone_outcome
        for name, value in lone.network.state().items():
            np.testing.assert_array_equal(member.network.state()[name], value)


def test_members_must_share_their_schedule() -> None:
    data = synthetic_dataset()
    splits = Splits(data.X_train, data.y_train, data.X_val, data.y_val)
    one, other = member_of(0, 0.1, 0.0, 0.1, []), member_of(1, 0.1, 0.0, 0.1, [])
    other.training = replace(other.training, cycles=2)
    with pytest.raises(ValueError, match="must share batch size, n_s, cycles"):
        Trainer([one, other], splits)


# -- run folders ----------------------------------------------------------------------------------


def folder_files(run_dir: Path) -> dict[str, object]:
    files: dict[str, object] = {
        name: (run_dir / name).read_text() for name in ("metrics.csv", "diagnostics.csv")
    }
    with np.load(run_dir / "model.npz") as model:
        files.update({f"model.{key}": model[key] for key in model.files})
    summary = json.loads((run_dir / "summary.json").read_text())
    files.update({key: value for key, value in summary.items() if "accuracy" in key})
    return files


def assert_same_files(got: dict[str, object], expected: dict[str, object]) -> None:
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(got[key], value, err_msg=key)
        else:
            assert got[key] == value, key


def population_configs() -> list:
    doc = small_config_doc(optimizer="adam", eta_min=1e-4, eta_max=3e-3)
    doc["model"] |= {"dropout": 0.2}
    doc["augment"] = {"flip": True, "translate": 2}
    doc["evaluation"] = {"precise_bn": True, "test_time_flip": True, "train_curve_rows": 50}
    variants = [("training.seed=0", "training.lambda=0.001"), ("training.seed=0",),
                ("training.seed=2", "model.init=normal", "model.sigma=0.05")]  # fmt: skip
    return [config_from_dict(doc, [*list(v), f"name=m{k}"]) for k, v in enumerate(variants)]


def test_each_member_writes_the_folder_it_writes_alone(tmp_path: Path) -> None:
    data = image_dataset()
    configs = population_configs()
    alone = []
    for config in configs:
        run_dir = new_run_dir(tmp_path / "alone", config.name)
        train_run(config, run_dir, dataset=data, background_evaluation=False)
        alone.append(run_dir)
    runs = [
        open_run(c, new_run_dir(tmp_path / "together", c.name), data, population=3) for c in configs
    ]
    summaries = train_population(runs, data, background_evaluation=False)
    assert [s["status"] for s in summaries] == ["finished"] * 3
    assert [s["population"] for s in summaries] == [3, 3, 3]
    for lone, run in zip(alone, runs, strict=True):
        assert_same_files(folder_files(run.run_dir), folder_files(lone))
        assert (run.run_dir / "layers.png").is_file() and (run.run_dir / "accuracy.png").is_file()


def test_a_stopped_population_continues_to_the_numbers_of_an_uninterrupted_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C between two steps: every member saves a checkpoint, the population is continued
    from them in the same folders; and members checkpointed at different steps (a kill -9
    between two members' saves) continue each from its own, in populations by step."""
    from conftest import interrupt_at

    data = image_dataset()
    configs = population_configs()
    straight = [
        open_run(c, new_run_dir(tmp_path / "straight", c.name), data, population=3) for c in configs
    ]
    train_population(straight, data, background_evaluation=False)
    folders = [new_run_dir(tmp_path / "stopped", c.name) for c in configs]
    with monkeypatch.context() as patch:
        interrupt_at(patch, 27)
        runs = [open_run(c, d, data, population=3) for c, d in zip(configs, folders, strict=False)]
        with pytest.raises(KeyboardInterrupt):
            train_population(runs, data, background_evaluation=False, stop_between_steps=True)
    for folder in folders:
        assert json.loads((folder / "summary.json").read_text())["status"] == "interrupted"
        assert (folder / "checkpoint.npz").is_file()
    # The third member's checkpoint is an older one: as if killed before it saved the newer.
    older = tmp_path / "older"
    with monkeypatch.context() as patch:
        interrupt_at(patch, 13)
        run = open_run(configs[2], new_run_dir(older, "m2"), data)
        with pytest.raises(KeyboardInterrupt):
            train_population([run], data, background_evaluation=False, stop_between_steps=True)
    (folders[2] / "checkpoint.npz").write_bytes((run.run_dir / "checkpoint.npz").read_bytes())
    resumed = [
        open_run(c, d, data, resume=True, population=3)
        for c, d in zip(configs, folders, strict=False)
    ]
    assert [r.start_step for r in resumed] == [27, 27, 13]
    train_population(resumed, data, background_evaluation=False)
    for run, reference in zip(resumed, straight, strict=True):
        got, expected = folder_files(run.run_dir), folder_files(reference.run_dir)
        assert_same_files(got, expected)


def test_runs_of_a_later_step_are_saved_when_an_earlier_population_is_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runs continue from different steps, as two populations one after the other: a stop
    in the first saves the second too, as it was restored, ready to continue."""
    from conftest import interrupt_at

    data = image_dataset()
    configs = population_configs()[:2]
    folders = [new_run_dir(tmp_path, c.name) for c in configs]
    for stop, config, folder in zip((13, 27), configs, folders, strict=True):
        with monkeypatch.context() as patch:
            interrupt_at(patch, stop)
            run = open_run(config, folder, data)
            with pytest.raises(KeyboardInterrupt):
                train_population([run], data, background_evaluation=False, stop_between_steps=True)
    saved = (folders[1] / "checkpoint.npz").read_bytes()
    (folders[1] / "summary.json").unlink()  # as a kill -9 would have left it
    with monkeypatch.context() as patch:
        interrupt_at(patch, 20)  # within the first population, continued from step 13
        runs = [open_run(c, d, data, resume=True) for c, d in zip(configs, folders, strict=True)]
        assert [r.start_step for r in runs] == [13, 27]
        with pytest.raises(KeyboardInterrupt):
            train_population(runs, data, background_evaluation=False, stop_between_steps=True)
    later = json.loads((folders[1] / "summary.json").read_text())
    assert later["status"] == "interrupted" and later["steps"] == 27
    assert (folders[1] / "checkpoint.npz").read_bytes() == saved  # untouched: continue from it


def test_a_sweeps_population_is_one_job_and_a_member_that_cannot_open_fails_alone(
    tmp_path: Path, fake_cifar_dir: Path
) -> None:
    base = config_from_dict(
        {
            "name": "s",
            "model": {"hidden": [8]},
            "training": {"n_s": 5, "cycles": 1},
            "data": {"dir": str(fake_cifar_dir), "validation_size": 30},
        }
    )
    from knn_cli.config import config_to_dict

    trials = lambda_trials(config_to_dict(base), "coarse", (-3, -1), range(3), seed=0, cycles=1,
                           n_s=5)  # fmt: skip
    jobs = [TrialJob(t, str(tmp_path / t.folder)) for t in trials]
    Path(jobs[1].run_dir).mkdir()
    jobs[1] = replace(jobs[1], start="resume")  # it has no checkpoint: it cannot be continued
    errors = run_population(jobs)
    assert errors[0] == errors[2] == "" and "checkpoint" in errors[1]
    for job in (jobs[0], jobs[2]):
        summary = json.loads((Path(job.run_dir) / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["population"] == 3


def test_knn_runs_counts_a_members_share_of_the_worker() -> None:
    from knn_cli.runs import worker_seconds

    assert worker_seconds({"wall_seconds": 30.0, "population": 3}) == 10.0
    assert worker_seconds({"wall_seconds": 12.0}) == 12.0  # runs from before populations
    assert worker_seconds({}) is None


# -- grouping -------------------------------------------------------------------------------------


def doc(seed: int = 0, **settings: object) -> dict:
    config = small_config(seed=seed)
    from knn_cli.config import config_to_dict

    found = config_to_dict(config)
    for dotted, value in settings.items():
        section, key = dotted.split("__")
        found[section][key] = value
    return found


def test_runs_differing_in_seed_lambda_rates_or_init_train_together_and_others_apart() -> None:
    same = shared_settings(doc(), True)
    other = doc(seed=3, training__lambda=0.5, model__sigma=0.01, model__init="normal",
                training__eta_max=0.3)  # fmt: skip
    assert shared_settings(other, True) == same
    assert shared_settings(doc(model__hidden=[20]), True) != same
    assert shared_settings(doc(training__cycles=3), True) != same
    assert shared_settings(doc(), False) != same  # one looks at the test set, one does not


def test_populations_keep_a_seeds_runs_together_within_the_limit_and_fill_the_workers() -> None:
    items = [doc(seed=s, training__lambda=lam) for lam in (0.1, 0.2, 0.3) for s in (2, 0, 1)]
    items += [doc(model__hidden=[5])]

    def plan(policy: Populations, workers: int) -> list[list[int]]:
        found = plan_populations(items, lambda d: d, lambda d: True, policy, workers)
        return [[items.index(d) for d in population] for population in found]

    # One group of nine (seeds next to each other), and the other config alone.
    assert plan(AUTO, 1) == [[1, 4, 7, 2, 5, 8, 0, 3, 6], [9]]
    assert plan(Populations(4), 1) == [[1, 4, 7], [2, 5, 8], [0, 3, 6], [9]]
    assert plan(Populations(1), 1) == [[1], [4], [7], [2], [5], [8], [0], [3], [6], [9]]
    assert plan(AUTO, 3) == [[1, 4, 7, 2, 5], [8, 0, 3, 6], [9]]  # the largest halved


@pytest.mark.parametrize("text", ["0", "-1", "two", "1.5", ""])
def test_population_takes_auto_off_or_a_number(text: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must be auto, off, or the most runs"):
        Populations.parse(text)
    result = CliRunner().invoke(
        cli, ["lambda-search", "--coarse", "--population", text, "--runs-dir", str(tmp_path)]
    )
    assert result.exit_code == 2 and "--population" in result.output
    assert not list(tmp_path.iterdir())
    assert str(Populations.parse("auto")) == "auto" and str(Populations.parse("OFF")) == "off"
    assert Populations.parse("7").limit == 7
