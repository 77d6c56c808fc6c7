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
import json
import os
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import optuna
import sqlalchemy
import sqlalchemy.exc
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session

from lrsearch.errors import LrsearchError
from lrsearch.paths import sqlite_file

__all__ = [
    "FAILING_STORAGE",
    "GRACE_SECONDS",
    "HEARTBEAT_SECONDS",
    "RETRY_ATTR",
    "STAMP_ATTR",
    "STORAGE_ERRORS",
    "check_run_storage",
    "claim_once",
    "claimer_alive",
    "create_stamped_study",
    "database_of",
    "fail_dead_trials",
    "first_line",
    "heartbeat",
    "owner",
    "rdb_storage",
    "redact",
    "retry_trial",
    "set_user_attrs",
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
# What a storage that worked raises when it fails mid-run; a ValueError then is someone's bug
# or a model's complaint, not the storage's.
FAILING_STORAGE = (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError)


# Query parameters of a storage URL that carry a secret (libpq, MySQL drivers).
SECRET_PARAMETERS = {"password", "passwd", "pwd", "sslpassword", "secret", "token"}
# A system attribute written in the transaction that creates a study with ``lrsearch run``.
STAMP_ATTR = "lrsearch:stamp"


def redact(url: str) -> str:
    """The storage URL with any password replaced, for logs and messages."""
    return hide_secrets(url, url)


def hide_secrets(text: str, url: str) -> str:
    """``text`` (the URL itself, or a driver's complaint about it) with every secret of ``url``
    replaced by ``***``: the password, whether or not a user name comes before it and whatever
    characters it holds, and query parameters such as ``?password=``."""
    for secret in sorted(_secrets(url), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def _secrets(url: str) -> set[str]:
    """The URL's secrets as written and as decoded. SQLAlchemy's parser reads the password
    up to the first ``@``; a password holding an unencoded ``@`` runs up to the last one."""
    found: set[str] = set()
    authority = url.partition("://")[2].split("/", 1)[0]
    if "@" in authority:
        userinfo = authority.rpartition("@")[0]
        if ":" in userinfo:
            found.add(userinfo.split(":", 1)[1])
    with contextlib.suppress(sqlalchemy.exc.ArgumentError, ValueError):
        parsed = sqlalchemy.engine.make_url(url)
        if parsed.password:
            found.add(str(parsed.password))
        for key, value in parsed.query.items():
            if key.lower() in SECRET_PARAMETERS:
                found.update([value] if isinstance(value, str) else value)
    found |= {urllib.parse.unquote(secret) for secret in found}
    return {secret for secret in found if secret}


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def storage_error(storage: str, error: Exception) -> LrsearchError:
    """One line: the storage (password hidden) and the first line of the driver's complaint."""
    return LrsearchError(
        f"cannot open storage {redact(storage)}: {hide_secrets(first_line(error), storage)}"
    )


def storage_failure(storage: str, error: Exception) -> LrsearchError:
    """One line for a storage that worked when the run started and fails now.

    Optuna's own message for a failed commit blames invalid data; its cause says what broke."""
    internal = isinstance(error, optuna.exceptions.StorageInternalError)
    cause = error.__cause__ if internal and error.__cause__ is not None else error
    return LrsearchError(
        f"storage {redact(storage)} failed during the run: "
        f"{hide_secrets(first_line(cause), storage)}; "
        "completed trials are kept, and the next run fails and re-queues the unfinished ones"
    )


def check_run_storage(url: str) -> None:
    """Refuse, before anything is written, a storage ``run`` cannot keep a study in: SQLite in
    memory (every trial is lost when the process ends, and workers each get their own), a
    read-only one, or another program's SQLite file (Optuna would add its tables to it)."""
    if url.split("?", 1)[0] in ("sqlite://", "sqlite:///:memory:", "sqlite:///"):
        raise LrsearchError(
            f"storage {redact(url)} is in memory: the study would be lost when the run ends; "
            "give a file, sqlite:///path/to/study.db, or a server URL"
        )
    with contextlib.suppress(sqlalchemy.exc.ArgumentError, ValueError):
        query = sqlalchemy.engine.make_url(url).query
        if "mode" in query and url.startswith("sqlite"):
            raise LrsearchError(
                f"storage {redact(url)} is opened with mode={query['mode']}; a run writes its "
                "trials there, so give the URL without a mode (export, plot and best only read)"
            )
    database = sqlite_file(url)
    if database is None or not database.is_file() or database.stat().st_size == 0:
        return
    try:
        engine = sqlalchemy.create_engine(url)
        try:
            tables = set(sqlalchemy.inspect(engine).get_table_names())
        finally:
            engine.dispose()
    except STORAGE_ERRORS as error:
        raise storage_error(url, error) from None
    if tables and "studies" not in tables:
        raise LrsearchError(
            f"storage {redact(url)} is another program's SQLite database (tables "
            f"{', '.join(sorted(tables)[:3])}, none of Optuna's); give a new file for the study"
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
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError) as error:
            # Processes started together on a new database race to create its tables: the
            # loser sees a duplicate row, or (SQLite) "table ... already exists".
            racing = isinstance(error, sqlalchemy.exc.IntegrityError) or (
                "already exists" in str(error)
            )
            attempts -= 1
            if not racing or not attempts:
                raise
            time.sleep(1)


def owner() -> dict[str, object]:
    """The user attributes that tie a trial to the process running it."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


class _OwnedTrialStorage(optuna.storages.RDBStorage):
    """New trials carry their process's host and pid from their first commit: a process killed
    between creating a trial and recording them left it RUNNING with no pid, and the next run
    (within GRACE_SECONDS) could not tell whether it was still running.

    Claiming a queued trial is one conditional UPDATE: Optuna reads the state, then writes it,
    and on SQLite (whose reads take no lock) two processes both read WAITING and both ran the
    trial, the second one's ``tell`` failing with UpdateFinishedTrialError."""

    def set_trial_state_values(
        self,
        trial_id: int,
        state: optuna.trial.TrialState,
        values: Sequence[float] | None = None,
    ) -> bool:
        if state != optuna.trial.TrialState.RUNNING or values is not None:
            return super().set_trial_state_values(trial_id, state, values)
        session = self.scoped_session()
        try:
            claimed = (
                session.query(models.TrialModel)
                .filter(
                    models.TrialModel.trial_id == trial_id,
                    models.TrialModel.state == optuna.trial.TrialState.WAITING,
                )
                .update(
                    {"state": state, "datetime_start": datetime.datetime.now()},
                    synchronize_session=False,
                )
            )
            session.commit()
        except sqlalchemy.exc.SQLAlchemyError as error:
            session.rollback()
            raise optuna.exceptions.StorageInternalError(
                "claiming a queued trial failed"
            ) from error
        return bool(claimed)

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


def create_stamped_study(
    storage: optuna.storages.RDBStorage,
    name: str,
    direction: optuna.study.StudyDirection,
    user_attrs: dict[str, Any],
) -> bool:
    """Create the study with its definition in one transaction; False if it exists already.

    Processes started together on one new study race to create it: the loser must find it
    whole (its definition and seeds set), or it would write its own, and the stamp tells a
    study made by ``lrsearch run`` from one made by plain Optuna or ``lrsearch confirm``."""
    stamp = {**owner(), "version": 1}
    study = models.StudyModel(
        study_name=name,
        directions=[models.StudyDirectionModel(objective=0, direction=direction)],
        user_attributes=[
            models.StudyUserAttributeModel(key=key, value_json=json.dumps(value))
            for key, value in user_attrs.items()
        ],
        system_attributes=[
            models.StudySystemAttributeModel(key=STAMP_ATTR, value_json=json.dumps(stamp))
        ],
    )
    return _insert_once(storage, study, "creating the study")


def _insert_once(storage: optuna.storages.RDBStorage, row: Any, doing: str) -> bool:
    """Commit ``row`` in one transaction; False if a unique key says another process did."""
    session = storage.scoped_session()
    try:
        session.add(row)
        session.commit()
    except sqlalchemy.exc.IntegrityError:
        session.rollback()
        return False
    except sqlalchemy.exc.SQLAlchemyError as error:
        session.rollback()
        raise optuna.exceptions.StorageInternalError(f"{doing} failed") from error
    return True


def database_of(study: optuna.Study) -> optuna.storages.RDBStorage | None:
    """The database under ``study``, or None in memory.

    Optuna wraps every RDBStorage it is given in a private cache (``_CachedStorage``), so
    ``isinstance(study._storage, RDBStorage)`` is always false: claims then fell back to a
    read-then-write that two processes on PostgreSQL both won, and no heartbeat was kept."""
    storage = study._storage
    storage = getattr(storage, "_backend", storage)
    return storage if isinstance(storage, optuna.storages.RDBStorage) else None


def set_user_attrs(trial: optuna.Trial, attrs: Mapping[str, Any]) -> None:
    """Record ``attrs`` on ``trial`` in one transaction.

    A trial records about forty attributes; Optuna commits each one on its own, and on SQLite
    every commit waits for the disk (about 10 ms here: 16 of the quick study's 40 s)."""
    database = database_of(trial.study)
    if database is None:
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        return
    with _create_scoped_session(database.scoped_session, True) as session:
        for key, value in attrs.items():
            database._set_trial_attr_without_commit(
                session, models.TrialUserAttributeModel, trial._trial_id, key, value
            )
    trial._cached_frozen_trial.user_attrs.update(attrs)


def claim_once(study: optuna.Study, key: str) -> bool:
    """True for the one process, of all that ever ask, that first claims ``key`` on the study
    (a system attribute whose unique key the database enforces): for work that must happen
    once per study however many processes start it together, such as queueing baselines."""
    storage = database_of(study)
    if storage is None:  # in memory: one process
        if key in study._storage.get_study_system_attrs(study._study_id):
            return False
        study._storage.set_study_system_attr(study._study_id, key, {"pid": os.getpid()})
        return True
    claim = models.StudySystemAttributeModel(
        study_id=study._study_id, key=key, value_json=json.dumps(owner())
    )
    return _insert_once(storage, claim, "claiming the study")


def claimer_alive(study: optuna.Study, key: str) -> bool:
    """Whether the process that claimed ``key`` may still be at work: alive on this host, or
    on another host (which this one cannot see)."""
    claim = study._storage.get_study_system_attrs(study._study_id).get(key)
    if not isinstance(claim, dict) or claim.get("host") != socket.gethostname():
        return True
    return _alive(claim.get("pid"))


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
    storage = database_of(study)  # the database that records heartbeats
    if storage is None:
        yield
        return
    ids = [trial._trial_id for trial in trials]
    stop = threading.Event()

    def beat() -> None:
        for trial_id in ids:
            with contextlib.suppress(*STORAGE_ERRORS):  # the run reports a dead storage
                storage.record_heartbeat(trial_id)

    def keep_beating() -> None:
        while not stop.wait(HEARTBEAT_SECONDS):
            beat()

    beat()  # alive from the first moment, not from the thread's first turn

    thread = threading.Thread(target=keep_beating, name="lrsearch-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
