"""One exception type for everything a user can get wrong.

The CLI turns any ``LrsearchError`` into one line on stderr and exit code 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

Parsed = TypeVar("Parsed")


class LrsearchError(Exception):
    """Bad input: a schedule, a study file, an option, a data set, a storage."""


# A study or schedule file is a few kB; a larger one is not one (or is /dev/zero).
DOCUMENT_BYTES = 1 << 20


class _NotRegular(Exception):
    """A path that is not a regular file of at most DOCUMENT_BYTES."""


def _read_regular(path: Path) -> bytes:
    """The bytes of a regular file of at most DOCUMENT_BYTES. A FIFO would block the read (it
    is opened without blocking, then refused), /dev/zero or /dev/urandom never end."""
    handle = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(handle).st_mode):
            raise _NotRegular("is not a regular file (a device, a pipe or a folder)")
        with os.fdopen(handle, "rb", closefd=False) as file:
            data = file.read(DOCUMENT_BYTES + 1)
    finally:
        os.close(handle)
    if len(data) > DOCUMENT_BYTES:
        raise _NotRegular(f"is larger than {DOCUMENT_BYTES >> 20} MiB")
    return data


def read_document(
    path: str | os.PathLike[str],
    kind: str,
    form: str,
    parse: Callable[[str], Parsed],
    syntax: type[Exception],
    describe: Callable[[Any], str],
    limits: str,
    *,
    error: type[LrsearchError] = LrsearchError,
    unreadable: str = "",
) -> Parsed:
    """A user's UTF-8 text file (a study, a schedule), parsed. Whatever the file holds (no
    file, bytes that are not UTF-8, a syntax error, more than the parser's own limits: an
    integer of over 4300 digits, nesting too deep) is one ``error`` naming it, never a
    traceback."""
    where = f"{kind} file {str(path)!r}"
    try:
        text = _read_regular(Path(path)).decode("utf-8")
    except OSError as problem:
        raise error(f"cannot read {where}: {problem.strerror}{unreadable}") from None
    except _NotRegular as problem:
        raise error(f"{where} {problem}{unreadable}") from None
    except UnicodeDecodeError as problem:
        raise error(
            f"{where} is not UTF-8 text (byte {problem.object[problem.start]:#04x} at offset "
            f"{problem.start}); a {kind} file is {form} saved as UTF-8"
        ) from None
    try:
        return parse(text)
    except syntax as problem:
        raise error(f"{where} is not valid {form}: {describe(problem)}") from None
    except LrsearchError as problem:  # the parser's own checks (a duplicate key, say)
        raise error(f"{where} is not valid {form}: {problem}") from None
    except (ValueError, RecursionError) as problem:
        too_much = (
            "nests too deeply" if isinstance(problem, RecursionError) else "has a huge number"
        )
        raise error(f"{where} {too_much}; {limits}") from None
