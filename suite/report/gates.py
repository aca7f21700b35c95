"""Gate use that tests the claim (issue 21, point 4): per gate the fraction of activations near 0 (< 0.1) and
near 1 (> 0.9) at the start and the end of training, their histogram, and two claims kept apart:

* **mostly saturated**: more than half of the activations are < 0.1 or > 0.9 (near0 + near1 > 0.5);
* **mostly zeros and ones** (the seed article's claim for Γu): mostly saturated *and both ends used*, each end
  holding at least 10% of the activations (near0 >= 0.1 and near1 >= 0.1). A gate at 0.99 almost everywhere is
  saturated but is "almost always keep", not "zeros and ones".

Each row also says which chrono initialisation (Tallec & Ollivier 2018) the confirmed runs trained with
(``chrono_init``: on, off or mixed), since chrono sets the gate biases so that the gates start saturated. Runs
logged before near0/near1 existed have saturation only: their ends read "not recorded". Where the search varied
model.chrono_init, saturation is also split by it over every run of the cell (search runs included).
"""
from __future__ import annotations

import math

import pandas as pd

from .tables import Analysis, Table, fmt

MOSTLY = 0.5  # "mostly": more than half of the activations
BOTH_ENDS = 0.1  # "both ends used": each end holds at least this fraction
RULE = (f"'mostly saturated' = more than {MOSTLY:.0%} of the activations < 0.1 or > 0.9; 'mostly zeros and ones' "
        f"= mostly saturated with both ends used, at least {BOTH_ENDS:.0%} of the activations near 0 and at least "
        f"{BOTH_ENDS:.0%} near 1")
COLUMNS = ["cell", "layer", "gate", "keep_gate", "saturation_start", "saturation_end", "mean_start", "mean_end", "n",
           "near0_start", "near0_end", "near1_start", "near1_end", "mostly_saturated", "zeros_and_ones", "chrono_init"]


def keep_gate(cell: str) -> str | None:
    """The gate that keeps the state (GRU z, the seed's Γu in sgru, LSTM f), from the cell's class."""
    from .. import cells  # imports torch: deferred, so that the claims check (.check) starts fast

    try:
        kg = getattr(cells.CELLS.get(cell).builder, "keep_gate", None)
    except Exception:
        return None
    return kg[0] if kg else None


def _start(hist: pd.DataFrame, runs: pd.DataFrame, key: str) -> float:
    """The value at the first logged step (step 0 = before any update), mean over the runs."""
    h = hist[(hist["key"] == key) & hist["run_id"].isin(runs["run_id"])]
    if h.empty:
        return math.nan
    first = h.loc[h.groupby("run_id")["step"].idxmin()]
    return float(first["value"].mean())


def _hist_start(an: Analysis, runs: pd.DataFrame, layer: str, gate: str, end: str) -> float:
    """near0 (the first bin) or near1 (the last) at each run's first diagnosed step, mean over the runs."""
    h = an.data.gate_hists
    if h is None or h.empty:
        return math.nan
    h = h[h["run_id"].isin(runs["run_id"]) & (h["layer"] == layer) & (h["gate"] == gate)]
    if h.empty:
        return math.nan
    h = h[h["step"] == h.groupby("run_id")["step"].transform("min")]
    edge = h["bin"].min() if end == "near0" else h["bin"].max()
    return float(h.loc[h["bin"] == edge, "fraction"].mean())


def _end(runs: pd.DataFrame, key: str) -> float:
    col = f"metrics.{key}"
    return float(runs[col].mean()) if col in runs and runs[col].notna().any() else math.nan


def chrono(runs: pd.DataFrame) -> str:
    """model.chrono_init of these runs: "on", "off", "mixed", or "—" where the runs did not record it."""
    col = "params.model.chrono_init"
    values = set(runs[col].dropna().astype(str).str.lower()) if col in runs else set()
    if not values:
        return "—"
    return {frozenset({"true"}): "on", frozenset({"false"}): "off"}.get(frozenset(values), "mixed")


def claims(near0: float, near1: float, saturation: float) -> tuple[str, str]:
    """('yes'/'no', 'yes'/'no'/'not recorded') for mostly saturated and mostly zeros and ones."""
    if not math.isfinite(saturation):
        return "—", "—"
    mostly = saturation > MOSTLY
    if not (math.isfinite(near0) and math.isfinite(near1)):
        return ("yes" if mostly else "no"), "not recorded"
    both = mostly and near0 >= BOTH_ENDS and near1 >= BOTH_ENDS
    return ("yes" if mostly else "no"), ("yes" if both else "no")


