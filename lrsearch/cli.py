"""The command line: parse, delegate to library functions, map user errors to exit code 2.

Every ``LrsearchError`` becomes one line on stderr; Ctrl-C exits 130 after
Optuna has marked the interrupted trial failed, so the next run resumes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from lrsearch.errors import LrsearchError

__all__ = ["main"]

DEFAULT_STUDY = Path("studies/fashion_mnist.toml")


class _Parser(argparse.ArgumentParser):
    """argparse, but its usage errors are one line and exit 2 like every other bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise LrsearchError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lrsearch", description="Search learning-rate schedules with Optuna.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = commands.add_parser(
        "run",
        help="run (or resume) a study: one trained model per trial",
        description="Run a study: each trial samples a schedule family and its parameters and "
        "trains the task's model with it. Options override the study file.",
    )
    run.add_argument(
        "--study",
        type=Path,
        default=DEFAULT_STUDY,
        metavar="FILE",
        help=f"study file (TOML); default {DEFAULT_STUDY}",
    )
    run.add_argument("--n-trials", type=int, help="trials to add in this run")
    run.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="stop starting trials after this long"
    )
    run.add_argument(
        "--storage",
        metavar="URL",
        help="Optuna storage URL; default sqlite:///.lrsearch/<study-name>.db",
    )
    run.add_argument("--study-name", help="study name in the storage; default from the study file")
    run.add_argument("--seed", type=int, help="sampler seed; trial k trains with seed + k")
    run.add_argument("--device", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N")
    run.add_argument("--epochs", type=int, help="epochs per trial")
    run.add_argument("--task", help="fashion-mnist, mnist, cifar10, or your own module:function")
    run.add_argument("--model", help="model name offered by the task")
    run.add_argument("--data-dir", type=Path, help="where the data set is, or is downloaded to")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.command == "run":
            return _run(args)
        raise AssertionError(f"unhandled command {args.command}")  # argparse only allows known ones
    except LrsearchError as error:
        print(f"lrsearch: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "lrsearch: interrupted; the study is saved and the next run resumes it", file=sys.stderr
        )
        return 130


def _run(args: argparse.Namespace) -> int:
    from lrsearch.config import load_study_file
    from lrsearch.study import run_study

    # A user's task module given as module:function is imported from the working directory.
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    config = load_study_file(args.study).with_overrides(
        study={
            "name": args.study_name,
            "n_trials": args.n_trials,
            "timeout": args.timeout,
            "storage": args.storage,
            "seed": args.seed,
            "device": args.device,
        },
        task={"name": args.task, "model": args.model, "data_dir": args.data_dir},
        training={"epochs": args.epochs},
    )
    report = run_study(config)
    print("\n".join(report.lines()))
    return 0
