"""Claims from data (issue 21, point 5): every sentence of a report's summary is a claim generated from the
analysis tables, written with its numbers and the table and columns it came from to ``claims.json``;
:func:`check_claims` recomputes every claim of a written report from its CSVs alone (per-seed values included),
so a sentence cannot drift from the data behind it.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from .gates import RULE, claims as gate_claims
from .stats import ALPHA
from .tables import Analysis, fmt, interval, label, slug
from .verdicts import seeds_text, standing, verdict_p

MAX_PAIRS = 12  # inconclusive pairs named in the summary; the rest are in pairs.csv
REACHES = -2.0  # log10 gradient ratio over which the gradient 'reaches the start' (less than a hundredfold loss)


def claim(cid: str, text: str, numbers: dict, table: str, columns: list[str], **rows) -> dict:
    return {"id": cid, "text": text, "numbers": numbers, "source": {"table": f"{table}.csv", "columns": columns,
                                                                     **rows}}


# ---------------------------------------------------------------------------------------------- generate
def build_claims(an: Analysis, task_title: str) -> dict:
    """{"meta": how to recompute, "claims": [...]} from the analysis tables; the summary prints their texts."""
    key = slug(an.primary)
    meta = {"metric": an.primary, "scale": an.scale.name, "n_eval": an.scale.n_eval, "margin": list(an.margin),
            "alpha": ALPHA, "direction": an.direction, "reference": an.reference, "key": key}
    lb = an.tables["leaderboard"].raw
    ours = lb[lb["source"] == "this sweep"]
    if not any(an.samples.get(c) for c in an.cells):
        return {"meta": meta, "claims": [claim("no_data", "No confirmation run has finished yet, so no cell can "
                                                          "be compared.", {}, "leaderboard", ["n"])]}
    out = [_standing_claim(an, task_title, ours, key)]
    out += _pair_claims(an)
    out += _reference_claims(an)
    out += [c for c in (_baseline_claim(an, ours), _diverged_claim(an, ours)) if c]
    out += _why_claims(an)
    return {"meta": meta, "claims": out}


def _standing_claim(an: Analysis, title: str, ours: pd.DataFrame, key: str) -> dict:
    st = standing(an)
    row = ours.set_index("cell").loc[st["winner"] or st["leader"]]
    value = f"{label(an.primary)} {fmt(row[f'{key}_center'])} {interval(row[f'{key}_lo'], row[f'{key}_hi'])}"
    what = {"log": "geometric mean", "logit": "mean on the logit scale", "raw": "mean"}[an.scale.name]
    if st["winner"]:
        text = (f"**{st['winner']} beats every other cell** on {title}: {value}, {what} and 95% interval over "
                f"{fmt(row['n'])} seeds; each pairwise comparison is significant after Holm's correction.")
    elif len(st["tied"]) == 1:
        text = f"Only {st['leader']} has results on {title}: {value}."
    else:
        others = st["tied"][1:]
        text = (f"**No single cell is best** on {title}: the leader {st['leader']} ({value}, {what} and 95% "
                f"interval over {fmt(row['n'])} seeds) "
                + (f"is not separated from {', '.join(others)}" if others else "beats no other cell")
                + f" among all {len(an.cells) * (len(an.cells) - 1) // 2} pairs of cells, Holm-corrected as one "
                  "family (a comparison against the reference alone, below, is a smaller family and can separate "
                  "more); no cell beats every other.")
    return claim("standing", text, {"winner": st["winner"], "leader": st["leader"], "tied": st["tied"],
                                    "center": row[f"{key}_center"], "lo": row[f"{key}_lo"], "hi": row[f"{key}_hi"]},
                 "leaderboard", [f"{key}_center", f"{key}_lo", f"{key}_hi", f"{key}_seeds"], also="pairs.csv")


def _pair_claims(an: Analysis) -> list[dict]:
    st = standing(an)
    pairs = st["inconclusive"]
    if not pairs:
        return []
    shown = "; ".join(f"{a} vs {b}: {seeds_text(n)}" for a, b, n in pairs[:MAX_PAIRS])
    more = f"; {len(pairs) - MAX_PAIRS} more in pairs.csv" if len(pairs) > MAX_PAIRS else ""
    text = (f"Inconclusive pairs, with the seeds per cell their observed spread implies a 2x "
            f"{'ratio' if an.scale.name == 'log' else 'odds ratio' if an.scale.name == 'logit' else 'difference'} "
            f"would need to be separated at 80% power (α = {ALPHA}, two-sided): {shown}{more}.")
    return [claim("inconclusive_pairs", text, {"pairs": [[a, b, n] for a, b, n in pairs]}, "pairs",
                  ["a", "b", "outcome", "seeds_for_2x"])]


def _reference_claims(an: Analysis) -> list[dict]:
    sig = an.tables["significance"].raw
    if sig.empty:
        return []
    groups = {o: [r for r in sig.itertuples() if r.outcome == o] for o in ("better", "worse", "equivalent",
                                                                               "inconclusive", "not testable")}
    effect = an.scale.effect
    parts = [f"{o} than {an.reference}: " if o in ("better", "worse") else f"{o}: " for o in groups]
    shown = "; ".join(p + ", ".join(f"{r.cell} ({effect} {fmt(r.ratio, 3)}, "
                                    f"{verdict_p(r.outcome, r.p_scale_holm, r.p_tost_holm)})"
                                    for r in rows) for p, (o, rows) in zip(parts, groups.items()) if rows)
    text = (f"Against the reference {an.reference} (Welch's t-test on the {an.scale.name} scale, Holm-corrected; "
            f"equivalent = the {effect} inside [{fmt(an.margin[0])}, {fmt(an.margin[1])}] by two one-sided "
            f"tests): {shown}.")
    return [claim("reference", text, {r.cell: {"outcome": r.outcome, "ratio": r.ratio, "p_holm": r.p_scale_holm,
                                               "p_tost_holm": r.p_tost_holm} for r in sig.itertuples()}, "significance",
                  ["cell", "ratio", "p_scale_holm", "p_tost_holm", "outcome"])]


def _baseline_claim(an: Analysis, ours: pd.DataFrame) -> dict | None:
    task = an.data.task
    if task is None or "baseline_used" not in ours:
        return None
    beat = list(ours.loc[ours["beats_baseline"] == "yes", "cell"])
    used, formula, emp = (ours[c].iloc[0] for c in ("baseline_used", "baseline_formula", "baseline_empirical"))
    b = task.baseline
    emp_text = f", the baseline predictor scores {fmt(emp)} on the fixed test set" if math.isfinite(emp) else \
        " (no empirical value for this task)"
    text = (f"{len(beat)} of {len(ours)} cells beat the baseline ({label(b.metric)}: the formula gives {fmt(formula)}"
            f"{emp_text}; the stricter, {fmt(used)}, is used) with their whole 95% interval"
            + (f": {', '.join(beat)}." if beat else "."))
    if task.solved:
        solved = list(ours.loc[ours["solved"] == "yes", "cell"])
        text += (f" {len(solved)} of {len(ours)} meet the solved criterion ({task.solved}) at their mean"
                 + (f": {', '.join(solved)}." if solved else "."))
    return claim("baseline", text, {"beat": beat, "used": used, "formula": formula, "empirical": emp,
                                    "metric": b.metric, "higher": bool(b.higher_is_better)}, "leaderboard",
                 ["beats_baseline", "baseline_used", "baseline_formula", "baseline_empirical"])


def _diverged_claim(an: Analysis, ours: pd.DataFrame) -> dict | None:
    bad = ours[ours["n_diverged"].fillna(0) > 0]
    if bad.empty:
        return None
    shown = ", ".join(f"{r.cell} {int(r.n_diverged)} of {int(r.n_planned)}" for r in bad.itertuples())
    return claim("diverged", f"Seeds that diverged (loss NaN/inf; counted, not solved, and outside the intervals): "
                             f"{shown}.", {r.cell: int(r.n_diverged) for r in bad.itertuples()}, "seeds",
                 ["cell", "status"])


def _why_claims(an: Analysis) -> list[dict]:
    out = []
    col = an.col("diag/grad_decay")
    if len(an.confirmed) and col in an.confirmed:
        decay = an.confirmed.groupby("cell")[col].mean().dropna()
        if len(decay):
            shown = ", ".join(f"{c} {fmt(decay[c], 3)}" for c in an.cells if c in decay)
            out.append(claim("grad_decay", "Evidence, gradient flow: after training, log10 of the gradient reaching "
                                           "the first 10 time steps over that at the last 10 (0 = nothing lost, −2 = "
                                           f"a hundredfold vanishing), mean over seeds: {shown}.",
                             {c: float(decay[c]) for c in decay.index}, "runs", ["cell", "confirmed",
                                                                                 "diag/grad_decay"]))
    out += _grad_solving_claims(an)
    out += _gate_claims(an)
    out += chrono_claims(an)
    imp = an.tables["importance"].raw
    if len(imp):
        top = imp.loc[imp.groupby("cell")["importance"].idxmax()]
        names = sorted(set(top["param"]))
        text = f"The most important hyperparameter ({an.evaluator.split(' (')[0]}) is " + (
            f"{names[0]} for every cell tested." if len(names) == 1 else
            ", ".join(f"{r.param} for {r.cell}" for r in top.itertuples()) + ".")
        out.append(claim("importance", text, {r.cell: r.param for r in top.itertuples()}, "importance",
                         ["cell", "param", "importance"]))
    return out


def solving(ours: pd.DataFrame) -> tuple[str, dict[str, bool]]:
    """What "solving" means for the gradient claim and who did: the task's solved criterion at the mean where it
    has one, else beating the baseline with the whole interval (leaderboard columns solved, beats_baseline)."""
    solved = ours["solved"].fillna("").astype(str)
    if solved.isin(["yes", "no"]).any():
        return "solved (the task's criterion, at the mean over seeds)", dict(zip(ours["cell"], solved == "yes"))
    beats = ours["beats_baseline"].fillna("").astype(str) == "yes"
    return "beat the baseline (whole 95% interval)", dict(zip(ours["cell"], beats))


def grad_groups(decay: dict[str, float], solved: dict[str, bool]) -> dict[str, list[str]]:
    """Cells by (gradient reaches the start, solved); the two mixed groups are the exceptions."""
    groups: dict[str, list[str]] = {"reaches_solved": [], "vanishes_solved": [], "reaches_unsolved": [],
                                    "vanishes_unsolved": []}
    for cell, v in decay.items():
        if cell in solved:
            reach = "reaches" if v > REACHES else "vanishes"
            groups[f"{reach}_{'solved' if solved[cell] else 'unsolved'}"].append(cell)
    return groups


def _grad_solving_claims(an: Analysis) -> list[dict]:
    col = an.col("diag/grad_decay")
    if not len(an.confirmed) or col not in an.confirmed:
        return []
    decay = an.confirmed.groupby("cell")[col].mean().dropna()
    lb = an.tables["leaderboard"].raw
    what, solved = solving(lb[lb["source"] == "this sweep"])
    decay = {c: float(decay[c]) for c in an.cells if c in decay and c in solved}
    if not decay:
        return []
    g = grad_groups(decay, solved)

    def named(cells: list[str]) -> str:
        return ", ".join(f"{c} ({fmt(decay[c], 3)})" for c in cells) if cells else "none"

    text = (f"Evidence, gradient flow and solving: the gradient reaches the start when its log10 ratio between the "
            f"first and the last time steps (diag/grad_decay, above) is over −{fmt(-REACHES)} (less than a "
            f"hundredfold loss over the sequence); 'solving' = {what}. Reaches the start and solves: "
            f"{named(g['reaches_solved'])}; neither: {named(g['vanishes_unsolved'])}. "
            f"Exceptions, the gradient reaches the start but the cell does not solve: {named(g['reaches_unsolved'])}; "
            f"solves with a vanishing gradient: {named(g['vanishes_solved'])}.")
    numbers = {"rule": REACHES, "solving": what, "groups": g}
    return [claim("grad_solving", text, numbers, "runs", ["cell", "confirmed", "diag/grad_decay"],
                  also="leaderboard.csv (solved, beats_baseline)")]


def _gate_claims(an: Analysis) -> list[dict]:
    g = an.tables["gates"].raw
    keep = g[g["keep_gate"] & (g["layer"] == "l0")] if len(g) else g
    if not len(keep):
        return []

    numbers: dict[str, dict] = {}
    for r in keep.itertuples():
        before = gate_claims(r.near0_start, r.near1_start, r.saturation_start)
        numbers[r.cell] = {"gate": r.gate, "chrono": r.chrono_init, "mostly_saturated": r.mostly_saturated,
                           "zeros_and_ones": r.zeros_and_ones, "mostly_saturated_start": before[0],
                           "zeros_and_ones_start": before[1]}

    def grouped(label, name=lambda cell, v: cell) -> str:  # by one label, in the table's order: "no → yes: gru, sgru"
        groups: dict[str, list[str]] = {}
        for cell, v in numbers.items():
            groups.setdefault(label(v), []).append(name(cell, v))
        return "; ".join(f"{k}: {', '.join(cells)}" for k, cells in groups.items())

    zeros_and_ones = grouped(lambda v: f"{v['zeros_and_ones_start']} → {v['zeros_and_ones']}")
    saturated = grouped(lambda v: f"{v['mostly_saturated_start']} → {v['mostly_saturated']}")
    chrono = grouped(lambda v: f"chrono {v['chrono']}", lambda cell, v: f"{cell} ({v['gate']})")
    text = (f"Evidence, gate use of the state-keeping gate (layer 0), before training → at the end: mostly zeros "
            f"and ones {zeros_and_ones}. Mostly saturated {saturated}. The confirmed runs' chrono initialisation: "
            f"{chrono} ({RULE}; the fractions near 0 and near 1, before and after, are in section 5 and gates.csv).")
    return [claim("gates", text, numbers, "gates", ["near0_start", "near0_end", "near1_start", "near1_end",
                                                    "saturation_start", "saturation_end", "chrono_init",
                                                    "mostly_saturated", "zeros_and_ones"])]


def chrono_rule(near0: float, near1: float, saturation: float) -> dict:
    """The gate claims' rule on one row of gates_chrono.csv."""
    mostly, both = gate_claims(near0, near1, saturation)
    return {"mostly_saturated": mostly, "zeros_and_ones": both}


