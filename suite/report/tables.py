"""The numbers of a comparison report, as pandas tables: the records (Table, Analysis), the one display format,
the leaderboard, the runs and the figure frames.

Every table keeps raw values (written to CSV as they are) and gets its display strings from :func:`fmt` alone,
so the HTML, the Markdown and the CSVs cannot disagree. What a cell scores is the mean over the seeds of its
confirmed configuration (the top-k configuration of its search whose confirmation runs did best on the
validation metric), with a Student-t interval (Greff et al. 2017; Melis et al. 2018 re-train the best
configuration with several seeds in the same way). The other tables are built by their own modules: verdicts
(:mod:`.verdicts`), per-seed evidence (:mod:`.evidence`), gates (:mod:`.gates`), tuning and fairness
(:mod:`.tuning`); :mod:`.analysis` computes them all.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from optuna.trial import TrialState

from .data import SweepData, original_run_id
from .keys import DEFAULT_EQUIVALENCE
from .stats import t_interval

DEFAULT_REFERENCE = "gru"  # the seed article's full GRU: what its simplified cell is measured against
QUALITATIVE = "qualitative result"
UPPER = {"mse": "MSE", "bpc": "BPC", "ppl": "perplexity", "acc": "accuracy", "loss": "loss"}


# ---------------------------------------------------------------------------------------------- formatting
def fmt(value, digits: int = 4) -> str:
    """The one display format of every number in every report file: 4 significant digits, '—' for missing,
    '−∞'/'∞' for infinities."""
    if isinstance(value, str):
        return value
    if value is None or pd.isna(value):
        return "—"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    v = float(value)
    if math.isinf(v):  # e.g. diag/grad_decay when no gradient at all reaches the first steps
        return "−∞" if v < 0 else "∞"
    if not math.isfinite(v):
        return "—"
    if abs(v) >= 1e12:  # a diverged run's loss or perplexity (1e21): digits no count or duration reaches
        return f"{v:.{digits}g}"
    if v.is_integer() or abs(v) >= 10 ** digits:  # no exponent for counts, parameters, seconds
        return f"{v:.0f}"
    return f"{v:.{digits}g}"


def interval(lo, hi) -> str:
    """A 95% interval as every report file prints it: '(1.08–1.17)', each end to 3 significant digits."""
    return f"({fmt(lo, 3)}–{fmt(hi, 3)})"


def pm(mean, half) -> str:
    """'mean ± half-width', or the mean alone when there is no interval (n < 2)."""
    if mean is None or not math.isfinite(float(mean)):
        return "—"
    return fmt(mean) if half is None or not math.isfinite(float(half)) else f"{fmt(mean)} ± {fmt(half)}"


def label(metric: str) -> str:
    """'test/mse' -> 'test MSE'."""
    split, _, name = metric.rpartition("/")
    return f"{split} {UPPER.get(name, name)}".strip()


def slug(metric: str) -> str:
    return metric.replace("/", "_")


@dataclass
class Table:
    """A table as written: raw values for the CSV, display strings for HTML and Markdown."""

    name: str  # the CSV file stem
    raw: pd.DataFrame
    display: pd.DataFrame
    caption: str = ""
    strong_rows: list[int] = field(default_factory=list)  # rows drawn emphasised (significant, best)
    muted_rows: list[int] = field(default_factory=list)  # rows that are not this sweep's (baseline, published)


# ---------------------------------------------------------------------------------------------- the analysis
@dataclass
class Analysis:
    data: SweepData
    cells: list[str]
    metric: str  # the sweep's objective, e.g. val/mse
    primary: str  # what is ranked and tested: the test-set metric where every confirmation run has one
    direction: str
    reference: str
    test: str = "welch"
    notes: list[str] = field(default_factory=list)
    confirmed: pd.DataFrame = None
    samples: dict = field(default_factory=dict)  # cell -> primary-metric values over seeds
    tables: dict[str, Table] = field(default_factory=dict)
    frames: dict[str, pd.DataFrame] = field(default_factory=dict)  # figure data, written as CSVs too
    progress: dict = field(default_factory=dict)
    evaluator: str = ""
    importance_notes: dict[str, str] = field(default_factory=dict)
    scale: Any = None  # the primary metric's analysis scale (.scale.Scale)
    margin: tuple = DEFAULT_EQUIVALENCE  # equivalence margin on the ratio (sweep key report.equivalence)

    @property
    def short(self) -> str:
        return self.metric.rpartition("/")[2]

    @property
    def better(self):
        return min if self.direction == "minimize" else max

    @property
    def has_solved_criterion(self) -> bool:
        """Whether the task says when it is solved (perplexity has no ceiling to reach: no criterion)."""
        return self.data.task is not None and self.data.task.solved is not None

    def col(self, metric: str) -> str:
        return f"metrics.{metric}"


def progress(data: SweepData) -> dict:
    """Finished/planned search trials and confirmation runs over every cell, and whether the sweep is done."""
    done = {TrialState.COMPLETE, TrialState.PRUNED}
    search = sum(min(sum(t.state in done for t in data.trials[c]["search"]), data.spec["trials"])
                 for c in data.spec["cells"])
    running = sum(t.state == TrialState.RUNNING for c in data.spec["cells"]
                  for phase in ("search", "confirm") for t in data.trials[c][phase])
    planned_default = data.spec["top_k"] * max(1, len(data.spec["seeds"]))
    planned = sum(data.confirm_planned[c] if data.confirm_planned[c] is not None else planned_default
                  for c in data.spec["cells"])
    confirm = sum(len({(t.user_attrs.get("rank"), t.user_attrs.get("seed")) for t in data.trials[c]["confirm"]
                       if t.state in done}) for c in data.spec["cells"])
    total_search = data.spec["trials"] * len(data.spec["cells"])
    finished = search >= total_search and confirm >= planned and not running \
        and all(data.confirm_planned[c] is not None for c in data.spec["cells"])
    return {"search_done": search, "search_total": total_search, "confirm_done": confirm,
            "confirm_total": planned, "running": running, "finished": finished,
            "status": data.parent.info.status}


def confirmed_runs(an: Analysis) -> pd.DataFrame:
    """Finished confirmation runs of each cell's confirmed configuration: among the top-k ranks, the one with the
    best mean validation metric over its seeds (the test set plays no part in choosing)."""
    runs = an.data.runs
    col = an.col(an.metric)
    if not len(runs) or col not in runs:
        return runs.iloc[0:0]
    confirm = runs[(runs["phase"] == "confirm") & (runs["status"] == "FINISHED") & runs[col].notna()]
    chosen = []
    for cell, group in confirm.groupby("cell"):
        means = group.groupby("rank")[col].mean()
        best = means.idxmin() if an.direction == "minimize" else means.idxmax()
        chosen.append(group[group["rank"] == best])
    return pd.concat(chosen).sort_values(["cell", "seed"]) if chosen else confirm.iloc[0:0]


# ---------------------------------------------------------------------------------------------- 1. leaderboard
def _interval(an: Analysis, cell: str, metric: str) -> tuple[float, float, int]:
    rows = an.confirmed[an.confirmed["cell"] == cell] if len(an.confirmed) else an.confirmed
    col = an.col(metric)
    return t_interval(rows[col]) if col in rows and len(rows) else (math.nan, math.nan, 0)


def _best_search(an: Analysis, cell: str) -> float:
    values = [t.value for t in an.data.trials[cell]["search"] if t.value is not None and math.isfinite(t.value)]
    return an.better(values) if values else math.nan


def _baseline_verdict(an: Analysis, mean: float, half: float, n: int) -> str:
    """Whether the cell beats the task's baseline on the baseline's own metric: yes when the whole 95% interval
    is on the better side of it (below a loss, above an accuracy), unsure when only the mean is."""
    task = an.data.task
    if task is None or n == 0 or not math.isfinite(mean):
        return "—"
    sign = -1.0 if task.baseline.higher_is_better else 1.0  # compare as lower-is-better
    mean, value = sign * mean, sign * task.baseline.value
    if math.isfinite(half) and mean + half < value:
        return "yes"
    return "unsure" if mean < value else "no"


def _solved(an: Analysis, cell: str) -> tuple[str, str]:
    """(solved at the mean, seeds solved k/n) by the task's own criterion (Task.is_solved), on the split that
    is ranked, whatever metric the sweep optimised."""
    task = an.data.task
    runs = an.confirmed[an.confirmed["cell"] == cell] if len(an.confirmed) else an.confirmed
    if not an.has_solved_criterion or not len(runs):
        return "—", "—"
    prefix = f"metrics.{an.primary.partition('/')[0]}/"
    cols = {c[len(prefix):]: c for c in runs.columns if c.startswith(prefix) and runs[c].notna().any()}
    means = {name: runs[col].mean() for name, col in cols.items()}
    k = sum(task.is_solved({name: row[col] for name, col in cols.items()}) for _, row in runs.iterrows())
    # a seed that diverged did not solve the task: it counts in the denominator (1/1 for a cell that diverged on
    # two seeds of three would read as robust)
    return ("yes" if task.is_solved(means) else "no"), f"{k}/{len(runs) + len(diverged_confirmations(an, cell))}"


def diverged_confirmations(an: Analysis, cell: str) -> pd.DataFrame:
    """Confirmation runs of `cell` whose loss went NaN/inf (their trial counts as finished and is not re-run;
    a crashed run, also FAILED, is re-run and so not counted here)."""
    bad = failed_confirmations(an, cell)
    if not len(bad) or "tags.failure.reason" not in bad:
        return bad.iloc[:0]
    bad = bad[bad["tags.failure.reason"].fillna("").str.startswith("diverged")]
    ranks = set(an.confirmed.loc[an.confirmed["cell"] == cell, "rank"]) if len(an.confirmed) else set()
    return bad[bad["rank"].isin(ranks)] if ranks else bad  # the confirmed configuration's seeds only


def leaderboard(an: Analysis) -> Table:
    """One row per cell (mean ± 95% t-interval over seeds), best first; then the baseline and published numbers."""
    task = an.data.task
    bl = task.baseline.metric if task is not None else None
    split = an.primary.partition("/")[0]
    extra = f"{split}/{bl}" if bl and bl != an.short else None  # e.g. copy: ranked on acc, baseline in loss
    rows = [_cell_row(an, cell, extra) for cell in an.cells]
    rank = f"{slug(an.primary)}_mean"
    sign = 1 if an.direction == "minimize" else -1
    rows.sort(key=lambda r: (not math.isfinite(r[rank]), sign * r[rank] if math.isfinite(r[rank]) else 0))
    ours = len(rows)
    rows += reference_rows(an, extra)
    raw = pd.DataFrame(rows)
    for col in ("n", "n_params", "trials", "budget"):
        raw[col] = pd.to_numeric(raw[col]).round().astype("Int64")
    shown = raw[raw["note"] != QUALITATIVE]  # qualitative findings are listed under the table instead
    strong = [0] if ours and math.isfinite(rows[0][rank]) else []
    return Table("leaderboard", raw, leaderboard_display(an, shown, extra), strong_rows=strong,
                 muted_rows=list(range(ours, len(shown))))


def _cell_row(an: Analysis, cell: str, extra: str | None) -> dict:
    val = _interval(an, cell, an.metric)
    tst = _interval(an, cell, "test/" + an.short)
    primary = _interval(an, cell, an.primary)
    row = {"cell": cell, "source": "this sweep", "n": primary[2],
           f"{slug(an.metric)}_mean": val[0], f"{slug(an.metric)}_ci95": val[1],
           f"test_{an.short}_mean": tst[0], f"test_{an.short}_ci95": tst[1]}
    against = _interval(an, cell, extra) if extra else primary  # the baseline's own metric
    if extra:
        row.update({f"{slug(extra)}_mean": against[0], f"{slug(extra)}_ci95": against[1]})
    runs = an.confirmed[an.confirmed["cell"] == cell] if len(an.confirmed) else an.confirmed
    solved, seeds_solved = _solved(an, cell)
    ms = float((1000 * runs["train_s"] / runs["steps"]).mean()) if len(runs) else math.nan
    return {**row, "n_params": float(runs["n_params"].median()) if len(runs) else math.nan,
            "ms_per_step": ms, "trials": _finished(an, cell), "budget": an.data.spec["trials"],
            "best_search": _best_search(an, cell), "beats_baseline": _baseline_verdict(an, *against),
            "solved": solved, "seeds_solved": seeds_solved, "note": _diverged_note(an, cell), "citation": ""}


def _finished(an: Analysis, cell: str) -> int:
    return min(an.data.spec["trials"], sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED)
                                           for t in an.data.trials[cell]["search"]))


def failed_confirmations(an: Analysis, cell: str) -> pd.DataFrame:
    runs = an.data.runs
    if not len(runs):
        return runs
    return runs[(runs["cell"] == cell) & (runs["phase"] == "confirm") & (runs["status"] == "FAILED")]


def _diverged_note(an: Analysis, cell: str) -> str:
    bad = failed_confirmations(an, cell)
    diverged = len(diverged_confirmations(an, cell))
    if not len(bad):
        return ""
    return f"{len(bad)} confirmation run(s) diverged or failed (excluded from the mean" + \
        (f"; {diverged} diverged, counted as not solved)" if diverged else ")")


def reference_rows(an: Analysis, extra: str | None) -> list[dict]:
    """The task's baseline and the published numbers, placed in the column of their metric and marked."""
    task = an.data.task
    if task is None:
        return []
    b = task.baseline
    rows = []
    base = {"n": math.nan, "n_params": math.nan, "ms_per_step": math.nan, "trials": math.nan,
            "budget": math.nan, "best_search": math.nan, "beats_baseline": "", "solved": "", "seeds_solved": ""}
    where = f"{slug(extra)}_mean" if extra else None
    cols = [where] if where else [f"{slug(an.metric)}_mean", f"test_{an.short}_mean"]
    rows.append({**base, "cell": "baseline", "source": "task baseline", **{c: b.value for c in cols},
                 "note": b.formula, "citation": b.source})
    for label, value in b.others:  # e.g. chance beside a classification task's majority-class rate
        rows.append({**base, "cell": label, "source": "task baseline", **{c: value for c in cols},
                     "note": "", "citation": ""})
    published: dict[tuple[str, str], dict] = {}  # one row per result: a paper's val and test numbers side by side
    for p in task.published:
        split, _, name = p.metric.partition("/")
        row = published.setdefault((p.label(), p.citation), {
            **base, "cell": p.label(), "source": "published", "note": QUALITATIVE, "citation": p.citation})
        if p.value is not None:
            row[f"{split}_{name}_mean"] = p.value
            row["note"] = ""
    return rows + list(published.values())


