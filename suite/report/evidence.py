"""Per-seed evidence on the leaderboard (issue 21, points 1, 3 and 5): each cell on its analysis scale (geometric
mean and multiplicative interval for errors), every seed's value, diverged and failed seeds counted (never
silently left out of n), the empirical baseline on the fixed test set beside the formula's, and "beats baseline"
judged against the stricter of the two. The raw-scale columns of the leaderboard stay as they were.
"""
from __future__ import annotations

import math

import pandas as pd

from .data import original_run_id
from .scale import scale_for, summarize
from .tables import (QUALITATIVE, Analysis, diverged_confirmations, failed_confirmations, fmt, interval, label,
                            leaderboard_display, slug)


def _runs(an: Analysis, cell: str) -> pd.DataFrame:
    return an.confirmed[an.confirmed["cell"] == cell] if len(an.confirmed) else an.confirmed


def seed_values(an: Analysis) -> pd.DataFrame:
    """seeds.csv: one row per seed of each cell's confirmed configuration, diverged seeds included (value NaN)."""
    rows = []
    for cell in an.cells:
        for _, r in _runs(an, cell).iterrows():
            rows.append({"cell": cell, "seed": r["seed"], "run_id": original_run_id(r), "status": "finished",
                         "metric": an.primary, "value": r.get(an.col(an.primary), math.nan),
                         "step": r.get("steps", math.nan)})
        for _, r in diverged_confirmations(an, cell).iterrows():
            rows.append({"cell": cell, "seed": r["seed"], "run_id": original_run_id(r), "status": "diverged",
                         "metric": an.primary, "value": math.nan, "step": r.get("stopped_at", math.nan)})
    return pd.DataFrame(rows, columns=["cell", "seed", "run_id", "status", "metric", "value", "step"])


def baselines(an: Analysis) -> dict:
    """{"metric", "formula", "empirical", "used", "higher"}: the stricter of the formula's value and the baseline
    predictor scored on the fixed test set (the lower for an error, the higher for an accuracy: ``higher``);
    empirical NaN where the task does not compute it."""
    task = an.data.task
    if task is None:
        return {}
    try:
        empirical = task.empirical_baseline()
    except Exception:  # e.g. a corpus that is not on this machine
        empirical = None
    empirical = math.nan if empirical is None else float(empirical)
    formula = float(task.baseline.value)
    higher = bool(getattr(task.baseline, "higher_is_better", False))
    used = stricter(formula, empirical, higher)
    return {"metric": task.baseline.metric, "formula": formula, "empirical": empirical, "used": used,
            "higher": higher}


def stricter(formula: float, empirical: float | None, higher: bool) -> float:
    """The baseline a cell must beat: the higher of the two for an accuracy, the lower for an error."""
    if empirical is None or not math.isfinite(empirical):
        return formula
    return max(formula, empirical) if higher else min(formula, empirical)


def beats(summary, used: float, higher: bool = False) -> str:
    """yes: the whole interval on the analysis scale is on the good side of the stricter baseline (below an error,
    above an accuracy); unsure: only its centre."""
    if summary.n == 0 or not math.isfinite(summary.center):
        return "—"
    if higher:
        if math.isfinite(summary.lo) and summary.lo > used:
            return "yes"
        return "unsure" if summary.center > used else "no"
    if math.isfinite(summary.hi) and summary.hi < used:
        return "yes"
    return "unsure" if summary.center < used else "no"


def seeds_text(values: list[str]) -> str:
    return ", ".join(values) if values else "—"


