"""The package version, in the one place it is written (pyproject.toml reads it from here).

It sits on the bottom layer so that any module can stamp what it writes with it; reading it from the
top package (``apprentice.__version__``) would import the whole library: an import arrow pointing up.
`git_commit` is the other half of "which code ran", for run summaries.
"""

import subprocess
from pathlib import Path

__version__ = "0.1.0"


def git_commit() -> str | None:
    """The commit of the apprentice checkout this code runs from (not the cwd's); None outside git."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None
