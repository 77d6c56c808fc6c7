"""A study on scikit-learn's bundled digits that trains in a second or two, for tests."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from lrsearch.config import StudyConfig, TaskConfig
from lrsearch.space import space_from_table
from lrsearch.training import TrainConfig

# The same study as a file, for tests that run the command line.
DIGITS_STUDY_FILE = """
[task]
name = "examples.custom_task:build"
val_size = 0.2
[training]
epochs = 1
batch_size = 64
[space]
families = ["constant", "cosine", "step"]
lr = [0.01, 0.3]
"""


def digits_study(database: Path, **changes: Any) -> StudyConfig:
    """Three 1-epoch trials over three families, stored in ``database``; ``changes`` on top."""
    config = StudyConfig(
        name="digits",
        n_trials=3,
        storage=f"sqlite:///{database}",
        device="cpu",
        task=TaskConfig(name="examples.custom_task:build", val_size=0.2),
        training=TrainConfig(epochs=1, batch_size=64),
        space=space_from_table({"families": ["constant", "cosine", "step"], "lr": [0.01, 0.3]}),
    )
    return dataclasses.replace(config, **changes)
