"""The command line: parse, delegate to library functions, map user errors to exit code 2.

Every ``LrsearchError`` becomes one line on stderr; Ctrl-C exits 130 after
Optuna has marked the interrupted trial failed, so the next run resumes; SIGTERM
and SIGHUP do the same and exit 143 and 129 (128 + the signal's number).
With ``--debug`` (or ``LRSEARCH_DEBUG=1``) the line follows the traceback of
its cause, for the author of a task module that raised.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lrsearch.errors import LrsearchError

if TYPE_CHECKING:
    from lrsearch.config import StudyConfig

__all__ = ["main"]

DEFAULT_STUDY = Path("studies/fashion_mnist.toml")


class _HelpFormatter(argparse.HelpFormatter):
    """Shows each option's default, where it has one that its help does not already name."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        shown = action.default not in (None, argparse.SUPPRESS, ()) and action.default is not False
        if not shown or "default" in text:
            return action.help
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """argparse, but its usage errors are one line and exit 2 like every other bad input."""

    def __init__(
        self, *, formatter_class: type[argparse.HelpFormatter] = _HelpFormatter, **kwargs: Any
    ) -> None:
        super().__init__(formatter_class=formatter_class, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise LrsearchError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lrsearch", description="Search learning-rate schedules with Optuna.")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="on an error, print its cause's traceback too (also: LRSEARCH_DEBUG=1)",
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = commands.add_parser(
        "run",
        help="run (or resume) a study: one trained model per trial",
        description="Run a study: each trial samples a schedule family and its parameters and "
        "trains the task's model with it. Options override the study file.",
    )
    _add_study_options(run)
    run.add_argument("--n-trials", type=int, help="trials to add in this run, all workers together")
    run.add_argument("--workers", type=int, default=1, help="worker processes on this machine")
    run.add_argument(
        "--devices",
        type=lambda text: text.split(","),
        default=(),
        metavar="LIST",
        help="comma-separated devices the workers take in turn, e.g. cuda:0,cuda:1",
    )
    run.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="stop starting trials after this long"
    )
    run.add_argument(
        "--seed",
        type=int,
        help="sampler seed; a new study's trials all train with seeds seed .. seed + seeds - 1",
    )
    run.add_argument("--epochs", type=int, help="epochs per trial")
    run.add_argument(
        "--seeds", type=int, help="initialisation seeds per trial, scored by their mean (new study)"
    )
    run.add_argument(
        "--population",
        type=int,
        help="trials trained together in one pass over the data; default: measured per device",
    )
    run.add_argument(
        "--threads", type=int, help="CPU threads of each process; default: measured, see README"
    )
    run.add_argument(
        "--baselines",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="queue the reference articles' schedules as the first trials (once per study)",
    )
    run.add_argument(
        "--artifact-dir",
        type=Path,
        help="where trials' LR-curve images go; default beside the SQLite file, or .lrsearch/",
    )
    find_lr = commands.add_parser(
        "find-lr",
        help="the learning-rate range test: suggest the range of the peak LR",
        description="Train the study's model for a few hundred steps while the LR grows "
        "exponentially, and read the range of the peak LR off the smoothed loss curve "
        '(what lr = "auto" in [space] does before a study\'s first trial).',
    )
    _add_study_options(find_lr, stored=False)
    find_lr.add_argument(
        "--out", type=_file, default=Path("lr_find.png"), help="the plot (PNG); default lr_find.png"
    )
    find_lr.add_argument("--start", type=float, default=1e-7, help="first LR (default 1e-7)")
    find_lr.add_argument("--end", type=float, default=10.0, help="last LR (default 10)")
    find_lr.add_argument("--steps", type=int, default=200, help="steps at most (default 200)")
    confirm = commands.add_parser(
        "confirm",
        help="retrain the top trials and the best baseline longer, with several seeds",
        description="Retrain the top-K searched trials and the best baseline at a longer "
        "budget, each schedule replayed at the new length, and compare the rankings.",
    )
    _add_study_options(confirm)
    confirm.add_argument("--top", type=int, default=3, help="searched trials to confirm (K)")
    confirm.add_argument("--epochs", type=int, required=True, help="epochs of each confirm run")
    confirm.add_argument("--seeds", type=int, default=3, help="seeds per schedule")
    decompose = commands.add_parser(
        "decompose",
        help="split the search's gain into the peak LR's, the shape's and the schedule's",
        description="Train the reference shapes at the study's default peak and at the best "
        "trial's own, beside the best trial and a schedule-free run (same seeds, same "
        "batches), and say whether to drop the schedule, use the searched shape, change only "
        "the peak LR, or nothing.",
    )
    _add_study_options(decompose)
    decompose.add_argument(
        "--epochs", type=int, help="epochs of each run (default the study's; more: production)"
    )
    decompose.add_argument("--seeds", type=int, default=1, help="seeds per schedule")
    decompose.add_argument(
        "--around", type=int, default=0, help="peaks a factor of 2 either side of the searched"
    )
    for name, help_text, out_help, out_default in (
        (
            "export",
            "write trials and per-epoch accuracy as CSV + Parquet, and a summary",
            "folder",
            None,
        ),
        (
            "plot",
            "write PNG plots: LR curves, history, accuracy by family, importances",
            "folder",
            None,
        ),
        ("best", "write the best complete trial's schedule as JSON", "file", "best_schedule.json"),
    ):
        results = commands.add_parser(name, help=help_text, description=help_text)
        results.add_argument("--study-name", required=True, help="study name in the storage")
        results.add_argument(
            "--storage", metavar="URL", help="default sqlite:///.lrsearch/<study-name>.db"
        )
        results.add_argument(
            "--out",
            type=_file if out_help == "file" else Path,
            required=out_default is None,
            default=out_default,
            help=out_help,
        )
        if name == "best":
            results.add_argument(
                "--confirmed",
                action="store_true",
                help="the winner of lrsearch confirm (best mean at the longest length)",
            )
        if name == "plot":
            results.add_argument(
                "--top", type=int, default=5, help="LR curves of the K best trials"
            )
            results.add_argument(
                "--log-lr", action="store_true", help="draw the LR curves on a log scale"
            )
    bench = commands.add_parser(
        "bench",
        help="time lrsearch's trial loop against the classic loop",
        description="Time the reference articles' classic training loop (torchvision data set, "
        "DataLoader, epoch-stepped scheduler) and lrsearch's trial loop side by side in one "
        "process, on synthetic Fashion-MNIST-sized images, then populations of K models and "
        "Optuna's overhead per trial. The header gives the machine, the threads and the load "
        "average, and warns when other work was running: compare figures from one run only.",
    )
    # Declared here, not in lrsearch.bench, so that parsing never imports torch; the
    # destinations are bench.BenchConfig's fields, which validates the values.
    for option, default, help_text in (
        ("--epochs", 3, "epochs of each loop"),
        ("--batch-size", 128, "batch size of both loops"),
        ("--repeats", 1, "runs of each loop; the table shows the median epoch over all of them"),
        ("--images", 60_000, "training images, as in Fashion-MNIST"),
        ("--trials", 3, "trials of the study that measures Optuna's overhead"),
        ("--trial-epochs", 1, "epochs of each of those trials"),
        ("--model-steps", 20, "timed steps of each population of the char GPT and the ResNet"),
        ("--device", "auto", "auto (CUDA when present, else CPU), cpu, cuda, cuda:N"),
    ):
        bench.add_argument(option, type=type(default), default=default, help=help_text)
    return parser


