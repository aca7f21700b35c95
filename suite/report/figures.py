"""The figures of a comparison report (matplotlib, Agg, PNG at 100 dpi), drawn from the analysis' frames only.

Each function returns a Figure record or None when there is nothing to draw (a sweep still at its first trial);
the CSVs beside the report hold the same numbers, so every figure can be redrawn elsewhere.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from .tables import Analysis, label

DPI = 100  # figures stay under ~150 kB each; the HTML inlines them all
STEP = "training step (optimizer updates)"


@dataclass
class Figure:
    name: str  # file name, e.g. learning_curves.png
    png: bytes
    caption: str
    alt: str
    data: str  # the CSV that holds its numbers


def pyplot():
    """matplotlib's pyplot on the Agg backend with the report's style; imported on first use, once the backend is
    chosen (pyplot picks one on import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.titlesize": 10, "axes.grid": True, "grid.alpha": 0.3,
                         "axes.spines.top": False, "axes.spines.right": False, "legend.fontsize": 8})
    return plt


OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
MORE = ("#8C564B", "#7F7F7F", "#BCBD22", "#17BECF", "#9467BD", "#1F3A93")  # distinct from the eight above


def colors(cells: list[str]) -> dict[str, str]:
    """One fixed colour per cell in every figure: Okabe & Ito's colour-blind-safe eight, then six more that stay
    apart from them (beyond 14 cells colours repeat; the curves are then small multiples, one panel per cell)."""
    palette = OKABE_ITO + MORE
    return {c: palette[i % len(palette)] for i, c in enumerate(cells)}


_colors = colors


def _shared_legend(fig, axes) -> None:
    """One legend under a row of panels (every panel draws the same cells in the same colours)."""
    seen: dict[str, object] = {}
    for ax in axes:
        for handle, name in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(name, handle)
    fig.tight_layout(rect=(0, 0.1 if seen else 0, 1, 1))
    if seen:
        fig.legend(list(seen.values()), list(seen), loc="lower center", ncol=min(len(seen), 11), frameon=False)


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    pyplot().close(fig)
    return buf.getvalue()


def baseline_line(ax, an: Analysis, metric: str) -> list[float]:
    """Draw the task's baseline where the axis shows its metric; returns [value] (for the axis scale) or []."""
    task = an.data.task
    if task is not None and metric.rpartition("/")[2] == task.baseline.metric:
        b = task.baseline
        ax.axhline(b.value, color="0.3", ls="--", lw=1.2, label=f"baseline {b.value:.4g}")
        for name, value in b.others:  # e.g. chance beside the majority-class rate
            ax.axhline(value, color="0.55", ls=":", lw=1.2, label=f"{name} {value:.4g}")
        return [b.value, *(value for _, value in b.others)]
    return []


def log_if_positive(ax, values) -> None:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) and (v > 0).all() and v.max() / v.min() > 20:
        ax.set_yscale("log")


# ---------------------------------------------------------------------------------------------- 4. gradient flow
def gradient_flow(an: Analysis) -> Figure | None:
    """||dL/dh_t|| against t at the start and end of training (log scale), and the global gradient norm."""
    prof = an.frames["grad_profile"]
    prof = prof[prof["state"] == "h"] if len(prof) else prof
    norms = an.frames["curves"]
    norms = norms[norms["key"] == "train/grad_norm"] if len(norms) else norms
    if prof.empty and norms.empty:
        return None
    plt = pyplot()
    colors = _colors(an.cells)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, when in zip(axes[:2], ("start", "end")):
        _profile_panel(ax, an, prof, when, colors)
    _lines(axes[2], an, norms, "step", colors)
    axes[2].set_yscale("log")
    axes[2].set_xlabel(STEP)
    axes[2].set_ylabel("global gradient norm (before clipping)")
    axes[2].set_title("train/grad_norm, mean over seeds")
    _shared_legend(fig, axes)
    return Figure("gradient_flow.png", png_bytes(fig),
                  "Gradient flow (Arjovsky et al. 2016 plot the same): left and middle, ‖∂L/∂h_t‖ for every time "
                  "step t of the diagnostic batch before and after training, log scale, mean over seeds; a line that "
                  "falls towards t = 0 is a vanishing gradient; ▼ on the bottom edge: time steps where it underflowed "
                  "to exactly 0 (no point on a log scale). Right: the global gradient norm over training.",
                  "gradient norm per time step and over training", "grad_profile.csv, curves.csv")


