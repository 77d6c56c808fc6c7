"""The schedule search space: family and parameters as conditional Optuna parameters.

Every parameter except ``family`` is named ``<family>.<parameter>`` and has
the same range in every trial. With TPE's ``group=True`` each family's
parameters, its peak ``lr`` included, then form one group that is modelled
jointly from that family's trials. A single shared ``lr`` would sit in a
group of its own and lose its link to the family's knobs (Optuna issue
#5299); fixed names and ranges keep the model's history comparable across
trials (no bounds computed from other parameters).

Tuple parameters (milestones, boundaries, piecewise values) are sampled as
fixed-range scalars and mapped to a sorted tuple, so their ranges stay fixed
too. ``min_lr`` is sampled as a ratio of ``lr`` (0 allowed).

``lr = "auto"`` leaves the peak LR's range to a range test (lrsearch.lr_find) run once per
study; the study keeps the found range as a user attribute and its definition keeps
``"auto"``, so every trial, resumed run and worker reads the same range from the study.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import optuna

from lrsearch.errors import LrsearchError
from lrsearch.schedules import FAMILIES, Schedule, make_schedule

__all__ = [
    "LR_RANGE_ATTR",
    "AutoLr",
    "Categorical",
    "FloatRange",
    "SearchSpace",
    "default_space",
    "params_for",
    "resolve_auto_lr",
    "space_from_table",
    "study_space",
    "suggest_schedule",
]


@dataclass(frozen=True)
class FloatRange:
    low: float
    high: float
    log: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low <= self.high):
            raise LrsearchError(f"range [{self.low}, {self.high}] is empty or not finite")
        if self.log and self.low <= 0:
            raise LrsearchError(f"log range [{self.low}, {self.high}] must be > 0")


@dataclass(frozen=True)
class Categorical:
    choices: tuple[Any, ...]

    def __post_init__(self) -> None:
        if not self.choices:
            raise LrsearchError("a list of choices must not be empty")


@dataclass(frozen=True)
class AutoLr(FloatRange):
    """``lr = "auto"``: the range is found by the study's range test (lrsearch.lr_find).

    Until :func:`resolve_auto_lr` replaces it, it holds the default lr range, which only
    validates the other settings; ``auto`` marks it in the study's stored definition."""

    auto: bool = True


Dimension = FloatRange | Categorical

# What is searched for each family when the study file says nothing. Keys
# are schedule parameters, plus the sampled stand-ins that ``_schedule_params``
# turns into schedule parameters (``min_lr_ratio``, ``milestone_*``, ...).
_DEFAULT_LR = FloatRange(1e-3, 0.5, log=True)
_SHARED: dict[str, Dimension] = {
    "lr": _DEFAULT_LR,
    "warmup": FloatRange(0.0, 0.2),
    "warmup_mode": Categorical(("linear", "burnin")),
}
_MIN_LR: dict[str, Dimension] = {"min_lr_ratio": FloatRange(0.0, 0.1)}
_TWO_EDGES: dict[str, Dimension] = {
    "first_edge": FloatRange(0.2, 0.7),
    "second_edge": FloatRange(0.2, 1.0),  # share of what is left after the first; 1: the end
}
_DEFAULTS: dict[str, dict[str, Dimension]] = {
    "constant": {},
    "step": {**_TWO_EDGES, "gamma": FloatRange(0.05, 0.5, log=True)},
    "piecewise": {
        **_TWO_EDGES,
        "first_drop": FloatRange(0.05, 0.5, log=True),
        "second_drop": FloatRange(0.05, 0.5, log=True),
    },
    "exponential": {
        **_MIN_LR,
        "decay_rate": FloatRange(0.1, 0.99),
        "decay_steps": FloatRange(0.05, 0.5, log=True),
        "staircase": Categorical((False, True)),
    },
    "inverse_time": {"decay_rate": FloatRange(0.5, 50.0, log=True)},
    "inverse_sqrt": {"tau": FloatRange(1e-4, 0.1, log=True)},
    "polynomial": {
        **_MIN_LR,
        "power": FloatRange(0.5, 3.0),
        "decay_period": FloatRange(0.5, 1.0),
        "cycle": Categorical((False, True)),
    },
    "cosine": {**_MIN_LR, "decay_period": FloatRange(0.5, 1.0)},
    "cosine_restarts": {
        **_MIN_LR,
        "first_cycle": FloatRange(0.05, 0.5, log=True),
        "multiplier": FloatRange(1.0, 2.5),
        "peak_decay": FloatRange(0.5, 1.0),
        "cycle_warmup": FloatRange(0.0, 0.3),
    },
    "cyclic": {
        "min_lr_ratio": FloatRange(0.0, 0.5),  # the cycle's base: Smith uses a third to a quarter
        "step_size": FloatRange(0.02, 0.25, log=True),
        "mode": Categorical(("triangular", "triangular2")),
    },
    "one_cycle": {
        "pct_start": FloatRange(0.1, 0.5),
        "div_factor": FloatRange(5.0, 50.0, log=True),
        "final_div_factor": FloatRange(10.0, 1e4, log=True),
        "anneal": Categorical(("cos", "linear")),
    },
    "linear": {**_MIN_LR},
    "wsd": {
        **_MIN_LR,
        "decay_fraction": FloatRange(0.1, 0.5),
        "decay": Categorical(("linear", "cosine", "1-sqrt")),
    },
}
# A fixed schedule parameter replaces the stand-ins that would produce it.
_STAND_INS: dict[str, tuple[str, ...]] = {
    "min_lr": ("min_lr_ratio",),
    "milestones": ("first_edge", "second_edge"),
    "boundaries": ("first_edge", "second_edge"),
    "values": ("first_drop", "second_drop"),
}

