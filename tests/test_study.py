"""The study runner: trials recorded with everything needed to reload them, resumable."""

from __future__ import annotations

import dataclasses
import io
import math
import os
import re
import sqlite3
import threading
from pathlib import Path

import optuna
import pytest
import sqlalchemy.exc
from digits_study import digits_study as study_on_digits

from lrsearch import LrsearchError, Schedule
from lrsearch.config import StudyConfig, TaskConfig
from lrsearch.runner import load_study_task, run_study, run_trials, start_run
from lrsearch.space import space_from_table
from lrsearch.stats import unpack_correct
from lrsearch.storage import STAMP_ATTR
from lrsearch.study import SEEDS_ATTR, open_study, study_definition
from lrsearch.training import TrainConfig

ATTRS = {
    "schedule",
    "family",
    "task",
    "model",
    "epochs",
    "steps_per_epoch",
    "steps",
    "batch_size",
    "optimizer",
    "device",
    "precision",
    "seeds",
    "split_seed",
    "population",
    "population_path",
    "host",
    "pid",
    "train_seconds",
    "val_accuracy",
    "val_accuracy_se",
    "val_accuracy_per_seed",
    "val_examples",
    "val_correct",
    "val_loss",
    "epoch_val_loss",
    "epoch_train_loss",
    "test_accuracy",
    "test_accuracy_se",
    "test_accuracy_per_seed",
    "test_examples",
    "diverged",
}


def digits_study(tmp_path: Path, **changes: object) -> StudyConfig:
    return study_on_digits(
        tmp_path / "study.db", training=TrainConfig(epochs=2, batch_size=64, bf16=False), **changes
    )


def test_trials_record_their_schedule_and_results(tmp_path: Path) -> None:
    config = digits_study(tmp_path)
    report = run_study(config, out=io.StringIO())
    study = optuna.load_study(study_name="digits", storage=config.storage)
    assert report.trials_run == 3
    assert study.metric_names == ["val_accuracy"]
    for trial in study.trials:
        assert trial.state == optuna.trial.TrialState.COMPLETE
        assert set(trial.user_attrs) >= ATTRS
        assert trial.value == trial.user_attrs["val_accuracy"]
        assert sorted(trial.intermediate_values) == [1, 2]
        assert trial.user_attrs["seeds"] == [config.seed]  # every trial: the same seeds
        assert trial.user_attrs["population"] == 3  # one population of all three
        assert trial.user_attrs["val_examples"] == len(
            unpack_correct(trial.user_attrs["val_correct"][0], trial.user_attrs["val_examples"])
        )
        assert len(trial.user_attrs["epoch_train_loss"]) == 2
        schedule = Schedule.from_dict(trial.user_attrs["schedule"])
        assert schedule.family == trial.params["family"] == trial.user_attrs["family"]
        assert trial.user_attrs["steps"] == 2 * trial.user_attrs["steps_per_epoch"]
        assert trial.user_attrs["precision"] == "fp32"
    assert report.best is not None and report.best.value == study.best_value
    assert report.best.value > 0.5  # real learning on real digits, 2 epochs


def test_rerunning_resumes_and_adds_trials(tmp_path: Path) -> None:
    run_study(digits_study(tmp_path, n_trials=2), out=io.StringIO())
    report = run_study(digits_study(tmp_path, n_trials=2), out=io.StringIO())
    study = optuna.load_study(study_name="digits", storage=digits_study(tmp_path).storage)
    assert report.trials_run == 2
    assert [t.number for t in study.trials] == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("changes", "changed"),
    [
        ({"training": TrainConfig(epochs=3, batch_size=64, bf16=False)}, "training.epochs: 2 -> 3"),
        (
            {"space": space_from_table({"families": ["constant", "cosine", "step"], "lr": 0.1})},
            "space.settings.constant.lr",
        ),
        ({"task": TaskConfig(name="examples.custom_task:build", val_size=0.3)}, "task.val_size"),
    ],
)
def test_resuming_with_other_settings_is_refused_and_adds_nothing(
    tmp_path: Path, changes: dict[str, object], changed: str
) -> None:
    config = digits_study(tmp_path, n_trials=1)
    run_study(config, out=io.StringIO())
    with pytest.raises(LrsearchError, match=re.escape(changed)) as refused:
        run_study(dataclasses.replace(config, **changes), out=io.StringIO())
    assert "--study-name" in str(refused.value) and "\n" not in str(refused.value)
    study = optuna.load_study(study_name="digits", storage=config.storage)
    assert len(study.trials) == 1
    assert study.user_attrs["definition"] == study_definition(config)


