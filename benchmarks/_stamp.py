"""The stamp every benchmark result carries: which code, which machine, which command.

Conventions point 12: a published number has one command and one committed result file stamped
with the commit, the machine and the command. Git is only read here (``--no-optional-locks``
keeps ``git status`` from refreshing the index).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from apprentice.atomic import atomic_write_text

REPO = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "--no-optional-locks", *args], cwd=REPO, capture_output=True,
                             text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.rstrip("\n")


def cpu_model() -> str:
    """The CPU's model name (lscpu, else /proc/cpuinfo, else platform.processor())."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags(wanted: tuple[str, ...] = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")) -> list[str]:
    """Which of the SIMD features that matter for int8/float inference the CPU reports."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return [f for f in wanted if f in flags]


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def command(argv: list[str] | None = None) -> str:
    """The command line as typed: interpreter (relative to the repo when inside it), flags, script, args."""
    full = list(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    if argv is not None:
        full = full[: len(full) - len(sys.argv)] + list(argv)
    exe = Path(full[0])
    try:
        full[0] = str(exe.absolute().relative_to(REPO)) if exe.is_absolute() or "/" in full[0] else full[0]
    except ValueError:
        pass
    return " ".join(shlex.quote(a) for a in full)


def stamp(argv: list[str] | None = None) -> dict[str, Any]:
    """Commit (and whether the tree is dirty), machine, versions, UTC time and the command line."""
    import torch

    status = _git("status", "--porcelain")
    return {
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        # What differs from the commit (first 30 paths), so a dirty stamp still says what ran.
        "git_dirty_paths": None if status is None else [line[3:] for line in status.splitlines()][:30],
        "hostname": socket.gethostname(),
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "utc_time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "load_average_1_5_15": load_average(),
        "command": command(argv),
    }


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A GitHub markdown table; numbers right-aligned."""
    def cell(v: Any) -> str:
        return "-" if v is None else str(v)
    numeric = [all(isinstance(r[i], (int, float)) or r[i] is None for r in rows) if rows else False
               for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def stamp_markdown(s: dict[str, Any]) -> str:
    dirty = " (dirty tree)" if s.get("git_dirty") else ""
    return (f"Commit `{s['git_commit']}`{dirty}, host `{s['hostname']}`, {s['cpu_model']} "
            f"({s['cpu_count']} CPUs; {', '.join(s['cpu_flags']) or 'no AVX flags'}), "
            f"Python {s['python']}, torch {s['torch']}, {s['utc_time']} UTC.\n\n"
            f"Command: `{s['command']}`")


def write_results(out: str | Path, result: dict[str, Any], markdown: str, table: str | None = None) -> None:
    """Write the JSON result to ``out`` and the markdown next to it (``.md``), then print ``table``
    (if given: a benchmark that rewrites its results after every run prints nothing each time)."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Atomic: a benchmark stopped while writing leaves the previous result whole.
    atomic_write_text(path, json.dumps(result, indent=2) + "\n")
    atomic_write_text(path.with_suffix(".md"), markdown)
    if table is not None:
        print("\n" + table)
