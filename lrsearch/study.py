"""A study's definition: its sampler and pruner, the settings that make its trials
comparable, its task, and which trial is best.

Everything a trial needs to be understood later is written on the trial as
user attributes, the schedule as its JSON dict first, so optuna-dashboard,
the exporter and ``lrsearch best`` read results from the storage alone.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from lrsearch.baselines import BASELINE_ATTR
from lrsearch.config import StudyConfig
from lrsearch.errors import LrsearchError
from lrsearch.storage import (
    STORAGE_ERRORS,
    check_run_storage,
    create_stamped_study,
    rdb_storage,
    redact,
    storage_error,
)

__all__ = [
    "CONFIRM_SUFFIX",
    "OBJECTIVES",
    "best_trial",
    "check_definition",
    "dashboard_command",
    "default_artifact_dir",
    "higher_is_better",
    "make_pruner",
    "make_sampler",
    "objective_of",
    "open_study",
    "quiet_optuna",
    "score",
    "study_definition",
    "training_seeds",
]

MAXIMIZE, MINIMIZE = optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE
# The builtin metrics a study may optimize (``[study] objective``), and which way; a task's
# own metric (lrsearch.tasks.Metric) says its way itself, and each trial records it.
OBJECTIVES = {
    "val_accuracy": MAXIMIZE,
    "val_token_accuracy": MAXIMIZE,
    "val_loss": MINIMIZE,
    "val_perplexity": MINIMIZE,
    "val_mse": MINIMIZE,
}
HIGHER_IS_BETTER_ATTR = "higher_is_better"  # on each trial: its objective's way
# The study's task, training and space, set when it is created; a run that differs is refused.
DEFINITION_ATTR = "definition"
# Settings added to the definition after studies existed, with the value those studies had.
ADDED_SETTINGS = {"seeds": 1, "objective": "val_accuracy"}
# The [training] settings added since, likewise.
ADDED_TRAINING = {
    "decay_all": True,
    "beta1": 0.9,
    "beta2": 0.999,
    "eps": 1e-8,
    "clip_norm": None,
    "accumulate": 1,
}
SEEDS_ATTR = "train_seeds"  # the seeds every trial trains with, set when the study is created
CONFIRM_SUFFIX = ".confirm"  # the study ``lrsearch confirm`` records its runs in: <study>.confirm


def dashboard_command(storage: str, artifact_dir: Path) -> str:
    return f"optuna-dashboard {storage} --artifact-dir {artifact_dir}"


def default_artifact_dir(storage: str, study_name: str) -> Path:
    """Beside the SQLite file (``.lrsearch/<study>-artifacts``), else under ``.lrsearch/``."""
    if storage.startswith("sqlite:///"):
        database = Path(storage.removeprefix("sqlite:///").split("?", 1)[0])
        return database.parent / f"{study_name}-artifacts"
    return Path(".lrsearch") / f"{study_name}-artifacts"


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """``tpe``: multivariate TPE grouped per family (see lrsearch.space).

    The other two are there to measure that choice against."""
    if name == "tpe":
        return optuna.samplers.TPESampler(
            multivariate=True, group=True, constant_liar=True, seed=seed
        )
    if name == "tpe-independent":
        return optuna.samplers.TPESampler(multivariate=False, constant_liar=True, seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    """``none`` by default: an LR schedule that anneals late looks worse mid-run, and pruning it
    would teach the sampler to prefer early decay (short-horizon bias). The others start
    judging only in the second half of the run."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=epochs // 2)
    if name == "percentile":
        return optuna.pruners.PercentilePruner(25.0, n_startup_trials=5, n_warmup_steps=epochs // 2)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, epochs // 3), max_resource=epochs)
    return optuna.pruners.NopPruner()


def open_study(
    config: StudyConfig,
    storage: str,
    *,
    worker: int = 0,
    any_epochs: bool = False,
    direction: optuna.study.StudyDirection | None = None,
) -> optuna.Study:
    """Create the study or load it to add trials; storage problems become one-line errors.

    The sampler's seed comes from the study's seed, its number of trials so far and the
    ``worker``: a resumed run, or a second worker, would otherwise propose the same points
    again. ``any_epochs`` as for :func:`check_definition`. ``direction`` is the objective's
    way when it is a task's own metric (known from the task only); a builtin's is known, and
    an existing study keeps its own."""
    # group=True and set_metric_names are marked experimental; they are chosen deliberately.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    check_run_storage(storage)
    if storage.startswith("sqlite:///"):
        Path(storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    direction = direction or OBJECTIVES.get(config.objective)
    try:
        if direction is None:  # a task's own metric, and no task at hand: the study says
            direction = optuna.load_study(
                study_name=config.name, storage=rdb_storage(storage)
            ).direction
    except KeyError:
        raise LrsearchError(
            f"objective {config.objective!r} is not a builtin metric "
            f"({', '.join(OBJECTIVES)}) and study {config.name!r} does not exist yet; "
            "create it with lrsearch run, which learns the metric's direction from the task"
        ) from None
    except STORAGE_ERRORS as error:
        raise storage_error(storage, error) from None
    try:
        rdb = rdb_storage(storage)
        created = create_stamped_study(
            rdb,
            config.name,
            direction,
            {
                DEFINITION_ATTR: study_definition(config),
                SEEDS_ATTR: list(range(config.seed, config.seed + config.seeds)),
            },
        )
        study = optuna.load_study(
            study_name=config.name,
            storage=rdb,
            sampler=optuna.samplers.RandomSampler(),  # replaced below, once the trials are known
            pruner=make_pruner(config.pruner, config.training.epochs),
        )
    except (*STORAGE_ERRORS, RuntimeError) as error:  # RuntimeError: another schema version
        raise storage_error(storage, error) from None
    if not created:
        _check_ours(study, config, storage, direction)
    if not check_definition(study, config, storage, any_epochs=any_epochs):
        study.set_user_attr(DEFINITION_ATTR, study_definition(config))
    if SEEDS_ATTR not in study.user_attrs:
        study.set_user_attr(SEEDS_ATTR, list(range(config.seed, config.seed + config.seeds)))
    study.set_metric_names([config.objective])
    trials = len(study.get_trials(deepcopy=False))
    study.sampler = make_sampler(config.sampler, sampler_seed(config.seed, trials, worker))
    return study


def _check_ours(
    study: optuna.Study,
    config: StudyConfig,
    storage: str,
    direction: optuna.study.StudyDirection,
) -> None:
    """Refuse a same-named study lrsearch did not make: more than one objective, another
    direction, or no definition (made by plain Optuna: its trials have no schedule). Studies
    from before the stamp are recognised by their definition, or their trials' schedules."""
    where = f"study {config.name!r} in {redact(storage)}"
    if len(study.directions) != 1:
        raise LrsearchError(
            f"{where} has {len(study.directions)} objectives; lrsearch studies have one. "
            "Pass another --study-name"
        )
    if study.direction != direction:
        raise LrsearchError(
            f"{where} exists and does not "
            f"{'maximize' if direction is MAXIMIZE else 'minimize'} "
            f"{config.objective}; use its own objective, or pass a new --study-name"
        )
    trials = study.get_trials(deepcopy=False)
    ours = DEFINITION_ATTR in study.user_attrs or (
        bool(trials) and all("schedule" in t.user_attrs for t in trials)
    )
    if not ours:
        raise LrsearchError(
            f"{where} was not made by lrsearch run (it has no definition and its trials no "
            "schedule); pass another --study-name"
        )


def sampler_seed(seed: int, trials: int, worker: int) -> int:
    """A seed of its own for each (study seed, trials so far, worker)."""
    return int(np.random.SeedSequence([seed, trials, worker]).generate_state(1)[0])


def training_seeds(study: optuna.Study) -> list[int]:
    """The initialisation seeds every trial of the study trains with, fixed when it was created:
    trials then differ by their schedule alone (common random numbers), whatever ``--seed`` a
    later run samples with. The first is also the seed of the data order."""
    return list(study.user_attrs[SEEDS_ATTR])


def check_definition(
    study: optuna.Study, config: StudyConfig, storage: str, *, any_epochs: bool = False
) -> bool:
    """Refuse a study created with other settings than ``config``'s; False if it has none yet.

    ``any_epochs`` is for retraining at a length of one's own (``confirm``): the trials' length
    may then differ, since it may have come from ``run --epochs`` rather than the study file.
    """
    stored = study.user_attrs.get(DEFINITION_ATTR)
    if stored is not None:  # a study from before a setting existed had that setting's default
        stored = {
            **ADDED_SETTINGS,
            **stored,
            "training": {**ADDED_TRAINING, **stored.get("training", {})},
        }
    definition = study_definition(config)
    if any_epochs and stored is not None:
        definition["training"]["epochs"] = stored.get("training", {}).get("epochs")
    if stored is not None and stored != definition:
        changed = ", ".join(_changed_keys(stored, definition)[:3])
        raise LrsearchError(
            f"study {study.study_name!r} in {redact(storage)} was created with other settings "
            f"({changed}); use its own study file and options, or pass a new --study-name"
        )
    return stored is not None


def study_definition(config: StudyConfig) -> dict[str, Any]:
    """What makes one trial's value comparable with another's: the task, the training that
    changes results, and the search space. Trial counts, storage, device, sampler and seed may
    change between runs of one study; these may not, or TPE and ``best`` would mix two studies.
    """
    training = config.training
    definition: dict[str, Any] = _plain(
        {
            "task": {
                "name": config.task.name,
                "model": config.task.model,
                "val_size": config.task.val_size,
                "split_seed": config.task.split_seed,
            },
            "training": {
                name: getattr(training, name)
                for name in (
                    "epochs",
                    "batch_size",
                    "optimizer",
                    "momentum",
                    "nesterov",
                    "weight_decay",
                    *ADDED_TRAINING,
                    "divergence_factor",
                )
            },
            "seeds": config.seeds,
            "objective": config.objective,
            "space": config.space,
        }
    )
    return definition


def _plain(value: Any) -> Any:
    """JSON-compatible, as the storage keeps it (tuples become lists)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ, as ``key: old -> new``."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            change
            for key in sorted(old.keys() | new.keys())
            for change in _changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")
        ]
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


def quiet_optuna() -> None:
    """Errors only: lrsearch prints its own progress, and Optuna would print a traceback for
    every failed trial, whose reason is already the trial's ``error`` attribute."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    # A population asks for its trials and beats their hearts itself (lrsearch.storage).
    warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used")


def objective_of(trial: optuna.trial.FrozenTrial) -> str:
    """What the trial's value is; trials from before ``objective`` existed maximized accuracy."""
    return str(trial.user_attrs.get("objective", "val_accuracy"))


def higher_is_better(trial: optuna.trial.FrozenTrial) -> bool:
    """The way of the trial's objective: a builtin's, else as the trial recorded it."""
    known = OBJECTIVES.get(objective_of(trial))
    if known is not None:
        return known is MAXIMIZE
    return bool(trial.user_attrs.get(HIGHER_IS_BETTER_ATTR, True))


def score(trial: optuna.trial.FrozenTrial) -> float:
    """The trial's value with higher better, whatever its study's direction."""
    value = float(trial.value if trial.value is not None else math.nan)
    if not math.isfinite(value):
        return -math.inf
    return value if higher_is_better(trial) else -value


def best_trial(
    trials: Iterable[optuna.trial.FrozenTrial], *, baseline: bool | None = None
) -> optuna.trial.FrozenTrial | None:
    """The best COMPLETE trial: of all (``baseline=None``), of the baselines, or of the rest."""
    return max(
        (
            t
            for t in trials
            if t.state == optuna.trial.TrialState.COMPLETE
            and (baseline is None or (BASELINE_ATTR in t.user_attrs) == baseline)
        ),
        key=score,
        default=None,
    )