def leaderboard_display(an: Analysis, raw: pd.DataFrame, extra: str | None) -> pd.DataFrame:
    def both(r, metric):
        return pm(r.get(f"{slug(metric)}_mean"), r.get(f"{slug(metric)}_ci95"))

    out = []
    for _, r in raw.iterrows():
        ours = r["source"] == "this sweep"
        row = {"cell": r["cell"] if ours else (f"{r['cell']} †" if r["source"] == "published" else r["cell"]),
               "source": r["source"] + (f" ({r['citation']})" if r["source"] == "published" else ""),
               f"{label(an.metric)} (mean ± 95% CI)": both(r, an.metric),
               f"test {UPPER.get(an.short, an.short)} (mean ± 95% CI)": both(r, "test/" + an.short)}
        if extra:
            row[f"{label(extra)} (mean ± 95% CI)"] = both(r, extra)
        row.update({"n seeds": fmt(r["n"]), "params": fmt(r["n_params"]), "ms/step": fmt(r["ms_per_step"]),
                    "trials": f"{fmt(r['trials'])}/{fmt(r['budget'])}" if ours else "—",
                    f"best search {label(an.metric)}": fmt(r["best_search"]),
                    "beats baseline": r["beats_baseline"] or "—", "solved": r["solved"] or "—",
                    "seeds solved": r["seeds_solved"] or "—", "note": r["note"] or ""})
        out.append(row)
    return pd.DataFrame(out)


