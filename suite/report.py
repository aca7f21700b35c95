"""``rnnsuite report NAME``: a sweep's MLflow runs and Optuna studies -> one comparison report.

Writes to DIR (default reports/NAME): ``index.html`` (self-contained: figures inlined, no network), ``report.md``
with its PNG figures beside it, and a CSV of every table and figure, so each figure can be redrawn elsewhere. The
same files are logged under ``report/`` in the sweep's parent MLflow run. The page opens with its conclusion —
which cell is best, how sure we are (t-intervals over seeds, Welch's t-test with Holm's correction) and the
evidence for why (gradient flow, gate use) — then the sections 1-7 of the report issue.

Modules: :mod:`.report_data` reads, :mod:`.report_tables` computes, :mod:`.report_figures` draws,
:mod:`.report_render` renders, :mod:`.report_synth` makes synthetic sweeps for the scale benchmark.
"""
from __future__ import annotations

import math
import platform
import shlex
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from .registry import SuiteError
from .report_data import SweepData, load, sweep_name
from .report_design import design_figure, design_table
from .report_figures import all_figures
from .report_render import Box, Code, Document, FigureBlock, Heading, Items, Para, TableBlock, to_html, to_markdown
from .report_stats import ALPHA, TESTS
from .report_tables import DEFAULT_REFERENCE, Analysis, analyse, fmt, label, pm, slug
from .tracking import mask

ARTIFACT_PATH = "report"
PACKAGES = ("rnnsuite", "torch", "lightning", "mlflow", "optuna", "optuna-integration", "numpy", "pandas", "scipy",
            "matplotlib", "scikit-learn")
CSV_HELP = {
    "leaderboard": "one row per cell (confirmed configuration, mean and 95% CI half-width), baseline, published",
    "significance": "each cell against the reference: test, statistic, p, Holm-adjusted p",
    "runs": "one row per trial run: phase, seed, final metrics, hyperparameters, parameters, time",
    "trials": "every search trial from Optuna: state, value, best so far, parameters",
    "curves": "mean and sd over seeds per cell, metric and step (learning curves, gradient norm)",
    "grad_profile": "||dL/dh_t|| per cell and time step at the start and end of training",
    "gates": "gate saturation and mean per cell, layer and gate, before and after training",
    "importance": "hyperparameter importance per cell",
    "fairness": "trials, runs, steps and training time per cell",
    "design": "each cell's search result at the shared design points (the same configurations in every cell)",
}


# ---------------------------------------------------------------------------------------------- the command
def run_report(args) -> int:
    """The CLI entry point: build the report, print where it is; SuiteErrors become one line and exit 2."""
    name = sweep_name(args.name)
    out = Path(args.output) if args.output else Path("reports") / name
    sweep_file = args.name if name != args.name else None
    result = build_report(name, out, storage=args.storage, tracking_uri=args.tracking_uri,
                          reference=args.reference or DEFAULT_REFERENCE, command=_command(args), sweep_file=sweep_file)
    print(result["status_line"])
    print(f"report {name}: {out / 'index.html'} and {out / 'report.md'} ({result['figures']} figures, "
          f"{result['csvs']} CSVs); logged to MLflow run {result['parent_run_id']} under {ARTIFACT_PATH}/")
    return 0


def _command(args) -> str:
    parts = ["rnnsuite", "report", args.name]
    for flag, value in (("-o", args.output), ("--storage", args.storage), ("--tracking-uri", args.tracking_uri)):
        if value:
            parts += [flag, mask(value)]
    if args.reference and args.reference != DEFAULT_REFERENCE:
        parts += ["--reference", args.reference]
    return shlex.join(parts)


def build_report(name: str, out: Path, *, storage: str | None = None, tracking_uri: str | None = None,
                 reference: str = DEFAULT_REFERENCE, test: str = "welch", command: str = "",
                 sweep_file: str | None = None, log_artifacts: bool = True) -> dict:
    """Read, analyse, draw, render, write and log one report; returns what was made (for the CLI and benchmarks).

    test: "welch" (Welch's t-test) or "mannwhitney" (Mann–Whitney U); sweep_file: the file the sweep ran from,
    when known, for the reproduction command."""
    data = load(name, storage, tracking_uri)  # the stores are checked before anything is written
    an = analyse(data, reference, test)  # so is --reference
    design = design_table(an)
    if design is not None:
        an.tables["design"] = design
    figures = {**all_figures(an), "design": design_figure(an)}
    doc = document(an, figures, command, sweep_file)
    written = write(out, doc, an, figures)
    parent_id = data.parent.info.run_id
    if log_artifacts:
        _log(data, written, parent_id)
    return {"status_line": status_line(an), "figures": sum(f is not None for f in figures.values()),
            "csvs": sum(p.suffix == ".csv" for p in written), "files": written, "parent_run_id": parent_id,
            "analysis": an}


