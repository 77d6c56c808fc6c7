"""Study files: TOML to typed config, every mistake one line before anything runs."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest

from lrsearch import LrsearchError
from lrsearch.config import StudyConfig, TrainConfig, default_storage, load_study_file

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
        ("[training]\noptimizer = 'sgd-schedulefree'\nnesterov = true", "nesterov"),
        (
            "[training]\noptimizer = 'sgd-schedulefree'\nmomentum = 0.0",
            "training.momentum=0.0 is not allowed with optimizer 'sgd-schedulefree'; "
            "it must be in (0, 1)",
        ),
        (
            "[training]\noptimizer = 'adamw-schedulefree'\nbeta1 = 0.0",
            "training.beta1=0.0 is not allowed with optimizer 'adamw-schedulefree'",
        ),
        ("[training]\nbf16 = 'yes'", "expected true or false, or the key left out"),
        ("[study]\ntimeout = 'soon'", "expected a number, or the key left out"),
        ("[space]\nlr = [1.0, 0.1]", "empty"),
        ("[space]\nfamilies = ['cosine', 'triangle']", "unknown schedule family 'triangle'"),
        ("task = 3", "[task] must be a table"),
        ("[study]\nseed = -1", "seed=-1 is not allowed; it must be in [0, 4294967295]"),
        ("[study]\nseed = 4294967296", "seed=4294967296 is not allowed"),
        ("[task]\nsplit_seed = -1", "split_seed=-1 is not allowed; it must be in [0, "),
        ("[study]\ntimeout = nan", "timeout=nan is not allowed; it must be a finite number"),
        ("[study]\ntimeout = inf", "timeout=inf is not allowed"),
        ("[study]\ntimeout = 1e400", "timeout=inf is not allowed"),
        ("[training]\nweight_decay = nan", "weight_decay=nan is not allowed"),
        ("[training]\ndivergence_factor = inf", "divergence_factor=inf is not allowed"),
        ("[training]\nmomentum = -nan", "momentum=nan is not allowed"),
        ("[training]\nepochs = 9223372036854775808", "epochs=9223372036854775808 is not allowed"),
        ("[study]\nn_trials = -9223372036854775809", "it must fit in 64 bits"),
        ("[training]\nweight_decay = 1" + "0" * 400, "training.weight_decay=1000"),
        ("[space]\nlr = [0.01, 1" + "0" * 400 + "]", "space.lr=1000"),
        ("[space]\ncosine = {min_lr = [0, 1" + "0" * 30 + "]}", "space.cosine.min_lr=1000"),
        ("[task]\nval_size = 0", "val_size=0 is not allowed; it must be an integer >= 1"),
        ("[task]\nval_size = 1.5", "val_size=1.5 is not allowed"),
        ("[task]\nval_size = nan", "val_size=nan is not allowed"),
        ("[training]\nbeta1 = 1.0", "training.beta1=1.0 must be in [0, 1)"),
        ("[training]\nbeta2 = -0.1", "training.beta2=-0.1 must be in [0, 1)"),
        ("[training]\neps = 0", "training.eps=0.0 must be > 0"),
        ("[training]\nclip_norm = -1", "training.clip_norm=-1.0 must be > 0"),
        ("[training]\nclip_norm = 'no'", "expected a number, or the key left out"),
        ("[training]\naccumulate = 0", "training.accumulate=0 is not allowed"),
        ("[training]\ndecay_all = 0", "expected true or false"),
        ("[training]\nfp16 = true\nbf16 = true", "fp16 and training.bf16 cannot both"),
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


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"[study]\nname = '\xff\xfe'\n", "is not UTF-8 text (byte 0xff at offset 16)"),
        ("[study]\nname = 'x'\n".encode("utf-16"), "is not UTF-8 text"),
        (b"\x89PNG\r\n\x1a\n\x00", "is not UTF-8 text"),
        (b"a = " + b"[" * 100_000 + b"]" * 100_000, "nests too deeply"),
        (b"[study]\nseed = 1" + b"0" * 5000, "has a huge number"),
    ],
)
def test_files_that_are_not_readable_toml_name_the_file(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(content)
    with pytest.raises(LrsearchError) as error:
        load_study_file(path)
    assert message in str(error.value) and str(path) in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"study": {"seed": -1}}, "seed=-1 is not allowed"),
        ({"study": {"seed": 2**40}}, f"seed={2**40} is not allowed"),
        ({"study": {"timeout": math.nan}}, "timeout=nan is not allowed"),
        ({"study": {"timeout": math.inf}}, "timeout=inf is not allowed"),
        ({"study": {"n_trials": 2**70}}, "it must fit in 64 bits"),
        ({"training": {"epochs": -(2**70)}}, "it must fit in 64 bits"),
    ],
)
def test_overrides_refuse_what_the_file_would(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(LrsearchError, match=re.escape(message)):
        load_study_file(STUDIES / "quick.toml").with_overrides(**overrides)


def test_a_config_built_directly_is_checked_too() -> None:
    with pytest.raises(LrsearchError, match="timeout=nan"):
        StudyConfig(name="x", timeout=math.nan)
    with pytest.raises(LrsearchError, match="seed=4294967296"):
        StudyConfig(name="x", seed=2**32)


def test_the_transformer_knobs_load_from_the_training_table(tmp_path: Path) -> None:
    path = tmp_path / "gpt.toml"
    path.write_text(
        "[training]\noptimizer = 'adamw'\nbeta2 = 0.95\neps = 1e-9\ndecay_all = false\n"
        "clip_norm = 1\naccumulate = 4\nfp16 = true\n"
    )
    training = load_study_file(path).training
    assert (training.beta1, training.beta2, training.eps) == (0.9, 0.95, 1e-9)
    assert (training.decay_all, training.clip_norm, training.accumulate) == (False, 1.0, 4)
    assert training.fp16 is True


def test_schedule_free_optimizers_load_and_name_their_beta(tmp_path: Path) -> None:
    path = tmp_path / "free.toml"
    path.write_text("[training]\noptimizer = 'sgd-schedulefree'\nmomentum = 0.8\n")
    training = load_study_file(path).training
    assert (training.optimizer, training.schedule_free_beta) == ("sgd-schedulefree", 0.8)
    assert TrainConfig(optimizer="adamw-schedulefree", beta1=0.95).schedule_free_beta == 0.95
    assert TrainConfig(optimizer="sgd", momentum=0.8).schedule_free_beta is None
