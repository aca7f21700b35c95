"""Recompute every claim of a written report from its CSVs alone (claims.json against leaderboard.csv,
pairs.csv, significance.csv, seeds.csv, runs.csv, gates.csv, importance.csv): the check behind "claims follow
data". Returns the problems found; an empty list means every claim holds.

    python -m suite.report.check reports/NAME
"""
from __future__ import annotations

import functools
import json
import math
import sys
from pathlib import Path

import pandas as pd

from .claims import REACHES, chrono_numbers, grad_groups, solving
from .evidence import stricter
from .gates import claims as gate_claims
from .scale import Scale, compare, scale_for, seeds_needed, summarize
from .stats import holm
from .tables import fmt
from .verdicts import judge

REL = 1e-9


def seed_values(text) -> list[float]:
    """The finite per-seed values of a leaderboard's `<key>_seeds` cell (\"1:0.5;2:diverged;3:0.7\")."""
    out = []
    for part in (text.split(";") if isinstance(text, str) and text else []):
        value = part.partition(":")[2]
        if value != "diverged" and math.isfinite(float(value)):
            out.append(float(value))
    return out


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is b
    a, b = float(a), float(b)
    return (math.isnan(a) and math.isnan(b)) or a == b or math.isclose(a, b, rel_tol=REL, abs_tol=1e-300)


