"""Verdicts instead of "best" (issue 21, point 2): every comparison ends better / worse / equivalent /
inconclusive, against the reference (the significance table) and between all pairs of cells (pairs.csv, the
matrix figure), each family Holm-corrected; a single winner only where one cell beats every other.

Rule, on the metric's analysis scale (:mod:`.scale`): better or worse when Welch's test is significant
after Holm's correction (α = 0.05), the sign and the direction of the objective saying which; otherwise
equivalent when the two one-sided tests put the ratio inside the margin (Holm-corrected too); otherwise
inconclusive, with the seeds per cell the observed spread implies a 2x difference would need at 80% power.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .scale import compare, seeds_needed, summarize
from .stats import ALPHA, holm, two_sample_test, welch_difference
from .tables import Analysis, Table, fmt, interval, label, pm

OUTCOMES = ("better", "worse", "equivalent", "inconclusive", "not testable")


def outcome(an: Analysis, effect: float, p_holm: float, tost_holm: float) -> str:
    """The verdict of a (cell a against cell b) comparison from its Holm-adjusted p-values."""
    return judge(effect, p_holm, tost_holm, an.scale.ratio, an.direction)


def judge(effect: float, p_holm: float, tost_holm: float, ratio: bool, direction: str) -> str:
    """better / worse / equivalent / inconclusive / not testable (the rule in the module's docstring)."""
    if not math.isfinite(p_holm):
        return "not testable"
    if p_holm < ALPHA:
        higher = effect > (1 if ratio else 0)
        return "better" if higher == (direction == "maximize") else "worse"
    if math.isfinite(tost_holm) and tost_holm < ALPHA:
        return "equivalent"
    return "inconclusive"


def verdict_p(outcome: str, p_holm: float, tost_holm: float | None) -> str:
    """The p-value a verdict rests on: the equivalence test's (TOST) for 'equivalent', else Welch's."""
    if outcome == "equivalent" and tost_holm is not None:
        return f"equivalence (TOST) Holm p = {fmt(tost_holm, 3)}"
    return f"Holm p = {fmt(p_holm, 3)}"


def _comparison_row(an: Analysis, a: str, b: str) -> dict:
    x, y = an.samples.get(a, []), an.samples.get(b, [])
    c = compare(x, y, an.scale, an.margin)
    return {"ratio": c.effect, "ratio_lo": c.lo, "ratio_hi": c.hi, "p_scale": c.p, "p_tost": c.p_tost,
            "seeds_for_2x": seeds_needed(c.sd_pooled, an.scale, summarize(y, an.scale).center)}


def _judge(an: Analysis, rows: list[dict]) -> None:
    for r, q, t in zip(rows, holm([r["p_scale"] for r in rows]), holm([r["p_tost"] for r in rows])):
        r["p_scale_holm"], r["p_tost_holm"] = q, t
        r["outcome"] = outcome(an, r["ratio"], q, t)


def significance(an: Analysis) -> Table:
    """Each cell against the reference: the raw-scale test as before (columns kept), then the comparison on the
    analysis scale, its TOST and the verdict (outcome)."""
    ref = an.samples.get(an.reference, [])
    rows = []
    for cell in an.cells:
        if cell == an.reference:
            continue
        x = an.samples.get(cell, [])
        stat, p = two_sample_test(x, ref, an.test)
        diff, half = welch_difference(x, ref)
        rows.append({"cell": cell, "reference": an.reference, "metric": an.primary, "n": len(x), "n_ref": len(ref),
                     "mean": float(np.mean(x)) if x else math.nan,
                     "mean_ref": float(np.mean(ref)) if ref else math.nan, "difference": diff,
                     "difference_ci95": half, "test": an.test, "statistic": stat, "p": p,
                     **_comparison_row(an, cell, an.reference)})
    for r, q in zip(rows, holm([r["p"] for r in rows])):
        r["p_holm"] = q
        r["significant"] = bool(math.isfinite(q) and q < ALPHA)
        r["verdict"] = _raw_verdict(an, r)
    _judge(an, rows)
    cols = ["cell", "reference", "metric", "n", "n_ref", "mean", "mean_ref", "difference", "difference_ci95", "test",
            "statistic", "p", "p_holm", "significant", "verdict", "scale", "ratio", "ratio_lo", "ratio_hi", "p_scale",
            "p_scale_holm", "p_tost", "p_tost_holm", "margin_lo", "margin_hi", "outcome", "seeds_for_2x"]
    raw = pd.DataFrame([{**r, "scale": an.scale.name, "margin_lo": an.margin[0], "margin_hi": an.margin[1]}
                        for r in rows], columns=cols)
    display = pd.DataFrame([{
        "cell": r["cell"], f"{an.scale.effect} to {an.reference} (95% CI)": effect_text(an, r),
        "p (Holm)": fmt(r["p_scale_holm"], 3), "equivalence p (TOST, Holm)": fmt(r["p_tost_holm"], 3),
        "verdict": r["outcome"], "seeds for 2x": seeds_text(r["seeds_for_2x"]) if r["outcome"] == "inconclusive"
        else "", "n / n ref": f"{r['n']} / {r['n_ref']}",
        f"raw difference (95% CI), {an.test} p (Holm)": f"{pm(r['difference'], r['difference_ci95'])}, "
                                                         f"{fmt(r['p_holm'], 3)}"} for _, r in raw.iterrows()])
    strong = [i for i, o in enumerate(raw["outcome"]) if o in ("better", "worse")] if len(raw) else []
    return Table("significance", raw, display, strong_rows=strong)


def _raw_verdict(an: Analysis, r: dict) -> str:
    """The raw-scale sentence of the CSV's `verdict` column, as before (the report's verdict is `outcome`)."""
    if not math.isfinite(r["p_holm"]):
        return "not testable (fewer than 2 seeds, or no spread)"
    if not r["significant"]:
        return f"no significant difference from {an.reference}"
    lower = r["mean"] < r["mean_ref"]
    good = lower if an.direction == "minimize" else not lower
    return f"significantly {'better' if good else 'worse'} than {an.reference}"


def effect_text(an: Analysis, r) -> str:
    if not math.isfinite(r["ratio"]):
        return "—"
    unit = "×" if an.scale.ratio else ""
    inner = f" {interval(r['ratio_lo'], r['ratio_hi'])}" if math.isfinite(r["ratio_lo"]) else ""
    return f"{fmt(r['ratio'], 3)}{unit}{inner}"


def seeds_text(n: float) -> str:
    if not isinstance(n, (int, float)) or math.isnan(n):
        return "—"
    return f"> {1000}" if math.isinf(n) else str(int(n))


def pairs(an: Analysis) -> Table:
    """All pairs of cells with seeds (a against b, a before b in the sweep's order), one Holm family."""
    cells = [c for c in an.cells if an.samples.get(c)]
    rows = [{"a": a, "b": b, "metric": an.primary, "n_a": len(an.samples[a]), "n_b": len(an.samples[b]),
             **_comparison_row(an, a, b)} for i, a in enumerate(cells) for b in cells[i + 1:]]
    _judge(an, rows)
    cols = ["a", "b", "metric", "n_a", "n_b", "scale", "ratio", "ratio_lo", "ratio_hi", "p_scale", "p_scale_holm",
            "p_tost", "p_tost_holm", "margin_lo", "margin_hi", "outcome", "seeds_for_2x"]
    raw = pd.DataFrame([{**r, "scale": an.scale.name, "margin_lo": an.margin[0], "margin_hi": an.margin[1]}
                        for r in rows], columns=cols)
    display = pd.DataFrame([{"a": r["a"], "b": r["b"], f"{an.scale.effect} a/b (95% CI)": effect_text(an, r),
                             "p (Holm)": fmt(r["p_scale_holm"], 3), "TOST p (Holm)": fmt(r["p_tost_holm"], 3),
                             "verdict for a": r["outcome"], "seeds for 2x": seeds_text(r["seeds_for_2x"])}
                            for _, r in raw.iterrows()])
    return Table("pairs", raw, display)


FLIP = {"better": "worse", "worse": "better"}


def verdict_matrix(an: Analysis) -> pd.DataFrame:
    """cell x cell: the row cell's verdict against the column cell ('' on the diagonal)."""
    raw = an.tables["pairs"].raw
    cells = [c for c in an.cells if an.samples.get(c)]
    m = pd.DataFrame("", index=cells, columns=cells)
    for r in raw.itertuples():
        m.loc[r.a, r.b] = r.outcome
        m.loc[r.b, r.a] = FLIP.get(r.outcome, r.outcome)
    return m


def standing(an: Analysis) -> dict:
    """The summary's verdict: {"winner": cell or None, "leader": best-centred cell, "tied": cells the leader does
    not beat (the leader first), "inconclusive": [(a, b, seeds_for_2x)] of every inconclusive pair, those among
    the tied first}."""
    cells = [c for c in an.cells if an.samples.get(c)]
    if not cells:
        return {"winner": None, "leader": None, "tied": [], "inconclusive": []}
    centers = {c: summarize(an.samples[c], an.scale).center for c in cells}
    sign = 1 if an.direction == "minimize" else -1
    leader = min(cells, key=lambda c: sign * centers[c] if math.isfinite(centers[c]) else math.inf)
    m = verdict_matrix(an)
    beats_all = [c for c in cells if len(cells) > 1 and all(m.loc[c, o] == "better" for o in cells if o != c)]
    winner = beats_all[0] if beats_all else None
    tied = [leader] + [c for c in cells if c != leader and m.loc[leader, c] != "better"]
    raw = an.tables["pairs"].raw
    inconclusive = sorted(((r.a, r.b, r.seeds_for_2x) for r in raw.itertuples() if r.outcome == "inconclusive"),
                          key=lambda p: not (p[0] in tied and p[1] in tied))  # the leaders' pairs first
    return {"winner": winner, "leader": leader, "tied": tied if winner is None else [winner],
            "inconclusive": inconclusive, "centers": centers}


def scale_sentence(an: Analysis) -> str:
    """The one sentence that states the scale and why."""
    return (f"{label(an.primary)} is analysed on the {an.scale.describe()}, because {an.scale.reason}; the raw "
            "means and t-intervals stay in the CSVs.")
