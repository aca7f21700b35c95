"""docs/findings.md from the committed reports' generated claims: the page's prose is written by hand, every
number in it comes from a report, through a directive that this module expands in place.

A directive is an HTML comment on its own line, followed by the block it generates and ``<!-- end -->``::

    <!-- claim study-mnist1d standing -->     the claim's text, quoted, with the report it comes from
    <!-- relevance study-mnist1d -->          sgru and mgu against gru: the verdicts of the reference claim
    <!-- gates study-mnist1d -->              the state-keeping gate per cell: chrono, before -> after
    <!-- sweep study-mnist1d -->              what the sweep cost: runs, training and wall hours (compute.csv)
    <!-- verdicts A B C -->                   each cell against gru, one column per report
    <!-- ablation MAIN OTHER -->              the cells of both: OTHER's seeds against MAIN's (an ablation sweep)

Expanding is idempotent: the file is its own template, so ``python -m suite.report.findings docs/findings.md``
rewrites the generated blocks from the reports named (``reports/NAME/`` beside ``docs/``), and ``--check``
exits 1, naming the first stale block, when the page and the reports disagree (tests/test_findings.py).
"""
from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

from .check import seed_values
from .scale import compare, scale_for
from .stats import holm
from .tables import fmt, interval
from .verdicts import judge, verdict_p

DIRECTIVE = re.compile(r"^<!-- (claim|relevance|gates|sweep|verdicts|ablation) ([^>]*?) -->$")
END = "<!-- end -->"
NO_RELEVANCE_GATE = (("sgru", "update gate only"), ("mgu", "one gate for both roles"))
# the intervals shown beside a verdict are each comparison's own; the verdicts are corrected for multiplicity, so an
# interval can exclude "no difference" while its verdict stays inconclusive
UNCORRECTED = "Welch's 95% intervals, not corrected for multiple comparisons; the verdicts rest on Holm-corrected p"


class FindingsError(ValueError):
    """A directive that names a report or a claim the reports do not have."""


class Reports:
    """The committed reports a page cites, read once each (claims.json and the CSVs a directive needs)."""

    def __init__(self, root: Path):
        self.root = root
        self._claims: dict[str, dict] = {}

    def folder(self, name: str) -> Path:
        path = self.root / name
        if not (path / "claims.json").is_file():
            raise FindingsError(f"no report {name!r} under {self.root} (no {name}/claims.json)")
        return path

    def doc(self, name: str) -> dict:
        if name not in self._claims:
            self._claims[name] = json.loads((self.folder(name) / "claims.json").read_text(encoding="utf-8"))
        return self._claims[name]

    def claim(self, name: str, cid: str) -> dict:
        for c in self.doc(name)["claims"]:
            if c["id"] == cid:
                return c
        raise FindingsError(f"report {name!r} has no claim {cid!r} (rebuild it with rnnsuite report)")

    def rows(self, name: str, table: str) -> list[dict]:
        with open(self.folder(name) / table, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))


def _source(name: str) -> str:
    return f"[{name}](../reports/{name}/report.md)"


def _claim(reports: Reports, name: str, cid: str) -> list[str]:
    return [f"> {reports.claim(name, cid)['text']} ({_source(name)}, claim `{cid}`)"]


def _effect(meta: dict) -> str:
    """What a report's comparisons are (ratio, odds ratio or difference): its analysis scale's own word."""
    return scale_for(meta["metric"], meta["n_eval"]).effect


def _verdict(entry: dict | None, effect: str, row: dict | None = None) -> str:
    """'worse (ratio 1.15 (1.13–1.18), Holm p = 0.000374)': the verdict, its effect with Welch's 95% interval
    (from the report's significance.csv row, where given) and the p-value it rests on."""
    if entry is None:
        return "—"
    p = verdict_p(entry["outcome"], entry["p_holm"], entry.get("p_tost_holm"))
    has_ci = row is not None and row.get("ratio_lo") and row.get("ratio_hi")
    ci = f" {interval(float(row['ratio_lo']), float(row['ratio_hi']))}" if has_ci else ""
    return f"{entry['outcome']} ({effect} {fmt(entry['ratio'], 3)}{ci}, {p})"


def _significance(reports: Reports, name: str) -> dict[str, dict]:
    return {r["cell"]: r for r in reports.rows(name, "significance.csv")}


