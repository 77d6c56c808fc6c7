"""The population runner: K trials asked at once, trained together, told one by one."""

from __future__ import annotations

import dataclasses
import io
import math
import shutil
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
import real_runs
from digits_study import DIGITS_STUDY_FILE, digits_study

from lrsearch import runner
from lrsearch.config import TaskConfig
from lrsearch.errors import LrsearchError
from lrsearch.export import intermediate_table
from lrsearch.runner import StudyReport, run_study
from lrsearch.schedules import make_schedule
from lrsearch.space import space_from_table
from lrsearch.stats import unpack_figures
from lrsearch.study import open_study
from lrsearch.training import TrainConfig
from lrsearch.verdict import verdict_rows, versus

State = optuna.trial.TrialState


def stored(config: object) -> list[optuna.trial.FrozenTrial]:
    assert dataclasses.is_dataclass(config)
    return optuna.load_study(study_name="digits", storage=config.storage).trials  # type: ignore[attr-defined]


def test_trials_run_in_populations_of_the_asked_size_and_the_count_is_exact(
    tmp_path: Path,
) -> None:
    config = digits_study(
        tmp_path / "p.db", n_trials=5, training=TrainConfig(epochs=1, population=2)
    )
    log = io.StringIO()
    report = run_study(config, out=log)
    trials = stored(config)
    assert report.trials_run == 5 and [t.state for t in trials] == [State.COMPLETE] * 5
    assert [t.user_attrs["population"] for t in trials] == [2, 2, 2, 2, 1]
    assert {t.user_attrs["population_path"] for t in trials} == {"stacked"}
    assert "populations of up to 2 trials, 1 seed each, run as one wide network" in log.getvalue()


def test_each_trial_trains_with_every_seed_and_is_scored_by_their_mean(tmp_path: Path) -> None:
    config = digits_study(tmp_path / "s.db", n_trials=2, seeds=2, seed=5)
    run_study(config, out=io.StringIO())
    for trial in stored(config):
        attrs = trial.user_attrs
        assert attrs["seeds"] == [5, 6]  # the same for every trial: paired comparisons
        per_seed = attrs["val_accuracy_per_seed"]
        assert len(per_seed) == len(attrs["val_correct"]) == 2
        assert trial.value == pytest.approx(sum(per_seed) / 2)
        assert attrs["val_accuracy_se"] > 0


def test_a_log_file_gets_one_line_per_trial_and_a_resumed_run_says_so(tmp_path: Path) -> None:
    config = digits_study(tmp_path / "log.db", n_trials=3)
    first = io.StringIO()
    run_study(config, out=first)
    lines = [line for line in first.getvalue().splitlines() if line.startswith("trial ")]
    assert len(lines) == 3 and "\r" not in first.getvalue()
    assert all(" val_accuracy 0." in line and " best 0." in line for line in lines)
    again = io.StringIO()
    report = run_study(dataclasses.replace(config, n_trials=1), out=again)
    best = report.best
    assert best is not None
    assert "resuming study 'digits': 3 trials, best " in again.getvalue()


def test_a_resumed_run_samples_new_points_and_keeps_the_training_seeds(tmp_path: Path) -> None:
    config = digits_study(tmp_path / "r.db", n_trials=2, sampler="random")
    run_study(config, out=io.StringIO())
    run_study(dataclasses.replace(config, seed=9), out=io.StringIO())
    trials = stored(config)
    first, second = trials[:2], trials[2:]
    assert [t.params for t in first] != [t.params for t in second]
    assert {tuple(t.user_attrs["seeds"]) for t in trials} == {(0,)}  # fixed at creation


def test_the_sampler_seed_depends_on_the_trials_so_far(tmp_path: Path) -> None:
    config = digits_study(tmp_path / "seed.db", n_trials=1, sampler="random")
    fresh = open_study(config, config.storage or "")
    first = fresh.sampler._rng.rng.random()  # RandomSampler's own generator
    run_study(config, out=io.StringIO())
    resumed = open_study(config, config.storage or "")
    assert resumed.sampler._rng.rng.random() != first


