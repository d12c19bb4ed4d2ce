"""``--import``: the user's own Python file or module, run before a command (and only then).

Recipes never run code; a model of one's own becomes buildable by name when the file that
registers it (``@apprentice.register_model``) is named on the command line.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import os
import re
import sys
from pathlib import Path

from apprentice.errors import ApprenticeError

__all__ = ["import_user_code"]


def import_user_code(spec: str) -> None:
    """Run the user's Python file, or import their module, named by ``--import`` (and only then).

    A file runs as a script would (its folder first on ``sys.path``, so it can import its neighbours),
    but sees an empty command line (apprentice's flags are not its own) under a module name of its own
    (so its ``if __name__ == "__main__":`` part does not run). Anything it raises, or an exit while it
    is imported (an argument parser at module level), becomes one line naming the file; what it
    writes to stderr is kept back until it has imported, and its last line told if it fails.
    """
    saved_argv, captured = sys.argv, io.StringIO()
    sys.argv = [spec]
    try:
        with contextlib.redirect_stderr(captured):
            _import(spec)
    except SystemExit as e:
        said = captured.getvalue().strip().splitlines()
        raise ApprenticeError(f"--import {spec!r} exited while it was imported (exit status {e.code!r}"
                              + (f": {said[-1].strip()}" if said else "") + "); a file for --import should only "
                              "define and register models: put its script part under "
                              "`if __name__ == '__main__':`") from None
    finally:
        sys.argv = saved_argv
    sys.stderr.write(captured.getvalue())


def _import(spec: str) -> None:
    is_file = spec.endswith(".py") or os.sep in spec
    try:
        if not is_file:
            importlib.import_module(spec)
            return
        path = Path(spec).resolve()
        if not path.is_file():
            raise ApprenticeError(f"--import {spec!r}: no such file")
        name = "apprentice_user." + re.sub(r"\W", "_", path.stem)
        if name in sys.modules and getattr(sys.modules[name], "__file__", None) == str(path):
            return  # imported already (a second --import of the same file)
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.path.insert(0, str(path.parent))
        sys.modules[name] = module
        module_spec.loader.exec_module(module)
    except ApprenticeError as e:
        raise ApprenticeError(f"--import {spec!r}: {e}" if not str(e).startswith("--import") else str(e)) from None
    except ModuleNotFoundError as e:
        raise ApprenticeError(f"--import {spec!r}: no module named {e.name!r}" + (
            "" if is_file else " (a file needs its .py suffix or a path)")) from None
    except Exception as e:  # the user's code failing is one line naming it (--debug: the traceback)
        raise ApprenticeError(f"--import {spec!r} failed: {type(e).__name__}: {e}") from e

