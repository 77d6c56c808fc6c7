"""Study files: TOML to typed config, every mistake one line before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from lrsearch import LrsearchError
from lrsearch.config import StudyConfig, default_storage, load_study_file

STUDIES = Path(__file__).resolve().parents[1] / "studies"


@pytest.mark.parametrize("name", ["quick.toml", "fashion_mnist.toml"])
def test_the_shipped_study_files_load(name: str) -> None:
    config = load_study_file(STUDIES / name)
    assert isinstance(config, StudyConfig)
    assert config.n_trials >= 20
    assert config.training.epochs >= 5


def test_fashion_mnist_study_is_the_articles_experiment() -> None:
    config = load_study_file(STUDIES / "fashion_mnist.toml")
    assert (config.task.name, config.task.model) == ("fashion-mnist", "lenet")
    assert config.task.val_size == 10_000
    assert config.training.batch_size == 128
    assert len(config.space.families) == 13


def test_the_study_name_defaults_to_the_file_name(tmp_path: Path) -> None:
    path = tmp_path / "my-study.toml"
    path.write_text("[training]\nepochs = 3\n")
    config = load_study_file(path)
    assert config.name == "my-study"
    assert config.training.epochs == 3
    assert default_storage(config.name) == "sqlite:///.lrsearch/my-study.db"


def test_overrides_apply_by_section_and_are_validated(tmp_path: Path) -> None:
    config = load_study_file(STUDIES / "quick.toml").with_overrides(
        study={"n_trials": 3, "seed": None}, task={"name": "mnist"}, training={"epochs": 2}
    )
    assert (config.n_trials, config.seed, config.task.name, config.training.epochs) == (
        3,
        0,
        "mnist",
        2,
    )
    with pytest.raises(LrsearchError, match="epochs=0"):
        config.with_overrides(training={"epochs": 0})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[study\nname = 1", "not valid TOML"),
        ("[studdy]\nname = 'x'", "unknown key 'studdy'"),
        ("[study]\nn_trails = 3", "unknown key 'n_trails' in [study]"),
        ("[study]\nn_trials = 'many'", "study.n_trials='many' has the wrong type"),
        ("[study]\nn_trials = 0", "n_trials=0"),
        ("[study]\nn_trials = 2.5", "expected an integer"),
        ("[study]\nname = 'has space'", "study name 'has space'"),
        ("[study]\ntimeout = -5", "timeout=-5.0"),
        ("[study]\nsampler = 'cmaes'", "choose one of 'tpe'"),
        ("[study]\npruner = 'eager'", "choose one of 'none'"),
        ("[task]\nval_size = 'half'", "task.val_size='half'"),
        ("[task]\ndownload = 'yes'", "expected true or false"),
        ("[training]\nepochs = -1", "epochs=-1"),
        ("[training]\nbatch_size = 0", "batch_size=0"),
        ("[training]\noptimizer = 'lion'", "choose one of 'sgd'"),
        ("[training]\nmomentum = 1.5", "momentum=1.5"),
        ("[training]\nnesterov = true\nmomentum = 0.0", "nesterov"),
        ("[training]\nbf16 = 'yes'", "expected true or false, or the key left out"),
        ("[study]\ntimeout = 'soon'", "expected a number, or the key left out"),
        ("[space]\nlr = [1.0, 0.1]", "empty"),
        ("[space]\nfamilies = ['cosine', 'triangle']", "unknown schedule family 'triangle'"),
        ("task = 3", "[task] must be a table"),
    ],
)
def test_bad_study_files_are_one_line_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(LrsearchError) as error:
        load_study_file(path)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_a_missing_study_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(LrsearchError, match=r"cannot read study file .*nowhere\.toml"):
        load_study_file(tmp_path / "nowhere.toml")
