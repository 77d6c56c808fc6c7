"""Every ``python -m lrsearch`` command in the README's code blocks that runs offline is run
here, in README order, in a scratch directory that has the repository's studies/ and
examples/: a command whose options or outputs drift from the code fails this test."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

# What the README says this test adds to keep it short (argparse keeps the last occurrence).
SHORTER = {
    "run": ["--n-trials", "3", "--epochs", "2", "--no-baselines"],
    "confirm": ["--epochs", "2"],
}

# The commands that cannot run here, and why. Each must still be in the README.
NOT_RUN = {
    "pip install -e .": "installs",
    'pip install -e ".[dev,examples]"': "installs",
    "python -m pytest -q": "the test suite itself",
    "python -m lrsearch run": "downloads Fashion-MNIST",
    "python -m lrsearch run --data-dir /datasets": "needs a copy of Fashion-MNIST",
    "python -m lrsearch run --task mnist --epochs 5 --device cuda:1": "MNIST and two GPUs",
    "python -m lrsearch run --workers 4 --devices cuda:0,cuda:1": "needs two GPUs",
    "python -m lrsearch bench": "minutes; tests/test_bench.py runs it small",
    "python -m lrsearch bench --device cuda --repeats 3 --trial-epochs 15": "needs a GPU",
    "apt-get install postgresql": "a database server",
    "sudo -u postgres createuser --pwprompt lrsearch": "a database server",
    "sudo -u postgres createdb --owner lrsearch lrsearch": "a database server",
    'pip install "psycopg[binary]"': "installs",
    "python -m lrsearch run --study studies/quick.toml --workers 4 --storage "
    "postgresql+psycopg://lrsearch:PASSWORD@db-host:5432/lrsearch": "a database server",
}


def readme_commands() -> list[str]:
    """Each command of the README's bash blocks: continuations joined, comments dropped,
    ``a && b`` split."""
    text = README.read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line).strip()
            commands += [" ".join(part.split()) for part in line.split("&&") if part.strip()]
    return commands


def test_every_command_left_out_is_still_in_the_readme() -> None:
    assert set(NOT_RUN) <= set(readme_commands())


@pytest.mark.slow
def test_every_readme_command_that_runs_offline_runs(tmp_path: Path) -> None:
    for folder in ("studies", "examples"):
        (tmp_path / folder).symlink_to(REPO / folder)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    ran = []
    for command in readme_commands():
        if command in NOT_RUN:
            continue
        argv = shlex.split(command)
        assert argv[:3] == ["python", "-m", "lrsearch"], f"not a command this test knows: {command}"
        argv += SHORTER.get(argv[3], [])
        result = subprocess.run(
            [sys.executable, *argv[1:]],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert result.returncode == 0, f"{command}\n{result.stderr[-3000:]}"
        ran.append(argv[3])
    assert {"run", "find-lr", "confirm", "export", "plot", "best"} <= set(ran)
