"""Can an output go where the user pointed it? Asked before anything is written.

A command that finds out only at its end that its folder is a file, or read-only, has
already created a database or half its results; checking first keeps bad input to one
line with nothing changed. The checks only look (``stat`` and ``access``), never write.
Then every output is written by ``write_outputs``: completely or not at all.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from lrsearch.errors import LrsearchError

__all__ = ["check_file", "check_folder", "sqlite_file", "write_outputs"]


def sqlite_file(storage: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL; None for any other storage."""
    if not storage.startswith("sqlite:///"):
        return None
    return Path(storage.removeprefix("sqlite:///").split("?", 1)[0])


def check_folder(path: Path, what: str) -> None:
    """``path`` is a writable folder, or one that can be created."""
    existing = _nearest_existing(path, what)
    if not existing.is_dir():
        problem = (
            "is a file" if existing == path else f"cannot be created: {str(existing)!r} is a file"
        )
        raise LrsearchError(f"{what} {str(path)!r} {problem}; it must be a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        problem = "" if existing == path else f" cannot be created: {str(existing)!r}"
        raise LrsearchError(
            f"{what} {str(path)!r}{problem} is not writable; pick a folder you can write to"
        )


def check_file(path: Path, what: str) -> None:
    """``path`` can be written as a file: not a folder, not read-only, in a possible folder."""
    if path.is_dir():
        raise LrsearchError(f"{what} {str(path)!r} is a folder; it must be a file name")
    _check_regular(path, what)
    if path.exists() and not os.access(path, os.W_OK):
        raise LrsearchError(f"{what} {str(path)!r} is read-only; pick a file you can write")
    check_folder(path.parent, f"{what} {str(path)!r}: its folder")


def _nearest_existing(path: Path, what: str) -> Path:
    """``path`` itself or the closest of its parents that exists (``.`` ends a relative one)."""
    try:
        return next(candidate for candidate in (path, *path.parents) if candidate.exists())
    except PermissionError as error:
        raise LrsearchError(
            f"{what} {str(path)!r} cannot be checked: {error.strerror} on {error.filename!r}"
        ) from None


def _check_regular(path: Path, what: str) -> None:
    """An output replaces a regular file or nothing: writing over ``/dev/null`` as root would
    replace the device node, and a FIFO would block."""
    try:
        mode = path.lstat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        return  # nothing there yet; its folder is checked on its own
    except OSError as error:
        raise LrsearchError(f"{what} {str(path)!r} cannot be checked: {error.strerror}") from None
    if stat.S_ISDIR(mode):
        raise LrsearchError(f"{what} {str(path)!r} is a folder; it must be a file name")
    if not stat.S_ISREG(mode):
        raise LrsearchError(
            f"{what} {str(path)!r} is not a regular file (a device, a pipe or a link); "
            "give the name of a file to write"
        )


def write_outputs(files: Mapping[Path, Callable[[Path], object]], what: str) -> list[Path]:
    """Write each file with its writer, completely or not at all, with the user's umask.

    Each writer writes a temporary file beside its target; once all are written they are
    moved into place. A full disk, an immutable file or a folder where a file goes is then one
    error naming the file, with no temporary file left behind and no half-written set."""
    temporary: dict[Path, Path] = {}
    mode = 0o666 & ~_umask()
    target = next(iter(files), Path())
    for target in files:  # all of them first: a folder at the last would leave a half set
        _check_regular(target, what)
    try:
        for target, write in files.items():
            handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
            os.close(handle)
            temporary[target] = Path(name)
            write(Path(name))
            os.chmod(name, mode)
        for target, written in temporary.items():
            os.replace(written, target)
    except OSError as error:
        for written in temporary.values():
            written.unlink(missing_ok=True)
        raise LrsearchError(
            f"{what} {str(target)!r} cannot be written: {error.strerror or error}; "
            "nothing was written"
        ) from None
    return list(files)


def _umask() -> int:
    """The process's umask (reading it means setting it; it is set straight back)."""
    current = os.umask(0o022)
    os.umask(current)
    return current
