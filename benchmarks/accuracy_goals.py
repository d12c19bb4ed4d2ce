"""The converged grid's goals (the accuracy-at-convergence issue), judged from the grid's analysis.

Each goal compares a student *with a teacher* to the FP twin, paired by seed. Which scheme stands for
"with a teacher" is chosen on the holdout split (highest mean final holdout top-1 among the schemes
that ran), never on the test set the verdict reads; so is the variant, where a grid ran a goal's precision
with other quantizer options too ("pc:4W/8A@asym" beside "4W/8A": per-channel weight scales, another
activation quantizer, the same weight quantizer and bit widths). A difference whose |mean| is at most its standard
deviation over seeds is called noise, whichever side of the target its mean falls.
"""

from __future__ import annotations

import statistics
from typing import Any

from _labels import base_label

#: label -> (precision, minimum of student − FP twin in points); precision None: the FP twin's own top-1.
GOALS: dict[str, tuple[str | None, float]] = {
    "FP twin ≥ 92 % mean test top-1": (None, 92.0),
    "ternary (2W/32A) with a teacher ≥ FP twin": ("2W/32A", 0.0),
    "4W/8A with a teacher ≥ FP twin + 0.3 points (paper: +0.8 on ImageNet)": ("4W/8A", 0.3),
    "LSQ 2W/2A with a teacher within 1.5 points of the FP twin": ("lsq:2W/2A", -1.5),
    "LSQ 4W/4A with a teacher beats the FP twin": ("lsq:4W/4A", 0.0),
}
#: The patient study's goals (issue 29), read the same way; two more kinds: TEACHER (the teacher's, or
#: the ensemble's, test top-1 ≥ the value) and GAIN (at every precision, the teacher's gain over the
#: no-teacher student, paired by seed, larger than the value times its std: clearly not noise).
TEACHER, GAIN = "teacher", "gain"
PATIENT_GOALS: dict[str, tuple[str | None, float]] = {
    "teacher (or ensemble) ≥ 95.0 % test top-1": (TEACHER, 95.0),
    "ternary (2W/32A) with the teacher ≥ its FP twin": ("2W/32A", 0.0),
    "4W/8A with the teacher ≥ FP twin + 0.3 points (paper: +0.8 on ImageNet)": ("4W/8A", 0.3),
    "LSQ 2W/2A with the teacher within 1.0 point of the FP twin": ("lsq:2W/2A", -1.0),
    "LSQ 4W/4A with the teacher within 1.0 point of the FP twin": ("lsq:4W/4A", -1.0),
    "at every precision the teacher's gain over no teacher > twice its paired std": (GAIN, 2.0),
}
GOAL_SETS: dict[str, dict[str, tuple[str | None, float]]] = {"converged": GOALS, "patient": PATIENT_GOALS}


def goal_set(settings: dict[str, Any]) -> dict[str, tuple[str | None, float]]:
    """The goals a grid is judged by: the patient study's where it trained a strong teacher from a
    recipe (``--teacher-recipe``), else the converged study's."""
    return GOAL_SETS["patient" if settings.get("teacher_recipe") else "converged"]


TEACHER_SCHEMES = ("A", "B", "C")


def chosen_on_holdout(schemes: dict[str, Any]) -> str | None:
    """The scheme with a teacher whose mean final holdout top-1 is highest (None if none has one)."""
    scored = {s: schemes[s]["final_holdout_top1"]["mean"] for s in TEACHER_SCHEMES
              if s in schemes and schemes[s].get("final_holdout_top1", {}).get("mean") is not None}
    return max(scored, key=scored.get) if scored else None


def is_noise(ms: dict[str, Any]) -> bool:
    """|mean| ≤ std over seeds: the difference is within seed-to-seed spread."""
    return ms.get("std") is not None and abs(ms["mean"]) <= ms["std"]


def _measured(ms: dict[str, Any], sign: str = "") -> str:
    """"+0.30 ± 0.14 over 3 seeds", or "+0.30 over 1 seed" (no spread from one seed)."""
    spread = f" ± {ms['std']:.2f}" if ms["std"] is not None else ""
    return f"{ms['mean']:{sign}.2f}{spread} over {ms['n']} seed{'s' if ms['n'] != 1 else ''}"


