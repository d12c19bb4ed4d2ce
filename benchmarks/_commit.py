"""Commit a long benchmark's results as its runs finish (``--commit``), so a grid stopped on one
machine continues on a fresh clone from the last finished row.

Only the benchmark's own files are committed (the JSON, its markdown, its plots and the run
snapshots beside them): ``git commit -- <paths>`` takes those paths alone, so whatever else is
staged or edited in the tree stays as it was.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from _stamp import REPO


def result_paths(out: Path) -> list[Path]:
    """The files a benchmark writing ``out`` (JSON) produces: ``out``, ``.md``, ``*.png`` and ``_runs/``."""
    return [out, out.with_suffix(".md"), *sorted(out.parent.glob(out.stem + "*.png")),
            out.with_name(out.stem + "_runs")]


def check_committable(out: Path, repo: Path = REPO) -> None:
    """One clear line (SystemExit) unless ``out`` lies inside the git work tree ``repo``."""
    try:
        out.resolve().relative_to(repo.resolve())
    except ValueError:
        raise SystemExit(f"--commit: {out} is outside the repository {repo}; write the results inside it") from None
    if not (repo / ".git").exists():
        raise SystemExit(f"--commit: {repo} is not a git work tree")


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=120, check=False)


def commit_results(out: Path, message: str, repo: Path = REPO) -> bool:
    """Commit ``out``'s result files (only those); False when they hold nothing new. A failed git call
    is reported on one line and the benchmark goes on: its rows are on disk and committed next time."""
    rel = [str(p.resolve().relative_to(repo.resolve())) for p in result_paths(out) if p.exists()]
    if not rel:
        return False
    added = _git(repo, "add", "-A", "--", *rel)
    if added.returncode == 0 and _git(repo, "diff", "--cached", "--quiet", "--", *rel).returncode == 0:
        return False  # nothing changed in them
    done = added if added.returncode else _git(repo, "commit", "-q", "-m", message, "--", *rel)
    if done.returncode:
        print(f"--commit: git failed ({(done.stderr or done.stdout).strip().splitlines()[-1:]}); "
              "the results are on disk", flush=True)
        return False
    return True


class RowCommitter:
    """Commits ``out`` whenever a row is added or one changes (e.g. a run done again on another machine, whose
    snapshot changed with it), naming those rows in the message."""

    def __init__(self, out: Path, label: str, repo: Path = REPO):
        self.out, self.label, self.repo = out, label, repo
        self.seen = self._rows()

    def _rows(self) -> dict[str, str]:
        try:
            return {r["name"]: json.dumps(r, sort_keys=True) for r in json.loads(self.out.read_text())["rows"]}
        except (OSError, ValueError, KeyError, TypeError):
            return {}

    def __call__(self) -> None:
        rows = self._rows()
        new = sorted(set(rows) - set(self.seen))
        again = sorted(n for n in rows if n in self.seen and rows[n] != self.seen[n])
        parts = ([f"{', '.join(new)} finished"] if new else []) + ([f"{', '.join(again)} updated"] if again else [])
        if parts and commit_results(self.out, f"{self.label}: {'; '.join(parts)} ({len(rows)} rows)", self.repo):
            print(f"committed {', '.join(new + again)}", flush=True)
            self.seen = rows  # a failed commit leaves them new: the next finished run's commit names them too