def gates(an: Analysis) -> Table:
    """Saturation, its two ends and the mean of every gate at the start and the end of training, mean over the
    seeds of the confirmed configuration (diagnostic batch of the validation set)."""
    hist = an.data.histories
    rows = []
    for cell in an.cells:
        runs = an.confirmed[an.confirmed["cell"] == cell] if len(an.confirmed) else an.confirmed
        keys = sorted({c[len("metrics."):] for c in runs.columns if c.startswith("metrics.gates/")
                       and c.endswith("/saturation") and runs[c].notna().any()}) if len(runs) else []
        for key in keys:
            _, layer, gate, _ = key.split("/")
            base = key.rsplit("/", 1)[0]
            row = {"cell": cell, "layer": layer, "gate": gate, "keep_gate": gate == keep_gate(cell),
                   "saturation_start": _start(hist, runs, key), "saturation_end": _end(runs, key),
                   "mean_start": _start(hist, runs, f"{base}/mean"), "mean_end": _end(runs, f"{base}/mean"),
                   "n": int(runs[f"metrics.{key}"].notna().sum())}
            for end in ("near0", "near1"):
                row[f"{end}_start"] = _hist_start(an, runs, layer, gate, end)
                row[f"{end}_end"] = _end(runs, f"{base}/{end}")
            row["mostly_saturated"], row["zeros_and_ones"] = claims(row["near0_end"], row["near1_end"],
                                                                    row["saturation_end"])
            row["chrono_init"] = chrono(runs)
            rows.append(row)
    raw = pd.DataFrame(rows, columns=COLUMNS)
    display = pd.DataFrame([{"cell": r["cell"], "layer": r["layer"],
                             "gate": r["gate"] + (" (keeps the state)" if r["keep_gate"] else ""),
                             "saturated at start": fmt(r["saturation_start"]),
                             "saturated at end": fmt(r["saturation_end"]),
                             "near 0 at end": _recorded(r["near0_end"]), "near 1 at end": _recorded(r["near1_end"]),
                             "mean at start": fmt(r["mean_start"]), "mean at end": fmt(r["mean_end"]),
                             "mostly saturated": r["mostly_saturated"], "mostly zeros and ones": r["zeros_and_ones"],
                             "chrono init": r["chrono_init"], "n seeds": fmt(r["n"])} for _, r in raw.iterrows()])
    return Table("gates", raw, display, strong_rows=[i for i, k in enumerate(raw["keep_gate"]) if k])


def _recorded(value) -> str:
    return fmt(value) if isinstance(value, (int, float)) and math.isfinite(value) else "not recorded"


def chrono_split(an: Analysis) -> Table | None:
    """Saturation of each cell's state-keeping gate (layer 0) at the end of every run, split by
    model.chrono_init, where the sweep searched it; None where it did not."""
    runs = an.data.runs
    col = "params.model.chrono_init"
    if "model.chrono_init" not in an.data.spec.get("search", {}) or not len(runs) or col not in runs:
        return None
    rows = []
    for cell in an.cells:
        gate = keep_gate(cell)
        key = f"metrics.gates/l0/{gate}/saturation"
        mine = runs[(runs["cell"] == cell) & runs[col].notna()] if key in runs else runs.iloc[:0]
        for chrono, group in mine.groupby(col):
            have = group[group[key].notna()]
            if not len(have):
                continue
            n0, n1 = (f"metrics.gates/l0/{gate}/{e}" for e in ("near0", "near1"))
            rows.append({"cell": cell, "gate": gate, "chrono_init": str(chrono), "runs": len(have),
                         "saturation_end": float(have[key].mean()),
                         "near0_end": float(have[n0].mean()) if n0 in have else math.nan,
                         "near1_end": float(have[n1].mean()) if n1 in have else math.nan})
    raw = pd.DataFrame(rows, columns=["cell", "gate", "chrono_init", "runs", "saturation_end", "near0_end",
                                      "near1_end"])
    display = pd.DataFrame([{"cell": r["cell"], "gate": r["gate"], "model.chrono_init": r["chrono_init"],
                             "runs": fmt(r["runs"]), "saturated at end": fmt(r["saturation_end"]),
                             "near 0": _recorded(r["near0_end"]), "near 1": _recorded(r["near1_end"])}
                            for _, r in raw.iterrows()])
    return Table("gates_chrono", raw, display)


def gate_hist_frame(an: Analysis) -> pd.DataFrame:
    """The histogram of every gate's activations at the first and the last diagnosed step, mean over seeds."""
    h = an.data.gate_hists
    cols = ["cell", "layer", "gate", "when", "bin", "lo", "hi", "fraction", "n"]
    if h is None or h.empty or not len(an.confirmed):
        return pd.DataFrame(columns=cols)
    h = h.merge(an.confirmed[["run_id", "cell"]], on="run_id")
    first = h.groupby("run_id")["step"].transform("min")
    last = h.groupby("run_id")["step"].transform("max")
    parts = []
    for when, pick in (("start", h["step"] == first), ("end", h["step"] == last)):
        g = h[pick].groupby(["cell", "layer", "gate", "bin", "lo", "hi"])["fraction"].agg(
            fraction="mean", n="count").reset_index()
        g.insert(3, "when", when)
        parts.append(g)
    return pd.concat(parts, ignore_index=True)[cols]


def gate_claim(an: Analysis) -> str:
    """The seed's "Γu is mostly zeros and ones", tested on the update gates of sgru (Γu) and gru (z), layer 0,
    by the stated rule; "mostly saturated" reported apart."""
    g = an.tables["gates"].raw
    if g.empty:
        return "No gate statistics were logged by the confirmation runs."
    found = [r.iloc[0] for cell, gate in (("sgru", "u"), ("gru", "z"))
             for r in [g[(g["cell"] == cell) & (g["gate"] == gate) & (g["layer"] == "l0")]] if len(r)]
    if not found:
        found = [r for _, r in g[g["keep_gate"] & (g["layer"] == "l0")].iterrows()]
        lead = "The seed's claim concerns sgru and gru, which this sweep does not include; the state-keeping gates: "
    else:
        lead = "The seed's claim that the update gate Γu is mostly zeros and ones, tested: "
    if not found:
        return lead + "none logged."
    shown = "; ".join(f"{r['cell']} ({'Γu' if r['gate'] == 'u' else r['gate']}): near 0 {_recorded(r['near0_end'])}, "
                      f"near 1 {_recorded(r['near1_end'])}, saturated {fmt(r['saturation_end'], 3)} at the end of "
                      f"training ({fmt(r['saturation_start'], 3)} before); mostly saturated: {r['mostly_saturated']}, "
                      f"mostly zeros and ones: {r['zeros_and_ones']}" for r in found)
    return f"{lead}{shown}. Rule: {RULE}."
