"""Measure the two search defaults on the quick study: the sampler and the pruner.

For each sampler (and, separately, each pruner with the default sampler), run
the quick study (scikit-learn's digits, a small MLP, every family) with several
seeds and print the best validation accuracy reached, its spread over seeds,
and for pruners how often each kind of family was pruned and won.

    python benchmarks/search_choices.py --seeds 5 --trials 40
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import optuna

from lrsearch.config import load_study_file
from lrsearch.runner import run_study

REPO = Path(__file__).resolve().parents[1]
# Families whose LR is still high in the middle of the run.
LATE = {"constant", "cosine", "linear", "polynomial", "wsd", "one_cycle", "cyclic"}


def run(sampler: str, pruner: str, seed: int, trials: int, folder: Path) -> optuna.Study:
    config = load_study_file(REPO / "studies" / "quick.toml")
    name = f"{sampler}-{pruner}-{seed}"
    config = dataclasses.replace(
        config,
        name=name,
        seed=seed,
        n_trials=trials,
        sampler=sampler,
        pruner=pruner,
        baselines=False,
        storage=f"sqlite:///{folder / 'choices.db'}",
    )
    run_study(config, out=io.StringIO())
    return optuna.load_study(study_name=name, storage=config.storage)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--trials", type=int, default=40)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))  # the quick study's task is examples.custom_task:build
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(f"quick study, {args.trials} trials, seeds 0..{args.seeds - 1}")
    print(
        f"{'sampler':<16} {'pruner':<8} {'best val mean':>13} {'std':>6} {'min':>6} "
        f"{'pruned':>7} {'late-family share: pruned / all / top-5':>40} {'s':>5}"
    )
    with tempfile.TemporaryDirectory() as folder:
        for sampler, pruner in [
            ("tpe", "none"),
            ("tpe-independent", "none"),
            ("random", "none"),
            ("tpe", "median"),
        ]:
            started = time.perf_counter()
            bests, pruned, everything, top = [], collections.Counter(), collections.Counter(), []
            for seed in range(args.seeds):
                study = run(sampler, pruner, seed, args.trials, Path(folder))
                complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
                bests.append(max(t.value for t in complete))
                for t in study.trials:
                    everything[t.params["family"] in LATE] += 1
                    if t.state == optuna.trial.TrialState.PRUNED:
                        pruned[t.params["family"] in LATE] += 1
                top += [
                    t.params["family"] in LATE
                    for t in sorted(complete, key=lambda t: t.value, reverse=True)[:5]
                ]

            def share(counts: collections.Counter[bool]) -> str:
                total = sum(counts.values())
                return f"{counts[True] / total:.2f}" if total else "-"

            shares = f"{share(pruned)} / {share(everything)} / {sum(top) / len(top):.2f}"
            print(
                f"{sampler:<16} {pruner:<8} {statistics.mean(bests):>13.4f} "
                f"{statistics.stdev(bests):>6.4f} {min(bests):>6.4f} {sum(pruned.values()):>7} "
                f"{shares:>40} {time.perf_counter() - started:>5.0f}"
            )


if __name__ == "__main__":
    main()