def _log(data: SweepData, files: list[Path], run_id: str) -> None:
    import mlflow

    client = mlflow.MlflowClient(data.tracking_uri)
    try:
        for path in files:
            client.log_artifact(run_id, str(path), ARTIFACT_PATH)
    except Exception as exc:
        raise SuiteError(f"report written, but logging it to MLflow run {run_id} failed: "
                         f"{mask(str(exc)).splitlines()[0][:200]}") from None


def write(out: Path, doc: Document, an: Analysis, figures: dict) -> list[Path]:
    """index.html, report.md, the PNGs beside them and one CSV per table; stale files of an older report go."""
    out.mkdir(parents=True, exist_ok=True)
    known = {f"{n}.png" for n in ("learning_curves", "gradient_flow", "gate_use", "importance", "tuning",
                                  "design")}
    for stale in known:
        (out / stale).unlink(missing_ok=True)
    written = []
    for fig in figures.values():
        if fig is not None:
            (out / fig.name).write_bytes(fig.png)
            written.append(out / fig.name)
    for name, table in an.tables.items():
        table.raw.to_csv(out / f"{name}.csv", index=False)
        written.append(out / f"{name}.csv")
    for name, frame in an.frames.items():
        frame.to_csv(out / f"{name}.csv", index=False)
        written.append(out / f"{name}.csv")
    (out / "index.html").write_text(to_html(doc), encoding="utf-8")
    (out / "report.md").write_text(to_markdown(doc), encoding="utf-8")
    return [out / "index.html", out / "report.md", *written]


# ---------------------------------------------------------------------------------------------- the words
def task_title(an: Analysis) -> str:
    task = an.data.task
    if task is None:
        return an.data.spec["task"]
    opts = ", ".join(f"{k}={v}" for k, v in task.options.items() if k in ("length", "level", "bptt"))
    return f"{task.name} ({opts})" if opts else task.name


def status_line(an: Analysis) -> str:
    p = an.progress
    done = (f"{p['search_done']} of {p['search_total']} search trials and {p['confirm_done']} of "
            f"{p['confirm_total']} confirmation runs are done")
    if p["finished"]:
        return f"Sweep {an.data.name} is finished: {done}."
    running = f" ({p['running']} running now)" if p["running"] else ""
    return f"Sweep {an.data.name} is still running: {done}{running}."


def summary(an: Analysis) -> tuple[str, list[str]]:
    """The conclusion, generated from the numbers: the best cell, then how sure (the test against the reference),
    baseline and solved, and the evidence for why."""
    lb = an.tables["leaderboard"].raw
    ours = lb[lb["source"] == "this sweep"]
    rank, ci = f"{slug(an.primary)}_mean", f"{slug(an.primary)}_ci95"
    ranked = ours[ours[rank].notna()]
    if ranked.empty:
        return ("No confirmation run has finished yet, so no cell can be ranked.",
                ["The search so far is in section 6 (Tuning)."])
    best = ranked.iloc[0]
    lead = (f"**{best['cell']} is best** on {task_title(an)}: {label(an.primary)} {pm(best[rank], best[ci])} "
            f"(mean ± 95% t-interval over {fmt(best['n'])} seeds of its confirmed configuration)"
            + (f"; next is {ranked.iloc[1]['cell']} with {pm(ranked.iloc[1][rank], ranked.iloc[1][ci])}."
               if len(ranked) > 1 else "."))
    items = [_significance_sentence(an, best["cell"]), _baseline_sentence(an, ours), *_why_sentences(an)]
    return lead, [i for i in items if i]


