"""Study files: TOML in, typed frozen dataclasses out, validated once at the edge.

Everything a study needs is in one ``StudyConfig``; command-line options are
applied with ``with_overrides`` and validated by the same code. An unknown
key, a wrong type or an impossible range is one ``LrsearchError`` naming the
key, before anything is written.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lrsearch.errors import LrsearchError, read_document
from lrsearch.space import SearchSpace, space_from_table

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "SEED_MAX",
    "StudyConfig",
    "TaskConfig",
    "TrainConfig",
    "check_seeds",
    "default_storage",
    "load_study_file",
]

SamplerName = Literal["tpe", "tpe-independent", "random"]
PrunerName = Literal["none", "median", "percentile", "hyperband"]
OptimizerName = Literal["sgd", "adam", "adamw", "adamw-schedulefree", "sgd-schedulefree"]
# The setting a schedule-free optimizer interpolates with (y = beta x + (1 - beta) z).
SCHEDULE_FREE_BETA = {"adamw-schedulefree": "beta1", "sgd-schedulefree": "momentum"}

# numpy's generators, and so Optuna's samplers, take seeds in [0, 2**32 - 1] only.
SEED_MAX = 2**32 - 1
# TOML's integers, and SQLite's, are signed 64-bit: a larger one cannot be stored or read back.
_INT_LIMIT = 2**63
# A trial trains all its seeds in one population; far beyond any use, far below a list that
# would not fit in memory.
SEEDS_MAX = 1000
# torch takes a C int of threads; far more than any machine's cores.
THREADS_MAX = 4096
# A study name becomes file names (<name>.db, <name>-artifacts) limited to 255 bytes.
NAME_MAX = 128


def _check_seed(name: str, value: int) -> None:
    """A seed numpy and Optuna accept; refused here so nothing is written before it fails."""
    if not 0 <= value <= SEED_MAX:
        raise LrsearchError(f"{name}={value} is not allowed; it must be in [0, {SEED_MAX}]")


def check_seeds(name: str, seeds: int, seed: int) -> None:
    """Seeds ``seed .. seed + seeds - 1``: at least one, at most SEEDS_MAX, each one numpy takes."""
    if not 1 <= seeds <= SEEDS_MAX:
        raise LrsearchError(f"{name}={seeds} is not allowed; it must be in [1, {SEEDS_MAX}]")
    if seed + seeds - 1 > SEED_MAX:
        raise LrsearchError(
            f"{name}={seeds} is not allowed with seed {seed}; seed + seeds - 1 must be "
            f"<= {SEED_MAX}"
        )


@dataclass(frozen=True)
class TrainConfig:
    """How every trial trains; only the schedule changes between trials."""

    epochs: int = 15
    batch_size: int = 128
    # Trials trained together in one population (each with the study's seeds); None: the K that
    # `lrsearch bench` measured fastest per member-epoch on this kind of device (POPULATION).
    population: int | None = None
    # CPU threads per process; None: THREADS (measured, README "Threads"), shared among workers.
    threads: int | None = None
    optimizer: OptimizerName = "sgd"
    momentum: float = 0.9  # SGD only (sgd-schedulefree: its beta, which must be > 0)
    nesterov: bool = False  # SGD only
    weight_decay: float = 0.0
    # False: weight decay only on weight matrices (parameters of two or more dimensions), not
    # on norms, biases or embeddings, as minGPT does (nanoGPT today decays embeddings too).
    decay_all: bool = True
    beta1: float = 0.9  # Adam and AdamW (adamw-schedulefree: > 0); torch.optim's defaults
    beta2: float = 0.999
    eps: float = 1e-8
    # Each member's gradients clipped to this global norm (clip_grad_norm_); None: no clipping.
    clip_norm: float | None = None
    # Micro-batches of batch_size summed into one optimizer step (and one schedule step).
    accumulate: int = 1
    # Not larger: on a 2-core CPU 1024 evaluates 10,000 images in 0.17 s, 4096 in 0.30 s.
    eval_batch_size: int = 1024
    # A trial diverged when its loss is not finite or exceeds this many times
    # the loss of a uniform guess, ln(num_classes).
    divergence_factor: float = 10.0
    # Steps between reads of the device-side divergence flag (a host sync).
    check_every: int = 50
    # torch.compile the population's forward pass: pays on CUDA for runs long enough to
    # amortise the compile (tens of seconds), never for a few CPU epochs.
    compile: bool = False
    # bf16 autocast; None: on GPUs with bf16 tensor cores (Ampere on), float32 elsewhere. On a
    # CPU with AMX, bf16=True makes LeNet steps 8-12% faster but the quick study's small MLP 30%
    # slower (BENCHMARKS.md): it depends on the model, so on a CPU it is opted into.
    bf16: bool | None = None
    # float16 autocast with a loss scaler per member (torch.amp.GradScaler's rules); CUDA only.
    fp16: bool = False

    def __post_init__(self) -> None:
        for name in (
            "epochs",
            "batch_size",
            "accumulate",
            "eval_batch_size",
            "check_every",
            "population",
            "threads",
        ):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise LrsearchError(f"training.{name}={value} is not allowed; it must be >= 1")
        if self.threads is not None and self.threads > THREADS_MAX:
            raise LrsearchError(
                f"training.threads={self.threads} is not allowed; it must be <= {THREADS_MAX}"
            )
        if not 0.0 <= self.momentum < 1.0:
            raise LrsearchError(f"training.momentum={self.momentum} must be in [0, 1)")
        if self.weight_decay < 0:
            raise LrsearchError(f"training.weight_decay={self.weight_decay} must be >= 0")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise LrsearchError(f"training.{name}={getattr(self, name)} must be in [0, 1)")
        if self.eps <= 0:
            raise LrsearchError(f"training.eps={self.eps} must be > 0")
        if self.clip_norm is not None and self.clip_norm <= 0:
            raise LrsearchError(f"training.clip_norm={self.clip_norm} must be > 0")
        if self.fp16 and self.bf16:
            raise LrsearchError("training.fp16 and training.bf16 cannot both be true")
        if self.divergence_factor <= 1:
            raise LrsearchError(f"training.divergence_factor={self.divergence_factor} must be > 1")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise LrsearchError("training.nesterov needs optimizer 'sgd' with momentum > 0")
        # Schedule-free evaluates x = (y - (1 - beta) z) / beta: beta 0 has no average.
        beta = SCHEDULE_FREE_BETA.get(self.optimizer)
        if beta is not None and getattr(self, beta) == 0:
            raise LrsearchError(
                f"training.{beta}=0.0 is not allowed with optimizer '{self.optimizer}'; "
                "it must be in (0, 1)"
            )

    @property
    def schedule_free_beta(self) -> float | None:
        """Schedule-free's beta for this optimizer; None: the optimizer is not schedule-free."""
        beta = SCHEDULE_FREE_BETA.get(self.optimizer)
        return None if beta is None else float(getattr(self, beta))


