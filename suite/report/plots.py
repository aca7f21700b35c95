"""The per-seed and verdict figures of a report (issue 21, points 2-4): learning curves with one thin line per
seed under the mean (small multiples, one panel per cell with shared axes, beyond 5 cells), the strip plot of
every seed's value beside the leaderboard, the matrix of pairwise verdicts beside the significance table, and the
histogram of the state-keeping gates' activations before and after training. Legends sit outside the data.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.colors import to_rgb
from matplotlib.patches import Patch

from .figures import (STEP, Figure, baseline_line, colors, gate_use, gradient_flow, importance_figure,
                      log_if_positive, png_bytes, pyplot, tuning)
from .gates import keep_gate
from .tables import Analysis, label
from .verdicts import verdict_matrix

SMALL_MULTIPLES = 5  # more cells than this: one panel per cell
VERDICT_COLORS = {"better": "#009E73", "worse": "#D55E00", "equivalent": "#56B4E9", "inconclusive": "#E6E6E6",
                  "not testable": "#FFFFFF"}
VERDICT_MARK = {"better": "better", "worse": "worse", "equivalent": "≈", "inconclusive": "?", "not testable": "–"}


def _legend_outside(fig, ax_or_axes) -> None:
    axes = np.atleast_1d(ax_or_axes).ravel()
    seen: dict[str, object] = {}
    for ax in axes:
        for handle, name in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(name, handle)
    if seen:
        fig.legend(list(seen.values()), list(seen), loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)


# ---------------------------------------------------------------------------------------------- learning curves
def _seed_histories(an: Analysis, key: str) -> pd.DataFrame:
    h = an.data.histories
    if h.empty or not len(an.data.runs):
        return h.iloc[:0]
    runs = an.data.runs[["run_id", "cell", "seed", "status"]]
    mine = h[h["key"] == key].merge(runs, on="run_id")
    keep = set(an.confirmed["run_id"]) if len(an.confirmed) else set()
    seeds = an.frames.get("seeds")
    if seeds is not None and len(seeds):
        keep |= set(seeds.loc[seeds["status"] == "diverged", "run_id"])
    return mine[mine["run_id"].isin(keep)]


def _curve_panel(ax, an: Analysis, key: str, cells: list[str], palette, mean: pd.DataFrame,
                 seeds: pd.DataFrame) -> list[float]:
    values = []
    for cell in cells:
        runs = [s.sort_values("step") for _, s in seeds[seeds["cell"] == cell].groupby("run_id")]
        # drawn in seed order, not run-id order: an archive's import gives new run ids, and the figure of a
        # rebuilt report must not change with them
        for s in sorted(runs, key=lambda s: (s["seed"].iloc[0], len(s), s["value"].iloc[-1])):
            failed = (s["status"] == "FAILED").any()
            ax.plot(s["step"].to_numpy(), s["value"].to_numpy(), color=palette[cell], lw=0.7, alpha=0.45,
                    ls="--" if failed else "-")
            if failed:
                ax.plot(s["step"].iloc[-1:], s["value"].iloc[-1:], "x", color=palette[cell], ms=6,
                        label="diverged seed (ends at ×)")
            values += [s["value"].min(), s["value"].max()]  # the range is all the axis scale needs
        c = mean[(mean["cell"] == cell) & (mean["key"] == key)].sort_values("step")
        if len(c):
            ax.plot(c["step"], c["mean"], color=palette[cell], lw=2.0, label=f"{cell} (n={int(c['n'].max())})")
    return values + baseline_line(ax, an, key)


def learning_curves(an: Analysis) -> Figure | None:
    """The objective against steps: a thin line per seed, the mean over seeds on top; the task's baseline."""
    frame = an.frames["curves"]
    keys = [an.metric]
    task = an.data.task
    if task is not None and task.baseline.metric != an.short:
        keys.append(f"val/{task.baseline.metric}")
    keys = [k for k in keys if (frame["key"] == k).any()]
    if not keys:
        return None
    plt = pyplot()
    palette = colors(an.cells)
    cells = [c for c in an.cells if (frame["cell"] == c).any()]
    if len(cells) > SMALL_MULTIPLES:
        key = keys[0]
        ncols = 4
        nrows = math.ceil(len(cells) / ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 2.6 * nrows), sharex=True, sharey=True,
                                 squeeze=False)
        values = []
        seeds = _seed_histories(an, key)  # once: every panel takes its cell's rows
        for ax, cell in zip(axes.ravel(), cells):
            values += _curve_panel(ax, an, key, [cell], palette, frame, seeds)
            ax.set_title(cell)
        for ax in axes.ravel()[len(cells):]:
            ax.set_visible(False)
        log_if_positive(axes[0, 0], values)
        fig.supxlabel(STEP)
        fig.supylabel(label(key))
        fig.subplots_adjust(left=0.08, right=0.98, bottom=0.1, top=0.93, wspace=0.08, hspace=0.3)
        what = f"{label(key)} per cell (one panel each, shared axes)"
    else:
        fig, axes = plt.subplots(1, len(keys), figsize=(6.4 * len(keys), 4), squeeze=False)
        for ax, key in zip(axes[0], keys):
            log_if_positive(ax, _curve_panel(ax, an, key, cells, palette, frame, _seed_histories(an, key)))
            ax.set_xlabel(STEP)
            ax.set_ylabel(label(key))
            ax.set_title(f"{label(key)} during training (confirmed configuration)")
        what = ", ".join(label(k) for k in keys)
        fig.tight_layout()
    _legend_outside(fig, axes)
    return Figure("learning_curves.png", png_bytes(fig),
                  f"Learning curves: {what} against training steps; thin lines: every seed of each cell's confirmed "
                  "configuration (dashed and ending in ×: a seed that diverged), thick line: the mean over the "
                  "finished seeds; dashed grey: the task's baseline.", "learning curves per cell and seed",
                  "curves.csv, seeds.csv")


