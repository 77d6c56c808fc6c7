"""Decomposition: the search's gain split into the peak LR's and the shape's, paired."""

from __future__ import annotations

import dataclasses
import io
import json
import shlex
from pathlib import Path

import optuna
import pytest
from digits_study import digits_study

from lrsearch import LrsearchError
from lrsearch.baselines import BASELINE_ATTR, DECOMPOSITION_ATTR, REFERENCE_SHAPES
from lrsearch.cli import main
from lrsearch.config import StudyConfig, TrainConfig
from lrsearch.decompose import Decomposition, advise, decompose, peaks_around
from lrsearch.runner import run_study
from lrsearch.space import FloatRange
from lrsearch.stats import AHEAD, BEHIND, WITHIN_NOISE, Comparison
from lrsearch.study import best_trial


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> StudyConfig:
    config = digits_study(tmp_path_factory.mktemp("decompose") / "study.db", n_trials=2)
    run_study(config, out=io.StringIO())
    return config


@pytest.fixture(scope="module")
def decomposed(searched: StudyConfig) -> Decomposition:
    return decompose(searched, out=io.StringIO())


def test_peaks_around_step_by_factors_of_two() -> None:
    assert peaks_around(0.1, 0) == [0.1]
    assert peaks_around(0.1, 1) == pytest.approx([0.05, 0.1, 0.2])


def test_every_reference_shape_trains_at_both_peaks_beside_the_retrained_trial(
    searched: StudyConfig, decomposed: Decomposition
) -> None:
    study = optuna.load_study(study_name=searched.name, storage=searched.storage)
    best = best_trial(study.get_trials(), baseline=False)
    assert best is not None
    labels = set(decomposed.values)
    for name in REFERENCE_SHAPES:
        assert f"{name} at {decomposed.default_peak:.3g}" in labels
        assert f"{name} at {decomposed.peak:.3g}" in labels
    # The study's SGD, schedule-free, at the same peaks in its units: momentum 0.9's 10x.
    for peak in (decomposed.default_peak, decomposed.peak):
        assert f"sgd-schedulefree at {peak * 10:.3g}" in labels
    # Same seed, same batches: the retrained trial scores what it scored in the search.
    assert decomposed.values[f"trial {best.number}"] == pytest.approx(best.value)
    lr = searched.space.settings["cosine"]["lr"]
    assert isinstance(lr, FloatRange) and lr.log
    assert decomposed.default_peak == pytest.approx((lr.low * lr.high) ** 0.5)


def test_the_gains_compare_one_shape_at_two_peaks_and_the_trial_at_its_own_peak(
    decomposed: Decomposition,
) -> None:
    peak, shape, schedule = decomposed.peak_gain, decomposed.shape_gain, decomposed.schedule_gain
    assert peak.a.split(" at ")[0] == peak.b.split(" at ")[0]
    assert peak.b.endswith(f" at {decomposed.default_peak:.3g}")
    assert shape.a.startswith("trial ") and shape.b.endswith(f" at {decomposed.peak:.3g}")
    # The searched schedule against the best schedule-free run, whichever peak it had.
    assert schedule is not None and schedule.a == shape.a
    free = {k: v for k, v in decomposed.values.items() if k.startswith("sgd-schedulefree at ")}
    assert len(free) == 2 and schedule.b == max(free, key=free.__getitem__)
    for gain in (peak, shape, schedule):
        c = gain.comparison
        assert c.low <= c.difference <= c.high
        assert c.difference == pytest.approx(decomposed.values[gain.a] - decomposed.values[gain.b])
        assert c.examples > 0 and c.seeds == 1
        assert gain.line().startswith(f"{gain.name}: {gain.a} vs {gain.b}: ")
    # The advice from these gains, in the documented order (advise's own test covers each).
    verdicts = (peak.comparison.verdict, shape.comparison.verdict)
    free_as_good = decomposed.values[schedule.b] >= decomposed.values[peak.a]  # accuracies
    if AHEAD in verdicts and schedule.comparison.verdict != AHEAD and free_as_good:
        said = f"no schedule needed: sgd-schedulefree at a constant LR {schedule.b.split()[-1]} "
    elif shape.comparison.verdict == AHEAD:
        said = "use the searched schedule: "
    elif peak.comparison.verdict == AHEAD:
        said = f"change only your peak LR to {peak.a.split()[-1]} "
    else:
        said = "nothing beats your default beyond noise"
    assert decomposed.advice.startswith(said)
    assert decomposed.lines()[-2:] == [schedule.line(), f"advice: {decomposed.advice}"]
    kept = decomposed.as_dict()
    assert kept["shape_gain"]["verdict"] == shape.comparison.verdict
    assert kept["schedule_gain"] == schedule.as_dict() and kept["schedule_gain_skipped"] is None


