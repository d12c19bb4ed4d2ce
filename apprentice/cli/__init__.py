"""The ``apprentice`` command: the parser and entry point (`main`), the subcommands' bodies
(`commands`), ``apprentice predict``'s library half (`predict`) and ``--import`` (`user_code`).

``apprentice --help`` imports no torch: the library is imported by the subcommand that runs.
"""

from apprentice.cli.app import build_parser, main

__all__ = ["build_parser", "main"]