def _profile_panel(ax, an: Analysis, prof: pd.DataFrame, when: str, colors) -> None:
    part = prof[(prof["when"] == when) & (prof["norm"] > 0)]
    _lines(ax, an, part.rename(columns={"norm": "mean"}), "t", colors)
    zero = prof[(prof["when"] == when) & (prof["norm"] <= 0)]
    for cell, z in zero.groupby("cell"):  # underflowed to 0: no point on a log axis, so marked on its bottom edge
        ax.plot(z["t"], np.zeros(len(z)), ls="", marker="v", ms=4, color=colors[cell], clip_on=False,
                transform=ax.get_xaxis_transform(), label=f"{cell}: 0 (underflow)")
    ax.set_yscale("log")
    if len(prof):  # both panels on one scale: the start and the end compare at a glance
        ax.set_ylim(top=3 * prof["norm"].max())
    ax.set_xlabel("time step t (the loss is read at the end)")
    ax.set_ylabel("‖∂L/∂h_t‖ (layer 0, batch mean)")
    ax.set_title(f"gradient reaching h_t, {'before training' if when == 'start' else 'end of training'}")


def _lines(ax, an: Analysis, frame: pd.DataFrame, x: str, colors) -> None:
    """One line per cell of frame's `mean` against `x`."""
    for cell in an.cells:
        c = frame[frame["cell"] == cell].sort_values(x)
        if len(c):
            ax.plot(c[x], c["mean"], color=colors[cell], lw=1.4, label=cell)


