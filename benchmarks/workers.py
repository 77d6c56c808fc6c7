"""Trials per minute of the quick study with 1, 2 and 4 local workers, on each storage.

Each cell is one fresh ``python -m lrsearch run --workers N`` (process start, task load and
storage set-up included, as a user pays them) on a new study; ``--postgres URL`` adds a row
for a PostgreSQL server. Usage:

    python benchmarks/workers.py --n-trials 24 [--postgres postgresql+psycopg://...]
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def trials_per_minute(storage: str, workers: int, n_trials: int) -> float:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    command = [sys.executable, "-m", "lrsearch", "run", "--study", "studies/quick.toml"]
    options = ["--no-baselines", "--device", "cpu", "--study-name", name, "--storage", storage]
    start = time.perf_counter()
    subprocess.run(
        [*command, *options, "--n-trials", str(n_trials), "--workers", str(workers)],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    return 60 * n_trials / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-trials", type=int, default=24)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--postgres", metavar="URL", help="also time this PostgreSQL storage")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        storages = {"SQLite (default)": f"sqlite:///{Path(folder) / 'bench.db'}"}
        if args.postgres:
            storages["PostgreSQL"] = args.postgres
        print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}")
        print(f"quick study, {args.n_trials} trials per cell, trials per minute (higher is better)")
        print("| storage | " + " | ".join(f"{n} worker(s)" for n in args.workers) + " |")
        print("|---|" + "---:|" * len(args.workers))
        for label, storage in storages.items():
            cells = [trials_per_minute(storage, n, args.n_trials) for n in args.workers]
            print(f"| {label} | " + " | ".join(f"{c:.0f}" for c in cells) + " |", flush=True)


if __name__ == "__main__":
    main()