def test_the_objective_can_be_the_validation_loss_minimized(tmp_path: Path) -> None:
    config = digits_study(tmp_path / "loss.db", n_trials=3, objective="val_loss")
    report = run_study(config, out=io.StringIO())
    study = optuna.load_study(study_name="digits", storage=config.storage)
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    assert study.metric_names == ["val_loss"]
    for trial in study.trials:
        assert trial.value == trial.user_attrs["val_loss"]
        assert trial.intermediate_values == {
            1: pytest.approx(trial.user_attrs["epoch_val_loss"][0])
        }
    assert report.best is not None
    assert report.best.value == min(t.value for t in study.trials if t.value is not None)
    lines = report.lines()
    assert any(line.startswith("val loss") and "(the objective)" in line for line in lines)
    assert any(line.startswith("test accuracy") for line in lines)  # still shown beside it
    assert not any("points val accuracy" in line for line in lines)
    table = intermediate_table(study)
    assert list(table["val_loss"]) == [t.value for t in study.trials]
    assert table["val_accuracy"].between(0, 1).all()
    with pytest.raises(LrsearchError, match="objective"):
        run_study(dataclasses.replace(config, objective="val_accuracy"), out=io.StringIO())


def test_a_loss_driven_study_records_and_summarises_the_loss(tmp_path: Path) -> None:
    config = digits_study(
        tmp_path / "reg.db",
        n_trials=3,
        objective="val_loss",
        task=TaskConfig(name="examples.regression:build", val_size=0.25),
        training=TrainConfig(epochs=2, batch_size=16),
        space=space_from_table({"families": ["constant", "cosine"], "lr": [1e-3, 0.03]}),
    )
    report = run_study(config, out=io.StringIO())
    trials = stored(config)
    assert optuna.load_study(study_name="digits", storage=config.storage).direction == (
        optuna.study.StudyDirection.MINIMIZE
    )
    for trial in trials:
        attrs = trial.user_attrs
        assert trial.value == attrs["val_loss"] and attrs["higher_is_better"] is False
        assert attrs["test_loss"] > 0 and attrs["val_mse_se"] > 0
        assert len(attrs["val_loss_figures"]) == 1 and "val_accuracy" not in attrs
    lines = "\n".join(report.lines())
    assert "(the objective)" in lines.split("val loss", 1)[1].splitlines()[0]
    assert "test loss" in lines and "accuracy" not in lines and "points" not in lines
    assert " val loss [95% " in lines  # the verdicts are in the loss's units, paired


USER_TASKS = """
import torch
from torch import nn
from lrsearch.tasks import Metric, TaskSource


def data():
    inputs = torch.randn(120, 4, generator=torch.Generator().manual_seed(0))
    return inputs, inputs.sum(dim=1, keepdim=True)


class SmallBatchesOnly(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 1)

    def forward(self, x):
        if x.shape[0] > 4:  # passes the checks (2 and 4 examples), fails in every trial
            raise RuntimeError("this model breaks on real batches")
        return self.linear(x)


def breaks(data_dir):
    x, y = data()
    return TaskSource(x, y, x[:20], y[:20], None, {"m": SmallBatchesOnly}, loss="mse")


def tokens(data_dir):
    x = torch.randint(0, 6, (160, 8), generator=torch.Generator().manual_seed(0))
    y = (x + 1) % 6  # each position's next token follows from its own
    model = lambda: nn.Sequential(nn.Embedding(6, 8), nn.Linear(8, 6))  # noqa: E731
    return TaskSource(x, y, x[:40], y[:40], 6, {"m": model})


def closeness(data_dir):
    x, y = data()
    near = Metric("near", lambda o, t: ((o - t).abs() < 0.5).float().squeeze(1), True)
    return TaskSource(
        x, y, x[:20], y[:20], None, {"m": lambda: nn.Linear(4, 1)}, loss="mse", metrics=[near]
    )
"""


@pytest.fixture()
def user_tasks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"user_tasks_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(USER_TASKS)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_a_run_whose_every_trial_fails_is_an_error_naming_the_first_cause(
    tmp_path: Path, user_tasks: str
) -> None:
    config = digits_study(
        tmp_path / "fail.db",
        n_trials=2,
        objective="val_loss",
        task=TaskConfig(name=f"{user_tasks}:breaks", val_size=0.2),
        training=TrainConfig(epochs=1, batch_size=16),
    )
    with pytest.raises(
        LrsearchError,
        match=r"every trial of this run failed; the first, trial 0: "
        r"RuntimeError: this model breaks on real batches",
    ):
        run_study(config, out=io.StringIO())
    assert [t.state for t in stored(config)] == [State.FAIL] * 2


