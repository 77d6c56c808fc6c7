"""Plots and per-trial artifacts from a real (small) study run in-process."""

from __future__ import annotations

import struct
from pathlib import Path

import optuna
import pytest

from lrsearch.cli import main
from lrsearch.config import study_from_table
from lrsearch.plots import CURVE_PIXELS, PLOT_DPI, PLOT_SIZE
from lrsearch.runner import run_study

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def study_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Five short cosine trials: enough of one family for the importances plot."""
    folder = tmp_path_factory.mktemp("study")
    url = f"sqlite:///{folder / 'plots.db'}"
    config = study_from_table(
        {
            "study": {"name": "plots", "n_trials": 5, "storage": url},
            "task": {"name": "examples.custom_task:build", "val_size": 0.2},
            "training": {"epochs": 2, "batch_size": 64},
            "space": {"families": ["cosine"]},
        },
        default_name="plots",
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(REPO))
        run_study(config, out=open(folder / "log.txt", "w"))  # noqa: SIM115
    return url


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n" and header[12:16] == b"IHDR"
    width, height = struct.unpack(">II", header[16:24])
    return width, height


def test_plot_writes_every_png_at_its_size(study_url: str, tmp_path: Path) -> None:
    argv = ["plot", "--study-name", "plots", "--storage", study_url, "--out", str(tmp_path)]
    assert main([*argv, "--top", "3"]) == 0
    expected = (int(PLOT_SIZE[0] * PLOT_DPI), int(PLOT_SIZE[1] * PLOT_DPI))
    for name in ("lr_curves", "history", "accuracy_by_family", "importances"):
        path = tmp_path / f"{name}.png"
        assert png_size(path) == expected, name
        assert path.stat().st_size > 5_000, name  # drawn, not blank


def test_too_few_trials_skip_importances_with_a_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'one.db'}"
    study = optuna.create_study(study_name="one", storage=url, direction="maximize")
    study.add_trial(
        optuna.trial.create_trial(
            value=0.5,
            params={"family": "constant"},
            distributions={"family": optuna.distributions.CategoricalDistribution(["constant"])},
            user_attrs={
                "family": "constant",
                "steps": 10,
                "schedule": {
                    "format": "lrsearch.schedule",
                    "version": 1,
                    "family": "constant",
                    "params": {"lr": 0.1},
                },
            },
        )
    )
    out = tmp_path / "out"
    assert main(["plot", "--study-name", "one", "--storage", url, "--out", str(out)]) == 0
    assert "skipped importances.png" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [
        "accuracy_by_family.png",
        "history.png",
        "lr_curves.png",
    ]


def test_every_trial_carries_its_lr_curve(study_url: str, tmp_path: Path) -> None:
    study = optuna.load_study(study_name="plots", storage=study_url)
    store = optuna.artifacts.FileSystemArtifactStore(
        Path(study_url[10:]).parent / "plots-artifacts"
    )
    for trial in study.trials:
        (meta,) = optuna.artifacts.get_all_artifact_meta(trial, storage=study._storage)
        assert meta.mimetype == "image/png"
        target = tmp_path / f"{trial.number}.png"
        optuna.artifacts.download_artifact(
            artifact_store=store, artifact_id=meta.artifact_id, file_path=str(target)
        )
        assert png_size(target) == CURVE_PIXELS