def add_evidence(an: Analysis) -> None:
    """Extend the leaderboard (raw columns kept): scale columns, per-seed values, seed counts, baselines; rank
    by the analysis scale; bold only a cell that beats every other (set later by the summary's standing)."""
    table = an.tables["leaderboard"]
    raw = table.raw
    ours = raw["source"] == "this sweep"
    key = slug(an.primary)
    base = baselines(an)
    split = an.primary.partition("/")[0]
    bmetric = f"{split}/{base['metric']}" if base else None
    bscale = scale_for(bmetric) if bmetric else None
    seeds = an.frames.get("seeds")
    seeds = seed_values(an) if seeds is None else seeds
    for col in ("scale", f"{key}_seeds"):
        raw[col] = pd.Series([""] * len(raw), index=raw.index, dtype=object)
    for col in (f"{key}_center", f"{key}_lo", f"{key}_hi", f"{key}_logmean", f"{key}_logsd", "n_diverged",
                "n_failed", "n_planned"):
        raw[col] = math.nan
    raw["beats_baseline"] = raw["beats_baseline"].astype(object)
    for i in raw.index[ours]:
        cell = raw.at[i, "cell"]
        s = summarize(an.samples.get(cell, []), an.scale)
        mine = seeds[seeds["cell"] == cell].sort_values("seed")
        raw.loc[i, ["scale", f"{key}_center", f"{key}_lo", f"{key}_hi", f"{key}_logmean", f"{key}_logsd"]] = \
            [an.scale.name, s.center, s.lo, s.hi, s.log_mean, s.log_sd]
        raw.loc[i, f"{key}_seeds"] = ";".join(  # seed:value, 'diverged' for a seed without a value
            f"{int(r.seed)}:{'diverged' if r.status == 'diverged' else repr(float(r.value))}"
            for r in mine.itertuples())
        raw.loc[i, ["n_diverged", "n_failed", "n_planned"]] = [
            int((mine["status"] == "diverged").sum()),
            len(failed_confirmations(an, cell)) - len(diverged_confirmations(an, cell)), len(mine)]
        if base:
            col = an.col(bmetric)
            values = _runs(an, cell)[col].tolist() if col in an.confirmed else []
            raw.loc[i, "beats_baseline"] = beats(summarize(values, bscale), base["used"], base["higher"])
    if base:
        for name in ("formula", "empirical", "used"):
            raw.loc[ours, f"baseline_{name}"] = base[name]
    sign = 1 if an.direction == "minimize" else -1
    order = raw[ours].assign(_k=sign * raw.loc[ours, f"{key}_center"]).sort_values("_k", na_position="last").index
    rows = [raw.loc[order], raw[~ours]]
    if base and math.isfinite(base["empirical"]):  # beside the formula's row: the same predictor on the test set
        rows.append(pd.DataFrame([{"cell": "baseline on the test set", "source": "task baseline",
                                   f"test_{base['metric']}_mean": base["empirical"],
                                   "note": "the baseline's predictor scored on the fixed test set", "citation": "",
                                   "beats_baseline": "", "solved": "", "seeds_solved": ""}]))
    raw = pd.concat(rows).reset_index(drop=True)
    for col in ("n_diverged", "n_failed", "n_planned"):
        raw[col] = pd.to_numeric(raw[col]).round().astype("Int64")
    table.raw = raw
    table.display = _display(an, raw, base)
    table.strong_rows = []
    n_ours = int(ours.sum())
    table.muted_rows = list(range(n_ours, len(table.display)))


def _display(an: Analysis, raw: pd.DataFrame, base: dict) -> pd.DataFrame:
    shown = raw[raw["note"] != QUALITATIVE].reset_index(drop=True)
    split = an.primary.partition("/")[0]
    extra = f"{split}/{base['metric']}" if base and base["metric"] != an.short else None
    display = leaderboard_display(an, shown, extra)
    key = slug(an.primary)
    name = {"log": "geometric mean", "logit": "mean on logit scale", "raw": "mean"}[an.scale.name]
    centre, seeds_col, n_col = [], [], []
    for _, r in shown.iterrows():
        ours = r["source"] == "this sweep"
        c, lo, hi = r.get(f"{key}_center"), r.get(f"{key}_lo"), r.get(f"{key}_hi")
        if ours and isinstance(c, float) and math.isfinite(c):
            centre.append(fmt(c) + (f" {interval(lo, hi)}" if math.isfinite(lo) else ""))
        else:
            centre.append(fmt(r.get(f"{key}_mean")) if not ours else "—")
        seeds_col.append(_seed_list(r.get(f"{key}_seeds")) if ours else "—")
        n_col.append(_n_text(r) if ours else "—")
    display.insert(1, f"{label(an.primary)}, {name} (95% CI)", centre)
    display.insert(2, "per seed", seeds_col)
    display["n seeds"] = n_col
    if base and math.isfinite(base["empirical"]):
        display["beats baseline"] = [v if v else "—" for v in shown["beats_baseline"]]
    return display


def _seed_list(text) -> str:
    if not isinstance(text, str) or not text:
        return "—"
    out = []
    for part in text.split(";"):
        _, _, value = part.partition(":")
        out.append("diverged" if value == "diverged" else fmt(float(value), 3))
    return ", ".join(out)


def _n_text(r) -> str:
    n, div = r["n"], r.get("n_diverged")
    if pd.isna(div) or not div:
        return fmt(n)
    return f"{fmt(n)} of {fmt(r['n_planned'])} ({fmt(div)} diverged)"