def _holdout_choice(label: str, an: dict[str, Any]) -> tuple[str, float] | None:
    """A label's scheme with a teacher chosen on the holdout, and its mean final holdout top-1."""
    entry = an["precisions"].get(label)
    scheme = entry and chosen_on_holdout(entry["schemes"])
    return (scheme, entry["schemes"][scheme]["final_holdout_top1"]["mean"]) if scheme else None


def variant(precision: str, an: dict[str, Any]) -> str | None:
    """The grid's label that stands for a goal's ``precision``: of the labels with its weight quantizer and
    bit widths ("4W/8A", "pc:4W/8A@asym"), the one whose teacher cell scores highest on the holdout."""
    scored = {label: found[1] for label in an["precisions"]
              if base_label(label) == base_label(precision) and (found := _holdout_choice(label, an))}
    return max(scored, key=scored.get) if scored else None


def _student_goal(precision: str, an: dict[str, Any]) -> tuple[str, str, dict[str, Any]] | None:
    """A precision's variant and scheme with a teacher (both chosen on the holdout) and its difference
    from the FP twin; None if absent."""
    label = variant(precision, an)
    if label is None:
        return None
    scheme = _holdout_choice(label, an)[0]
    d = an["precisions"][label]["schemes"][scheme]["vs_fp_twin_points"]
    return None if d["mean"] is None else (label, scheme, d)


def _cell(precision: str, label: str, scheme: str) -> str:
    """"scheme C" or, where a variant stands for the goal's precision, "pc:4W/8A@asym scheme C"."""
    return f"scheme {scheme}" if label == precision else f"{label} scheme {scheme}"


def _teacher_line(label: str, an: dict[str, Any], target: float) -> str | None:
    """The TEACHER goal: the ensemble's measured top-1 where there is one, else the teacher's."""
    top, who = (an["ensemble_top1"], "the ensemble") if an.get("ensemble_top1") is not None else \
        (an.get("teacher_top1"), "the teacher")
    if top is None:
        return None
    verdict = "met" if top >= target else f"missed by {target - top:.2f} points"
    return f"- {label}: {who} {top:.2f} % — **{verdict}**."


def _gain_line(label: str, an: dict[str, Any], times: float) -> str | None:
    """The GAIN goal: per precision (its variant chosen on the holdout), the holdout-chosen scheme − no
    teacher (paired by seed) against ``times`` its std; met only if every precision's is (one seed has no
    std: not judged)."""
    parts, met = [], True
    for precision in dict.fromkeys(base_label(p) for p in an["precisions"]):
        found = _student_goal(precision, an)
        gain = found and an["precisions"][found[0]]["schemes"][found[1]].get("recovered_points")
        if not gain or gain["mean"] is None:
            continue
        clear = gain["std"] is not None and gain["mean"] > times * gain["std"]
        met &= clear
        parts.append(f"{found[0]} {found[1]} {_measured(gain, '+')}" + ("" if clear else " (not clear)"))
    if not parts:
        return None
    return f"- {label}: {'; '.join(parts)} — **{'met' if met else 'missed'}**."


def judge(label: str, an: dict[str, Any], goals: dict[str, tuple[str | None, float]] = GOALS) -> str | None:
    """One line: the goal, what was measured, met or missed (by how much); None if its cells are absent."""
    precision, target = goals[label]
    if precision == TEACHER:
        return _teacher_line(label, an, target)
    if precision == GAIN:
        return _gain_line(label, an, target)
    if precision is None:
        fp = an["fp_twin"]
        if fp["mean"] is None:
            return None
        verdict = "met" if fp["mean"] >= target else f"missed by {target - fp['mean']:.2f} points"
        return f"- {label}: {_measured(fp)} (%) — **{verdict}**."
    if (found := _student_goal(precision, an)) is None:
        return None
    cell, scheme, d = found
    verdict = "met" if d["mean"] >= target else f"missed by {target - d['mean']:.2f} points"
    noise = " The difference from the FP twin is noise (|mean| ≤ std)." if is_noise(d) else ""
    return (f"- {label}: {_cell(precision, cell, scheme)} (chosen on the holdout) − FP twin = {_measured(d, '+')} "
            f"(points, paired by seed) — **{verdict}**.{noise}")


def missed_cells(an: dict[str, Any], goals: dict[str, tuple[str | None, float]] = GOALS) -> list[str]:
    """The cells ("PRECISION:SCHEME", the scheme chosen on the holdout) of the student goals missed:
    what a sweep for the missed goals tunes (``accuracy.py --sweep-cell missed``)."""
    cells = []
    for precision, target in goals.values():
        found = precision not in (None, TEACHER, GAIN) and _student_goal(precision, an)
        if found and found[2]["mean"] < target:
            cells.append(f"{found[0]}:{found[1]}")
    return cells


