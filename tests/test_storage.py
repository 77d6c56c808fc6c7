"""The storage: passwords kept out of messages, dead processes' trials failed and retried, and
a storage that fails mid-run (SQLite made read-only or moved away, PostgreSQL stopped).

The mid-run failures are real: a ``python -m lrsearch run`` process, and its storage broken
under it while it trains."""

from __future__ import annotations

import contextlib
import datetime
import glob
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
import real_runs
import sqlalchemy.exc
from digits_study import DIGITS_STUDY_FILE, digits_study
from optuna.storages._rdb.models import TrialHeartbeatModel

from lrsearch import storage as storage_module
from lrsearch.storage import (
    RETRY_ATTR,
    claim_once,
    database_of,
    fail_dead_trials,
    heartbeat,
    owner,
    redact,
    set_user_attrs,
    storage_error,
    storage_failure,
)
from lrsearch.study import open_study

State = optuna.trial.TrialState
# Enough trials that the run is still training when its storage breaks; small populations,
# so that the first completes soon.
STUDY = '[study]\nname = "w"\nn_trials = 30\n' + DIGITS_STUDY_FILE.replace(
    "[training]\n", "[training]\npopulation = 2\n"
)


def test_storage_passwords_never_show() -> None:
    url = "postgresql://lr:s3cret@db.example:5432/studies"
    assert redact(url) == "postgresql://lr:***@db.example:5432/studies"
    assert "s3cret" not in redact(url)


def test_a_failed_commit_is_named_by_its_cause_not_by_optunas_guess() -> None:
    cause = sqlalchemy.exc.OperationalError("UPDATE", {}, Exception("disk I/O error"))
    try:
        raise optuna.exceptions.StorageInternalError("invalid data in the commit") from cause
    except optuna.exceptions.StorageInternalError as error:
        message = str(storage_failure("postgresql://lr:s3cret@db/x", error))
    assert message.startswith("storage postgresql://lr:***@db/x failed during the run: ")
    assert "disk I/O error" in message and "invalid data" not in message
    assert "s3cret" not in message and "\n" not in message


@pytest.mark.filterwarnings("ignore:Heartbeat")  # study.ask outside optimize
def test_trials_of_dead_local_processes_are_failed_and_queued_again(tmp_path: Path) -> None:
    study = open_study(digits_study(tmp_path / "dead.db"), f"sqlite:///{tmp_path / 'dead.db'}")
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()
    orphan, alive = study.ask(), study.ask()
    for trial, pid in ((orphan, gone.pid), (alive, os.getpid())):
        trial.suggest_float("x", 0.0, 1.0)
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", pid)
    assert [t.number for t in fail_dead_trials(study)] == [orphan.number]
    states = {t.number: t for t in study.trials}
    assert states[orphan.number].state == State.FAIL
    assert states[alive.number].state == State.RUNNING
    (retry,) = study.get_trials(states=[State.WAITING])
    assert retry.user_attrs[RETRY_ATTR] == orphan.number
    assert retry.system_attrs["fixed_params"] == {"x": orphan.params["x"]}


@pytest.mark.filterwarnings("ignore:Heartbeat")  # study.ask outside optimize
def test_a_trial_that_never_got_its_pid_is_failed_and_retried_once_past_the_grace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its process died between taking it from the queue and recording its pid (a new trial
    has them from its creation): nothing else would end it."""
    monkeypatch.setattr(storage_module, "GRACE_SECONDS", 5)
    study = open_study(digits_study(tmp_path / "nopid.db"), f"sqlite:///{tmp_path / 'nopid.db'}")
    assert study.ask().user_attrs == owner()
    study.enqueue_trial({"x": 0.25})
    study.enqueue_trial({"x": 0.75})
    old, young = study.ask(), study.ask()
    for trial in (old, young):
        trial.suggest_float("x", 0.0, 1.0)
        assert "pid" not in trial.user_attrs
    started = datetime.datetime.now() - datetime.timedelta(seconds=10)
    with study._storage._backend.scoped_session() as session:  # type: ignore[attr-defined]
        session.execute(
            sqlalchemy.text("UPDATE trials SET datetime_start = :t WHERE trial_id = :id"),
            {"t": started, "id": old._trial_id},
        )
        session.commit()
    assert [t.number for t in fail_dead_trials(study)] == [old.number]
    states = {t.number: t.state for t in study.trials}
    assert (states[old.number], states[young.number]) == (State.FAIL, State.RUNNING)
    (retry,) = study.get_trials(states=[State.WAITING])
    assert retry.user_attrs[RETRY_ATTR] == old.number
    assert retry.system_attrs["fixed_params"] == {"x": 0.25}


@pytest.mark.filterwarnings("ignore:Heartbeat")  # study.ask outside optimize
def test_a_trial_whose_heartbeat_stops_is_failed_and_retried_by_the_next_trial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What catches a worker lost on another machine: Optuna's heartbeat, wired to the retry."""
    monkeypatch.setattr(storage_module, "HEARTBEAT_SECONDS", 1)
    monkeypatch.setattr(storage_module, "GRACE_SECONDS", 1)
    study = open_study(digits_study(tmp_path / "hb.db"), f"sqlite:///{tmp_path / 'hb.db'}")
    trial = study.ask()
    trial.suggest_float("x", 0.0, 1.0)
    study._storage.record_heartbeat(trial._trial_id)
    time.sleep(2.5)
    optuna.storages.fail_stale_trials(study)
    assert study.trials[trial.number].state == State.FAIL
    (retry,) = study.get_trials(states=[State.WAITING])
    assert retry.user_attrs[RETRY_ATTR] == trial.number


