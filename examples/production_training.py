"""Production training with a searched schedule: load it, train, checkpoint, resume.

    python examples/production_training.py [best_schedule.json] [--steps 300]

Without a file a demo schedule is written first. The run is interrupted at
half-way, resumed from the checkpoint (model, optimizer and scheduler
state_dicts, loaded with ``weights_only=True``), and the LRs of the resumed
run are checked against an uninterrupted one, step for step.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from sklearn.datasets import load_digits

import lrsearch
from lrsearch import schedules


def train(
    schedule: lrsearch.Schedule, steps: int, *, stop_at: int | None, checkpoint: Path, run: str
) -> list[float]:
    """Train ``steps`` steps (resuming from ``checkpoint`` when it exists); return the LRs used."""
    digits = load_digits()
    inputs = torch.tensor(digits.data, dtype=torch.float32) / 16
    labels = torch.tensor(digits.target)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=schedule.lr, momentum=0.9)
    scheduler = schedule.torch_scheduler(optimizer, total_steps=steps)
    start = 0
    if checkpoint.exists():
        state = torch.load(checkpoint, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start = state["step"]
    lrs = []
    batches = torch.Generator().manual_seed(1)
    for step in range(steps):
        batch = torch.randint(len(labels), (64,), generator=batches)  # same batches either way
        if step < start:
            continue
        if step == stop_at:
            torch.save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "step": step,
                },
                checkpoint,
            )
            print(f"{run}: stopped at step {step}, checkpoint saved")
            return lrs
        lrs.append(optimizer.param_groups[0]["lr"])
        loss = torch.nn.functional.cross_entropy(model(inputs[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    accuracy = (model(inputs).argmax(1) == labels).float().mean().item()
    print(
        f"{run}: trained {steps} steps, final loss {loss.item():.4f}, train accuracy {accuracy:.4f}"
    )
    return lrs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("schedule", nargs="?", type=Path, help="a file from `lrsearch best`")
    parser.add_argument("--steps", type=int, default=300, help="length of this run, any length")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = args.schedule
        if path is None:
            path = Path(folder) / "best_schedule.json"
            schedules.Cosine(lr=0.2, warmup=0.1, min_lr=1e-3).save(path)
            print(f"no schedule given; using a demo one: {path}")
        schedule = lrsearch.load_schedule(path)
        print(f"schedule: {schedule.describe()}")
        straight = train(
            schedule,
            args.steps,
            stop_at=None,
            checkpoint=Path(folder) / "none.pt",
            run="uninterrupted run",
        )
        checkpoint = Path(folder) / "checkpoint.pt"
        first = train(
            schedule,
            args.steps,
            stop_at=args.steps // 2,
            checkpoint=checkpoint,
            run="interrupted run",
        )
        resumed = first + train(
            schedule, args.steps, stop_at=None, checkpoint=checkpoint, run="resumed run"
        )
    assert resumed == straight, "the resumed run's LRs differ from the uninterrupted run's"
    print(f"resumed at step {args.steps // 2}: all {len(straight)} LRs equal the uninterrupted run")


if __name__ == "__main__":
    main()
