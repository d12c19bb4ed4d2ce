"""The one error type users see, the one lookup for every choice table, and the exit statuses.

Every check of user input (an argument, a config value, a file) raises `ApprenticeError` with one
line that names what was wrong and what is allowed; the command line prints that line and exits
`EXIT_USER` instead of a traceback. A failure during a run carries ``exit_code`` `EXIT_RUNTIME`, a
run stopped by a signal `signal_exit` of it (`EXIT_INTERRUPT` for Ctrl-C, `EXIT_SIGTERM`).
"""

from __future__ import annotations

import signal
from collections.abc import Mapping
from typing import TypeVar

__all__ = ["EXIT_INTERRUPT", "EXIT_RUNTIME", "EXIT_SIGTERM", "EXIT_USER", "ApprenticeError", "lookup", "signal_exit"]

T = TypeVar("T")

#: A failure during a run: a non-finite loss, a full disk while checkpointing, a lost torchrun peer.
EXIT_RUNTIME = 1
#: Bad input: an `ApprenticeError`, a missing file, bad YAML, a usage error (argparse's own status).
EXIT_USER = 2


def signal_exit(signum: int) -> int:
    """The status of a process that signal ``signum`` stopped, as the shell reports it: 128 + signum."""
    return 128 + int(signum)


#: Ctrl-C (SIGINT): 130.
EXIT_INTERRUPT = signal_exit(signal.SIGINT)
#: SIGTERM (a scheduler's stop request): 143.
EXIT_SIGTERM = signal_exit(signal.SIGTERM)


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