Setting = Dimension | Any  # a Dimension is searched; anything else is a fixed value

# The study user attribute holding the range test's result for ``lr = "auto"``: a dict with
# ``low``, ``high`` and ``suggested`` (the baselines' peak), written by lrsearch.lr_find.
LR_RANGE_ATTR = "lr_range"


@dataclass(frozen=True)
class SearchSpace:
    """Which families are searched, and for each parameter a range, choices or a fixed value."""

    families: tuple[str, ...]
    settings: Mapping[str, Mapping[str, Setting]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.families:
            raise LrsearchError("the search space needs at least one family")
        unknown = [name for name in self.families if name not in FAMILIES]
        if unknown:
            raise LrsearchError(
                f"unknown schedule family {unknown[0]!r}; known: {', '.join(sorted(FAMILIES))}"
            )
        if len(set(self.families)) != len(self.families):
            raise LrsearchError(f"families are listed twice: {list(self.families)}")

    @property
    def auto_lr(self) -> bool:
        """``lr = "auto"``, not yet resolved: the lr range waits for the range test.

        A property, not a field: the stored definitions of existing studies stay equal."""
        return any(isinstance(s.get("lr"), AutoLr) for s in self.settings.values())


def default_space(
    families: tuple[str, ...] | None = None,
    overrides: Mapping[str, Any] | None = None,
    family_overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> SearchSpace:
    """The defaults above, changed by a study file.

    ``overrides`` apply to every family that has the parameter (``lr``,
    ``warmup``, ``min_lr_ratio``...); ``family_overrides[family]`` to one. A
    value is a ``FloatRange``/``Categorical`` to search or a plain value to
    fix; a fixed value may name any schedule parameter, searched or not.
    """
    chosen = tuple(families) if families is not None else tuple(_DEFAULTS)
    space = SearchSpace(chosen)  # validates the family names
    settings: dict[str, dict[str, Setting]] = {}
    for family in chosen:
        merged: dict[str, Setting] = {**_SHARED, **_DEFAULTS[family]}
        for name, value in (overrides or {}).items():
            if name in merged:
                merged[name] = value
        for name, value in (family_overrides or {}).get(family, {}).items():
            if name not in merged and name not in _schedule_field_names(family):
                allowed = sorted(set(merged) | _schedule_field_names(family))
                raise LrsearchError(
                    f"space.{family}: unknown parameter {name!r}; allowed: {', '.join(allowed)}"
                )
            merged[name] = value
            for stand_in in _STAND_INS.get(name, ()):
                merged.pop(stand_in, None)
        _probe(family, merged)
        settings[family] = merged
    unknown_shared = set(overrides or {}) - {n for s in settings.values() for n in s}
    if unknown_shared:
        raise LrsearchError(
            f"space: unknown parameter {sorted(unknown_shared)[0]!r} for these families"
        )
    unknown_families = set(family_overrides or {}) - set(chosen)
    if unknown_families:
        raise LrsearchError(
            f"space.{sorted(unknown_families)[0]}: that family is not in "
            f"space.families {list(chosen)}"
        )
    return dataclasses.replace(space, settings=settings)


def space_from_table(table: Mapping[str, Any]) -> SearchSpace:
    """A study file's ``[space]`` table: ``families``, shared settings, ``[space.<family>]`` tables.

    Where the default searches a range, ``[low, high]`` searches that range
    (log scale where the default is) and a number fixes the value; where it
    searches choices, a list gives the choices and a scalar fixes one. Any
    other schedule parameter may be fixed (lists become tuples).
    """
    families = table.get("families")
    if families is not None and (
        not isinstance(families, list) or not all(isinstance(f, str) for f in families)
    ):
        raise LrsearchError(f"space.families={families!r} must be a list of family names")
    shared: dict[str, Any] = {}
    per_family: dict[str, dict[str, Any]] = {}
    auto_lr = table.get("lr") == "auto"
    if auto_lr:
        shared["lr"] = AutoLr(_DEFAULT_LR.low, _DEFAULT_LR.high, log=True)
    for key, value in table.items():
        if key == "families" or (key == "lr" and auto_lr):
            continue
        if key == "lr" and not isinstance(value, list) and not _is_number(value):
            raise LrsearchError(f'space.lr={value!r} must be [low, high], one number or "auto"')
        if key in FAMILIES and isinstance(value, Mapping):
            per_family[key] = {
                name: _setting(_default_for(key, name), item, f"space.{key}.{name}")
                for name, item in value.items()
            }
        else:
            shared[key] = _setting(_default_for(None, key), value, f"space.{key}")
    with_lr = sorted(family for family, settings in per_family.items() if "lr" in settings)
    if auto_lr and with_lr:
        raise LrsearchError(
            f'space.{with_lr[0]}.lr cannot be set with space.lr = "auto"; the range test '
            "finds every family's lr range: remove one of them"
        )
    return default_space(tuple(families) if families is not None else None, shared, per_family)


def resolve_auto_lr(space: SearchSpace, low: float, high: float) -> SearchSpace:
    """``space`` with its ``"auto"`` lr searched on a log scale over the found [low, high]."""
    lr = FloatRange(low, high, log=True)
    settings = {
        family: {**settings, "lr": lr} if isinstance(settings.get("lr"), AutoLr) else settings
        for family, settings in space.settings.items()
    }
    for family, family_settings in settings.items():
        _probe(family, family_settings)
    return SearchSpace(space.families, settings)


def study_space(study: optuna.Study, space: SearchSpace) -> SearchSpace:
    """The space the study's trials sample: an ``"auto"`` lr replaced by its stored range."""
    if not space.auto_lr:
        return space
    found = study.user_attrs.get(LR_RANGE_ATTR)
    if found is None:
        raise LrsearchError(
            f'space.lr = "auto", but study {study.study_name!r} has no range test result yet; '
            "lrsearch run does it before the first trial (lrsearch.lr_find.auto_lr_range)"
        )
    return resolve_auto_lr(space, found["low"], found["high"])


def _default_for(family: str | None, name: str) -> Dimension | None:
    if family is None:
        candidates = [_SHARED, *_DEFAULTS.values()]
        return next((c[name] for c in candidates if name in c), None)
    return {**_SHARED, **_DEFAULTS[family]}.get(name)


def _setting(default: Dimension | None, value: Any, where: str) -> Setting:
    if isinstance(default, FloatRange) and isinstance(value, list):
        if len(value) != 2 or not all(_is_number(v) for v in value):
            raise LrsearchError(f"{where}={value!r} must be [low, high] or one number")
        try:
            return FloatRange(float(value[0]), float(value[1]), log=default.log)
        except LrsearchError as error:
            raise LrsearchError(f"{where}: {error}") from None
    if isinstance(default, FloatRange) and not _is_number(value):
        raise LrsearchError(f"{where}={value!r} must be [low, high] or one number")
    if isinstance(default, Categorical) and isinstance(value, list):
        bad = [v for v in value if v not in default.choices]
        if bad or not value:
            raise LrsearchError(
                f"{where}={value!r} is not allowed; "
                f"choose from {', '.join(map(repr, default.choices))}"
            )
        return Categorical(tuple(value))
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, Mapping):
        raise LrsearchError(f"{where} is a table, but {where.split('.')[-1]!r} is not a family")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _probe(family: str, settings: Mapping[str, Setting]) -> None:
    """Build the schedules at both ends of every range now, so a bad setting fails at load."""
    for end in (0, -1):
        corner = {
            name: (value.low, value.high)[end]
            if isinstance(value, FloatRange)
            else value.choices[end]
            if isinstance(value, Categorical)
            else value
            for name, value in settings.items()
        }
        try:
            make_schedule(family, _schedule_params(family, corner))
        except LrsearchError as error:
            raise LrsearchError(f"space.{family}: {error}") from None


def suggest_schedule(trial: optuna.Trial, space: SearchSpace | None = None) -> Schedule:
    """Sample a family, then only that family's parameters, and return the schedule.

    The three lines that put lrsearch's space into any Optuna objective::

        schedule = suggest_schedule(trial)
        optimizer = torch.optim.SGD(model.parameters(), lr=schedule.lr)
        scheduler = schedule.torch_scheduler(optimizer, total_steps)
    """
    space = space or default_space()
    if space.auto_lr:  # only then: a FixedTrial, say, has no study
        space = study_space(trial.study, space)
    family = str(trial.suggest_categorical("family", list(space.families)))
    settings = space.settings.get(family) or {**_SHARED, **_DEFAULTS[family]}
    sampled = {name: _suggest(trial, f"{family}.{name}", value) for name, value in settings.items()}
    return make_schedule(family, _schedule_params(family, sampled))


def _suggest(trial: optuna.Trial, name: str, setting: Setting) -> Any:
    if isinstance(setting, FloatRange):
        if setting.low == setting.high:
            return setting.low
        return trial.suggest_float(name, setting.low, setting.high, log=setting.log)
    if isinstance(setting, Categorical):
        return trial.suggest_categorical(name, list(setting.choices))
    return setting


def _schedule_params(family: str, sampled: Mapping[str, Any]) -> dict[str, Any]:
    """Turn sampled stand-ins into schedule parameters; the rest pass through."""
    params = dict(sampled)
    if params.get("warmup", 0.0) == 0.0 or params.get("warmup_mode") == "burnin":
        params.pop("warmup_start", None)
    if "min_lr_ratio" in params:
        params["min_lr"] = params.pop("min_lr_ratio") * params["lr"]
    if "first_edge" in params:
        first = params.pop("first_edge")
        edges = (first, first + params.pop("second_edge") * (1.0 - first))
        params["milestones" if family == "step" else "boundaries"] = edges
    if "first_drop" in params:
        first_drop, second_drop = params.pop("first_drop"), params.pop("second_drop")
        params["values"] = (1.0, first_drop, first_drop * second_drop)
    return params


def params_for(schedule: Schedule, space: SearchSpace) -> dict[str, Any]:
    """The trial parameters that make ``suggest_schedule`` return ``schedule`` in ``space``.

    For ``study.enqueue_trial``: a hand-picked schedule enters the study as an
    ordinary trial the sampler learns from. Refused when the space cannot
    produce the schedule (family not searched, a value outside its range or
    different from a fixed value, a parameter the space does not vary).
    """
    family = schedule.family
    if family not in space.families:
        raise LrsearchError(f"family {family!r} is not in space.families {list(space.families)}")
    settings = space.settings.get(family) or {**_SHARED, **_DEFAULTS[family]}
    values = {**schedule.params(), **_stand_in_values(schedule)}
    params: dict[str, Any] = {"family": family}
    for name, setting in settings.items():
        value = values[name]
        if isinstance(setting, FloatRange) and setting.low < setting.high:
            if not setting.low <= value <= setting.high:
                raise LrsearchError(
                    f"{family}.{name}={value:.4g} is outside the space's "
                    f"[{setting.low}, {setting.high}]"
                )
            params[f"{family}.{name}"] = value
        elif isinstance(setting, Categorical):
            if value not in setting.choices:
                raise LrsearchError(
                    f"{family}.{name}={value!r} is not among {list(setting.choices)}"
                )
            params[f"{family}.{name}"] = value
    produced = make_schedule(
        family,
        _schedule_params(
            family,
            {
                name: params.get(
                    f"{family}.{name}", setting.low if isinstance(setting, FloatRange) else setting
                )
                for name, setting in settings.items()
            },
        ),
    )
    if not _same(produced.params(), schedule.params()):
        differing = sorted(
            k for k, v in schedule.params().items() if not _same(v, produced.params()[k])
        )
        raise LrsearchError(
            f"the space cannot produce this {family} schedule: {', '.join(differing)} differ"
        )
    return params


def _stand_in_values(schedule: Schedule) -> dict[str, Any]:
    """The sampled stand-ins that ``_schedule_params`` maps back to this schedule."""
    params = schedule.params()
    values: dict[str, Any] = {}
    if "min_lr" in params:
        values["min_lr_ratio"] = params["min_lr"] / params["lr"]
    edges = params.get("milestones") or params.get("boundaries")
    if edges is not None and len(edges) == 2:
        values["first_edge"] = edges[0]
        values["second_edge"] = (edges[1] - edges[0]) / (1.0 - edges[0])
    drops = params.get("values")
    if drops is not None and len(drops) == 3 and drops[0] == 1.0:
        values["first_drop"] = drops[1]
        values["second_drop"] = drops[2] / drops[1]
    return values


def _same(a: Any, b: Any) -> bool:
    """Equal, up to the rounding of a ratio taken and multiplied back."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-15)
    return bool(a == b)


def _schedule_field_names(family: str) -> set[str]:
    return {f.name for f in dataclasses.fields(FAMILIES[family])}