def _relevance(reports: Reports, name: str) -> list[str]:
    doc = reports.doc(name)
    meta, ref = doc["meta"], reports.claim(name, "reference")["numbers"]
    effect, rows = _effect(meta), _significance(reports, name)
    shown = [f"{cell} ({what}) {_verdict(ref.get(cell), effect, rows.get(cell))}" for cell, what in NO_RELEVANCE_GATE]
    return [f"Against {meta['reference']} on `{meta['metric']}` ({meta['scale']} scale; {UNCORRECTED}): "
            + "; ".join(shown)
            + f" ({_source(name)}, claim `reference`)."]


def _gates(reports: Reports, name: str) -> list[str]:
    numbers = reports.claim(name, "gates")["numbers"]
    out = ["| cell | gate | chrono init | mostly saturated, before → after "
           "| mostly zeros and ones, before → after |",
           "|---|---|---|---|---|"]
    for cell, v in numbers.items():
        before = (v.get("mostly_saturated_start", "—"), v.get("zeros_and_ones_start", "—"))
        out.append(f"| {cell} | {v['gate']} | {v.get('chrono', '—')} | {before[0]} → {v['mostly_saturated']} | "
                   f"{before[1]} → {v['zeros_and_ones']} |")
    return out + ["", f"From {_source(name)}, claim `gates` (the rule is in its text, the fractions in its "
                      "`gates.csv`)."]


def _sweep(reports: Reports, name: str) -> list[str]:
    compute = reports.rows(name, "compute.csv")[0]
    board = [r for r in reports.rows(name, "leaderboard.csv") if r["source"] == "this sweep"]
    trials = sorted({r["trials"] for r in board})
    seeds = sorted({r["n_planned"] for r in board if r.get("n_planned")})
    hours = {k: fmt(float(compute[k]) / 3600, 3) for k in ("train_s", "active_wall_s")}
    return [f"{len(board)} cells, {' or '.join(trials)} search trials and {' or '.join(seeds) or '—'} confirmation "
            f"seeds each; {compute['runs']} runs, {hours['train_s']} h of training summed, {hours['active_wall_s']} h "
            f"of wall time with a run active ({_source(name)}, `compute.csv`)."]


def _verdicts(reports: Reports, names: list[str]) -> list[str]:
    docs = {n: reports.doc(n) for n in names}
    refs = {n: reports.claim(n, "reference")["numbers"] for n in names}
    reference = {d["meta"]["reference"] for d in docs.values()}
    if len(reference) != 1:
        raise FindingsError(f"the reports compare against different references {sorted(reference)}")
    ref = reference.pop()
    cells: list[str] = []
    for n in names:
        cells += [c for c in refs[n] if c not in cells]
    head = [f"{_source(n)}: `{d['meta']['metric']}`, {_effect(d['meta'])}" for n, d in docs.items()]
    out = [f"| cell against {ref} | " + " | ".join(head) + " |", "|---|" + "---|" * len(names)]
    rows = {n: _significance(reports, n) for n in names}
    for cell in cells:
        out.append(f"| {cell} | " + " | ".join(_verdict(refs[n].get(cell), _effect(docs[n]["meta"]), rows[n].get(cell))
                                             for n in names) + " |")
    return out


def _ablation(reports: Reports, main: str, other: str) -> list[str]:
    """Each cell of both reports: OTHER's confirmation seeds against MAIN's, on MAIN's analysis scale, Welch's
    test Holm-corrected over the cells compared, equivalence by two one-sided tests inside MAIN's margin."""
    metas = [reports.doc(n)["meta"] for n in (main, other)]
    if (metas[0]["metric"], metas[0]["scale"]) != (metas[1]["metric"], metas[1]["scale"]):
        raise FindingsError(f"{main} and {other} compare different metrics or scales: "
                            f"{metas[0]['metric']} ({metas[0]['scale']}), {metas[1]['metric']} ({metas[1]['scale']})")
    meta, key = metas[0], metas[0]["key"]
    boards = [{r["cell"]: r for r in reports.rows(n, "leaderboard.csv") if r["source"] == "this sweep"}
              for n in (main, other)]
    cells = [c for c in boards[0] if c in boards[1]]
    if not cells:
        raise FindingsError(f"{main} and {other} share no cell")
    scale, margin = scale_for(meta["metric"], meta["n_eval"]), tuple(meta["margin"])
    comps = [compare(seed_values(boards[1][c][f"{key}_seeds"]), seed_values(boards[0][c][f"{key}_seeds"]), scale,
                     margin) for c in cells]
    q, t = holm([c.p for c in comps]), holm([c.p_tost for c in comps])
    effect = scale.effect

    def summary(row: dict) -> str:
        lo, hi = (fmt(float(row[f"{key}_{end}"]), 3) for end in ("lo", "hi"))
        return f"{fmt(float(row[f'{key}_center']))} ({lo}–{hi}, n = {row['n']})"

    out = [f"| cell | {_source(main)} | {_source(other)} | {other} against {main} |", "|---|---|---|---|"]
    for c, comp, qi, ti in zip(cells, comps, q, t):
        verdict = judge(comp.effect, qi, ti, scale.ratio, meta["direction"])
        out.append(f"| {c} | {summary(boards[0][c])} | {summary(boards[1][c])} | {verdict} ({effect} "
                   f"{fmt(comp.effect, 3)} {interval(comp.lo, comp.hi)}, {verdict_p(verdict, qi, ti)}) |")
    return out + ["", f"`{meta['metric']}` on the {meta['scale']} scale (centre and 95% interval over the seeds), "
                      f"Welch's t-test Holm-corrected over the {len(cells)} cells ({UNCORRECTED}); equivalent = "
                      f"the {effect} inside "
                      f"[{fmt(margin[0])}, {fmt(margin[1])}] by two one-sided tests. From the reports' "
                      f"`leaderboard.csv`."]