def start(workdir: Path, url: str, *args: str) -> subprocess.Popen[str]:
    """``run`` in the background; the test watches the study it creates."""
    (workdir / "study.toml").write_text(STUDY)
    return real_runs.start(workdir, "--study", "study.toml", "--storage", url, *args)


# Long enough that a population trains for a second or more after the test sees it start
# (with 3 epochs a population could finish while the storage was being broken, once in
# about ten runs, leaving nothing to recover).
EPOCHS = "30"


def trials(url: str) -> list[optuna.trial.FrozenTrial]:
    return real_runs.trials(url, "w")


def mid_run(run: subprocess.Popen[str], url: str) -> list[optuna.trial.FrozenTrial]:
    """The trials once some have completed and some have just started training (at most 3 of
    their epochs reported), so that the storage breaks while those still train. Some, not
    all: several workers' populations run out of step."""

    def look() -> list[optuna.trial.FrozenTrial] | None:
        seen = trials(url)
        running = [t for t in seen if t.state == State.RUNNING]
        young = any(len(t.intermediate_values) <= 3 for t in running)
        return seen if young and any(t.state == State.COMPLETE for t in seen) else None

    return real_runs.wait_for(run, look, "the run mid-way")


def break_storage_mid_run(
    workdir: Path, url: str, break_it: Callable[[], None], mend_it: Callable[[], None], *args: str
) -> str:
    """Break the storage under a running study, mend it, and check that the run said so in one
    line, kept every completed trial, and that the next run fails and retries the rest; the
    broken run's stderr."""
    run = start(workdir, url, "--epochs", EPOCHS, *args)
    try:
        before = mid_run(run, url)
        break_it()
        _, broken = real_runs.finish(run)
    finally:
        run.kill()
        mend_it()
    assert run.returncode != 0
    assert "Traceback" not in broken
    (line,) = [line for line in broken.splitlines() if line.startswith("lrsearch: error:")]
    assert line.startswith(f"lrsearch: error: storage {redact(url)} failed during the run: ")
    assert "s3cret" not in broken
    after = {t.number: t for t in trials(url)}
    for trial in before:
        if trial.state == State.COMPLETE:
            assert (after[trial.number].state, after[trial.number].value) == (
                State.COMPLETE,
                trial.value,
            )
    left = sorted(t.number for t in after.values() if t.state == State.RUNNING)
    assert left, "the storage broke between populations; nothing was left to recover"

    again = start(workdir, url, "--epochs", EPOCHS, "--n-trials", "1")
    out, err = real_runs.finish(again)
    assert again.returncode == 0, err
    for number in left:
        assert f"trial {number} had lost its process; failed it and queued it again" in out + err
    final = {t.number: t for t in trials(url)}
    assert State.RUNNING not in {t.state for t in final.values()}
    assert {final[n].state for n in left} == {State.FAIL}
    retried = [t for t in final.values() if t.user_attrs.get(RETRY_ATTR) in left]
    assert sorted(t.user_attrs[RETRY_ATTR] for t in retried) == left
    assert [t.state for t in retried].count(State.COMPLETE) == 1  # this run's one trial
    return broken