# ---------------------------------------------------------------------------------------------- 5. gate use
def gate_use(an: Analysis) -> Figure | None:
    """Saturation of every gate per cell before and after training (bars), the state-keeping gate marked."""
    raw = an.tables["gates"].raw
    if raw.empty:
        return None
    plt = pyplot()
    crowded = max(len(c) for c in raw["cell"]) > 7  # long names (gru_reset_before) overlap their neighbours
    sep = " " if crowded else "\n"  # rotated labels on one line each
    labels = [f"{r.cell}{sep}{r.gate}{'*' if r.keep_gate else ''}" + (f" {r.layer}" if r.layer != "l0" else "")
              for r in raw.itertuples()]
    x = np.arange(len(raw))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(raw) + 2), 4))
    ax.bar(x - 0.2, raw["saturation_start"].fillna(0), 0.4, color="0.7", label="before training")
    colors = _colors(an.cells)
    ends = raw["near0_end"].notna() & raw["near1_end"].notna()  # runs since issue 21 log the two ends apart
    near0 = raw["near0_end"].where(ends, 0.0)
    ax.bar(x + 0.2, near0, 0.4, color=[colors[c] for c in raw["cell"]], hatch="///", edgecolor="white",
           label="end of training, near 0 (hatched)")
    ax.bar(x + 0.2, raw["saturation_end"].fillna(0) - near0, 0.4, bottom=near0,
           color=[colors[c] for c in raw["cell"]], label="end of training, near 1 (or both, where not recorded)")
    ax.set_xticks(x, labels, rotation=40 if crowded else 0, ha="right" if crowded else "center",
                  rotation_mode="anchor" if crowded else "default")
    ax.set_ylim(0, 1)
    ax.axhline(0.5, color="0.4", ls=":", lw=1)
    ax.set_ylabel("fraction of activations < 0.1 or > 0.9")
    ax.set_title("gate saturation per gate (* = the gate that keeps the state)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside the bars
    return Figure("gate_use.png", png_bytes(fig),
                  "Gate use: the fraction of gate activations that are saturated (< 0.1 or > 0.9) on the diagnostic "
                  "batch, before training (grey) and at the end (colour: hatched the part near 0, solid the part "
                  "near 1), mean over seeds; * marks the gate that keeps the state (GRU z, sgru Γu, LSTM f). Dotted: "
                  "one half.", "gate saturation bars", "gates.csv")


# ---------------------------------------------------------------------------------------------- 6. tuning
def tuning(an: Analysis) -> Figure | None:
    """Trial results per cell (robustness, Greff et al. 2017), best value against trial number, and parameter
    count against performance."""
    trials = an.tables["trials"].raw
    if trials.empty:
        return None
    plt = pyplot()
    colors = _colors(an.cells)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    _trial_distribution(axes[0], an, trials, colors)
    _search_progress(axes[1], an, trials, colors)
    _params_panel(axes[2], an, an.tables["runs"].raw, colors)
    _shared_legend(fig, axes)
    return Figure("tuning.png", png_bytes(fig),
                  f"Tuning. Left: {label(an.metric)} of every completed search trial per cell (box: quartiles; "
                  "dots: trials) — a narrow box is a cell robust to its hyperparameters (Greff et al. 2017). Middle: "
                  "the best value found against the trial number. Right: parameter count against the final value of "
                  "every run.",
                  "trial results, search progress and parameter count", "trials.csv, runs.csv")


def _search_progress(ax, an: Analysis, trials: pd.DataFrame, colors) -> None:
    for cell in an.cells:
        c = trials[trials["cell"] == cell].sort_values("trial")
        if c["best_so_far"].notna().any():
            ax.step(c["trial"], c["best_so_far"], where="post", color=colors[cell], label=cell)
    log_if_positive(ax, trials["best_so_far"])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial number")
    ax.set_ylabel(f"best {label(an.metric)} so far")
    ax.set_title("search progress")


def _params_panel(ax, an: Analysis, runs: pd.DataFrame, colors) -> None:
    if an.metric in runs:
        for cell in an.cells:
            c = runs[(runs["cell"] == cell) & runs[an.metric].notna()]
            if len(c):
                ax.scatter(c["n_params"], c[an.metric], s=14, alpha=0.7, color=colors[cell], label=cell)
        log_if_positive(ax, [*runs[an.metric], *baseline_line(ax, an, an.metric)])
    ax.set_xlabel("parameters")
    ax.set_ylabel(label(an.metric))
    ax.set_title("parameter count against performance (every run)")


def _trial_distribution(ax, an: Analysis, trials: pd.DataFrame, colors) -> None:
    done = trials[(trials["state"] == "COMPLETE") & trials["value"].notna()]
    values = [done.loc[done["cell"] == c, "value"].to_numpy(dtype=float) for c in an.cells]
    keep = [i for i, v in enumerate(values) if len(v)]
    if keep:
        ax.boxplot([values[i] for i in keep], positions=keep, widths=0.5, showfliers=False)
        rng = np.random.default_rng(0)
        for i in keep:
            ax.scatter(i + rng.uniform(-0.15, 0.15, len(values[i])), values[i], s=12, alpha=0.7,
                       color=colors[an.cells[i]], zorder=3)
    log_if_positive(ax, [*(v for i in keep for v in values[i]), *baseline_line(ax, an, an.metric)])
    crowded = len(an.cells) > 6
    ax.set_xticks(range(len(an.cells)), an.cells, rotation=40 if crowded else 0, ha="right" if crowded else "center")
    ax.set_ylabel(label(an.metric))
    ax.set_title("completed search trials per cell")


def importance_figure(an: Analysis) -> Figure | None:
    raw = an.tables["importance"].raw
    if raw.empty:
        return None
    plt = pyplot()
    colors = _colors(an.cells)
    params = sorted(raw["param"].unique())
    cells = [c for c in an.cells if (raw["cell"] == c).any()]
    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * len(params) * max(1, len(cells)) ** 0.5 + 1))
    width = 0.8 / len(cells)
    for j, cell in enumerate(cells):
        part = raw[raw["cell"] == cell].set_index("param").reindex(params)["importance"].fillna(0)
        ax.barh(np.arange(len(params)) + j * width - 0.4 + width / 2, part, width, color=colors[cell], label=cell)
    ax.set_yticks(range(len(params)), params)
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"importance ({an.evaluator.split(' (')[0]}, normalised to sum 1 per cell)")
    ax.set_title("hyperparameter importance per cell")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))  # beside the bars, never over them
    return Figure("importance.png", png_bytes(fig),
                  f"Hyperparameter importance per cell over its completed search trials, by {an.evaluator}.",
                  "hyperparameter importance bars", "importance.csv")