def test_a_tasks_own_metric_is_an_objective_with_its_own_direction(
    tmp_path: Path, user_tasks: str
) -> None:
    config = digits_study(
        tmp_path / "own.db",
        n_trials=2,
        objective="val_near",
        task=TaskConfig(name=f"{user_tasks}:closeness", val_size=0.2),
        training=TrainConfig(epochs=1, batch_size=16),
    )
    report = run_study(config, out=io.StringIO())
    study = optuna.load_study(study_name="digits", storage=config.storage)
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    assert all(t.value == t.user_attrs["val_near"] for t in stored(config))
    assert any(line.startswith("val near") for line in report.lines())

    with pytest.raises(
        LrsearchError,
        match=r"objective 'val_f1' is not a metric of task .*"
        r"it reports val_loss, val_near",
    ):
        run_study(dataclasses.replace(config, objective="val_f1"), out=io.StringIO())


def test_the_summary_names_a_baseline_that_is_best_overall_as_such(tmp_path: Path) -> None:
    schedule = make_schedule("constant", {"lr": 0.1}).to_dict()

    def made(value: float, **attrs: object) -> optuna.trial.FrozenTrial:
        made_attrs = {"schedule": schedule, "val_accuracy": value, **attrs}
        return optuna.trial.create_trial(value=value, user_attrs=made_attrs)

    trials = [made(0.9, baseline="cosine-warmup-004"), made(0.8), made(0.7)]
    for number, trial in enumerate(trials):
        trial.number = number
    report = StudyReport("s", "sqlite:///s.db", 3, trials, tmp_path)
    lines = report.lines(confirm="lrsearch confirm --study s.toml")
    (best,) = [line for line in lines if line.startswith(("best overall", "best trial"))]
    assert best.split(None, 2) == ["best", "overall", "trial 0, the baseline cosine-warmup-004"]
    best_searched = StudyReport("s", "sqlite:///s.db", 2, trials[1:], tmp_path).lines()
    assert any(line.split() == ["best", "trial", "1"] for line in best_searched)


def test_the_summary_points_to_decompose_only_when_a_searched_trial_completed(
    tmp_path: Path,
) -> None:
    schedule = make_schedule("constant", {"lr": 0.1}).to_dict()
    attrs = {"schedule": schedule, "val_accuracy": 0.9}
    baseline = optuna.trial.create_trial(value=0.9, user_attrs={**attrs, "baseline": "constant"})
    searched = optuna.trial.create_trial(value=0.8, user_attrs=attrs)
    command = "lrsearch confirm --study s.toml"
    alone = StudyReport("s", "sqlite:///s.db", 1, [baseline], tmp_path).lines(confirm=command)
    both = StudyReport("s", "sqlite:///s.db", 2, [baseline, searched], tmp_path).lines(command)
    assert not any(line.startswith("peak or shape?") for line in alone)
    (hint,) = [line for line in both if line.startswith("peak or shape?")]
    assert hint.endswith("run lrsearch decompose --study s.toml to tell what to change")


def test_the_summary_says_the_stored_decomposition_while_its_trial_is_the_best(
    tmp_path: Path,
) -> None:
    schedule = make_schedule("constant", {"lr": 0.1}).to_dict()
    searched = optuna.trial.create_trial(value=0.8, user_attrs={"schedule": schedule})
    searched.number = 4
    stored = {"trial": 4, "epochs": 30, "seeds": 3, "advice": "change only your peak LR to 0.2"}

    def hint(decomposition: dict[str, object]) -> str:
        report = StudyReport("s", "sqlite:///s.db", 1, [searched], tmp_path, decomposition)
        (line,) = [line for line in report.lines() if line.startswith("peak or shape?")]
        return line

    assert hint(stored).endswith(
        "change only your peak LR to 0.2 (lrsearch decompose of trial 4: 30 epochs x 3 seeds)"
    )
    # A decomposition of an earlier best says nothing of this one: the command again.
    assert hint({**stored, "trial": 3}).endswith("to tell what to change")


# --- Faults of a single-process run: stop signals, user code that exits or hangs. Real
# `python -m lrsearch run` processes and real signals (tests/real_runs.py).

