"""The search space through its public API: conditional, fixed names and ranges, overridable."""

from __future__ import annotations

import collections
import dataclasses

import optuna
import pytest

from lrsearch import LrsearchError, suggest_schedule
from lrsearch.schedules import FAMILIES, Schedule
from lrsearch.space import (
    LR_RANGE_ATTR,
    AutoLr,
    Categorical,
    FloatRange,
    default_space,
    resolve_auto_lr,
    space_from_table,
)


def sample(n_trials: int, space=None, seed: int = 0) -> optuna.Study:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))

    def objective(trial: optuna.Trial) -> float:
        schedule = suggest_schedule(trial, space)
        trial.set_user_attr("schedule", schedule.to_dict())
        return float(schedule.curve(100).mean())

    study.optimize(objective, n_trials=n_trials)
    return study


@pytest.fixture(scope="module")
def sampled() -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return sample(400)


def test_every_family_is_sampled_and_valid(sampled: optuna.Study) -> None:
    families = collections.Counter(t.params["family"] for t in sampled.trials)
    assert set(families) == set(FAMILIES)
    for trial in sampled.trials:
        schedule = Schedule.from_dict(trial.user_attrs["schedule"])
        assert schedule.family == trial.params["family"]
        assert 0 < schedule.lr <= 0.5


def test_only_the_chosen_familys_parameters_are_sampled(sampled: optuna.Study) -> None:
    for trial in sampled.trials:
        family = trial.params["family"]
        others = [
            name for name in trial.params if name != "family" and not name.startswith(f"{family}.")
        ]
        assert others == []
        assert f"{family}.lr" in trial.params


def test_a_parameter_name_has_one_distribution_in_every_trial(sampled: optuna.Study) -> None:
    seen: dict[str, optuna.distributions.BaseDistribution] = {}
    for trial in sampled.trials:
        for name, distribution in trial.distributions.items():
            assert seen.setdefault(name, distribution) == distribution, name


def test_min_lr_is_a_ratio_of_lr_with_zero_allowed() -> None:
    space = default_space(("cosine",), {"min_lr_ratio": 0.0})
    for trial in sample(20, space).trials:
        assert Schedule.from_dict(trial.user_attrs["schedule"]).params()["min_lr"] == 0.0
    space = default_space(("cosine",), {"min_lr_ratio": FloatRange(0.05, 0.1)})
    for trial in sample(20, space).trials:
        params = Schedule.from_dict(trial.user_attrs["schedule"]).params()
        assert 0.05 * params["lr"] <= params["min_lr"] <= 0.1 * params["lr"] * (1 + 1e-12)


def test_sampled_milestones_are_sorted_fractions() -> None:
    for trial in sample(50, default_space(("step", "piecewise"))).trials:
        params = trial.user_attrs["schedule"]["params"]
        edges = params.get("milestones") or params["boundaries"]
        assert 0 < edges[0] < edges[1] < 1


def test_a_fixed_tuple_replaces_its_sampled_stand_ins() -> None:
    space = space_from_table({"families": ["step"], "step": {"milestones": [0.5, 0.75]}})
    for trial in sample(10, space).trials:
        assert trial.user_attrs["schedule"]["params"]["milestones"] == [0.5, 0.75]
        assert not any("edge" in name for name in trial.params)