def goal_lines(an: dict[str, Any], goals: dict[str, tuple[str | None, float]] = GOALS) -> list[str]:
    """Every goal whose cells the grid has, in the table's order."""
    return [line for label in goals if (line := judge(label, an, goals)) is not None]


def relative_epochs(pct: float, other: str = "A") -> str:
    """"15 % sooner than A" for pct = −15 (B's epochs relative to A's, in %); "at the same epoch as A" for ~0."""
    return f"{abs(pct):.0f} % {'sooner' if pct < 0 else 'later'} than {other}" if round(pct) else f"at the same epoch as {other}"


#: points: a run whose last epoch is this far below the epoch before "fell" (BatchNorm statistics that
#: no longer match the weights); 99 % of that lower final is reached early, which is not converging sooner
FELL = 1.0


def last_epoch_drop(curve: list[float | None], before: int = 1, more_than: float = FELL) -> float | None:
    """How far (points, > 0) the last epoch fell below the best of the ``before`` epochs before it, when
    more than ``more_than``; else None. One rule, two readings: the convergence sentence (the epoch
    before, 1 point) and bn_reestimate.py (the best of three, 0.3 points)."""
    prev = [v for v in curve[-1 - before:-1] if v is not None]
    if not prev or curve[-1] is None:
        return None
    drop = max(prev) - curve[-1]
    return drop if drop > more_than else None


def fall(row: dict[str, Any]) -> float | None:
    """The last epoch's drop from the one before (negative), when it is more than `FELL` points; else None."""
    drop = last_epoch_drop(row.get("test_top1_per_epoch") or [None])
    return -drop if drop is not None else None


def _epoch_diffs(diffs: list[int]) -> str:
    """"+0, -4 epochs (mean -2.00 ± 2.83, noise)": B − A per seed, their mean and spread."""
    mean = sum(diffs) / len(diffs)
    std = statistics.stdev(diffs) if len(diffs) > 1 else None
    spread = f" ± {std:.2f}" + (", noise" if abs(mean) <= std else "") if std is not None else ""
    return f"{', '.join(f'{d:+d}' for d in diffs)} epochs (mean {mean:+.2f}{spread})"


def convergence_sentence(conv: list[dict[str, Any]]) -> str | None:
    """B's epoch to 99 % of its final accuracy relative to A's, paired by seed (the paper: B 10–20 % sooner),
    and the same without the seeds where a run's last epoch fell (their 99 % target is lower)."""
    a = {r["seed"]: r["epoch_to_99pct"] for r in conv if r["scheme"] == "A" and r["epoch_to_99pct"]}
    b = {r["seed"]: r["epoch_to_99pct"] for r in conv if r["scheme"] == "B" and r["epoch_to_99pct"]}
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    diffs = [b[s] - a[s] for s in seeds]
    pct = 100 * (sum(diffs) / len(diffs)) / (sum(a[s] for s in seeds) / len(seeds))
    text = (f"B − A, epoch reaching 99 % of the final accuracy, paired by seed over {len(seeds)}: "
            f"{_epoch_diffs(diffs)}: B converges {relative_epochs(pct)}. The paper reports B 10–20 % sooner on ImageNet.")
    fell = {(r["scheme"], r["seed"]): d for r in conv if (d := fall(r)) is not None}
    if fell:
        kept = [s for s in seeds if ("A", s) not in fell and ("B", s) not in fell]
        names = ", ".join(f"{sch} seed {s} {d:+.2f}" for (sch, s), d in sorted(fell.items()))
        rest = (f"the seeds without one: {_epoch_diffs([b[s] - a[s] for s in kept])}" if kept
                else "no seed is left without one")
        text += (f" Runs whose last epoch fell more than {FELL:g} point below the one before ({names} points) "
                 f"reach 99 % of that lower final early; {rest}.")
    return text


def epoch_to_fraction(curve: list[float | None], fraction: float) -> int | None:
    """First epoch (1-based) whose accuracy reaches ``fraction`` of the final epoch's."""
    if not curve or curve[-1] is None:
        return None
    return next(i + 1 for i, v in enumerate(curve) if v is not None and v >= fraction * curve[-1])