FAULTY_STUDY = DIGITS_STUDY_FILE.replace("examples.custom_task:build", "faulty_task:build")


def faulty_run(
    tmp_path: Path, fault: str, *args: str, trigger: bool = False
) -> tuple[subprocess.Popen[str], str]:
    """A run of the faulty task in ``tmp_path``; its storage URL. With ``trigger`` the fault
    waits for the file ``tmp_path / "go"``."""
    (tmp_path / "study.toml").write_text('[study]\nname = "f"\nn_trials = 6\n' + FAULTY_STUDY)
    env = {"LRSEARCH_TEST_FAULT": fault}
    if trigger:
        env["LRSEARCH_TEST_TRIGGER"] = str(tmp_path / "go")
    run = real_runs.start(tmp_path, "--study", "study.toml", *args, env=env)
    return run, f"sqlite:///{tmp_path / '.lrsearch' / 'f.db'}"


def assert_one_line(err: str, start: str) -> None:
    assert "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith(start), err


@pytest.mark.slow
@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_ends_the_run_in_one_line_with_128_plus_its_number(
    tmp_path: Path, number: signal.Signals
) -> None:
    run, url = faulty_run(tmp_path, "", "--epochs", "200")
    real_runs.wait_for(run, real_runs.training(url, "f"), "a trial training")
    run.send_signal(number)
    _, err = real_runs.finish(run)
    assert run.returncode == 128 + number, err
    assert_one_line(err, "lrsearch: ")
    assert "the next run resumes it" in err.strip().splitlines()[-1]
    states = [t.state for t in real_runs.trials(url, "f")]
    assert State.RUNNING not in states and State.FAIL in states


@pytest.mark.slow
def test_a_second_ctrl_c_stops_a_forward_pass_that_hangs_and_leaves_nothing_running(
    tmp_path: Path,
) -> None:
    run, url = faulty_run(tmp_path, "hang", trigger=True)
    real_runs.wait_for(run, real_runs.training(url, "f"), "a trial training")
    (tmp_path / "go").touch()  # every forward pass from now on hangs
    # The first asks for the next epoch boundary, which never comes; signals that arrive
    # together count as one, so Ctrl-C is pressed until the run ends.
    while run.poll() is None:
        run.send_signal(signal.SIGINT)
        time.sleep(0.5)
    _, err = real_runs.finish(run)
    assert run.returncode == 130, err
    assert_one_line(err, "lrsearch: interrupted")
    done = real_runs.trials(url, "f")
    assert State.RUNNING not in {t.state for t in done}
    assert any(t.user_attrs.get("error", "").startswith("interrupted") for t in done)


@pytest.mark.slow
def test_a_forward_pass_that_hangs_is_stopped_at_twice_the_timeout(tmp_path: Path) -> None:
    run, url = faulty_run(tmp_path, "hang", "--timeout", "1")
    _, err = real_runs.finish(run)
    assert run.returncode == 2, err  # every trial of the run failed: an error naming why
    assert_one_line(err, "lrsearch: error: every trial of this run failed; the first, trial ")
    assert err.rstrip().endswith("still training at twice --timeout")
    done = real_runs.trials(url, "f")
    assert done and {t.state for t in done} == {State.FAIL}
    assert {t.user_attrs["error"] for t in done} == {"still training at twice --timeout"}


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["exit", "interrupt"])
def test_user_code_that_exits_in_a_trial_fails_it_and_ends_the_run_in_one_line(
    tmp_path: Path, fault: str
) -> None:
    run, url = faulty_run(tmp_path, fault)
    _, err = real_runs.finish(run)
    assert run.returncode == 2, err
    assert_one_line(err, "lrsearch: error: task 'faulty_task:build' raised ")
    done = real_runs.trials(url, "f")
    assert done and State.RUNNING not in {t.state for t in done}
    assert all("raised" in t.user_attrs["error"] for t in done if t.state == State.FAIL)


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["exit-at-import", "exit-in-build"])
def test_user_code_that_exits_while_the_task_loads_is_one_line_and_writes_nothing(
    tmp_path: Path, fault: str
) -> None:
    run, _ = faulty_run(tmp_path, fault)
    _, err = real_runs.finish(run)
    assert run.returncode == 2, err
    assert_one_line(err, "lrsearch: error: task 'faulty_task:build': ")
    assert "SystemExit" in err
    assert not (tmp_path / ".lrsearch").exists()