def test_study_file_ranges_choices_and_fixed_values() -> None:
    space = space_from_table(
        {
            "families": ["cosine", "wsd"],
            "lr": [0.01, 0.1],
            "warmup": 0.1,
            "warmup_mode": ["linear"],
            "wsd": {"decay": "cosine"},
        }
    )
    assert space.families == ("cosine", "wsd")
    assert space.settings["cosine"]["lr"] == FloatRange(0.01, 0.1, log=True)
    assert space.settings["wsd"]["warmup_mode"] == Categorical(("linear",))
    for trial in sample(30, space).trials:
        params = trial.user_attrs["schedule"]["params"]
        assert 0.01 <= params["lr"] <= 0.1
        assert params["warmup"] == 0.1
        if trial.params["family"] == "wsd":
            assert params["decay"] == "cosine"


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"families": ["cosine", "nope"]}, "unknown schedule family 'nope'"),
        ({"families": []}, "at least one family"),
        ({"families": "cosine"}, "must be a list"),
        ({"families": ["cosine", "cosine"]}, "listed twice"),
        ({"lr": [0.0, 1.0]}, "must be > 0"),
        ({"lr": [1.0, 0.1]}, "empty"),
        ({"lr": [0.1, 0.2, 0.3]}, "[low, high]"),
        ({"lr": "high"}, "[low, high]"),
        ({"warmup": [0.0, 1.5]}, "warmup=1.5"),
        ({"warmup_mode": ["sideways"]}, "choose from 'linear', 'burnin'"),
        ({"families": ["cosine"], "cosine": {"bogus": 1}}, "unknown parameter 'bogus'"),
        ({"families": ["cosine"], "cosine": {"decay_period": -1}}, "decay_period=-1.0"),
        ({"families": ["cosine"], "step": {"gamma": 0.5}}, "not in space.families"),
        ({"nonsense": 1}, "unknown parameter 'nonsense'"),
        ({"lr": "Auto"}, "space.lr='Auto' must be [low, high], one number or \"auto\""),
        ({"lr": True}, 'one number or "auto"'),
        (
            {"lr": "auto", "families": ["cosine"], "cosine": {"lr": 0.1}},
            'space.cosine.lr cannot be set with space.lr = "auto"',
        ),
        ({"families": ["cosine"], "cosine": {"lr": "auto"}}, "space.cosine.lr='auto' must be"),
    ],
)
def test_bad_space_tables_are_refused_with_the_reason(table: dict, message: str) -> None:
    with pytest.raises(LrsearchError) as error:
        space_from_table(table)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_the_default_space_covers_every_family() -> None:
    assert set(default_space().families) == set(FAMILIES)


def test_auto_lr_is_a_marker_until_the_range_test_resolves_it() -> None:
    space = space_from_table({"lr": "auto", "families": ["cosine", "step"]})
    assert space.auto_lr and isinstance(space.settings["cosine"]["lr"], AutoLr)
    resolved = resolve_auto_lr(space, 1e-4, 1e-2)
    assert not resolved.auto_lr
    for family in ("cosine", "step"):
        assert resolved.settings[family]["lr"] == FloatRange(1e-4, 1e-2, log=True)
        others = {k: v for k, v in resolved.settings[family].items() if k != "lr"}
        assert others == {k: v for k, v in space.settings[family].items() if k != "lr"}


@pytest.mark.parametrize(
    ("low", "high", "message"), [(1e-2, 1e-4, "empty"), (0.0, 1e-2, "must be > 0")]
)
def test_a_bad_found_range_is_refused(low: float, high: float, message: str) -> None:
    with pytest.raises(LrsearchError, match=message):
        resolve_auto_lr(space_from_table({"lr": "auto"}), low, high)


def test_a_hand_set_space_keeps_its_definition_and_auto_is_marked_in_its_own() -> None:
    """``auto`` is a property, so the stored definitions of existing studies stay equal."""
    hand = dataclasses.asdict(space_from_table({"lr": [1e-3, 0.5]}))
    assert set(hand) == {"families", "settings"}
    assert hand["settings"]["cosine"]["lr"] == {"low": 1e-3, "high": 0.5, "log": True}
    auto = dataclasses.asdict(space_from_table({"lr": "auto"}))
    assert auto["settings"]["cosine"]["lr"]["auto"] is True


def test_an_auto_space_without_a_range_test_is_one_error() -> None:
    study = optuna.create_study()
    with pytest.raises(LrsearchError, match="has no range test result yet"):
        suggest_schedule(study.ask(), space_from_table({"lr": "auto"}))


def test_an_auto_space_samples_the_stored_range_on_a_log_scale() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.set_user_attr(LR_RANGE_ATTR, {"low": 1e-5, "high": 1e-3, "suggested": 1e-4})
    space = space_from_table({"lr": "auto", "families": ["constant"]})
    lrs = [suggest_schedule(study.ask(), space).lr for _ in range(200)]
    assert all(1e-5 <= lr <= 1e-3 for lr in lrs)
    assert 0.3 < sum(lr < 1e-4 for lr in lrs) / len(lrs) < 0.7  # log scale: half below 1e-4