def per_run(an: Analysis) -> Table:
    """One row per trial run (search and confirmation): the per-run results CSV every figure can be redrawn from."""
    runs = an.data.runs
    keep = ["run_id", "cell", "phase", "trial", "seed", "rank", "status", "n_params", "steps", "train_s"]
    if not len(runs):
        return Table("runs", pd.DataFrame(columns=keep), pd.DataFrame(columns=keep))
    metrics = sorted(c for c in runs.columns if c.startswith("metrics.") and c.split(".", 1)[1].split("/")[0]
                     in ("val", "test", "diag", "time"))
    params = [f"params.{k}" for k in an.data.spec["search"] if f"params.{k}" in runs]
    raw = runs[keep + params + metrics].copy()
    raw["confirmed"] = raw["run_id"].isin(an.confirmed["run_id"]) if len(an.confirmed) else False
    raw["run_id"] = [original_run_id(r) for _, r in runs.iterrows()]  # an imported run: the id it was logged under
    raw.columns = [c.split(".", 1)[1] if c.startswith(("metrics.", "params.")) else c for c in raw.columns]
    raw = raw.sort_values(["cell", "phase", "trial"], kind="stable").reset_index(drop=True)
    return Table("runs", raw, raw.astype(str))


# ---------------------------------------------------------------------------------------------- figure frames
def curves(an: Analysis) -> pd.DataFrame:
    """Mean and standard deviation over the seeds of the confirmed configuration, per cell, metric and step."""
    hist = an.data.histories
    if hist.empty or not len(an.confirmed):
        return pd.DataFrame(columns=["cell", "key", "step", "mean", "sd", "min", "max", "n"])
    h = hist.merge(an.confirmed[["run_id", "cell"]], on="run_id")
    h = h[~h["key"].str.startswith("gates/")]
    return h.groupby(["cell", "key", "step"])["value"].agg(mean="mean", sd="std", min="min", max="max",
                                                           n="count").reset_index()


def profile_means(an: Analysis) -> pd.DataFrame:
    """||dL/dh_t|| at the first and the last diagnosed step of each run, mean over the seeds, per cell."""
    prof = an.data.profiles
    if prof.empty or not len(an.confirmed):
        return pd.DataFrame(columns=["cell", "when", "state", "t", "norm", "n"])
    p = prof.merge(an.confirmed[["run_id", "cell"]], on="run_id")
    first = p.groupby("run_id")["step"].transform("min")
    last = p.groupby("run_id")["step"].transform("max")
    parts = []
    for when, mask_ in (("start", p["step"] == first), ("end", p["step"] == last)):
        g = p[mask_].groupby(["cell", "state", "t"])["norm"].agg(norm="mean", n="count").reset_index()
        g.insert(1, "when", when)
        parts.append(g)
    return pd.concat(parts, ignore_index=True)
