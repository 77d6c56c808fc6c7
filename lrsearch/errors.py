"""One exception type for everything a user can get wrong.

The CLI turns any ``LrsearchError`` into one line on stderr and exit code 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class LrsearchError(Exception):
    """Bad input: a schedule, a study file, an option, a data set, a storage."""
