"""The real optuna-dashboard serves what ``lrsearch run`` stored: study, trials, artifacts."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import real_runs

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = shutil.which("optuna-dashboard")

pytestmark = pytest.mark.skipif(DASHBOARD is None, reason="optuna-dashboard is not installed")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
        return body


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("dashboard")
    url = f"sqlite:///{folder / 'quick.db'}"
    run = ["run", "--study", "studies/quick.toml", "--n-trials", "2", "--no-baselines"]
    run += ["--storage", url]
    subprocess.run([sys.executable, "-m", "lrsearch", *run], cwd=REPO, check=True)
    port = _free_port()
    assert DASHBOARD is not None
    command = [DASHBOARD, url, "--artifact-dir", str(folder / "quick-artifacts")]
    server = subprocess.Popen(
        [*command, "--port", str(port), "--host", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + real_runs.SAFETY  # a hang; a busy machine is slow
        while True:
            try:
                _get(f"{base}/api/meta")
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.3)
        yield base
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()


def _study(base: str) -> dict[str, Any]:
    studies = json.loads(_get(f"{base}/api/studies"))["study_summaries"]
    (summary,) = [s for s in studies if s["study_name"] == "quick"]
    detail: dict[str, Any] = json.loads(_get(f"{base}/api/studies/{summary['study_id']}"))
    detail["study_id"] = summary["study_id"]
    return detail


def test_trials_user_attrs_and_intermediate_values_are_served(dashboard: str) -> None:
    study = _study(dashboard)
    trials = study["trials"]
    assert [t["state"] for t in trials] == ["Complete", "Complete"]
    for trial in trials:
        attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
        assert {"schedule", "family", "val_accuracy", "test_accuracy", "steps"} <= set(attrs)
        assert (
            json.loads(attrs["schedule"].replace("'", '"').replace("None", "null"))["family"]
            == attrs["family"]
        )
        assert [v["step"] for v in trial["intermediate_values"]] == list(range(1, 9))
        assert trial["values"][0] == pytest.approx(float(attrs["val_accuracy"]))


def test_each_trial_serves_its_lr_curve_png(dashboard: str) -> None:
    study = _study(dashboard)
    for trial in study["trials"]:
        (artifact,) = trial["artifacts"]
        assert artifact["mimetype"] == "image/png"
        body = _get(
            f"{dashboard}/artifacts/{study['study_id']}/{trial['trial_id']}/{artifact['artifact_id']}"
        )
        assert body[:8] == b"\x89PNG\r\n\x1a\n" and len(body) > 2_000