def _add_study_options(parser: argparse.ArgumentParser, *, stored: bool = True) -> None:
    """The study file and what overrides it; ``stored=False`` for a command that reads no
    storage (find-lr), so that its help lists only options it uses."""
    parser.add_argument(
        "--study",
        type=Path,
        default=DEFAULT_STUDY,
        metavar="FILE",
        help=f"study file (TOML); default {DEFAULT_STUDY}",
    )
    if stored:
        parser.add_argument(
            "--storage",
            metavar="URL",
            help="Optuna storage URL; default sqlite:///.lrsearch/<study-name>.db",
        )
        parser.add_argument(
            "--study-name", help="study name in the storage; default from the study file"
        )
    parser.add_argument("--device", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N")
    parser.add_argument("--task", help="fashion-mnist, mnist, cifar10, or your own module:function")
    parser.add_argument("--model", help="model name offered by the task")
    parser.add_argument("--data-dir", type=Path, help="where the data set is, or is downloaded to")
    parser.add_argument(
        "--val-size",
        type=_val_size,
        metavar="N|FRACTION",
        help="validation images carved from the training set: a count (5000) or a fraction (0.1)",
    )


def _file(text: str) -> Path:
    """A file to write; ``newdir/`` names a folder (``Path`` would drop the slash)."""
    if text.endswith(("/", os.sep)):
        raise argparse.ArgumentTypeError(
            f"{text!r} names a folder; give a file name, e.g. {text}best_schedule.json"
        )
    return Path(text)


def _val_size(text: str) -> int | float:
    """A count stays an int and a fraction a float, as in the study file: 1 and 1.0 differ."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    raise argparse.ArgumentTypeError(
        f"{text!r} is not allowed; give a count of images (5000) or a fraction in (0, 1) (0.1)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    debug = os.environ.get("LRSEARCH_DEBUG") == "1"
    try:
        args = build_parser().parse_args(argv)
        debug = debug or args.debug
        if args.command == "run":
            return _run(args)
        if args.command == "confirm":
            return _confirm(args)
        if args.command == "decompose":
            return _decompose(args)
        if args.command == "find-lr":
            return _find_lr(args)
        if args.command in ("export", "plot", "best"):
            return _results(args)
        if args.command == "bench":
            from lrsearch import bench

            return bench.main(args, " ".join(["python -m lrsearch", *(argv or sys.argv[1:])]))
        raise AssertionError(f"unhandled command {args.command}")  # argparse only allows known ones
    except LrsearchError as error:
        if debug and error.__cause__ is not None:
            traceback.print_exception(error.__cause__, file=sys.stderr)
        print(f"lrsearch: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as error:  # Ctrl-C, or a stop signal (runner.STOP_SIGNALS)
        for ignored in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # on the way out
            signal.signal(ignored, signal.SIG_IGN)
        number = getattr(error, "signum", signal.SIGINT)
        how = "interrupted" if number == signal.SIGINT else f"stopped by {error}"
        print(f"lrsearch: {how}; the study is saved and the next run resumes it", file=sys.stderr)
        return 128 + number


def _study_config(args: argparse.Namespace, **study: object) -> StudyConfig:
    """The study file with the shared options on top (``None``: not given)."""
    from lrsearch.config import load_study_file

    # A user's task module given as module:function is imported from the working directory.
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    return load_study_file(args.study).with_overrides(
        study={
            "name": getattr(args, "study_name", None),  # None: find-lr has no storage options
            "storage": getattr(args, "storage", None),
            "device": args.device,
            **study,
        },
        task={
            "name": args.task,
            "model": args.model,
            "data_dir": args.data_dir,
            "val_size": args.val_size,
        },
    )


def _run(args: argparse.Namespace) -> int:
    from lrsearch.config import default_storage
    from lrsearch.paths import check_file, check_folder, sqlite_file

    # The study file and the options are checked before torch is imported (seconds on a
    # loaded machine), so a typo is reported at once.
    config = _study_config(
        args,
        n_trials=args.n_trials,
        timeout=args.timeout,
        seed=args.seed,
        seeds=args.seeds,
        baselines=args.baselines,
    ).with_overrides(
        training={"epochs": args.epochs, "population": args.population, "threads": args.threads}
    )
    storage = config.storage or default_storage(config.name)
    database = sqlite_file(storage)
    if database is not None:
        check_file(database, "the SQLite storage")
    from lrsearch.study import default_artifact_dir

    check_folder(args.artifact_dir or default_artifact_dir(storage, config.name), "--artifact-dir")
    from lrsearch import workers

    report = workers.run(
        config, workers=args.workers, devices=args.devices, artifact_dir=args.artifact_dir
    )
    print("\n".join(report.lines(confirm=_confirm_command(args))))
    return 0


def _confirm_command(args: argparse.Namespace) -> str:
    """``lrsearch confirm`` with the study options this run was given, so that the command
    the summary prints reaches the same study when pasted in the same directory."""
    from lrsearch.storage import redact

    words = ["lrsearch", "confirm"]
    for option, value in (
        ("--study", None if args.study == DEFAULT_STUDY else args.study),
        ("--storage", None if args.storage is None else redact(args.storage)),
        ("--study-name", args.study_name),
        ("--task", args.task),
        ("--model", args.model),
        ("--data-dir", args.data_dir),
        ("--val-size", args.val_size),
        ("--device", args.device),
    ):
        if value is not None:
            words += [option, str(value)]
    return shlex.join(words)


def _find_lr(args: argparse.Namespace) -> int:
    from lrsearch.paths import check_file

    config = _study_config(args)
    check_file(args.out, "--out")
    if args.out.suffix.lower() != ".png":
        raise LrsearchError(f"--out {str(args.out)!r} is not allowed; the plot is a .png file")
    from lrsearch.lr_find import check_span, find_lr, save_plot
    from lrsearch.runner import load_study_task

    check_span(args.start, args.end, args.steps)
    task = load_study_task(config)
    found = find_lr(
        task, config.training, seed=config.seed, start=args.start, end=args.end, steps=args.steps
    )
    save_plot(found, args.out)
    print(found.describe())
    print(f"suggested lr {found.suggested:.3g}")
    print(f'in the study file: lr = [{found.low:.3g}, {found.high:.3g}], or lr = "auto"')
    print(args.out)
    return 0


def _decompose(args: argparse.Namespace) -> int:
    from lrsearch.config import check_seeds
    from lrsearch.decompose import decompose

    config = _study_config(args)
    check_seeds("--seeds", args.seeds, config.seed)  # decompose trains seed .. seed + seeds - 1
    result = decompose(
        config, epochs=args.epochs, seeds=args.seeds, around=args.around, out=sys.stderr
    )
    print("\n".join(result.lines()))
    return 0


def _confirm(args: argparse.Namespace) -> int:
    from lrsearch.config import check_seeds

    config = _study_config(args)
    check_seeds("--seeds", args.seeds, config.seed)  # confirm trains seed .. seed + seeds - 1
    from lrsearch.confirm import confirm

    report = confirm(config, top=args.top, epochs=args.epochs, seeds=args.seeds, out=sys.stderr)
    print("\n".join(report.lines()))
    return 0


def _results(args: argparse.Namespace) -> int:
    from lrsearch.paths import check_file, check_folder

    if args.command == "best":
        check_file(args.out, "--out")
    else:
        check_folder(args.out, "--out")
    # Each command imports only its own module, so none pays for another's imports.
    if args.command == "export":
        from lrsearch.export import export_study

        written = export_study(args.storage, args.study_name, args.out)
    elif args.command == "plot":
        if args.top < 1:
            raise LrsearchError(f"--top {args.top} is not allowed; it must be >= 1")
        from lrsearch.plots import plot_study

        written = plot_study(
            args.storage, args.study_name, args.out, top=args.top, log_lr=args.log_lr
        )
    elif args.confirmed:
        from lrsearch.confirm import save_best_confirmed

        winner, epochs = save_best_confirmed(args.storage, args.study_name, args.out)
        print(f"confirmed winner: {winner.label} at {epochs} epochs")
        written = [args.out]
    else:
        from lrsearch.export import save_best

        trial = save_best(args.storage, args.study_name, args.out)
        print(
            f"best trial {trial.number} ({trial.user_attrs.get('objective', 'val_accuracy')} "
            f"{trial.value:.4f})"
        )
        written = [args.out]
    print("\n".join(map(str, written)))
    return 0
