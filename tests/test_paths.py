"""Outputs: checked before anything is written, then written completely or not at all, with the
user's umask, only over a regular file."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from lrsearch.cli import main
from lrsearch.errors import LrsearchError
from lrsearch.paths import check_file, write_outputs
from lrsearch.schedules import Constant


def text(content: str) -> object:
    return lambda path: path.write_text(content)


def test_a_set_of_outputs_is_written_with_the_users_umask(tmp_path: Path) -> None:
    previous = os.umask(0o027)
    try:
        written = write_outputs({tmp_path / "a.txt": text("a"), tmp_path / "b.txt": text("b")}, "x")
        Constant(lr=0.1).save(tmp_path / "s.json")
    finally:
        os.umask(previous)
    assert written == [tmp_path / "a.txt", tmp_path / "b.txt"]
    assert (tmp_path / "b.txt").read_text() == "b"
    for name in ("a.txt", "b.txt", "s.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640


def test_a_failing_writer_leaves_no_file_and_no_half_written_set(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("old")

    def disk_full(path: Path) -> None:
        path.write_text("partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(LrsearchError, match="No space left on device") as error:
        write_outputs({tmp_path / "a.txt": text("new"), tmp_path / "b.txt": disk_full}, "--out")
    assert "'" + str(tmp_path / "b.txt") + "'" in str(error.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
    assert (tmp_path / "a.txt").read_text() == "old"


def test_a_folder_where_a_file_goes_is_one_error_and_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "b.txt").mkdir()
    with pytest.raises(LrsearchError, match="is a folder"):
        write_outputs({tmp_path / "a.txt": text("a"), tmp_path / "b.txt": text("b")}, "--out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.txt"]


@pytest.mark.parametrize("make", [os.mkfifo, lambda path: os.symlink("/dev/null", path)])
def test_an_output_is_never_written_over_a_device_pipe_or_link(
    tmp_path: Path, make: object
) -> None:
    target = tmp_path / "out.json"
    make(target)  # type: ignore[operator]
    with pytest.raises(LrsearchError, match="not a regular file"):
        check_file(target, "--out")
    with pytest.raises(LrsearchError, match="not a regular file"):
        write_outputs({target: text("x")}, "--out")
    assert not target.is_file()


def test_best_out_dev_null_is_refused_and_the_device_stays(
    capsys: pytest.CaptureFixture[str],
) -> None:
    device = os.stat("/dev/null")
    assert main(["best", "--study-name", "s", "--out", "/dev/null"]) == 2
    assert "'/dev/null' is not a regular file" in capsys.readouterr().err
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode) and os.stat("/dev/null") == device


def test_a_file_option_ending_in_a_slash_is_refused_not_written_as_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["best", "--study-name", "s", "--out", "newdir/"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lrsearch: error: ") and "names a folder" in err
    assert list(tmp_path.iterdir()) == []
