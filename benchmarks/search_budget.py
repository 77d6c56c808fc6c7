"""Where the search spends its budget: every family at once, the peak LR only, or the peak
first and then the shape at that peak, at equal compute (the same number of trials).

For each study file and seed: (a) today's search over every family; (b) the peak LR only,
on cosine with a 10% linear warmup to zero; (c) half the trials as (b), then half over every
family with the lr fixed at the peak (b) found. Each prints the held-out (test) figure of
its best trial by validation, and (b) and (c) minus (a) paired seed by seed, with a t
interval over the seeds. Baselines are off, so every trial is the strategy's own.

    python benchmarks/search_budget.py --study studies/regression.toml --seeds 3 --trials 8

``--rows FILE`` appends each seed's figures to FILE (JSON lines) and summarises every row
in it, so that two processes on two cores can share the seeds (``--first-seed``) and
either one's summary covers both.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna

from lrsearch.config import StudyConfig, load_study_file
from lrsearch.runner import run_study
from lrsearch.space import FloatRange, space_from_table
from lrsearch.stats import t95
from lrsearch.study import best_trial, score

REPO = Path(__file__).resolve().parents[1]
PEAK_ONLY = {"warmup": 0.1, "warmup_mode": "linear", "min_lr": 0.0, "decay_period": 1.0}


def search(base: StudyConfig, name: str, trials: int, space: Mapping[str, Any]) -> Any:
    """The best trial (by validation) of a fresh study of ``trials`` trials over ``space``."""
    config = dataclasses.replace(
        base, name=name, n_trials=trials, baselines=False, space=space_from_table(dict(space))
    )
    run_study(config, out=io.StringIO())
    study = optuna.load_study(study_name=name, storage=config.storage)
    return best_trial(study.get_trials(deepcopy=False))


def held_out(trial: Any, base: StudyConfig) -> float:
    return float(trial.user_attrs[base.objective.replace("val_", "test_", 1)])


def strategies(base: StudyConfig, seed: int, trials: int) -> dict[str, float]:
    lr = base.space.settings["cosine"]["lr"]
    assert isinstance(lr, FloatRange)
    lr_range = [lr.low, lr.high]
    every = search(base, f"every-{seed}", trials, {"lr": lr_range})
    peak_only = {"families": ["cosine"], "lr": lr_range, "cosine": PEAK_ONLY}
    peak = search(base, f"peak-{seed}", trials, peak_only)
    first = search(base, f"first-{seed}", trials // 2, peak_only)
    found = float(first.params["cosine.lr"])
    then = search(base, f"then-{seed}", trials - trials // 2, {"lr": found})
    # The two stages' best by validation; the second stage's trials all sit at the found peak.
    better = max((first, then), key=score)
    return {
        "a every family": held_out(every, base),
        "b peak only": held_out(peak, base),
        "c peak then shape": held_out(better, base),
    }


def summarise(rows: list[dict[str, float]]) -> None:
    for name in rows[0]:
        values = [row[name] for row in rows]
        line = f"{name:<18} mean {statistics.mean(values):.4f}"
        if name != "a every family" and len(rows) > 1:
            differences = [row[name] - row["a every family"] for row in rows]
            half = t95(len(rows) - 1) * statistics.stdev(differences) / math.sqrt(len(rows))
            mean = statistics.mean(differences)
            line += f"; minus (a) {mean:+.4f} [95% {mean - half:+.4f}, {mean + half:+.4f}]"
        print(line + f"; per seed {[round(v, 4) for v in values]}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--study", type=Path, default=REPO / "studies" / "regression.toml")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads (default: the study's)"
    )
    parser.add_argument(
        "--rows", type=Path, default=None, help="JSON lines to append to and summarise"
    )
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))  # the shipped studies' tasks live in examples/
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    with tempfile.TemporaryDirectory() as folder:
        base = load_study_file(args.study)
        training = dataclasses.replace(base.training, threads=args.threads or base.training.threads)
        base = dataclasses.replace(
            base, training=training, storage=f"sqlite:///{Path(folder) / 'budget.db'}"
        )
        started = time.perf_counter()
        rows = []
        for seed in seeds:
            rows.append(strategies(dataclasses.replace(base, seed=seed), seed, args.trials))
            print(f"seed {seed}: {rows[-1]}", flush=True)
            if args.rows is not None:
                with args.rows.open("a") as file:
                    file.write(json.dumps({"seed": seed, **rows[-1]}) + "\n")
    print(
        f"{args.study.name}, {args.trials} trials per strategy, "
        f"seeds {seeds.start}..{seeds.stop - 1}, "
        f"held-out {base.objective.replace('val_', 'test_', 1)} of the best trial by validation, "
        f"{time.perf_counter() - started:.0f} s"
    )
    if args.rows is not None:
        lines = [json.loads(line) for line in args.rows.read_text().splitlines()]
        rows = [
            {k: v for k, v in row.items() if k != "seed"}
            for row in sorted(lines, key=lambda r: r["seed"])
        ]
        print(f"all rows in {args.rows}: seeds {sorted(line['seed'] for line in lines)}")
    summarise(rows)


if __name__ == "__main__":
    main()