ADVICE = {
    "free": "no schedule needed: sgd-schedulefree at a constant LR 0.1 (after a 10% warmup) "
    "does as well",
    "searched": "use the searched schedule: cosine",
    "peak": "change only your peak LR to 0.2 (shape wsd-cooldown20)",
    "nothing": "nothing beats your default beyond noise",
}


def comparison(verdict: str) -> Comparison:
    """A paired comparison with the given verdict on 100 examples, one seed."""
    low, high = {AHEAD: (0.01, 0.05), BEHIND: (-0.05, -0.01), WITHIN_NOISE: (-0.02, 0.02)}[verdict]
    return Comparison((low + high) / 2, low, high, examples=100, seeds=1, method="paired")


@pytest.mark.parametrize(
    ("peak", "shape", "schedule", "free_as_good", "advice"),
    [
        # No schedule first, where something beats the default and it does as well.
        (AHEAD, WITHIN_NOISE, WITHIN_NOISE, True, "free"),
        (WITHIN_NOISE, AHEAD, WITHIN_NOISE, True, "free"),
        (AHEAD, AHEAD, BEHIND, True, "free"),
        # The searched shape, once no schedule falls short of it or of the reference shapes.
        (AHEAD, AHEAD, AHEAD, True, "searched"),
        (WITHIN_NOISE, AHEAD, WITHIN_NOISE, False, "searched"),
        (AHEAD, AHEAD, None, False, "searched"),  # no schedule-free run
        # Only the peak, likewise.
        (AHEAD, WITHIN_NOISE, AHEAD, True, "peak"),
        (AHEAD, BEHIND, WITHIN_NOISE, False, "peak"),
        # Nothing beats the default: no change, however well schedule-free does.
        (WITHIN_NOISE, WITHIN_NOISE, WITHIN_NOISE, True, "nothing"),
        (BEHIND, WITHIN_NOISE, BEHIND, True, "nothing"),
        (WITHIN_NOISE, WITHIN_NOISE, None, False, "nothing"),
    ],
)
def test_the_advice_names_one_change_in_the_documented_order(
    peak: str, shape: str, schedule: str | None, free_as_good: bool, advice: str
) -> None:
    said = advise(
        comparison(peak),
        comparison(shape),
        None if schedule is None else comparison(schedule),
        free_as_good=free_as_good,
        searched="cosine",
        new_peak="0.2 (shape wsd-cooldown20)",
        no_schedule="sgd-schedulefree at a constant LR 0.1 (after a 10% warmup)",
    )
    assert said == ADVICE[advice]


@pytest.mark.parametrize(
    ("training", "why"),
    [
        (
            TrainConfig(epochs=1, batch_size=64, optimizer="adamw-schedulefree"),
            "the study's optimizer, adamw-schedulefree, is already schedule-free",
        ),
        (
            TrainConfig(epochs=1, batch_size=64, momentum=0.0),
            "schedule-free SGD needs momentum > 0, and the study's SGD has none",
        ),
    ],
    ids=["schedule-free", "sgd-without-momentum"],
)
def test_a_study_without_a_schedule_free_counterpart_has_no_schedule_gain_and_says_why(
    tmp_path: Path, training: TrainConfig, why: str
) -> None:
    config = digits_study(tmp_path / "free.db", n_trials=1, training=training)
    run_study(config, out=io.StringIO())
    out = io.StringIO()
    result = decompose(config, out=out)
    assert result.schedule_gain is None and result.skipped == why
    assert not any("schedulefree at " in label for label in result.values)
    assert f"schedule gain: not measured: {why}" in result.lines()
    kept = result.as_dict()
    assert (kept["schedule_gain"], kept["schedule_gain_skipped"]) == (None, why)
    assert not result.advice.startswith("no schedule needed")
    assert out.getvalue().count("decompose: ") == 1  # one population, no schedule-free one


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"seeds": 0}, "--seeds 0 is not allowed; it must be >= 1"),
        ({"around": -1}, "--around -1 is not allowed; it must be >= 0"),
        ({"epochs": 0}, "--epochs 0 is not allowed; it must be >= 1"),
    ],
)
def test_bad_options_are_refused_before_any_training(
    searched: StudyConfig, changes: dict[str, int], message: str
) -> None:
    out = io.StringIO()
    with pytest.raises(LrsearchError, match=message):
        decompose(searched, out=out, **changes)
    assert out.getvalue() == ""


