"""The one error type users see, and the one lookup for every choice table.

Every check of user input (an argument, a config value, a file) raises `ApprenticeError` with one
line that names what was wrong and what is allowed; the command line prints that line and exits
non-zero instead of a traceback.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")


class ApprenticeError(ValueError):
    """Bad input: an argument, config value, data file or checkpoint. The message is one line."""


def lookup(table: Mapping[str, T], name: str, what: str) -> T:
    """Return ``table[name]`` or raise "unknown <what> '<name>'; choose from [...]".

    Example:
        >>> lookup({"a": 1, "b": 2}, "a", "model")
        1
    """
    try:
        return table[name]
    except (KeyError, TypeError):
        raise ApprenticeError(f"unknown {what} {name!r}; choose from {sorted(table)}") from None