@pytest.mark.slow
def test_an_artifact_folder_removed_mid_run_is_one_line_and_leaves_nothing_running(
    tmp_path: Path,
) -> None:
    """Its trials' LR curves can no longer be stored: the run ends as on a failed storage."""
    study = FAULTY_STUDY.replace("[training]\n", "[training]\npopulation = 1\n")
    (tmp_path / "study.toml").write_text('[study]\nname = "f"\nn_trials = 40\n' + study)
    run = real_runs.start(tmp_path, "--study", "study.toml", "--epochs", "3")
    url = f"sqlite:///{tmp_path / '.lrsearch' / 'f.db'}"
    real_runs.wait_for(run, real_runs.training(url, "f"), "a trial training")
    shutil.rmtree(tmp_path / ".lrsearch" / "f-artifacts")
    _, err = real_runs.finish(run)
    assert run.returncode == 2, err
    assert_one_line(err, "lrsearch: error: artifact folder ")
    assert "failed during the run: No such file or directory" in err
    done = real_runs.trials(url, "f")
    assert State.RUNNING not in {t.state for t in done}
    assert State.FAIL in {t.state for t in done}


@pytest.mark.slow
def test_a_model_raising_value_error_fails_its_trials_and_the_study_goes_on(
    tmp_path: Path,
) -> None:
    """An exception is the trial's failure, whatever its type: a ValueError is not taken for
    a failing storage. Every trial of this run fails, so the run ends as an error naming the
    first cause (not the storage)."""
    run, url = faulty_run(tmp_path, "value-error", "--n-trials", "2")
    _, err = real_runs.finish(run)
    assert run.returncode == 2, err
    assert_one_line(err, "lrsearch: error: every trial of this run failed; the first, trial ")
    assert "a model's own complaint" in err and "storage" not in err.splitlines()[-1]
    done = real_runs.trials(url, "f")
    assert [t.state for t in done] == [State.FAIL] * 2
    assert all("ValueError: a model's own complaint" in t.user_attrs["error"] for t in done)


def test_a_perplexity_study_pairs_its_verdicts_in_perplexity(
    tmp_path: Path, user_tasks: str
) -> None:
    """Perplexity is the exponential of the mean loss, not a mean: its verdicts pair the
    per-example losses and say the difference in perplexity, through its slope there."""
    config = digits_study(
        tmp_path / "ppl.db",
        n_trials=3,
        objective="val_perplexity",
        task=TaskConfig(name=f"{user_tasks}:tokens", val_size=0.25),
        training=TrainConfig(epochs=2, batch_size=16),
        space=space_from_table({"families": ["constant"], "lr": [1e-3, 0.5]}),
    )
    run_study(config, out=io.StringIO())
    for trial in stored(config):
        attrs = trial.user_attrs
        losses = unpack_figures(attrs["val_perplexity_figures"][0], attrs["val_examples"])
        assert trial.value == pytest.approx(math.exp(losses.mean()), rel=1e-5)
        assert attrs["val_perplexity_slope"] == pytest.approx(trial.value, rel=1e-4)
    line = dict(verdict_rows(stored(config)))["best vs runner-up"]
    assert " val perplexity [95% " in line and "unpaired" not in line
    (comparison,) = [v.comparison for v in versus(stored(config)) if v.name == "best vs runner-up"]
    best, runner_up = sorted(stored(config), key=lambda t: t.value)[:2]
    assert comparison.method.startswith("paired over examples")
    assert comparison.difference == pytest.approx(best.value - runner_up.value, rel=0.05)


def test_a_bug_outside_the_trials_is_not_called_a_storage_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ValueError from lrsearch's own code between trials is a bug: it propagates as itself
    (the CLI's traceback is then the right report), and the population's trials are failed."""

    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("a bug in the population")

    monkeypatch.setattr(runner, "_run_population", broken)
    config = digits_study(tmp_path / "bug.db", n_trials=2)
    with pytest.raises(ValueError, match="a bug in the population"):
        run_study(config, out=io.StringIO())
    assert [t.state for t in stored(config)] == [State.FAIL] * 2
    assert stored(config)[0].user_attrs["error"] == "ValueError: a bug in the population"