@dataclass(frozen=True)
class TaskConfig:
    name: str = "fashion-mnist"  # a builtin task, or "package.module:function"
    model: str | None = None  # None: the task's default model
    data_dir: Path = Path("data")
    download: bool = True
    val_size: int | float = 10_000  # examples carved from the training set, or a fraction
    split_seed: int = 0

    def __post_init__(self) -> None:
        fraction = isinstance(self.val_size, float)
        if not (0 < self.val_size < 1 if fraction else self.val_size >= 1):  # nan: refused
            raise LrsearchError(
                f"val_size={self.val_size!r} is not allowed; it must be an integer >= 1 "
                "(examples) or a fraction in (0, 1)"
            )
        _check_seed("split_seed", self.split_seed)


@dataclass(frozen=True)
class StudyConfig:
    name: str
    n_trials: int = 20  # added by each run; re-running the study adds more
    timeout: float | None = None  # seconds, for this run
    seed: int = (
        0  # sampler seed; a new study trains every trial with seeds seed .. seed + seeds - 1
    )
    # Each trial trains its schedule with this many initialisation seeds in one population and
    # is scored by their mean; every trial of a study uses the same seeds (README: "Seeds").
    seeds: int = 1
    # ``val_`` and a metric of the task: accuracy, token_accuracy, loss, perplexity, mse or the
    # task's own; maximized or minimized as the metric says (README: "The objective").
    objective: str = "val_accuracy"
    storage: str | None = None  # any Optuna storage URL; None: a SQLite file per study
    sampler: SamplerName = "tpe"
    pruner: PrunerName = "none"
    device: str = "auto"
    baselines: bool = False  # queue the reference articles' schedules as the first trials
    task: TaskConfig = field(default_factory=TaskConfig)
    training: TrainConfig = field(default_factory=TrainConfig)
    space: SearchSpace = field(default_factory=lambda: space_from_table({}))

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name):
            raise LrsearchError(
                f"study name {self.name!r} is not allowed; use letters, digits, '.', '_' and '-'"
            )
        if len(self.name) > NAME_MAX:
            raise LrsearchError(
                f"study name {self.name[:20]!r}... ({len(self.name)} characters) is not allowed; "
                f"it must be at most {NAME_MAX} (it names files)"
            )
        _check_seed("seed", self.seed)
        check_seeds("seeds", self.seeds, self.seed)
        if self.n_trials < 1:
            raise LrsearchError(f"n_trials={self.n_trials} is not allowed; it must be >= 1")
        if self.timeout is not None and not (0 < self.timeout < math.inf):
            raise LrsearchError(
                f"timeout={self.timeout} is not allowed; it must be a finite number > 0 seconds"
            )
        if not (self.objective.startswith("val_") and self.objective[4:].isidentifier()):
            raise LrsearchError(
                f"objective={self.objective!r} is not allowed; it is val_ and a metric of the "
                "task, e.g. val_accuracy, val_loss, val_token_accuracy, val_perplexity, val_mse"
            )

    def with_overrides(
        self,
        study: Mapping[str, Any] | None = None,
        task: Mapping[str, Any] | None = None,
        training: Mapping[str, Any] | None = None,
    ) -> StudyConfig:
        """Command-line options on top of the file, by section; ``None`` means not given."""

        def merged(current: Any, changes: Mapping[str, Any] | None) -> dict[str, Any]:
            return {
                **_fields(current),
                **{k: v for k, v in (changes or {}).items() if v is not None},
            }

        return _build(
            StudyConfig,
            {
                **merged(self, study),
                "task": _build(TaskConfig, merged(self.task, task), "task"),
                "training": _build(TrainConfig, merged(self.training, training), "training"),
            },
            "study",
        )