def test_a_study_without_a_complete_searched_trial_has_nothing_to_decompose(
    searched: StudyConfig,
) -> None:
    storage = searched.storage or ""
    done = optuna.load_study(study_name=searched.name, storage=storage)
    empty = optuna.create_study(study_name="empty", storage=storage, direction="maximize")
    for key, value in done.user_attrs.items():  # the same definition, no trial
        empty.set_user_attr(key, value)
    empty.enqueue_trial({}, user_attrs={BASELINE_ATTR: "constant"})
    with pytest.raises(LrsearchError, match="no complete searched trial to decompose"):
        decompose(dataclasses.replace(searched, name="empty"), out=io.StringIO())


DIGITS = """
[study]
name = "digits-decompose"
n_trials = 2
[task]
name = "examples.custom_task:build"
val_size = 0.2
[training]
epochs = 1
batch_size = 64
[space]
families = ["constant", "cosine"]
lr = [0.01, 0.3]
"""


def test_the_command_prints_the_gains_and_the_summary_keeps_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "examples").symlink_to(Path(__file__).parents[1] / "examples")
    (tmp_path / "digits.toml").write_text(DIGITS)
    monkeypatch.chdir(tmp_path)
    study = ["--study", "digits.toml", "--storage", f"sqlite:///{tmp_path / 'd.db'}"]
    assert main(["run", *study]) == 0
    (hint,) = [line for line in capsys.readouterr().out.splitlines() if "peak or shape?" in line]
    command = hint.split(" run lrsearch ", 1)[1].removesuffix(" to tell what to change")
    assert main([*shlex.split(command), "--seeds", "2"]) == 0  # the summary's command runs
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("searched peak ")
    assert any(line.startswith("peak gain: ") and "x 2 seeds" in line for line in lines)
    assert any(line.startswith("shape gain: ") for line in lines)
    assert any(line.startswith("schedule gain: ") and "x 2 seeds" in line for line in lines)
    advice = lines[-1].removeprefix("advice: ")
    stored = ["--storage", study[-1], "--study-name", "digits-decompose"]
    assert main(["export", *stored, "--out", "out"]) == 0
    kept = json.loads((tmp_path / "out" / "summary.json").read_text())["decomposition"]
    assert (kept["advice"], kept["seeds"], kept["epochs"]) == (advice, 2, 1)
    best = int(lines[1].split()[1].rstrip(":"))  # "  trial N: value", the first schedule
    assert kept["trial"] == best
    assert kept["shape_gain"]["seeds"] == kept["schedule_gain"]["seeds"] == 2
    # A decomposition stored before the schedule gain existed still exports as it was kept.
    old = {k: v for k, v in kept.items() if not k.startswith("schedule_gain")}
    kept_on = optuna.load_study(study_name="digits-decompose", storage=stored[1])
    kept_on.set_user_attr(DECOMPOSITION_ATTR, old)
    assert main(["export", *stored, "--out", "old"]) == 0
    assert json.loads((tmp_path / "old" / "summary.json").read_text())["decomposition"] == old


def test_the_command_refuses_seeds_past_the_last_seed_in_one_line(
    searched: StudyConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    from lrsearch.config import SEED_MAX

    stored = ["--storage", searched.storage or "", "--study-name", searched.name]
    code = main(["decompose", *stored, "--seeds", str(SEED_MAX + 2)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"lrsearch: error: --seeds={SEED_MAX + 2} is not allowed")