# ---------------------------------------------------------------------------------------------- strip plot
def strip_plot(an: Analysis) -> Figure | None:
    """Every seed's value per cell (leaderboard order), with the centre and 95% interval on the analysis scale;
    diverged seeds marked at the top."""
    seeds = an.frames.get("seeds")
    if seeds is None or seeds.empty:
        return None
    lb = an.tables["leaderboard"].raw
    ours = lb[lb["source"] == "this sweep"]
    cells = [c for c in ours["cell"] if (seeds["cell"] == c).any()]
    plt = pyplot()
    palette = colors(an.cells)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.8 * len(cells) + 2.5), 3.8))
    rng = np.random.default_rng(0)
    key = an.primary.replace("/", "_")
    finite = seeds["value"].dropna()
    for i, cell in enumerate(cells):
        mine = seeds[seeds["cell"] == cell]
        ok = mine[mine["status"] == "finished"]
        ax.scatter(i + rng.uniform(-0.12, 0.12, len(ok)), ok["value"], s=22, color=palette[cell], zorder=3,
                   edgecolor="white", lw=0.5)
        row = ours[ours["cell"] == cell].iloc[0]
        if math.isfinite(row.get(f"{key}_center", math.nan)):
            lo, hi = row[f"{key}_lo"], row[f"{key}_hi"]
            ax.plot([i - 0.25, i + 0.25], [row[f"{key}_center"]] * 2, color="0.15", lw=1.6, zorder=4)
            if math.isfinite(lo):
                ax.vlines(i + 0.3, lo, hi, color="0.15", lw=1.0, zorder=4)
        bad = int((mine["status"] == "diverged").sum())
        if bad:
            ax.plot([i] * bad, [1.0] * bad, "x", color="#D55E00", ms=8, transform=ax.get_xaxis_transform(),
                    clip_on=False, label="diverged seed (no value)")
    drawn = baseline_line(ax, an, an.primary)
    if an.scale.name == "log":
        log_if_positive(ax, [*finite, *drawn])
    ax.set_xticks(range(len(cells)), cells, rotation=40 if len(cells) > 6 else 0,
                  ha="right" if len(cells) > 6 else "center")
    ax.set_ylabel(label(an.primary))
    ax.set_title("every seed of the confirmed configuration")
    fig.tight_layout()
    _legend_outside(fig, ax)
    return Figure("seeds.png", png_bytes(fig),
                  f"{label(an.primary)} of every seed (dots), with the {an.scale.describe().split(' (')[0]} centre "
                  "(bar) and its 95% interval (line beside it); × at the top: a seed that diverged, counted in n "
                  "planned but without a value.", "per-seed values per cell", "seeds.csv, leaderboard.csv")


