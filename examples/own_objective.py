"""lrsearch's search space inside your own Optuna objective and your own PyTorch loop.

    python examples/own_objective.py [--trials 10] [--epochs 4] [--out own_schedule.json]

``suggest_schedule(trial)`` samples a family, then only that family's parameters, and
returns a ``Schedule``; the rest is your loop, your metric and your study. Each trial
keeps its schedule as a user attribute, so the best one is saved as the file that
``lrsearch.load_schedule`` (and every other example) reads; an existing file is kept unless
``--force`` (``best_schedule.json``, what ``lrsearch best`` writes, is never the default).
Data: scikit-learn's bundled digits, nothing to download.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import optuna
import torch
from sklearn.datasets import load_digits

import lrsearch


def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train and validation splits, fixed, so every trial sees the same data."""
    data = load_digits()
    pixels = torch.tensor(data.data, dtype=torch.float32) / 16
    labels = torch.tensor(data.target)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    train, val = order[:1400], order[1400:]
    return pixels[train], labels[train], pixels[val], labels[val]


def objective(trial: optuna.Trial, epochs: int, space: lrsearch.SearchSpace) -> float:
    schedule = lrsearch.suggest_schedule(trial, space)
    trial.set_user_attr("schedule", schedule.to_dict())
    train_x, train_y, val_x, val_y = digits()
    torch.manual_seed(trial.number)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    batch_size = 64
    steps_per_epoch = len(train_y) // batch_size
    optimizer = torch.optim.SGD(model.parameters(), lr=schedule.lr, momentum=0.9)
    scheduler = schedule.torch_scheduler(optimizer, total_steps=epochs * steps_per_epoch)
    for epoch in range(epochs):
        order = torch.randperm(len(train_y))
        for step in range(steps_per_epoch):
            batch = order[step * batch_size : (step + 1) * batch_size]
            loss = torch.nn.functional.cross_entropy(model(train_x[batch]), train_y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()  # once per optimizer step: the schedule counts steps
        with torch.no_grad():
            accuracy = (model(val_x).argmax(1) == val_y).float().mean().item()
        trial.report(accuracy, epoch)  # pruners and the dashboard see every epoch
    return accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("own_schedule.json"))
    parser.add_argument("--force", action="store_true", help="replace an existing --out file")
    args = parser.parse_args()
    if args.out.exists() and not args.force:
        parser.error(f"{args.out} exists; pass --force to replace it, or another --out")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = lrsearch.default_space(families=("cosine", "one_cycle", "step", "wsd"))
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    study.optimize(lambda trial: objective(trial, args.epochs, space), n_trials=args.trials)
    best = study.best_trial
    schedule = lrsearch.Schedule.from_dict(best.user_attrs["schedule"])
    schedule.save(args.out)
    print(f"{len(study.trials)} trials; best trial {best.number}: val accuracy {best.value:.4f}")
    print(f"schedule: {schedule.describe()}")
    print(f"saved {args.out}; reloads as {lrsearch.load_schedule(args.out).describe()}")


if __name__ == "__main__":
    main()
