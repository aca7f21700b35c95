"""The words of a report: one document, rendered to HTML and Markdown by :mod:`.render`.

The page opens with its conclusion — a winner only where one cell beats every other, else which cells are not
separated and how many seeds would separate them — each sentence a claim generated from the tables
(:mod:`.claims`), then the sections 1-6, section 7 and the caveats (:mod:`.provenance`), and the list of files.
"""
from __future__ import annotations

from datetime import datetime, timezone

from .claims import build_claims
from .gates import RULE, gate_claim
from .provenance import caveats_section, fairness_section, shown_store, task_title
from .render import Box, Document, FigureBlock, Heading, Items, Para, TableBlock
from .stats import ALPHA
from .tables import Analysis, fmt, label
from .verdicts import scale_sentence, standing

CSV_HELP = {  # the Files section: what each CSV holds
    "leaderboard": "one row per cell (confirmed configuration): raw mean and 95% CI half-width, the analysis "
                   "scale's centre and interval (<metric>_center/_lo/_hi), every seed's value (<metric>_seeds), "
                   "seeds diverged, failed and planned, formula and empirical baseline; then baseline, published",
    "significance": "each cell against the reference: the raw-scale test as before (p, p_holm, significant, "
                    "verdict), then the analysis scale's ratio, Welch and TOST p (Holm) and the verdict (outcome)",
    "pairs": "every pair of cells: ratio with interval, Welch and TOST p (Holm over all pairs), verdict, seeds "
             "needed to separate a 2x difference at 80% power",
    "seeds": "every seed of each cell's confirmed configuration, diverged ones included (value empty)",
    "runs": "one row per trial run: phase, seed, final metrics, hyperparameters, parameters, time",
    "trials": "every search trial from Optuna: state, value, best so far, parameters",
    "curves": "mean and sd over seeds per cell, metric and step (learning curves, gradient norm)",
    "grad_profile": "||dL/dh_t|| per cell and time step at the start and end of training",
    "gates": "gate saturation, its ends (near0 < 0.1, near1 > 0.9) and mean per cell, layer and gate, before and "
             "after training, and the two claims (mostly saturated; mostly zeros and ones)",
    "gate_hist": "histogram of every gate's activations (10 bins on [0, 1]) before and after training",
    "gates_chrono": "saturation of the state-keeping gate split by model.chrono_init (where it was searched)",
    "importance": "hyperparameter importance per cell",
    "fairness": "trials, runs, steps and training time per cell",
    "compute": "the whole sweep: runs, training time summed, run time summed, wall time with a run active, span",
    "design": "each cell's search result at the shared design points (the same configurations in every cell)",
}


def status_line(an: Analysis) -> str:
    """One sentence: finished, or still running with how much is done (printed by the CLI, atop the page)."""
    p = an.progress
    done = (f"{p['search_done']} of {p['search_total']} search trials and {p['confirm_done']} of "
            f"{p['confirm_total']} confirmation runs are done")
    if p["finished"]:
        return f"Sweep {an.data.name} is finished: {done}."
    running = f" ({p['running']} running now)" if p["running"] else ""
    return f"Sweep {an.data.name} is still running: {done}{running}."


