"""The Optuna storage: opening it safely for many processes, and what its failures mean.

A study's trials outlive the processes that run them. A process that dies leaves its trials
RUNNING; left so, the study never counts them and constant-liar TPE keeps avoiding their
parameters (Optuna issue #2742). So every trial records its host and pid, a heartbeat
thread marks it alive, and each run first fails and re-queues the trials whose process is
gone, or whose heartbeat went silent.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import socket
import threading
import time
from collections.abc import Iterator, Sequence

import optuna
import sqlalchemy.exc

from lrsearch.errors import LrsearchError

__all__ = [
    "GRACE_SECONDS",
    "HEARTBEAT_SECONDS",
    "RETRY_ATTR",
    "STORAGE_ERRORS",
    "fail_dead_trials",
    "first_line",
    "heartbeat",
    "owner",
    "rdb_storage",
    "redact",
    "retry_trial",
    "storage_error",
    "storage_failure",
]

RETRY_ATTR = "retry_of"  # on a trial that re-runs the parameters of one whose process died
# A live trial's process writes a heartbeat this often; one silent for GRACE_SECONDS is failed
# and retried by the next population to start anywhere. Local deaths are caught at once by PID.
HEARTBEAT_SECONDS = 10
GRACE_SECONDS = 60
# SQLite lets one writer in at a time; the others wait this long instead of failing at once.
SQLITE_BUSY_SECONDS = 60

# What a bad URL, an unreachable server or a file that is no database raises, whatever the driver;
# Optuna wraps a failed commit (a server gone, a read-only file) in StorageInternalError.
STORAGE_ERRORS = (
    sqlalchemy.exc.SQLAlchemyError,
    optuna.exceptions.StorageInternalError,
    ValueError,
    ImportError,
)


def redact(url: str) -> str:
    """The storage URL with any password replaced, for logs and messages."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def storage_error(storage: str, error: Exception) -> LrsearchError:
    """One line: the storage (password hidden) and the first line of the driver's complaint."""
    return LrsearchError(f"cannot open storage {redact(storage)}: {redact(first_line(error))}")


def storage_failure(storage: str, error: Exception) -> LrsearchError:
    """One line for a storage that worked when the run started and fails now.

    Optuna's own message for a failed commit blames invalid data; its cause says what broke."""
    internal = isinstance(error, optuna.exceptions.StorageInternalError)
    cause = error.__cause__ if internal and error.__cause__ is not None else error
    return LrsearchError(
        f"storage {redact(storage)} failed during the run: {redact(first_line(cause))}; "
        "completed trials are kept, and the next run fails and re-queues the unfinished ones"
    )


def rdb_storage(url: str) -> optuna.storages.RDBStorage:
    """The URL's database, safe for several writing processes and for processes that die."""
    connect_args = {"timeout": SQLITE_BUSY_SECONDS} if url.startswith("sqlite") else {}
    attempts = 3
    while True:
        try:
            return _OwnedTrialStorage(
                url,
                engine_kwargs={"connect_args": connect_args},
                heartbeat_interval=HEARTBEAT_SECONDS,
                grace_period=GRACE_SECONDS,
                heartbeat_stale_trial_callback=retry_trial,
            )
        except sqlalchemy.exc.IntegrityError:
            attempts -= 1
            if not attempts:
                raise
            time.sleep(1)  # processes started together on a new database race to create tables


def owner() -> dict[str, object]:
    """The user attributes that tie a trial to the process running it."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


class _OwnedTrialStorage(optuna.storages.RDBStorage):
    """New trials carry their process's host and pid from their first commit: a process killed
    between creating a trial and recording them left it RUNNING with no pid, and the next run
    (within GRACE_SECONDS) could not tell whether it was still running."""

    def _create_new_trial(
        self, study_id: int, template_trial: optuna.trial.FrozenTrial | None = None
    ) -> optuna.trial.FrozenTrial:
        if template_trial is None:  # a trial to run now; queued ones have a template
            template_trial = optuna.trial.FrozenTrial(
                number=0,
                state=optuna.trial.TrialState.RUNNING,
                value=None,
                datetime_start=datetime.datetime.now(),
                datetime_complete=None,
                params={},
                distributions={},
                user_attrs=owner(),
                system_attrs={},
                intermediate_values={},
                trial_id=0,
            )
        return super()._create_new_trial(study_id, template_trial)


def retry_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Queue a dead process's trial again with its parameters, so no sampled point is lost."""
    study.enqueue_trial(trial.params, user_attrs={RETRY_ATTR: trial.number})


def fail_dead_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Fail and retry the RUNNING trials whose process is gone; the stale ones, by heartbeat.

    A trial of this host whose pid no longer exists is failed at once. A trial that never got
    its pid (its process died between asking for it and recording it) has no heartbeat either,
    so it is failed once it is older than GRACE_SECONDS."""
    optuna.storages.fail_stale_trials(study)
    host = socket.gethostname()
    now = datetime.datetime.now()
    dead = []
    for trial in study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.RUNNING]):
        pid = trial.user_attrs.get("pid")
        if pid is None:
            started = trial.datetime_start or now
            if (now - started).total_seconds() > GRACE_SECONDS:
                dead.append(trial)
        elif trial.user_attrs.get("host") == host and not _alive(pid):
            dead.append(trial)
    for trial in dead:
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        retry_trial(study, trial)
    return dead


def _alive(pid: object) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


@contextlib.contextmanager
def heartbeat(study: optuna.Study, trials: Sequence[optuna.Trial]) -> Iterator[None]:
    """Mark ``trials`` alive every HEARTBEAT_SECONDS while the block runs, as
    ``study.optimize`` does for its one trial; a population has several."""
    storage = study._storage  # the RDBStorage that records heartbeats
    if not isinstance(storage, optuna.storages.RDBStorage):
        yield
        return
    ids = [trial._trial_id for trial in trials]
    stop = threading.Event()

    def beat() -> None:
        while True:
            for trial_id in ids:
                with contextlib.suppress(*STORAGE_ERRORS):  # the run reports a dead storage
                    storage.record_heartbeat(trial_id)
            if stop.wait(HEARTBEAT_SECONDS):
                return

    thread = threading.Thread(target=beat, name="lrsearch-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