# ---------------------------------------------------------------------------------------------- verdict matrix
def verdict_matrix_figure(an: Analysis) -> Figure | None:
    if "pairs" not in an.tables or an.tables["pairs"].raw.empty:
        return None
    m = verdict_matrix(an)
    plt = pyplot()
    k = len(m)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * k + 2.2, 0.8 + 0.55 * k))
    img = np.ones((k, k, 3))
    for i, a in enumerate(m.index):
        for j, b in enumerate(m.columns):
            v = m.loc[a, b]
            img[i, j] = to_rgb(VERDICT_COLORS.get(v, "#FFFFFF")) if v else (0.85, 0.85, 0.85)
            if v:
                ax.text(j, i, VERDICT_MARK.get(v, v), ha="center", va="center", fontsize=7 if k > 6 else 8)
    ax.imshow(img, aspect="equal")
    ax.set_xticks(range(k), m.columns, rotation=45, ha="right")
    ax.set_yticks(range(k), m.index)
    ax.grid(False)
    ax.set_title("row cell against column cell")
    ax.legend(handles=[Patch(color=c, label=o) for o, c in VERDICT_COLORS.items() if o != "not testable"],
              loc="center left", bbox_to_anchor=(1.03, 0.5), frameon=False)  # outside the matrix
    fig.tight_layout()
    return Figure("verdicts.png", png_bytes(fig),
                  f"Every pair of cells on {label(an.primary)}: the row cell is better, worse, equivalent (≈: the "
                  f"{an.scale.effect} inside [{an.margin[0]:g}, {an.margin[1]:g}] by two one-sided tests) or "
                  "inconclusive (?) against the column cell; Welch's test on the "
                  f"{an.scale.name} scale, Holm-corrected over all {len(an.tables['pairs'].raw)} pairs.",
                  "matrix of pairwise verdicts", "pairs.csv")


# ---------------------------------------------------------------------------------------------- gate histogram
def gate_histograms(an: Analysis) -> Figure | None:
    """Histogram of the state-keeping gate's activations (layer 0) per cell, before and after training."""
    h = an.frames.get("gate_hist")
    if h is None or h.empty:
        return None
    cells = [c for c in an.cells if ((h["cell"] == c) & (h["gate"] == keep_gate(c)) & (h["layer"] == "l0")).any()]
    if not cells:
        return None
    plt = pyplot()
    palette = colors(an.cells)
    ncols = min(4, len(cells))
    nrows = math.ceil(len(cells) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.3 * ncols, 2.5 * nrows), sharex=True, sharey=True,
                             squeeze=False)
    for ax, cell in zip(axes.ravel(), cells):
        gate = keep_gate(cell)
        part = h[(h["cell"] == cell) & (h["gate"] == gate) & (h["layer"] == "l0")]
        for when, color, off in (("start", "0.65", -0.025), ("end", palette[cell], 0.025)):
            p = part[part["when"] == when].sort_values("bin")
            ax.bar((p["lo"] + p["hi"]) / 2 + off, p["fraction"], width=0.045, color=color,
                   label="before training" if when == "start" else "end of training")
        for edge in (0.1, 0.9):
            ax.axvline(edge, color="0.3", ls=":", lw=0.8)
        ax.set_title(f"{cell} ({gate})")
    for ax in axes.ravel()[len(cells):]:
        ax.set_visible(False)
        axes[nrows - 2, list(axes[-1]).index(ax)].xaxis.set_tick_params(labelbottom=True)  # the panel above it
    fig.supxlabel("gate activation")
    fig.supylabel("fraction of activations")
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.15, top=0.9, wspace=0.08, hspace=0.35)  # fixed: fast
    handles = [plt.Rectangle((0, 0), 1, 1, color="0.65"), plt.Rectangle((0, 0), 1, 1, color="0.2")]
    fig.legend(handles, ["before training (grey)", "end of training (cell colour)"], loc="center left",
               bbox_to_anchor=(1.0, 0.5), frameon=False)
    return Figure("gate_hist.png", png_bytes(fig),
                  "Histogram of the state-keeping gate's activations (layer 0, diagnostic batch, 10 equal bins, mean "
                  "over seeds) before and after training; dotted: 0.1 and 0.9, the near-0 and near-1 edges.",
                  "gate activation histograms", "gate_hist.csv")


def all_figures(an: Analysis) -> dict[str, Figure | None]:
    """Every figure of the report but the design points' (:mod:`.design`), None where there is nothing to draw."""
    return {"curves": learning_curves(an), "gradient": gradient_flow(an), "gates": gate_use(an),
            "importance": importance_figure(an), "tuning": tuning(an), "strip": strip_plot(an),
            "matrix": verdict_matrix_figure(an), "gate_hist": gate_histograms(an)}