def document(an: Analysis, figures: dict, command: str, sweep_file: str | None = None,
             claims: dict | None = None) -> Document:
    d = an.data
    built = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    doc = Document(f"Sweep {d.name}: {', '.join(an.cells)} on {task_title(an)}",
                   (f"{d.spec['description'].rstrip('.')}. " if d.spec["description"] else "")
                   + (f"Built {built} from the archive `{d.archive}`." if d.archive else
                      f"Built {built} from MLflow `{shown_store(d.tracking_uri)}` and Optuna "
                      f"`{shown_store(d.storage_url)}`."))
    if not an.progress["finished"]:
        doc.add(Para(status_line(an) + " Every number below covers finished runs only and will change.",
                     "warning"))
    texts = [c["text"] for c in (claims or build_claims(an, task_title(an)))["claims"]]
    doc.add(Heading("Summary"), Box(texts[0], texts[1:] + [scale_sentence(an)]))
    doc.add(*[Para(n, "note") for n in an.notes + ([d.task_note] if d.task_note else [])])
    _leaderboard_section(doc, an, figures)
    _significance_section(doc, an, figures)
    _curves_section(doc, an, figures)
    _gradient_section(doc, an, figures)
    _gates_section(doc, an, figures)
    _tuning_section(doc, an, figures)
    fairness_section(doc, an, command, sweep_file)
    caveats_section(doc, an)
    # only the CSVs this report writes (gates_chrono.csv exists only where chrono was searched, design.csv only
    # where the sweep had a shared design)
    doc.add(Heading("Files"), Items([f"`{n}.csv`: {h}" for n, h in CSV_HELP.items()
                                     if n in an.tables or n in an.frames]
                                    + ["`claims.json`: every sentence of the summary with its numbers and the table "
                                       "and columns it came from (`python -m suite.report.check DIR` recomputes "
                                       "them from the CSVs)"]
                                    + ["`report.md` and the PNG figures: this report for GitHub; `index.html`: the "
                                       "same page, self-contained"]))
    return doc


def _leaderboard_section(doc: Document, an: Analysis, figures: dict) -> None:
    task = an.data.task
    n_seeds = len(an.data.spec["seeds"])
    text = (f"Each cell's best search configuration was re-trained with {n_seeds} seeds. {scale_sentence(an)} "
            f"Ranked by that centre of {label(an.primary)}" + (" (the held-out test set, not used to choose anything)"
                                                              if an.primary.startswith("test/") else "")
            + "; every seed's value is listed and drawn beside the table, a diverged seed counted and marked. The "
              "raw columns are the mean ± the half-width of the 95% Student-t interval (t with n − 1 degrees of "
              "freedom).")
    if task is not None:
        b = task.baseline
        ev = an.tables["leaderboard"].raw
        emp = ev["baseline_empirical"].dropna() if "baseline_empirical" in ev else []
        side = "above the stricter (higher)" if b.higher_is_better else "below the stricter (lower)"
        text += (f" Baseline: {label(b.metric)} {fmt(b.value)} = {b.formula} ({b.source})"
                 + (f"; the same predictor scores {fmt(emp.iloc[0])} on the fixed test set" if len(emp) else "")
                 + f". Solved: {task.solved or 'no criterion for this task'}. 'beats baseline' = the whole interval "
                   f"on the analysis scale is {side} of the two baselines.")
    text += (" Rows marked † are published numbers quoted with their citations from the papers' own settings, not "
             "re-run here; (unchecked) marks numbers from secondary sources.")
    st = standing(an)
    doc.add(Heading("1. Leaderboard"), Para(text),
            TableBlock(an.tables["leaderboard"], f"Leaderboard on {task_title(an)}"
                       + (f"; bold: {st['winner']}, which beats every other cell." if st["winner"] else
                          "; no cell is bold: none beats every other (section 2).")))
    _figure_or(doc, figures.get("strip"), "No confirmation seed has finished yet.")
    if task is not None and any(p.value is None for p in task.published):
        doc.add(Para("Published findings without a number (quoted, not re-run here):"),
                Items([f"{p.label()} † — {p.citation}" for p in task.published if p.value is None]))


def _significance_section(doc: Document, an: Analysis, figures: dict) -> None:
    e = an.scale.effect
    doc.add(Heading("2. Verdicts"),
            Para(f"Every cell against the reference **{an.reference}** on {label(an.primary)}, on the "
                 f"{an.scale.name} scale: the {e} of the two cells with Welch's 95% interval, Welch's t-test, and two "
                 f"one-sided tests (Schuirmann 1987) of the {e} lying inside the equivalence margin "
                 f"[{an.margin[0]:g}, {an.margin[1]:g}] (sweep key `report: {{equivalence: [lo, hi]}}`); each family "
                 f"of p-values is corrected with Holm's step-down method (Holm 1979) at α = {ALPHA}. Verdict: "
                 "**better** or **worse** where the test is significant, else **equivalent** where the two one-sided "
                 "tests are, else **inconclusive** — with the seeds per cell the observed spread implies a 2x "
                 "difference would need at 80% power. 'Inconclusive' is not 'equal'. The last column is the raw-scale "
                 f"test the report used before ({an.test}), kept in the CSV."))
    if an.tables["significance"].raw.empty:
        doc.add(Para("Only one cell has confirmation runs: nothing to compare.", "note"))
    else:
        doc.add(TableBlock(an.tables["significance"], "Bold rows: better or worse after Holm's correction."))
    if figures.get("matrix") is not None:
        doc.add(Para("All pairs of cells, one Holm family (the table is in `pairs.csv`):"),
                FigureBlock(figures["matrix"]))