class _Check:
    def __init__(self, folder: Path):
        self.folder = folder
        self.doc = json.loads((folder / "claims.json").read_text())
        m = self.doc["meta"]
        self.meta = m
        self.scale: Scale = scale_for(m["metric"], m["n_eval"])
        lb = pd.read_csv(folder / "leaderboard.csv")
        self.ours = lb[lb["source"] == "this sweep"].set_index("cell")
        self.samples = {c: seed_values(r[f"{m['key']}_seeds"]) for c, r in self.ours.iterrows()}
        self.problems: list[str] = []

    def fail(self, cid: str, what: str) -> None:
        self.problems.append(f"claim {cid}: {what}")

    def _judged(self, pairs: list[tuple[str, str]]) -> dict:
        m = self.meta
        comps = {p: compare(self.samples[p[0]], self.samples[p[1]], self.scale, tuple(m["margin"])) for p in pairs}
        q = holm([c.p for c in comps.values()])
        t = holm([c.p_tost for c in comps.values()])
        return {p: (c, judge(c.effect, qi, ti, self.scale.ratio, m["direction"]))
                for (p, c), qi, ti in zip(comps.items(), q, t)}

    def pairs(self) -> dict:
        cells = [c for c in self.ours.index if self.samples[c]]
        order = {c: i for i, c in enumerate(pd.read_csv(self.folder / "pairs.csv")[["a", "b"]].stack().unique())}
        cells.sort(key=lambda c: order.get(c, len(order)))
        return self._judged([(a, b) for i, a in enumerate(cells) for b in cells[i + 1:]])

    @functools.cached_property
    def decay(self) -> pd.Series:
        """diag/grad_decay per cell, mean over the confirmed runs of runs.csv (read once)."""
        runs = pd.read_csv(self.folder / "runs.csv")
        return runs[runs["confirmed"]].groupby("cell")["diag/grad_decay"].mean().dropna()

    # ------------------------------------------------------------------ one method per claim id
    def standing(self, c: dict) -> None:
        n = c["numbers"]
        centers = {k: summarize(v, self.scale) for k, v in self.samples.items() if v}
        sign = 1 if self.meta["direction"] == "minimize" else -1
        leader = min(centers, key=lambda k: sign * centers[k].center)
        judged = self.pairs()
        verdict = {}
        for (a, b), (_, o) in judged.items():
            verdict[(a, b)] = o
            verdict[(b, a)] = {"better": "worse", "worse": "better"}.get(o, o)
        winner = [k for k in centers if len(centers) > 1 and all(verdict[(k, o)] == "better" for o in centers
                                                                 if o != k)]
        tied = [leader] + [k for k in centers if k != leader and verdict[(leader, k)] != "better"]
        if n["leader"] != leader or n["winner"] != (winner[0] if winner else None):
            self.fail("standing", f"leader/winner {n['leader']}/{n['winner']}, recomputed {leader}/{winner}")
        if not winner and sorted(n["tied"]) != sorted(tied):
            self.fail("standing", f"not separated {n['tied']}, recomputed {tied}")
        s = centers[winner[0] if winner else leader]
        for name in ("center", "lo", "hi"):
            if not _same(n[name], getattr(s, name)):
                self.fail("standing", f"{name} {n[name]} != {getattr(s, name)} from the per-seed values")
        if fmt(s.center) not in c["text"]:
            self.fail("standing", f"the text does not quote {fmt(s.center)}")

    def inconclusive_pairs(self, c: dict) -> None:
        judged = self.pairs()
        for a, b, n in c["numbers"]["pairs"]:
            comp, o = judged[(a, b)]
            ref = summarize(self.samples[b], self.scale).center
            want = seeds_needed(comp.sd_pooled, self.scale, ref)
            if o != "inconclusive" or not _same(n, want):
                self.fail("inconclusive_pairs", f"{a} vs {b}: {n} seeds ({o}), recomputed {want}")

    def reference(self, c: dict) -> None:
        ref = self.meta["reference"]
        cells = [k for k in self.ours.index if k != ref]
        sig = pd.read_csv(self.folder / "significance.csv")
        order = list(sig["cell"])
        cells.sort(key=lambda k: order.index(k) if k in order else len(order))
        judged = self._judged([(k, ref) for k in cells])
        for (k, _), (comp, o) in judged.items():
            got = c["numbers"].get(k)
            if got is None or got["outcome"] != o or not _same(got["ratio"], comp.effect):
                self.fail("reference", f"{k}: {got}, recomputed {o} at {comp.effect}")

    def baseline(self, c: dict) -> None:
        n = c["numbers"]
        emp, higher = n["empirical"], n.get("higher", False)
        used = stricter(n["formula"], emp, higher)
        if not _same(used, n["used"]):
            self.fail("baseline", f"used {n['used']} is not the stricter of {n['formula']} and {emp}")
        if self.meta["metric"].rpartition("/")[2] == n["metric"]:
            beat = [k for k, v in self.samples.items() if v and (summarize(v, self.scale).lo > used if higher
                                                                  else summarize(v, self.scale).hi < used)]
            if sorted(beat) != sorted(n["beat"]):
                self.fail("baseline", f"beat {n['beat']}, recomputed {beat}")

    def diverged(self, c: dict) -> None:
        seeds = pd.read_csv(self.folder / "seeds.csv")
        counts = seeds[seeds["status"] == "diverged"].groupby("cell").size().to_dict()
        if {k: int(v) for k, v in counts.items()} != c["numbers"]:
            self.fail("diverged", f"{c['numbers']}, seeds.csv has {counts}")

    def grad_decay(self, c: dict) -> None:
        decay = self.decay
        for k, v in c["numbers"].items():
            if not _same(v, decay.get(k, math.nan)):
                self.fail("grad_decay", f"{k}: {v}, runs.csv gives {decay.get(k)}")

    def grad_solving(self, c: dict) -> None:
        decay = self.decay
        what, solved = solving(self.ours.reset_index())
        want = grad_groups({k: float(v) for k, v in decay.items() if k in solved}, solved)
        got = c["numbers"]
        if got["solving"] != what or got["rule"] != REACHES:
            self.fail("grad_solving", f"rule {got['rule']} / {got['solving']!r}, recomputed {REACHES} / {what!r}")
        for group, cells in want.items():
            if sorted(got["groups"].get(group, [])) != sorted(cells):
                self.fail("grad_solving", f"{group}: {got['groups'].get(group)}, recomputed {cells}")
        for k in sum(want.values(), []):
            if fmt(decay[k], 3) not in c["text"]:
                self.fail("grad_solving", f"the text does not quote {k}'s {fmt(decay[k], 3)}")

    def gates(self, c: dict) -> None:
        g = pd.read_csv(self.folder / "gates.csv")
        for k, v in c["numbers"].items():
            r = g[(g["cell"] == k) & (g["gate"] == v["gate"]) & (g["layer"] == "l0")].iloc[0]
            want = gate_claims(r["near0_end"], r["near1_end"], r["saturation_end"])
            if (v["mostly_saturated"], v["zeros_and_ones"]) != want:
                self.fail("gates", f"{k}: {v}, the rule on gates.csv gives {want}")
            if "mostly_saturated_start" in v:  # reports since the claim gave the start and the chrono setting
                before = gate_claims(r["near0_start"], r["near1_start"], r["saturation_start"])
                if (v["mostly_saturated_start"], v["zeros_and_ones_start"]) != before:
                    self.fail("gates", f"{k} before training: {v}, the rule on gates.csv gives {before}")
                if v["chrono"] != r["chrono_init"]:
                    self.fail("gates", f"{k}: chrono {v['chrono']}, gates.csv has {r['chrono_init']}")

    def gates_chrono(self, c: dict) -> None:
        want = chrono_numbers(pd.read_csv(self.folder / "gates_chrono.csv", dtype={"chrono_init": str}))
        if want != c["numbers"]:
            self.fail("gates_chrono", f"{c['numbers']}, the rule on gates_chrono.csv gives {want}")

    def importance(self, c: dict) -> None:
        imp = pd.read_csv(self.folder / "importance.csv")
        top = imp.loc[imp.groupby("cell")["importance"].idxmax()].set_index("cell")["param"].to_dict()
        if top != c["numbers"]:
            self.fail("importance", f"{c['numbers']}, importance.csv gives {top}")

    def no_data(self, c: dict) -> None:
        if any(self.samples.values()):
            self.fail("no_data", "the leaderboard has per-seed values")


def check_claims(folder: str | Path) -> list[str]:
    """Every problem found recomputing the claims of the report in `folder`; [] when all hold."""
    check = _Check(Path(folder))
    for c in check.doc["claims"]:
        method = getattr(check, c["id"], None)
        if method is None:
            check.fail(c["id"], "no recomputation known for this claim")
        else:
            method(c)
    return check.problems


def main(argv: list[str]) -> int:
    """``python -m suite.report.check DIR``: the problems, one a line, and exit 1; or one line and exit 0."""
    found = check_claims(argv[0])
    print("\n".join(found) or "every claim recomputed from the CSVs")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