def chattr(flag: str, *paths: Path) -> None:
    subprocess.run(["chattr", flag, *map(str, paths)], check=True, capture_output=True)


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_sqlite_file_made_read_only_mid_run_is_one_line_and_the_next_run_recovers(
    tmp_path: Path, workers: str
) -> None:
    """Read-only for root too: the immutable attribute, on the file and on its folder (where
    SQLite creates its journal). With workers, each says why it stopped, in a plain line."""
    folder = tmp_path / "db"
    folder.mkdir()
    database = folder / "w.db"
    url = f"sqlite:///{database}"
    try:
        chattr("+i", folder)
        chattr("-i", folder)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("chattr +i does not work here (no chattr, or a file system without it)")
    err = break_storage_mid_run(
        tmp_path,
        url,
        lambda: chattr("+i", database, folder),
        lambda: chattr("-i", database, folder),
        "--workers",
        workers,
    )
    stopped = [line for line in err.splitlines() if re.match(r"worker \d+ stopped: ", line)]
    assert bool(stopped) == (workers == "2")  # each worker that meets the failure says so
    for line in stopped:
        assert f" stopped: storage {url} failed during the run: " in line


@pytest.mark.slow
def test_a_sqlite_folder_removed_mid_run_is_one_line_and_the_next_run_recovers(
    tmp_path: Path,
) -> None:
    """Moved away, which to the run is removed; moved back, so the test can read what it kept."""
    folder, away = tmp_path / "db", tmp_path / "away"
    folder.mkdir()
    url = f"sqlite:///{folder / 'w.db'}"

    def move_back() -> None:
        if away.exists():
            away.rename(folder)

    break_storage_mid_run(tmp_path, url, lambda: folder.rename(away), move_back)


@contextlib.contextmanager
def postgres_server() -> Iterator[tuple[str, Callable[[str], None]]]:
    """A throwaway PostgreSQL server of our own (CI's shared one must not be stopped), its URL
    and ``pg_ctl`` to stop or start it; skipped where Debian's postgresql is not installed.

    Its folder is straight under /tmp: the postgres user cannot enter pytest's."""
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not bins or shutil.which("runuser") is None:
        pytest.skip("PostgreSQL's server binaries are not installed (apt-get install postgresql)")
    pg_bin = Path(bins[-1]).parent
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="lrsearch-pg.") as folder:
        root = Path(folder)
        shutil.chown(root, "postgres")
        yield from _serve(pg_bin, root, port)


def _serve(pg_bin: Path, root: Path, port: int) -> Iterator[tuple[str, Callable[[str], None]]]:
    (root / "pw").write_text("s3cret")
    shutil.chown(root / "pw", "postgres")

    def as_postgres(*command: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *command], check=True, capture_output=True
        )

    def pg_ctl(action: str) -> None:
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
        args = ["-m", "immediate"] if action == "stop" else ["-o", options, "-l", f"{root}/log"]
        as_postgres(f"{pg_bin}/pg_ctl", "-D", f"{root}/data", "-w", *args, action)

    as_postgres(f"{pg_bin}/initdb", "-D", f"{root}/data", "-U", "lr", f"--pwfile={root}/pw")
    pg_ctl("start")
    try:
        as_postgres(f"{pg_bin}/createdb", "-h", str(root), "-p", str(port), "-U", "lr", "studies")
        yield f"postgresql+psycopg://lr:s3cret@127.0.0.1:{port}/studies", pg_ctl
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            pg_ctl("stop")


@pytest.mark.slow
def test_a_postgresql_server_stopped_mid_run_is_one_line_and_the_next_run_recovers(
    tmp_path: Path,
) -> None:
    with postgres_server() as (url, pg_ctl):
        workdir = tmp_path / "work"
        workdir.mkdir()
        break_storage_mid_run(workdir, url, lambda: pg_ctl("stop"), lambda: pg_ctl("start"))


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("postgresql+psycopg://:pw0rd@db/x", "pw0rd"),  # no user name
        ("postgresql://lr@db/x?password=pw0rd&sslmode=require", "pw0rd"),  # a query parameter
        ("postgresql://lr:p@ss@w0rd@db/x", "p@ss@w0rd"),  # an unencoded @
        ("postgresql://lr:p%40ssw0rd@db/x", "p@ssw0rd"),  # an encoded @, as the driver says it
        ("mysql+pymysql://lr:s3cret@db:3306/x", "s3cret"),
    ],
)
def test_passwords_never_show_wherever_the_url_carries_them(url: str, secret: str) -> None:
    assert secret not in redact(url) and "***" in redact(url)
    assert secret.split("@")[-1] not in redact(url)  # no tail of it either
    complaint = Exception(f'password authentication failed for "{secret}" at {url}')
    assert secret not in str(storage_error(url, complaint))


