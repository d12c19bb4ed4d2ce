"""The accuracy grid's plots (`accuracy.py`, `accuracy_report.write`): test top-1 per epoch, top-1
against packed file size, and schemes A and B under the step schedule. Each returns the file name it
wrote; matplotlib is optional (no plots without it).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from accuracy_goals import epoch_to_fraction

from apprentice.atomic import atomic_write_bytes
from apprentice.distill import SCHEMES


def plots(out: Path, rows: list[dict[str, Any]], an: dict[str, Any], precisions: list[str], sizes: dict[str, int]) -> list[str]:
    """accuracy vs epoch per scheme (a panel per precision) and accuracy vs packed model size."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    plt.close("all")
    return [_epochs_plot(out, rows, precisions), _size_plot(out, an, precisions, sizes)]


def _epochs_plot(out: Path, rows: list[dict[str, Any]], precisions: list[str]) -> str:
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(precisions), figsize=(5 * len(precisions), 4), sharey=True, squeeze=False)
    fp_curves = [r["test_top1_per_epoch"] for r in rows if r["role"] == "fp_twin"]
    for ax, p in zip(axes[0], precisions):
        series = [("FP twin", fp_curves)] + [
            ("no teacher" if s == "baseline" else f"scheme {s}",
             [r["test_top1_per_epoch"] for r in rows if r["role"] == "student" and r["precision"] == p and r["scheme"] == s])
            for s in SCHEMES]
        for label, curves in series:
            curves = [c for c in curves if c and None not in c]
            if not curves:
                continue
            n = min(len(c) for c in curves)
            mean = [statistics.fmean(c[i] for c in curves) for i in range(n)]
            ax.plot(range(1, n + 1), mean, marker="o", ms=3, label=label, ls="--" if label == "FP twin" else "-")
        ax.set_title(f"{p} student (mean over seeds)")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test top-1 % (Fashion-MNIST)")
    axes[0][0].legend()
    # Zoom past the first epochs (a third of the run), where the curves are far below the rest.
    late = [v for r in rows for c in [r["test_top1_per_epoch"]] for v in c[len(c) // 3:] if v is not None]
    if late:
        axes[0][0].set_ylim(bottom=max(min(late) - 1, 0))
    fig.tight_layout()
    written = savefig(fig, out.with_name(out.stem + "_epochs.png"))
    plt.close(fig)
    return written


def _size_plot(out: Path, an: dict[str, Any], precisions: list[str], sizes: dict[str, int]) -> str:
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    fig, ax = plt.subplots(figsize=(7, 5))
    pts = [("FP twin", sizes.get("32W/32A"), an["fp_twin"]["mean"])]
    if an["teacher_top1"] is not None:
        pts.append(("teacher", sizes.get("teacher"), an["teacher_top1"]))
    for label, x, y in pts:
        if x and y is not None:
            ax.scatter([x / 1024], [y], marker="*", s=120)
            ax.annotate(label, (x / 1024, y), textcoords="offset points", xytext=(5, 5))
    # Colour = scheme, marker = precision: 2W/32A and 2W/8A files have the same size (activations
    # do not change the file), so their points share an x.
    colours = dict(zip(SCHEMES, ("tab:grey", "tab:green", "tab:red", "tab:purple")))
    for p, marker in zip(precisions, "os^DvP"):
        for s in SCHEMES:
            v = an["precisions"][p]["schemes"][s]["final_top1"]["mean"]
            if v is not None:
                ax.scatter([sizes[p] / 1024], [v], marker=marker, color=colours[s], s=40,
                           label=f"{p}, {'no teacher' if s == 'baseline' else 'scheme ' + s}")
    by_size: dict[int, list[str]] = {}
    for p in precisions:
        by_size.setdefault(sizes[p], []).append(p)
    for size, ps in by_size.items():
        ax.axvline(size / 1024, color="grey", lw=0.5)
        ax.annotate(" / ".join(ps), (size / 1024, ax.get_ylim()[0]), fontsize=7, rotation=90, va="bottom")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("packed model file, KiB (log)")
    ax.set_ylabel("test top-1 % (mean over seeds)")
    ax.legend(fontsize=6, ncol=2, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    written = savefig(fig, out.with_name(out.stem + "_size.png"))
    plt.close(fig)
    return written


def convergence_plot(out: Path, rows: list[dict[str, Any]]) -> str | None:
    """Schemes A and B under the step schedule (``--convergence``): test top-1 per epoch, each seed thin
    and the mean thick, with the epoch where each mean first reaches 99 % of its final value marked."""
    conv = [r for r in rows if r.get("role") == "convergence" and r["test_top1_per_epoch"]]
    if not conv:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for scheme, colour in (("A", "tab:green"), ("B", "tab:red")):
        curves = [r["test_top1_per_epoch"] for r in conv if r["scheme"] == scheme and None not in r["test_top1_per_epoch"]]
        if not curves:
            continue
        n = min(len(c) for c in curves)
        for c in curves:
            ax.plot(range(1, n + 1), c[:n], color=colour, lw=0.6, alpha=0.5)
        mean = [statistics.fmean(c[i] for c in curves) for i in range(n)]
        ax.plot(range(1, n + 1), mean, color=colour, lw=2, marker="o", ms=3, label=f"scheme {scheme} (mean of {len(curves)})")
        at = epoch_to_fraction(mean, 0.99)
        ax.axvline(at, color=colour, ls=":", lw=1)
    late = [v for r in conv for v in r["test_top1_per_epoch"][len(r["test_top1_per_epoch"]) // 3:] if v is not None]
    ax.set_ylim(bottom=max(min(late) - 1, 0))
    ax.set_xlabel("epoch (lr ÷10 at the milestones)")
    ax.set_ylabel("test top-1 % (2W/32A student)")
    ax.set_title("Convergence: dotted line = epoch reaching 99 % of the final mean", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    written = savefig(fig, out.with_name(out.stem + "_convergence.png"))
    plt.close(fig)
    return written


def savefig(fig, path: Path) -> str:
    """``fig`` as a PNG at ``path``, written atomically; returns the file name."""
    import io
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())
    return path.name