def _significance_sentence(an: Analysis, best: str) -> str:
    sig = an.tables["significance"].raw
    test = TESTS[an.test].split(" (")[0]
    if sig.empty:
        return "There is no other cell to test against."
    if best == an.reference:
        worse = [f"{r.cell} (Holm p = {fmt(r.p_holm, 3)})" for r in sig.itertuples() if r.significant]
        same = [f"{r.cell} (Holm p = {fmt(r.p_holm, 3)})" for r in sig.itertuples() if not r.significant]
        parts = [f"It is the reference cell; {test} with Holm's correction"]
        parts.append(f"finds it significantly better than {', '.join(worse)}" if worse else
                     "finds no cell significantly worse")
        if same:
            parts.append(f"and cannot tell it apart from {', '.join(same)} at α = {ALPHA}")
        return " ".join(parts) + "."
    r = sig[sig["cell"] == best].iloc[0]
    if not math.isfinite(r["p_holm"]):
        return f"It cannot be tested against the reference {an.reference} (too few seeds or no spread)."
    if r["significant"]:
        return (f"It is significantly better than the reference {an.reference} ({test}, Holm-adjusted "
                f"p = {fmt(r['p_holm'], 3)}, n = {r['n']} and {r['n_ref']} seeds).")
    return (f"Its lead over the reference {an.reference} is not significant ({test}, Holm-adjusted "
            f"p = {fmt(r['p_holm'], 3)}, n = {r['n']} and {r['n_ref']} seeds): the order of these two is not "
            "established.")


def _baseline_sentence(an: Analysis, ours) -> str:
    task = an.data.task
    if task is None:
        return ""
    b = task.baseline
    beat = list(ours.loc[ours["beats_baseline"] == "yes", "cell"])
    text = (f"{len(beat)} of {len(ours)} cells beat the task's baseline ({label(b.metric)} {fmt(b.value)}) with "
            "their whole 95% interval" + (f": {', '.join(beat)}." if beat else "."))
    if not task.solved:
        return text + " The task has no solved criterion."
    solved = list(ours.loc[ours["solved"] == "yes", "cell"])
    return text + (f" {len(solved)} of {len(ours)} meet the solved criterion ({task.solved}) at their mean"
                   + (f": {', '.join(solved)}." if solved else "."))


def _why_sentences(an: Analysis) -> list[str]:
    """Evidence for why, not a causal claim: how much gradient survives the sequence after training, how
    saturated the state-keeping gates are, and which hyperparameter mattered most."""
    out = []
    col = an.col("diag/grad_decay")
    if len(an.confirmed) and col in an.confirmed:
        decay = an.confirmed.groupby("cell")[col].mean().dropna()
        if len(decay):
            shown = ", ".join(f"{c} {fmt(decay[c], 3)}" for c in an.cells if c in decay)
            out.append(f"Why, gradient flow: after training, log10 of the gradient reaching the first 10 time steps "
                       f"over that at the last 10 (0 = nothing lost, −2 = a hundredfold vanishing) is {shown}.")
    gates = an.tables["gates"].raw
    keep = gates[gates["keep_gate"]] if len(gates) else gates
    if len(keep):
        shown = ", ".join(f"{r.cell} ({r.gate}) {fmt(100 * r.saturation_end, 3)}%" for r in keep.itertuples()
                          if r.layer == "l0")
        out.append(f"Why, gate use: saturated fraction of the state-keeping gate at the end of training: {shown}.")
    imp = an.tables["importance"].raw
    if len(imp):
        top = imp.loc[imp.groupby("cell")["importance"].idxmax()]
        names = sorted(set(top["param"]))
        out.append(f"The most important hyperparameter ({an.evaluator.split(' (')[0]}) is "
                   + (f"{names[0]} for every cell tested." if len(names) == 1 else
                      ", ".join(f"{r.param} for {r.cell}" for r in top.itertuples()) + "."))
    return out