def test_trial_counts_seed_and_sampler_may_change_between_runs(tmp_path: Path) -> None:
    run_study(digits_study(tmp_path, n_trials=1), out=io.StringIO())
    again = digits_study(tmp_path, n_trials=2, seed=5, sampler="random", device="cpu")
    assert run_study(again, out=io.StringIO()).trials_run == 2


def test_same_seed_gives_the_same_trials_on_cpu(tmp_path: Path) -> None:
    runs = []
    for name in ("a", "b"):
        config = digits_study(tmp_path, name=name, n_trials=2)
        run_study(config, out=io.StringIO())
        study = optuna.load_study(study_name=name, storage=config.storage)
        runs.append([(t.params, t.value) for t in study.trials])
    assert runs[0] == runs[1]


def test_an_absurd_peak_lr_is_recorded_as_diverged_and_the_study_goes_on(tmp_path: Path) -> None:
    config = dataclasses.replace(
        digits_study(tmp_path, n_trials=2),
        space=space_from_table({"families": ["constant"], "lr": 1e4}),
    )
    report = run_study(config, out=io.StringIO())
    study = optuna.load_study(study_name="digits", storage=config.storage)
    assert report.trials_run == 2 and report.best is None
    for trial in study.trials:
        assert trial.state == optuna.trial.TrialState.PRUNED
        assert trial.user_attrs["diverged"] is True
        assert trial.user_attrs["diverged_step"] >= 1
        assert "loss" in trial.user_attrs["diverged_reason"]
    assert any("no trial has completed" in line for line in report.lines())


def test_the_summary_names_the_best_schedule_and_the_dashboard(tmp_path: Path) -> None:
    out = io.StringIO()
    report = run_study(digits_study(tmp_path), out=out)
    text = "\n".join(report.lines())
    assert report.best is not None
    assert Schedule.from_dict(report.best.user_attrs["schedule"]).describe() in text
    assert f"optuna-dashboard sqlite:///{tmp_path / 'study.db'}" in text
    assert "optuna-dashboard" in out.getvalue()
    assert math.isfinite(report.best.user_attrs["test_accuracy"])


def test_an_unusable_storage_is_one_line(tmp_path: Path) -> None:
    config = digits_study(tmp_path)
    with pytest.raises(LrsearchError) as error:
        open_study(config, "postgresql://lr:s3cret@127.0.0.1:1/none")
    assert "cannot open storage" in str(error.value)
    assert "s3cret" not in str(error.value)
    assert "\n" not in str(error.value)


