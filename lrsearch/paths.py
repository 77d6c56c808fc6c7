"""Can an output go where the user pointed it? Asked before anything is written.

A command that finds out only at its end that its folder is a file, or read-only, has
already created a database or half its results; checking first keeps bad input to one
line with nothing changed. The checks only look (``stat`` and ``access``), never write.
"""

from __future__ import annotations

import os
from pathlib import Path

from lrsearch.errors import LrsearchError

__all__ = ["check_file", "check_folder", "sqlite_file"]


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