def gate_claim(an: Analysis) -> str:
    """The seed's "Γu is mostly zeros and ones", tested on the update gates of sgru (Γu) and gru (z), layer 0:
    read as "more than half of the activations are < 0.1 or > 0.9"."""
    g = an.tables["gates"].raw
    if g.empty:
        return "No gate statistics were logged by the confirmation runs."
    found = [(cell, gate, r["saturation_end"].iloc[0], r["saturation_start"].iloc[0])
             for cell, gate in (("sgru", "u"), ("gru", "z"))
             for r in [g[(g["cell"] == cell) & (g["gate"] == gate) & (g["layer"] == "l0")]] if len(r)]
    if not found:
        keep = g[g["keep_gate"]]
        shown = ", ".join(f"{r.cell} ({r.gate}) {fmt(100 * r.saturation_end, 3)}%" for r in keep.itertuples())
        return ("The seed's claim concerns sgru and gru, which this sweep does not include. Saturated fraction of "
                f"the state-keeping gates at the end of training: {shown or 'none logged'}.")
    shown = "; ".join(f"{cell} ({'Γu' if gate == 'u' else 'z'}): {fmt(100 * end, 3)}% at the end of training, "
                      f"{fmt(100 * start, 3)}% before" for cell, gate, end, start in found)
    verdict = "; ".join(f"{'holds' if end > 0.5 else 'does not hold'} for {cell}" for cell, _, end, _ in found)
    return (f"The seed's claim that the update gate Γu is mostly zeros and ones, tested: the fraction of update-gate "
            f"activations < 0.1 or > 0.9 is {shown}. Read as 'more than half saturated', the claim {verdict}.")


# ---------------------------------------------------------------------------------------------- the document
def document(an: Analysis, figures: dict, command: str, sweep_file: str | None = None) -> Document:
    d = an.data
    built = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    doc = Document(f"Sweep {d.name}: {', '.join(an.cells)} on {task_title(an)}",
                   (f"{d.spec['description'].rstrip('.')}. " if d.spec["description"] else "")
                   + f"Built {built} from MLflow `{mask(d.tracking_uri)}` and Optuna `{mask(d.storage_url)}`.")
    if not an.progress["finished"]:
        doc.add(Para(status_line(an) + " Every number below covers finished runs only and will change.",
                     "warning"))
    doc.add(Heading("Summary"), Box(*summary(an)))
    doc.add(*[Para(n, "note") for n in an.notes + ([d.task_note] if d.task_note else [])])
    _leaderboard_section(doc, an)
    _significance_section(doc, an)
    _curves_section(doc, an, figures)
    _gradient_section(doc, an, figures)
    _gates_section(doc, an, figures)
    _tuning_section(doc, an, figures)
    _fairness_section(doc, an, command, sweep_file)
    doc.add(Heading("Files"), Items([f"`{n}.csv`: {h}" for n, h in CSV_HELP.items()]
                                    + ["`report.md` and the PNG figures: this report for GitHub; `index.html`: the "
                                       "same page, self-contained"]))
    return doc


def _leaderboard_section(doc: Document, an: Analysis) -> None:
    task = an.data.task
    n_seeds = len(an.data.spec["seeds"])
    text = (f"Each cell's best search configuration was re-trained with {n_seeds} seeds; shown is the mean ± the "
            f"half-width of the 95% Student-t interval over those seeds (t with n − 1 degrees of freedom). Ranked by "
            f"{label(an.primary)}" + (" (the held-out test set, not used to choose anything)"
                                      if an.primary.startswith("test/") else "") + ".")
    if task is not None:
        b = task.baseline
        text += (f" Baseline: {label(b.metric)} {fmt(b.value)} = {b.formula} ({b.source}). Solved: "
                 f"{task.solved or 'no criterion for this task'}. 'beats baseline' = the whole interval is "
                 f"{'above' if b.higher_is_better else 'below'} it.")
    text += (" Rows marked † are published numbers quoted with their citations from the papers' own settings, not "
             "re-run here; (unchecked) marks numbers from secondary sources.")
    doc.add(Heading("1. Leaderboard"), Para(text),
            TableBlock(an.tables["leaderboard"], f"Leaderboard on {task_title(an)}; bold: the best cell."))
    if task is not None and any(p.value is None for p in task.published):
        doc.add(Para("Published findings without a number (quoted, not re-run here):"),
                Items([f"{p.label()} † — {p.citation}" for p in task.published if p.value is None]))


