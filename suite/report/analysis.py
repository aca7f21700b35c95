"""The analysis of a report: every table and figure frame, computed once from the loaded sweep (the tables come
from their own modules; this one puts them together in the order the report is built)."""
from __future__ import annotations

import pandas as pd

from ..registry import SuiteError
from .data import SweepData
from .evidence import add_evidence, seed_values
from .gates import chrono_split, gate_hist_frame, gates
from .keys import DEFAULT_EQUIVALENCE
from .scale import scale_for
from .tables import (DEFAULT_REFERENCE, Analysis, confirmed_runs, curves, leaderboard, per_run, profile_means,
                     progress)
from .tuning import compute, fairness, importance, trials_table
from .verdicts import pairs, significance


def analyse(data: SweepData, reference: str = DEFAULT_REFERENCE, test: str = "welch") -> Analysis:
    """Every table and figure frame of the report, from the loaded sweep."""
    cells = data.spec["cells"]
    an = Analysis(data, cells, data.spec["metric"], data.spec["metric"], data.spec["direction"], reference, test)
    if reference not in cells and reference != DEFAULT_REFERENCE:
        raise SuiteError(f"--reference {reference!r} is not a cell of sweep {data.name!r}; its cells: "
                         f"{', '.join(cells)}")
    if reference not in cells:  # the default reference: fall back to the sweep's first cell, and say so
        an.reference = cells[0]
        an.notes.append(f"The reference cell {reference!r} is not in this sweep; {cells[0]} is the reference.")
    an.progress = progress(data)
    an.confirmed = confirmed_runs(an)
    test_metric = "test/" + an.short
    if len(an.confirmed) and an.col(test_metric) in an.confirmed and an.confirmed[an.col(test_metric)].notna().all():
        an.primary = test_metric
    an.samples = {c: an.confirmed.loc[an.confirmed["cell"] == c, an.col(an.primary)].dropna().tolist()
                  if len(an.confirmed) else [] for c in cells}
    an.scale = scale_for(an.primary, n_eval(data, an.primary))
    an.margin = tuple(data.spec.get("equivalence") or DEFAULT_EQUIVALENCE)
    for builder in (leaderboard, significance, pairs, gates, fairness, compute, trials_table, per_run):
        table = builder(an)
        an.tables[table.name] = table
    add_evidence(an)
    chrono = chrono_split(an)
    if chrono is not None:
        an.tables[chrono.name] = chrono
    importance(an)
    an.frames["curves"] = curves(an)
    an.frames["grad_profile"] = profile_means(an)
    an.frames["seeds"] = seed_values(an)
    an.frames["gate_hist"] = gate_hist_frame(an)
    return an


def n_eval(data, primary: str) -> int | None:
    """Examples in the fixed set the primary metric was measured on: the rebuilt task's count for its split
    (MNIST-1D: 500 held out for val, 1,000 in test), else the runs' task.val_size (synthetic tasks generate the
    test set with as many sequences)."""
    task = data.task
    split = "test" if primary.startswith("test/") else "val"
    n = task.eval_size(split) if task is not None else None
    if n:
        return int(n)
    runs, col = data.runs, "params.task.val_size"
    if not len(runs) or col not in runs:
        return None
    values = pd.to_numeric(runs[col], errors="coerce").dropna()
    return int(values.iloc[0]) if len(values) else None