def _figure_or(doc: Document, fig, missing: str) -> None:
    doc.add(FigureBlock(fig) if fig is not None else Para(missing, "note"))


def _curves_section(doc: Document, an: Analysis, figures: dict) -> None:
    doc.add(Heading("3. Learning curves"))
    _figure_or(doc, figures["curves"], "No confirmation run has logged a validation metric yet.")


def _gradient_section(doc: Document, an: Analysis, figures: dict) -> None:
    doc.add(Heading("4. Gradient flow"))
    _figure_or(doc, figures["gradient"], "No confirmation run has logged a gradient profile yet.")
    note = underflow_note(an)
    if note:
        doc.add(Para(note, "note"))


def underflow_note(an: Analysis) -> str:
    """Cells whose mean ||dL/dh_t|| is exactly 0 at some t (float underflow): said, and marked in the figure."""
    prof = an.frames["grad_profile"]
    zero = prof[(prof["state"] == "h") & (prof["norm"] <= 0)] if len(prof) else prof
    if zero.empty:
        return ""
    parts = [f"{cell} {when} of training at t = {int(g['t'].min())}–{int(g['t'].max())} ({len(g)} steps)"
             for (cell, when), g in zero.groupby(["cell", "when"])]
    return ("The gradient underflowed to exactly 0 (below the smallest float) for " + "; ".join(parts)
            + ": marked ▼ on the bottom edge of the figure, not drawn as a line (a log scale has no 0).")


def _gates_section(doc: Document, an: Analysis, figures: dict) -> None:
    doc.add(Heading("5. Gate use"), Para(gate_claim(an)))
    if not an.tables["gates"].raw.empty:
        doc.add(TableBlock(an.tables["gates"], "Saturated = fraction of activations < 0.1 or > 0.9 on the fixed "
                                               "diagnostic batch, split into its two ends (near 0, near 1), mean "
                                               "over the seeds of the confirmed configuration; bold: the gate that "
                                               f"keeps the state. Rule: {RULE}; 'not recorded': runs logged before "
                                               "the two ends were."))
    _figure_or(doc, figures["gates"], "No gate statistics yet.")
    if not an.tables["gates"].raw.empty:  # with no gate statistics at all, the line above says so once
        _figure_or(doc, figures.get("gate_hist"), "Histograms of the gate activations: not recorded (runs logged "
                                                  "before diagnostics/gate_hist.csv existed).")
    if "gates_chrono" in an.tables:
        doc.add(Para("model.chrono_init was searched: the state-keeping gate's saturation at the end of every run "
                     "(search and confirmation), split by it."),
                TableBlock(an.tables["gates_chrono"], "Mean over the runs of each cell with that setting."))


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
    criterion = an.has_solved_criterion
    doc.add(Para(f"The first search trials of every cell were the same {design.get('points', '')} configurations "
                 f"of one scrambled {'Sobol' if design.get('kind') == 'sobol' else 'Latin hypercube'} design over "
                 "the search space (seeded by the sweep's sampler seed), one seed each, before the sampler took "
                 "over. Compared at the same settings, a cell that "
                 + ("solves the task" if criterion else "does well (this task has no solved criterion)")
                 + " at more of them is easier to tune; one seed per point, so a single cell at a single point is "
                   "noisy."),
            TableBlock(an.tables["design"], f"Search {an.metric} per cell at each shared point; "
                                            + ("✓: solved on validation; " if criterion else "")
                                            + "—: the cell skipped the point (a value it does not take) or has not "
                                              "run it yet."))
    if figures.get("design") is not None:
        doc.add(FigureBlock(figures["design"]))
