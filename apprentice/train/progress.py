"""What a training run reports while it runs: console lines, ``metrics.jsonl``, TensorBoard.

Only the process of rank 0 reports (the others get ``enabled=False``). On a terminal the console
shows one self-updating line (epoch, step/total, loss, images/s, time elapsed, ETA of the epoch and
of the run) plus a line per epoch; when the output is a file or a pipe (batch jobs, CI) it shows
plain lines every ``log_every`` steps and per epoch instead, so logs stay readable. No tqdm: the
bar is a dozen lines.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

from apprentice.atomic import atomic_write_text
from apprentice.train.checkpoint import METRICS_FILE, TENSORBOARD_DIR

__all__ = ["MetricsWriter", "Progress", "bar_text", "clock", "trim_metrics"]


def clock(seconds: float) -> str:
    """Seconds as ``M:SS`` or ``H:MM:SS``, as progress bars print times.

    Example:
        >>> clock(75.4), clock(3725)
        ('1:15', '1:02:05')
    """
    m, s = divmod(max(0, round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def bar_text(*, epoch: int, epochs: int, step: int, steps: int, loss: float | None,
             images_per_s: float | None, elapsed_s: float | None = None, eta_epoch_s: float | None = None,
             eta_run_s: float | None = None, width: int = 20) -> str:
    """One progress line, e.g.
    ``epoch 3/10 [#########...........] 45/100 loss 1.234 812 img/s 2:05 elapsed, ETA 0:31 epoch, 5:12 run``.

    The times are left out when not given; the ETAs are the caller's estimate of what is left.
    """
    done = int(width * step / steps) if steps else width
    bar = "#" * done + "." * (width - done)
    text = f"epoch {epoch}/{epochs} [{bar}] {step}/{steps}"
    if loss is not None:
        text += f" loss {loss:.4g}"
    if images_per_s is not None:
        text += f" {images_per_s:.0f} img/s"
    if elapsed_s is not None:
        text += f" {clock(elapsed_s)} elapsed"
    etas = [f"{clock(s)} {what}" for s, what in ((eta_epoch_s, "epoch"), (eta_run_s, "run")) if s is not None]
    if etas:
        text += (", " if elapsed_s is not None else " ") + "ETA " + ", ".join(etas)
    return text


class Progress:
    """Console output: a single redrawn line on a TTY, plain log lines otherwise.

    Args:
        stream: where to write (default ``sys.stderr``, keeping stdout free for results).
        enabled: False makes every method a no-op (ranks other than 0).
        tty: force terminal / plain mode; None asks ``stream.isatty()``.
        min_interval: seconds between redraws of the bar (redrawing every step of a fast model
            would cost more than the step).
    """

    def __init__(self, stream: TextIO | None = None, *, enabled: bool = True, tty: bool | None = None,
                 min_interval: float = 0.1) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        if tty is None:
            isatty = getattr(self.stream, "isatty", None)
            tty = bool(isatty and isatty())
        self.tty = tty
        self.min_interval = min_interval
        self._last_draw = 0.0
        self._bar_len = 0

    def step(self, text: str, *, log: bool) -> None:
        """Report a training step: redraw the bar on a TTY; otherwise print ``text`` if ``log``."""
        if not self.enabled:
            return
        if self.tty:
            now = time.monotonic()
            if now - self._last_draw >= self.min_interval or log:
                self._last_draw = now
                pad = max(0, self._bar_len - len(text))
                self.stream.write("\r" + text + " " * pad)
                self.stream.flush()
                self._bar_len = len(text)
        elif log:
            self.line(text)

    def line(self, text: str) -> None:
        """Print a whole line (clearing the bar first on a TTY)."""
        if not self.enabled:
            return
        self._clear()
        self.stream.write(text + "\n")
        self.stream.flush()

    def _clear(self) -> None:
        if self.tty and self._bar_len:
            self.stream.write("\r" + " " * self._bar_len + "\r")
            self._bar_len = 0

    def close(self) -> None:
        """Remove the bar, leaving the terminal on a fresh line."""
        if self.enabled:
            self._clear()
            self.stream.flush()


def _clean(value: Any) -> Any:
    # JSON has no NaN/inf; a non-finite number is written as null rather than as invalid JSON.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsWriter:
    """Appends records to ``metrics.jsonl`` and mirrors their numbers to TensorBoard if installed.

    Each record is one JSON object on its own line, flushed at once (``tail -f`` works, and a
    crash loses nothing that was logged). Its ``"type"`` (``"step"`` or ``"epoch"``) prefixes the
    TensorBoard tags: ``step/loss``, ``epoch/test_top1``; the x-axis is the record's ``"step"``.

    Args:
        run_dir: the run folder.
        enabled: False makes every method a no-op (ranks other than 0).
        tensorboard: write ``run_dir/tb`` events when ``tensorboard`` can be imported.
        purge_step: on resume, TensorBoard hides events of earlier files at or after this step.
        notice: where the one line saying TensorBoard is missing goes.
    """

    def __init__(self, run_dir: str | Path, *, enabled: bool = True, tensorboard: bool = True,
                 purge_step: int | None = None, notice: Callable[[str], None] = print) -> None:
        self.enabled = enabled
        self.path = Path(run_dir) / METRICS_FILE
        self._file = None
        self._tb = None
        if not enabled:
            return
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                notice("TensorBoard logging off: `tensorboard` is not installed (pip install 'apprentice-kd[tensorboard]')")
            else:
                self._tb = SummaryWriter(str(Path(run_dir) / TENSORBOARD_DIR), purge_step=purge_step)

    def write(self, record: Mapping[str, Any]) -> None:
        """Append one record; its numbers also go to TensorBoard."""
        if not self.enabled or self._file is None:
            return
        rec = {k: _clean(v) for k, v in record.items()}
        self._file.write(json.dumps(rec) + "\n")
        self._file.flush()
        if self._tb is not None:
            kind, step = rec.get("type", "metrics"), rec.get("step", 0)
            for key, value in rec.items():
                if key not in ("type", "step") and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(f"{kind}/{key}", value, global_step=step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def trim_metrics(path: str | Path, step: int) -> None:
    """Drop records logged after ``step`` (a resumed run re-logs them), keeping the file valid.

    A run killed without warning may have logged steps after its last checkpoint; resuming
    repeats those steps, and their old lines would otherwise appear twice. A torn last line is
    dropped too.
    """
    p = Path(path)
    if not p.is_file():
        return
    kept = []
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and int(rec.get("step", 0)) <= step:
            kept.append(line)
    atomic_write_text(p, "".join(k + "\n" for k in kept))