def chrono_numbers(rows: pd.DataFrame) -> dict[str, dict]:
    """{cell: {chrono_init: the gate rule's verdicts and the runs}} from rows of gates_chrono.csv."""
    numbers: dict[str, dict] = {}
    for r in rows.itertuples():
        numbers.setdefault(r.cell, {})[r.chrono_init] = {**chrono_rule(r.near0_end, r.near1_end, r.saturation_end),
                                                         "runs": int(r.runs)}
    return numbers


def chrono_claims(an: Analysis) -> list[dict]:
    t = an.tables.get("gates_chrono")
    if t is None or not len(t.raw):
        return []
    numbers = chrono_numbers(t.raw)
    shown = []
    for cell, rows in t.raw.groupby("cell", sort=False):
        parts = []
        for r in rows.itertuples():
            v = numbers[cell][r.chrono_init]
            parts.append(f"chrono {'on' if r.chrono_init.lower() == 'true' else 'off'} ({v['runs']} runs): near 0 "
                         f"{fmt(r.near0_end, 3)}, near 1 {fmt(r.near1_end, 3)}, mostly saturated "
                         f"{v['mostly_saturated']}, mostly zeros and ones {v['zeros_and_ones']}")
        shown.append(f"{cell} ({rows['gate'].iloc[0]}) " + "; ".join(parts))
    text = ("Evidence, gate use with and without chrono initialisation (searched, so every run of a cell counts, "
            f"search runs included; the state-keeping gate at the end of each run): {' | '.join(shown)}.")
    return [claim("gates_chrono", text, numbers, "gates_chrono", ["cell", "chrono_init", "runs", "near0_end",
                                                                  "near1_end", "saturation_end"])]


def write_claims(out: Path, claims: dict) -> Path:
    path = out / "claims.json"
    path.write_text(json.dumps(claims, indent=1, default=_plain) + "\n", encoding="utf-8")
    return path


def _plain(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (np.bool_,)):
        return bool(value)
    return str(value)