def block(reports: Reports, kind: str, args: list[str]) -> list[str]:
    """The lines a directive generates (without the directive and its end marker)."""
    if kind == "claim":
        if len(args) != 2:
            raise FindingsError(f"claim takes REPORT CLAIM_ID, got {' '.join(args)!r}")
        return _claim(reports, *args)
    if kind == "verdicts":
        if not args:
            raise FindingsError("verdicts takes one report or more")
        return _verdicts(reports, args)
    if kind == "ablation":
        if len(args) != 2:
            raise FindingsError(f"ablation takes MAIN OTHER, got {' '.join(args)!r}")
        return _ablation(reports, *args)
    if len(args) != 1:
        raise FindingsError(f"{kind} takes one report, got {' '.join(args)!r}")
    return {"relevance": _relevance, "gates": _gates, "sweep": _sweep}[kind](reports, args[0])


def expand(text: str, reports: Reports) -> str:
    """The page with every directive's block regenerated; text outside the blocks is kept as is."""
    lines, out, i = text.split("\n"), [], 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        i += 1
        m = DIRECTIVE.match(line.strip())
        if not m:
            continue
        try:
            end = lines.index(END, i)
        except ValueError:
            raise FindingsError(f"line {i}: {line.strip()} has no {END} after it") from None
        nested = [k for k in range(i, end) if DIRECTIVE.match(lines[k].strip())]
        if nested:
            raise FindingsError(f"line {nested[0] + 1}: a directive inside the block of line {i}")
        out += block(reports, m.group(1), m.group(2).split()) + [END]
        i = end + 1
    return "\n".join(out)


def generated_spans(text: str) -> list[tuple[int, int]]:
    """(first, last) line index of every generated block, directive and end marker included."""
    lines, spans = text.split("\n"), []
    for i, line in enumerate(lines):
        if DIRECTIVE.match(line.strip()) and END in lines[i:]:
            spans.append((i, lines.index(END, i)))
    return spans


def main(argv: list[str]) -> int:
    """``python -m suite.report.findings [--check] PAGE``: rewrite PAGE's blocks (or check them) from reports/."""
    check = "--check" in argv
    paths = [a for a in argv if a != "--check"]
    if len(paths) != 1:
        print("usage: python -m suite.report.findings [--check] docs/findings.md", file=sys.stderr)
        return 2
    page = Path(paths[0])
    try:
        text = page.read_text(encoding="utf-8")
        new = expand(text, Reports(page.resolve().parent.parent / "reports"))
    except (OSError, FindingsError) as e:
        print(f"rnnsuite: error: {e}", file=sys.stderr)
        return 2
    if check:
        if new != text:
            old, fresh = text.split("\n"), new.split("\n")
            first = next((k for k, (a, b) in enumerate(zip(old, fresh)) if a != b), min(len(old), len(fresh)))
            print(f"{page}: line {first + 1} differs from what the reports give; run python -m suite.report.findings "
                  f"{page}")
            return 1
        print(f"{page}: every generated block matches the reports")
        return 0
    if new != text:
        page.write_text(new, encoding="utf-8")
    print(f"{page}: {len(generated_spans(new))} blocks from the reports")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
