"""The tables of sections 6 and 7 of a report: every search trial from Optuna, hyperparameter importance per cell,
the budget each cell got (fairness) and what the whole sweep cost (compute)."""
from __future__ import annotations

import math

import pandas as pd
from optuna.trial import TrialState

from .tables import Analysis, Table, fmt

MIN_IMPORTANCE_TRIALS = 5  # completed trials below which hyperparameter importance is noise, not signal


def importance_evaluator():
    """fANOVA (Hutter et al. 2014), the evaluator of Greff et al. 2017, where scikit-learn is installed (MLflow
    requires it); else PED-ANOVA (Watanabe et al. 2023), Optuna 5's default. Seeded: a report is reproducible."""
    from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator  # heavy (scikit-learn)

    try:
        import sklearn  # noqa: F401
    except ImportError:
        return PedAnovaImportanceEvaluator(), "PED-ANOVA (Optuna PedAnovaImportanceEvaluator)"
    return FanovaImportanceEvaluator(seed=0), "fANOVA (Optuna FanovaImportanceEvaluator, 64 trees, seed 0)"


def importance(an: Analysis) -> None:
    """Hyperparameter importance per cell over its completed search trials, or why it is not computed."""
    from optuna.importance import get_param_importances  # heavy (scikit-learn): deferred like the evaluators

    evaluator, an.evaluator = importance_evaluator()
    rows = []
    for cell in an.cells:
        complete = [t for t in an.data.trials[cell]["search"] if t.state == TrialState.COMPLETE
                    and t.value is not None and math.isfinite(t.value)]
        study = an.data.search_studies.get(cell)
        if len(complete) < MIN_IMPORTANCE_TRIALS or study is None:
            an.importance_notes[cell] = (f"too few completed trials for importance ({len(complete)} < "
                                         f"{MIN_IMPORTANCE_TRIALS})")
            continue
        if not an.data.spec["search"]:
            an.importance_notes[cell] = "nothing was searched"
            continue
        try:
            scores = get_param_importances(study, evaluator=evaluator)
        except (RuntimeError, ValueError) as exc:
            an.importance_notes[cell] = f"importance not computable: {str(exc).splitlines()[0][:120]}"
            continue
        rows += [{"cell": cell, "param": k, "importance": v, "trials": len(complete)} for k, v in scores.items()]
    raw = pd.DataFrame(rows, columns=["cell", "param", "importance", "trials"])
    raw["evaluator"] = an.evaluator
    display = pd.DataFrame([{"cell": r["cell"], "hyperparameter": r["param"], "importance": fmt(r["importance"], 3),
                             "completed trials": fmt(r["trials"])} for _, r in raw.iterrows()])
    an.tables["importance"] = Table("importance", raw, display)


def trials_table(an: Analysis) -> Table:
    """Every search trial from Optuna: its value (or last reported value if pruned) and its parameters."""
    rows = []
    for cell in an.cells:
        best = math.nan
        for t in sorted(an.data.trials[cell]["search"], key=lambda t: t.number):
            value = t.value if t.value is not None else \
                (list(t.intermediate_values.values())[-1] if t.intermediate_values else math.nan)
            if t.state.name == "COMPLETE" and value is not None and math.isfinite(value):
                best = value if not math.isfinite(best) else an.better(best, value)
            rows.append({"cell": cell, "trial": t.number, "state": t.state.name, "value": value,
                         "best_so_far": best, **{f"param.{k}": v for k, v in t.params.items()}})
    raw = pd.DataFrame(rows)
    if raw.empty:
        raw = pd.DataFrame(columns=["cell", "trial", "state", "value", "best_so_far"])
    return Table("trials", raw, raw.astype(str))


def fairness(an: Analysis) -> Table:
    """Trials, runs, steps and training time per cell: the evidence that every cell got the same budget."""
    runs = an.data.runs
    rows = []
    for cell in an.cells:
        search = an.data.trials[cell]["search"]
        mine = runs[runs["cell"] == cell] if len(runs) else runs
        counted = mine[mine["status"].isin(["FINISHED", "FAILED"])] if len(mine) else mine
        count = {s: sum(t.state == s for t in search) for s in (TrialState.COMPLETE, TrialState.PRUNED,
                                                                TrialState.FAIL, TrialState.RUNNING)}
        confirm_runs = counted[counted["phase"] == "confirm"] if len(counted) else counted
        rows.append({"cell": cell, "budget": an.data.spec["trials"], "complete": count[TrialState.COMPLETE],
                     "pruned": count[TrialState.PRUNED], "failed_retried": count[TrialState.FAIL],
                     "running": count[TrialState.RUNNING], "confirm_runs": len(confirm_runs),
                     "confirm_planned": an.data.confirm_planned[cell],
                     "steps_trained": float(counted["steps"].sum()) if len(counted) else 0.0,
                     "train_s": float(counted["train_s"].sum()) if len(counted) else 0.0,
                     "seeds": ",".join(str(int(s)) for s in sorted(confirm_runs["seed"].dropna().unique()))
                     if len(confirm_runs) else ""})
    raw = pd.DataFrame(rows)
    display = pd.DataFrame([{"cell": r["cell"], "search trials (complete + pruned / budget)":
                             f"{r['complete']} + {r['pruned']} / {r['budget']}",
                             "failed and retried": fmt(r["failed_retried"]), "running": fmt(r["running"]),
                             "confirmation runs": f"{r['confirm_runs']}/{fmt(r['confirm_planned'])}",
                             "steps trained": fmt(r["steps_trained"]), "training seconds": fmt(r["train_s"]),
                             "confirmation seeds": r["seeds"] or "—"} for _, r in raw.iterrows()])
    return Table("fairness", raw, display)


def active_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end] intervals: the wall time during which at least one run was training
    (a sweep resumed in another session does not count the time between sessions)."""
    total, reach = 0.0, -math.inf
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def compute(an: Analysis) -> Table:
    """The sweep's total compute and wall time, from its MLflow runs: the training time every run logged
    (time/train_s, summed), the runs' own durations (end - start, summed), the wall time during which at least one
    run was active, and the span from the first start to the last end. Packed runs train together, so their
    summed times count each pack's wall time once per member."""
    runs = an.data.runs
    done = runs[runs["status"].isin(["FINISHED", "FAILED", "KILLED"]) & runs["end_time"].notna()] if len(runs) \
        else runs
    spans = [(float(a) / 1000, float(b) / 1000) for a, b in zip(done["start_time"], done["end_time"])] \
        if len(done) else []
    raw = pd.DataFrame([{
        "runs": len(done), "train_s": float(done["train_s"].fillna(0).sum()) if len(done) else 0.0,
        "run_s": sum(b - a for a, b in spans), "active_wall_s": active_seconds(spans),
        "span_s": (max(b for _, b in spans) - min(a for a, _ in spans)) if spans else 0.0}])
    r = raw.iloc[0]
    display = pd.DataFrame([{"runs": fmt(r["runs"]), "training time, summed (h)": fmt(r["train_s"] / 3600),
                             "run time, summed (h)": fmt(r["run_s"] / 3600),
                             "wall time with a run active (h)": fmt(r["active_wall_s"] / 3600),
                             "first start to last end (h)": fmt(r["span_s"] / 3600)}])
    return Table("compute", raw, display)