def default_storage(study_name: str) -> str:
    """A SQLite file per study under ``.lrsearch/`` (git-ignored) in the working directory."""
    return f"sqlite:///{Path('.lrsearch') / f'{study_name}.db'}"


def load_study_file(path: str | Path) -> StudyConfig:
    path = Path(path)
    document = read_document(
        path,
        "study",
        "TOML",
        tomllib.loads,
        tomllib.TOMLDecodeError,
        str,
        "numbers must fit in 64 bits and tables in a few levels",
        unreadable="; pass --study FILE (the repository's studies/ folder has examples)",
    )
    try:
        _check_integers(document, "")
        return study_from_table(document, default_name=path.stem)
    except LrsearchError as error:
        raise LrsearchError(f"{path}: {error}") from None


def _check_integers(value: Any, key: str) -> None:
    """TOML's integers are 64-bit and its spec says a reader must refuse larger ones, which
    tomllib does not: refused here, every float or range of the file gets numbers it can hold."""
    if isinstance(value, Mapping):
        for name, item in value.items():
            _check_integers(item, f"{key}.{name}" if key else name)
    elif isinstance(value, list):
        for item in value:
            _check_integers(item, key)
    elif isinstance(value, int):
        _check_64_bits(value, key)


def _check_64_bits(value: int, where: str) -> None:
    if not -_INT_LIMIT <= value < _INT_LIMIT:
        raise LrsearchError(
            f"{where}={value} is not allowed; it must fit in 64 bits "
            f"[{-_INT_LIMIT}, {_INT_LIMIT - 1}]"
        )


def study_from_table(document: Mapping[str, Any], *, default_name: str) -> StudyConfig:
    _check_keys(document, {"study", "task", "training", "space"}, "the file")
    study = dict(_table(document, "study"))
    study.setdefault("name", default_name)
    return _build(
        StudyConfig,
        {
            **study,
            "task": _build(TaskConfig, _table(document, "task"), "task"),
            "training": _build(TrainConfig, _table(document, "training"), "training"),
            "space": space_from_table(_table(document, "space")),
        },
        "study",
    )


def _table(document: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = document.get(name, {})
    if not isinstance(value, Mapping):
        raise LrsearchError(f"[{name}] must be a table, got {value!r}")
    return value


def _fields(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def _check_keys(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise LrsearchError(
            f"unknown key {unknown[0]!r} in {where}; allowed: {', '.join(sorted(allowed))}"
        )


_T = typing.TypeVar("_T")


def _build(cls: type[_T], table: Mapping[str, Any], section: str) -> _T:
    """Construct a config dataclass from a table, checking every key and type."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    _check_keys(table, names, f"[{section}]")
    values = {
        name: _coerce(value, hints[name], f"{section}.{name}") for name, value in table.items()
    }
    try:
        return cls(**values)
    except LrsearchError as error:
        raise LrsearchError(f"[{section}] {error}") from None


class _WrongType(LrsearchError):
    """A value of another type than the annotation's, as opposed to one out of range."""


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)

    def wrong(expected: str) -> _WrongType:
        return _WrongType(f"{where}={value!r} has the wrong type; expected {expected}")

    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(value, hint):
            raise wrong(f"a [{where}] table")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, where)
            except _WrongType:
                continue  # a value of the right type but out of range is refused as such
        names = " or ".join(_type_name(a) for a in args if a is not type(None))
        # TOML has no null: an optional key is left out to get its default.
        raise wrong(names + (", or the key left out" if type(None) in args else ""))
    if origin is Literal:
        if value not in args:
            raise LrsearchError(
                f"{where}={value!r} is not allowed; choose one of {', '.join(map(repr, args))}"
            )
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong("an integer")
        _check_64_bits(value, where)
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong("a number")
        # False for nan, inf, and an integer beyond float's range (1 followed by 400 zeros).
        if not -sys.float_info.max <= value <= sys.float_info.max:
            raise LrsearchError(f"{where}={value!r} is not allowed; it must be a finite number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise wrong("a string")
        return value
    if hint is Path:
        if not isinstance(value, (str, Path)):
            raise wrong("a path")
        return Path(value)
    raise TypeError(
        f"unsupported config annotation {hint!r} at {where}"
    )  # a bug here, not bad input


def _type_name(hint: Any) -> str:
    """As the TOML reader would write it."""
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))