def _significance_section(doc: Document, an: Analysis) -> None:
    doc.add(Heading("2. Significance"),
            Para(f"Every cell against the reference **{an.reference}** on {label(an.primary)}, one comparison per "
                 f"seed sample of the confirmed configurations: {TESTS[an.test]}; the p-values of the family are "
                 f"corrected with Holm's step-down method (Holm 1979) at α = {ALPHA}. The difference is the cell's "
                 "mean minus the reference's, with a Welch–Satterthwaite 95% interval. With few seeds these tests "
                 "have little power: 'no significant difference' is not 'equal'."))
    if an.tables["significance"].raw.empty:
        doc.add(Para("Only one cell has confirmation runs: nothing to compare.", "note"))
    else:
        doc.add(TableBlock(an.tables["significance"], "Bold rows: significant after Holm's correction."))


def _figure_or(doc: Document, fig, missing: str) -> None:
    doc.add(FigureBlock(fig) if fig is not None else Para(missing, "note"))


def _curves_section(doc: Document, an: Analysis, figures: dict) -> None:
    doc.add(Heading("3. Learning curves"))
    _figure_or(doc, figures["curves"], "No confirmation run has logged a validation metric yet.")


def _gradient_section(doc: Document, an: Analysis, figures: dict) -> None:
    doc.add(Heading("4. Gradient flow"))
    _figure_or(doc, figures["gradient"], "No confirmation run has logged a gradient profile yet.")


def _gates_section(doc: Document, an: Analysis, figures: dict) -> None:
    doc.add(Heading("5. Gate use"), Para(gate_claim(an)))
    if not an.tables["gates"].raw.empty:
        doc.add(TableBlock(an.tables["gates"], "Saturated = fraction of activations < 0.1 or > 0.9 on the fixed "
                                               "diagnostic batch, mean over the seeds of the confirmed configuration; "
                                               "bold: the gate that keeps the state."))
    _figure_or(doc, figures["gates"], "No gate statistics yet.")


def _tuning_section(doc: Document, an: Analysis, figures: dict) -> None:
    doc.add(Heading("6. Tuning"),
            Para(f"Hyperparameter importance by **{an.evaluator}**, per cell over its completed search trials "
                 "(Greff et al. 2017 used fANOVA; Optuna 5's default is PED-ANOVA)."))
    if an.importance_notes:
        doc.add(Items([f"{c}: {n}" for c, n in an.importance_notes.items()]))
    if not an.tables["importance"].raw.empty:
        doc.add(TableBlock(an.tables["importance"], "Importance normalised to sum to 1 per cell."))
        _figure_or(doc, figures["importance"], "")
    _figure_or(doc, figures["tuning"], "No search trial has finished yet.")
    _design_section(doc, an, figures)


def _design_section(doc: Document, an: Analysis, figures: dict) -> None:
    design = an.data.spec.get("design") or {}
    doc.add(Heading("Robustness at the shared design points", 3))
    if "design" not in an.tables:
        doc.add(Para("This sweep had no shared initial design (design.kind none, or a sweep begun before designs): "
                     "every cell's search started from its own sampler.", "note"))
        return
    doc.add(Para(f"The first search trials of every cell were the same {design.get('points', '')} configurations "
                 f"of one scrambled {'Sobol' if design.get('kind') == 'sobol' else 'Latin hypercube'} design over "
                 "the search space (seeded by the sweep's sampler seed), one seed each, before the sampler took "
                 "over. Compared at the same settings, a cell that solves the task at more of them is easier to tune; "
                 "one seed per point, so a single cell at a single point is noisy."),
            TableBlock(an.tables["design"], f"Search {an.metric} per cell at each shared point; ✓: solved on "
                                            "validation; —: the cell skipped the point (a value it does not take) "
                                            "or has not run it yet."))
    if figures.get("design") is not None:
        doc.add(FigureBlock(figures["design"]))


def _fairness_section(doc: Document, an: Analysis, command: str, sweep_file: str | None) -> None:
    d = an.data
    s = d.spec
    doc.add(Heading("7. Fairness and reproducibility"),
            Para(f"Every cell had the same budget: {s['trials']} search trials of "
                 + (f"{s['steps']} steps" if s["steps"] else f"{s['epochs']} epochs")
                 + f" each (pruned trials count), then the top {s['top_k']} configuration(s) re-trained with seeds "
                   f"{', '.join(map(str, s['seeds'])) or '—'}. Failed trials (crashes, lost workers) do not count "
                   "and were retried."),
            TableBlock(an.tables["fairness"], "Trials and compute per cell."))
    doc.add(Items(_provenance(an)))
    doc.add(Para("Commands:"), Code("\n".join(_commands(an, command, sweep_file))))