def test_a_url_without_secrets_is_shown_as_given() -> None:
    for url in ("sqlite:///.lrsearch/w.db", "postgresql://lr@db:5432/x?sslmode=require"):
        assert redact(url) == url


@pytest.mark.filterwarnings("ignore:Heartbeat")  # study.ask outside optimize
def test_a_queued_trial_is_claimed_once_and_a_finished_one_is_skipped(tmp_path: Path) -> None:
    """The claim is one conditional UPDATE: a second claimer gets False, never the trial, and
    never Optuna's UpdateFinishedTrialError for a trial another process already finished."""
    study = open_study(digits_study(tmp_path / "q.db"), f"sqlite:///{tmp_path / 'q.db'}")
    study.enqueue_trial({"x": 0.5})
    study.enqueue_trial({"x": 0.25})
    first, second = study.get_trials(states=[State.WAITING])
    storage = study._storage
    assert storage.set_trial_state_values(first._trial_id, State.RUNNING)
    assert not storage.set_trial_state_values(first._trial_id, State.RUNNING)
    study.tell(first.number, state=State.FAIL)
    assert not storage.set_trial_state_values(first._trial_id, State.RUNNING)
    assert study.ask().number == second.number  # the queue moves on to the next


def test_work_claimed_once_per_study_goes_to_the_first_claimer(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    config = digits_study(tmp_path / "c.db")
    studies = [open_study(config, url) for _ in range(3)]
    assert [claim_once(study, "lrsearch:test") for study in studies] == [True, False, False]


def test_a_claim_is_the_databases_unique_key_not_a_read_then_a_write(tmp_path: Path) -> None:
    """Two processes on PostgreSQL both read "no claim yet" and both queued the baselines: the
    second claimer here has read before the first wrote, and still loses."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    first, second = (open_study(digits_study(tmp_path / "c.db"), url) for _ in range(2))
    second._storage.get_study_system_attrs = lambda study_id: {}  # type: ignore[method-assign]
    assert claim_once(first, "lrsearch:test")
    assert not claim_once(second, "lrsearch:test")
    assert first._storage.get_study_system_attrs(first._study_id)["lrsearch:test"] == owner()


@pytest.mark.filterwarnings("ignore:Heartbeat")  # study.ask outside optimize
def test_a_population_beats_from_its_first_moment(tmp_path: Path) -> None:
    """Without heartbeats a worker lost on another machine leaves its trials RUNNING forever."""
    study = open_study(digits_study(tmp_path / "b.db"), f"sqlite:///{tmp_path / 'b.db'}")
    trials = [study.ask(), study.ask()]
    database = database_of(study)
    assert database is not None

    def beats() -> set[int]:
        session = database.scoped_session()
        rows = session.query(TrialHeartbeatModel.trial_id).all()
        session.commit()
        return {row.trial_id for row in rows}

    assert beats() == set()
    with heartbeat(study, trials):
        assert beats() == {trial._trial_id for trial in trials}


@pytest.mark.filterwarnings("ignore:Heartbeat")  # study.ask outside optimize
def test_a_trials_attributes_are_recorded_together_or_not_at_all(tmp_path: Path) -> None:
    """One transaction for a trial's forty attributes (one commit each waited for the disk):
    a value that cannot be stored leaves none of them half-written."""
    url = f"sqlite:///{tmp_path / 'a.db'}"
    study = open_study(digits_study(tmp_path / "a.db"), url)
    trial = study.ask()
    set_user_attrs(trial, {"family": "cosine", "seeds": [0, 1]})
    assert trial.user_attrs == {**owner(), "family": "cosine", "seeds": [0, 1]}
    with pytest.raises(TypeError):
        set_user_attrs(trial, {"epochs": 3, "broken": object()})
    stored = optuna.load_study(study_name=study.study_name, storage=url).trials[0]
    assert stored.user_attrs == {**owner(), "family": "cosine", "seeds": [0, 1]}
