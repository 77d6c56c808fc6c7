"""Export and ``best`` against a real study: what the files say must be what the storage holds."""

from __future__ import annotations

import io
import json
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
from digits_study import digits_study

import lrsearch
from lrsearch.cli import main
from lrsearch.config import TaskConfig
from lrsearch.errors import LrsearchError
from lrsearch.export import export_study, intermediate_table, load_study
from lrsearch.runner import run_study
from lrsearch.schedules import Schedule, ScheduleError
from lrsearch.space import space_from_table
from lrsearch.training import TrainConfig

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def study_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Three real trials from ``lrsearch run``, then one still running and one failed."""
    url = f"sqlite:///{tmp_path_factory.mktemp('study') / 'quick.db'}"
    run = ["run", "--study", "studies/quick.toml", "--n-trials", "3", "--no-baselines"]
    run += ["--storage", url]
    subprocess.run(
        [sys.executable, "-m", "lrsearch", *run],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    study = optuna.load_study(study_name="quick", storage=url)
    study.ask()  # left RUNNING
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
    return url


def _trials(url: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="quick", storage=url).get_trials()


def test_export_matches_storage(study_url: str, tmp_path: Path) -> None:
    assert (
        main(["export", "--study-name", "quick", "--storage", study_url, "--out", str(tmp_path)])
        == 0
    )
    trials = _trials(study_url)
    csv = pd.read_csv(tmp_path / "trials.csv")
    parquet = pd.read_parquet(tmp_path / "trials.parquet")
    for table in (csv, parquet):
        assert list(table["number"]) == [t.number for t in trials]
        assert list(table["state"]) == ["COMPLETE"] * 3 + ["RUNNING", "FAIL"]
    for trial in trials[:3]:
        row = parquet.set_index("number").loc[trial.number]
        params = trial.user_attrs["schedule"]["params"]
        assert row["value"] == pytest.approx(trial.value)
        assert row["family"] == trial.user_attrs["family"]
        assert row["schedule.lr"] == pytest.approx(params["lr"])
        assert row["schedule.warmup_mode"] == params["warmup_mode"]
        assert row["test_accuracy"] == pytest.approx(trial.user_attrs["test_accuracy"])
        assert not row["diverged"]
        assert row["steps"] == trial.user_attrs["steps"]
        assert row["duration"] == pytest.approx(trial.duration.total_seconds())
        assert (
            Schedule.from_dict(json.loads(row["schedule"])).to_dict()
            == trial.user_attrs["schedule"]
        )
    assert parquet["duration"].isna().tolist()[3] and np.isnan(parquet["value"].iloc[4])

    long = pd.read_parquet(tmp_path / "intermediate.parquet")
    assert len(long) == sum(len(t.intermediate_values) for t in trials) == 3 * 8
    first = trials[0].intermediate_values
    assert long[long.number == 0].set_index("epoch")["val_accuracy"].to_dict() == first
    assert pd.read_csv(tmp_path / "intermediate.csv").shape == long.shape

    summary = json.loads((tmp_path / "summary.json").read_text())
    best = max(trials[:3], key=lambda t: t.value or 0)
    assert summary["best"]["number"] == best.number
    assert summary["best"]["schedule"] == best.user_attrs["schedule"]
    assert summary["states"] == {"COMPLETE": 3, "RUNNING": 1, "FAIL": 1}
    (verdict,) = summary["verdicts"].values()  # no baselines: best against the runner-up only
    runner_up = sorted(trials[:3], key=lambda t: t.value or 0)[-2]
    assert (verdict["a"], verdict["b"]) == (f"trial {best.number}", f"trial {runner_up.number}")
    assert verdict["difference_points"] == pytest.approx(100 * (best.value - runner_up.value))
    assert sum(summary["families"].values()) == 5


def test_load_results_is_the_trials_table(study_url: str) -> None:
    table = lrsearch.load_results(study_url, "quick")
    assert len(table) == 5
    assert {"schedule.lr", "val_accuracy", "val_accuracy_se", "diverged", "seeds"} <= set(
        table.columns
    )
    best = table.groupby("family")["val_accuracy"].max()
    assert best.max() == pytest.approx(max(t.value or 0 for t in _trials(study_url)))


def test_best_schedule_replays_the_trial_step_for_step(study_url: str, tmp_path: Path) -> None:
    path = tmp_path / "best_schedule.json"
    assert main(["best", "--study-name", "quick", "--storage", study_url, "--out", str(path)]) == 0
    source = json.loads(path.read_text())["source"]
    trial = _trials(study_url)[source["trial"]]
    assert trial.value == max(t.value or 0 for t in _trials(study_url))
    assert source["val_accuracy"] == trial.user_attrs["val_accuracy"]
    assert source["steps"] == trial.user_attrs["steps"]
    steps = trial.user_attrs["steps"]
    schedule = lrsearch.load_schedule(path)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=schedule.lr)
    scheduler = schedule.torch_scheduler(optimizer, total_steps=steps)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = Schedule.from_dict(trial.user_attrs["schedule"]).curve(steps)
    np.testing.assert_allclose(lrs, expected, rtol=1e-12)


def test_unknown_study_lists_existing_ones(
    study_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["export", "--study-name", "nope", "--storage", study_url, "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "'nope'" in error and "studies there: quick" in error and error.count("\n") == 1
    assert not out.exists()


@pytest.mark.parametrize("command", ["export", "plot", "best"])
def test_missing_storage_file_is_not_created(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    database = tmp_path / "absent.db"
    out = tmp_path / "out"
    argv = [
        command,
        "--study-name",
        "quick",
        "--storage",
        f"sqlite:///{database}",
        "--out",
        str(out),
    ]
    assert main(argv) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not database.exists() and not out.exists()


def test_a_mistyped_study_name_is_told_the_studies_stored_beside(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default storage is named after the study, so a typo points at a missing file."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".lrsearch").mkdir()
    for name in ("quick", "fashion"):
        optuna.create_study(study_name=name, storage=f"sqlite:///.lrsearch/{name}.db")
    assert main(["export", "--study-name", "quik", "--out", "out"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "'.lrsearch/quik.db' does not exist" in error
    assert error.rstrip().endswith("or one of the studies in .lrsearch/: fashion, quick")
    assert not (tmp_path / ".lrsearch" / "quik.db").exists()


def _other_application(path: Path) -> None:
    database = sqlite3.connect(path)
    database.execute("CREATE TABLE notes (text TEXT)")
    database.execute("INSERT INTO notes VALUES ('keep me')")
    database.commit()
    database.close()


def _optuna_without_heartbeats(path: Path) -> None:
    optuna.create_study(study_name="quick", storage=f"sqlite:///{path}")
    database = sqlite3.connect(path)
    database.execute("DROP TABLE trial_heartbeats")
    database.commit()
    database.close()


@pytest.mark.parametrize("command", ["export", "plot", "best"])
@pytest.mark.parametrize(
    ("make", "complaint"),
    [
        (lambda path: path.touch(), "is empty"),
        (_other_application, "is not an Optuna storage: it has no table 'alembic_version'"),
        (_optuna_without_heartbeats, "it has no table 'trial_heartbeats'"),
        (lambda path: path.write_bytes(b"\x00\xff" * 512), "file is not a database"),
    ],
)
def test_reading_never_turns_a_file_into_an_optuna_storage(
    command: str,
    make: Callable[[Path], None],
    complaint: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    database = tmp_path / "some.db"
    make(database)
    before = database.read_bytes()
    out = tmp_path / "out"
    argv = [command, "--study-name", "quick", "--storage", f"sqlite:///{database}"]
    assert main([*argv, "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("lrsearch: error: ") and error.count("\n") == 1
    assert complaint in error and "Traceback" not in error
    assert database.read_bytes() == before
    assert sorted(tmp_path.iterdir()) == [database]


def test_a_database_without_optuna_tables_is_refused_before_opening() -> None:
    with pytest.raises(LrsearchError, match="sqlite:// is not an Optuna storage"):
        load_study("sqlite://", "quick")  # in memory: RDBStorage would create the tables


def test_unreachable_storage_is_one_line_without_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = "postgresql+nosuchdriver://user:secret@127.0.0.1:1/db"
    assert main(["export", "--study-name", "quick", "--storage", url, "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "secret" not in error and "***" in error and error.count("\n") == 1


@pytest.mark.parametrize("cut", [0, 40, -3])
def test_corrupted_best_file_is_a_one_line_error(study_url: str, tmp_path: Path, cut: int) -> None:
    path = tmp_path / "best_schedule.json"
    assert main(["best", "--study-name", "quick", "--storage", study_url, "--out", str(path)]) == 0
    text = path.read_text()
    path.write_text(text[:cut] if cut else text.replace('"lr":', '"peak":'))
    with pytest.raises(ScheduleError) as error:
        lrsearch.load_schedule(path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)


def test_intermediate_table_carries_the_per_epoch_losses() -> None:
    """Trials that record per-epoch losses get them beside each epoch; older ones get gaps."""
    study = optuna.create_study(direction="maximize")
    losses = {"epoch_val_loss": [0.9, 0.5], "epoch_train_loss": [1.2, 0.7]}
    for attrs in (losses, {}):
        trial = study.ask()
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        trial.report(0.6, 1)
        trial.report(0.8, 2)
        study.tell(trial, 0.8)
    table = intermediate_table(study)
    assert list(table.columns) == ["number", "epoch", "val_accuracy", "val_loss", "train_loss"]
    new = table[table.number == 0].set_index("epoch")
    assert new["val_loss"].to_dict() == {1: 0.9, 2: 0.5}
    assert new["train_loss"].to_dict() == {1: 1.2, 2: 0.7}
    assert table[table.number == 1][["val_loss", "train_loss"]].isna().all().all()


def test_a_loss_driven_study_exports_its_metrics_and_summarises_in_their_units(
    tmp_path: Path,
) -> None:
    config = digits_study(
        tmp_path / "loss.db",
        n_trials=2,
        objective="val_loss",
        baselines=True,
        task=TaskConfig(name="examples.regression:build", val_size=0.25),
        training=TrainConfig(epochs=2, batch_size=16),
        space=space_from_table({"families": ["constant"], "lr": [1e-3, 0.03]}),
    )
    run_study(config, out=io.StringIO())
    written = export_study(config.storage, config.name, tmp_path / "out")

    trials = pd.read_csv(tmp_path / "out" / "trials.csv")
    assert {"val_loss", "test_loss", "val_mse", "test_mse_se"} <= set(trials.columns)
    epochs = intermediate_table(load_study(config.storage or "", config.name))
    assert {"val_loss", "val_mse", "train_loss"} <= set(epochs.columns)
    assert epochs["val_mse"].notna().all()
    summary = json.loads(written[-1].read_text())
    assert summary["objective"] == "val_loss" and "searched_minus_baseline_points" not in summary
    difference = summary["searched_minus_baseline"]
    assert set(difference) == {"val_loss", "test_loss"}
    assert all(verdict["metric"] == "val_loss" for verdict in summary["verdicts"].values())