def _distinct(an: Analysis, tag: str) -> str:
    runs = an.data.runs
    col = f"tags.{tag}"
    values = sorted(set(runs[col].dropna())) if len(runs) and col in runs else []
    return ", ".join(values) if values else "not recorded"


def _provenance(an: Analysis) -> list[str]:
    s = an.data.spec
    versions = []
    for pkg in PACKAGES:
        try:
            versions.append(f"{pkg} {metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            pass
    commits = _distinct(an, "git.commit")
    return [f"Task: {task_title(an)}; objective {s['metric']} ({s['direction']}); search space "
            f"`{_json(s['search'])}`; sampler `{_json(s['sampler'])}`; pruner `{_json(s['pruner'])}`"
            + (f"; parameter-matched to {s['param_match']} recurrent parameters" if s["param_match"] else ""),
            f"Search seed (train.seed of every search trial): {_search_seeds(an)}; "
            f"confirmation seeds: {', '.join(map(str, s['seeds'])) or '—'}",
            f"Git commit of the runs: {commits}" + (" (more than one: the code changed during the sweep)"
                                                    if "," in commits else ""),
            f"rnnsuite version of the runs: {_distinct(an, 'rnnsuite.version')}; device: {_distinct(an, 'device')}",
            f"Packages where this report was built (Python {platform.python_version()}): {', '.join(versions)}",
            f"MLflow: experiment {an.data.name}, parent run `{an.data.parent.info.run_id}` (this report is logged "
            f"there under `{ARTIFACT_PATH}/`)"]


def _search_seeds(an: Analysis) -> str:
    runs = an.data.runs
    if not len(runs):
        return "—"
    seeds = sorted(runs.loc[runs["phase"] == "search", "seed"].dropna().astype(int).unique())
    return ", ".join(map(str, seeds)) or "—"


def _json(value) -> str:
    import json

    return json.dumps(value, separators=(", ", ": "))


def _commands(an: Analysis, command: str, sweep_file: str | None) -> list[str]:
    """The sweep's command as recorded (tag rnnsuite.command), else rebuilt from its file and stores."""
    from .config import SWEEPS_DIR

    d = an.data
    flags = f" --storage {shlex.quote(mask(d.storage_url))} --tracking-uri {shlex.quote(mask(d.tracking_uri))}"
    sweep = d.parent.data.tags.get("rnnsuite.command")
    if not sweep and sweep_file:
        sweep = f"rnnsuite sweep {shlex.quote(sweep_file)}{flags}"
    elif not sweep:
        shipped = (SWEEPS_DIR / f"{d.name}.yaml").is_file()
        sweep = (f"rnnsuite sweep {'sweeps/' if shipped else 'PATH/TO/'}{d.name}.yaml{flags}   # rebuilt: the "
                 "sweep does not record its command line")
    return [f"# the sweep\n{sweep}", f"# this report\n{command or 'rnnsuite report ' + d.name + flags}"]


# ---------------------------------------------------------------------------------------------- scale benchmark
def scale_benchmark(n_runs: int = 1000, workdir: str | Path | None = None, cells: int = 10) -> dict:
    """Seconds to build a report over `n_runs` synthetic trial runs (parent, study and trial runs with realistic
    metric histories and profile artifacts in a fresh SQLite MLflow store; Optuna studies in a journal).

    Writing the synthetic sweep is not timed; reading, analysing, drawing, rendering, writing and logging the
    report is. Returns {"seconds", "runs", "cells", "write_seconds", "output"}.
    """
    import tempfile

    from .report_synth import write_synthetic_sweep

    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="rnnsuite-report-bench-"))
    start = time.perf_counter()
    made = write_synthetic_sweep(root, n_runs=n_runs, n_cells=cells)
    written = time.perf_counter() - start
    start = time.perf_counter()
    build_report(made["name"], root / "report", storage=made["storage"], tracking_uri=made["tracking_uri"])
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "runs": made["runs"], "cells": len(made["cells"]), "write_seconds": written,
            "output": str(root / "report")}


if __name__ == "__main__":  # python -m suite.report N: the scale benchmark alone
    print(scale_benchmark(int(sys.argv[1]) if len(sys.argv) > 1 else 1000))
