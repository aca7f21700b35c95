"""Robustness at the shared design points: every cell's search result at the same configurations.

The first trials of every cell's search are the same points of one space-filling design (suite.sweep.space), so the
cells can be compared *paired* there: which cells solve the task at how many of the same settings, which only at
their own tuned best. A per-cell best value cannot show that.
"""
from __future__ import annotations

import math

import pandas as pd
from matplotlib.colors import LogNorm, Normalize

from .figures import Figure, png_bytes, pyplot
from .tables import Analysis, Table, fmt

DESIGN_ATTR = "design_point"


def solved_mark(value) -> bool:
    """True for a trial that solved the task (the CSV's solved column holds True, False or empty)."""
    return value is not None and not (isinstance(value, float) and math.isnan(value)) and bool(value)


def _solved(an: Analysis, cell: str, number: int) -> bool | None:
    """Whether search trial `number` of `cell` solved the task on validation (the task's own criterion)."""
    task, runs = an.data.task, an.data.runs
    if not an.has_solved_criterion or not len(runs):
        return None
    mine = runs[(runs["cell"] == cell) & (runs["phase"] == "search") & (runs["trial"] == number)
                & (runs["status"] != "KILLED")]
    if not len(mine):
        return None
    row = mine.iloc[-1]
    prefix = "metrics.val/"
    values = {c[len(prefix):]: row[c] for c in mine.columns if c.startswith(prefix) and pd.notna(row[c])}
    return bool(task.is_solved(values)) if values else None


def design_table(an: Analysis) -> Table | None:
    """One row per (cell, design point) in the CSV; the page shows points as rows and cells as columns, and how
    many points each cell solved. None when the sweep had no shared design."""
    rows, params = [], {}
    for cell in an.cells:
        for t in an.data.trials[cell]["search"]:
            point = t.user_attrs.get(DESIGN_ATTR)
            if point is None or t.state.name not in ("COMPLETE", "PRUNED"):
                continue
            value = t.value if t.value is not None else \
                (list(t.intermediate_values.values())[-1] if t.intermediate_values else math.nan)
            params.setdefault(int(point), dict(t.params))
            rows.append({"cell": cell, "point": int(point), "trial": t.number, "state": t.state.name,
                         "value": value, "solved": _solved(an, cell, t.number),
                         **{f"param.{k}": v for k, v in t.params.items()}})
    if not rows:
        return None
    raw = pd.DataFrame(rows).sort_values(["point", "cell"], kind="stable").reset_index(drop=True)
    display_rows = []
    for point in sorted(params):
        row = {"point": str(point), "configuration": ", ".join(f"{k}={fmt(v, 3)}" for k, v in params[point].items())}
        for cell in an.cells:
            hit = raw[(raw["cell"] == cell) & (raw["point"] == point)]
            if not len(hit):
                row[cell] = "—"
                continue
            r = hit.iloc[0]
            row[cell] = fmt(r["value"]) + (" ✓" if solved_mark(r["solved"]) else "") + \
                (" (pruned)" if r["state"] == "PRUNED" else "")
        display_rows.append(row)
    if raw["solved"].notna().any():
        total = {"point": "solved", "configuration": "points where the cell solved the task"}
        for cell in an.cells:
            mine = raw[raw["cell"] == cell]
            total[cell] = f"{sum(solved_mark(v) for v in mine['solved'])}/{len(mine)}"
        display_rows.append(total)
    return Table("design", raw, pd.DataFrame(display_rows))


def design_figure(an: Analysis) -> Figure | None:
    """Cells x design points, coloured by the search value (log scale for a positive metric), ✓ where solved."""
    table = an.tables.get("design")
    if table is None or table.raw.empty:
        return None
    plt = pyplot()
    raw = table.raw
    points = sorted(raw["point"].unique())
    grid = pd.DataFrame(math.nan, index=an.cells, columns=points)
    for _, r in raw.iterrows():
        grid.loc[r["cell"], r["point"]] = r["value"]
    finite = grid.values[pd.notna(grid.values) & (grid.values != math.inf)]
    positive = len(finite) and (finite > 0).all()
    norm = LogNorm(finite.min(), finite.max()) if positive and finite.min() < finite.max() else Normalize()
    cmap = "viridis" if an.direction == "minimize" else "viridis_r"  # dark = good in both
    fig, ax = plt.subplots(figsize=(max(4.0, 1.0 + 0.9 * len(points)), 0.5 + 0.45 * len(an.cells)))
    image = ax.imshow(grid.values.astype(float), cmap=cmap, norm=norm, aspect="auto")
    for _, r in raw.iterrows():
        if solved_mark(r["solved"]):
            ax.text(points.index(r["point"]), an.cells.index(r["cell"]), "✓", ha="center", va="center",
                    color="white", fontsize=11, fontweight="bold")
    ax.grid(False)
    ax.set_xticks(range(len(points)), [str(p) for p in points])
    ax.set_yticks(range(len(an.cells)), an.cells)
    ax.set_xlabel("shared design point (the same configuration in every cell)")
    fig.colorbar(image, ax=ax, label=f"search {an.metric}" + (" (log)" if positive else ""))
    criterion = an.has_solved_criterion
    ax.set_title("robustness at the shared design points" + (" (✓ solved)" if criterion else ""))
    fig.subplots_adjust(left=0.22, right=0.9, bottom=0.2, top=0.88)
    return Figure("design.png", png_bytes(fig),
                  f"Each cell's search {an.metric} at the shared design points (one seed each)"
                  + ("; ✓: solved on validation by the task's criterion." if criterion else "."),
                  "design-point heat map", "design.csv")