def test_a_storage_failing_during_the_run_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database going away mid-study: every later storage call raises, as SQLAlchemy does."""
    config = digits_study(tmp_path)
    task = load_study_task(config)
    run = start_run(config, io.StringIO(), None)

    def gone(*_args: object, **_kwargs: object) -> None:
        raise sqlalchemy.exc.OperationalError("INSERT", {}, Exception("disk I/O error"))

    monkeypatch.setattr(run.study._storage, "create_new_trial", gone)
    with pytest.raises(LrsearchError) as error:
        run_trials(run, config, task, stop=threading.Event())
    assert str(error.value).startswith(f"storage sqlite:///{tmp_path / 'study.db'} failed")
    assert "disk I/O error" in str(error.value) and "\n" not in str(error.value)


def test_a_study_from_before_seeds_and_objective_resumes_with_their_defaults(
    tmp_path: Path,
) -> None:
    config = digits_study(tmp_path)
    study = open_study(config, config.storage or "")
    old = {k: v for k, v in study_definition(config).items() if k not in ("seeds", "objective")}
    study.set_user_attr("definition", old)
    open_study(config, config.storage or "")  # resumes: 1 seed and accuracy were the defaults
    with pytest.raises(LrsearchError, match="seeds: 1 -> 2"):
        open_study(dataclasses.replace(config, seeds=2), config.storage or "")


def test_a_study_from_before_the_transformer_knobs_resumes_with_their_defaults(
    tmp_path: Path,
) -> None:
    config = digits_study(tmp_path)
    study = open_study(config, config.storage or "")
    old = study_definition(config)
    for name in ("beta1", "beta2", "eps", "decay_all", "clip_norm", "accumulate"):
        del old["training"][name]
    study.set_user_attr("definition", old)
    open_study(config, config.storage or "")  # resumes: torch's defaults, no clipping
    clipped = dataclasses.replace(config.training, clip_norm=1.0)
    with pytest.raises(LrsearchError, match=re.escape("clip_norm: None -> 1.0")):
        open_study(dataclasses.replace(config, training=clipped), config.storage or "")


# --- Storages and studies that are not lrsearch's: refused in one line before anything is
# written to them.


def test_another_programs_sqlite_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    database = tmp_path / "app.db"
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE users (name TEXT)")
    before = database.read_bytes()
    with pytest.raises(LrsearchError, match="another program's SQLite database") as error:
        open_study(digits_study(tmp_path), f"sqlite:///{database}")
    assert "\n" not in str(error.value)
    assert database.read_bytes() == before


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_a_storage_in_memory_is_refused(tmp_path: Path, url: str) -> None:
    with pytest.raises(LrsearchError, match="in memory"):
        open_study(digits_study(tmp_path), url)


def test_a_read_only_sqlite_url_is_refused_before_writing(tmp_path: Path) -> None:
    database = tmp_path / "study.db"
    with pytest.raises(LrsearchError, match="mode=ro"):
        open_study(digits_study(tmp_path), f"sqlite:///{database}?mode=ro")
    assert not database.exists()


def test_a_same_named_study_made_by_plain_optuna_is_refused(tmp_path: Path) -> None:
    config = digits_study(tmp_path)
    plain = optuna.create_study(study_name="digits", storage=config.storage, direction="maximize")
    plain.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=1)
    with pytest.raises(LrsearchError, match="not made by lrsearch run"):
        open_study(config, config.storage or "")
    again = optuna.load_study(study_name="digits", storage=config.storage)
    assert again.user_attrs == {} and len(again.trials) == 1


def test_a_multi_objective_study_is_refused_in_one_line(tmp_path: Path) -> None:
    config = digits_study(tmp_path)
    optuna.create_study(
        study_name="digits", storage=config.storage, directions=["maximize", "minimize"]
    )
    with pytest.raises(LrsearchError, match="has 2 objectives"):
        open_study(config, config.storage or "")


def test_a_storage_of_another_optuna_schema_version_is_one_line(tmp_path: Path) -> None:
    config = digits_study(tmp_path)
    open_study(config, config.storage or "")
    with sqlite3.connect(tmp_path / "study.db") as connection:
        connection.execute("UPDATE alembic_version SET version_num = 'v0.9.0.a'")
    with pytest.raises(LrsearchError, match="cannot open storage") as error:
        open_study(config, config.storage or "")
    assert "\n" not in str(error.value)


def test_a_run_may_not_take_the_name_of_a_confirm_study(tmp_path: Path) -> None:
    config = dataclasses.replace(digits_study(tmp_path), name="digits.confirm")
    with pytest.raises(LrsearchError, match="lrsearch confirm records its runs"):
        start_run(config, io.StringIO(), None)
    assert not (tmp_path / "study.db").exists()


def test_processes_racing_to_create_a_study_find_it_whole(tmp_path: Path) -> None:
    """The loser of the race to create a study finds its definition and seeds already there,
    written with it, and keeps them: it writes nothing of its own."""
    config = digits_study(tmp_path)
    first = open_study(config, config.storage or "")
    second = open_study(dataclasses.replace(config, seed=7), config.storage or "")
    assert second.user_attrs[SEEDS_ATTR] == first.user_attrs[SEEDS_ATTR] == [0]
    stamp = second._storage.get_study_system_attrs(second._study_id)[STAMP_ATTR]
    assert stamp["pid"] == os.getpid()
