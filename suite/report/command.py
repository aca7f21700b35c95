"""``rnnsuite report NAME`` (and ``--from FILE``): read, analyse, draw, render, write and log one report."""
from __future__ import annotations

import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from ..archive.command import import_archive
from ..registry import SuiteError
from ..tracking import command_line, mask
from .claims import build_claims, write_claims
from .data import SweepData, load, sweep_name
from .design import design_figure, design_table
from .figures import all_figures
from .gates import RULE, gate_claim
from .provenance import ARTIFACT_PATH, caveats_section, fairness_section, shown_store, task_title
from .render import Box, Document, FigureBlock, Heading, Items, Para, TableBlock, to_html, to_markdown
from .stats import ALPHA
from .tables import DEFAULT_REFERENCE, Analysis, analyse, fmt, label
from .verdicts import scale_sentence, standing

CSV_HELP = {
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
    "design": "each cell's search result at the shared design points (the same configurations in every cell)",
}


# ---------------------------------------------------------------------------------------------- the command
def run_report(args) -> int:
    """The CLI entry point: build the report, print where it is; SuiteErrors become one line and exit 2."""
    if getattr(args, "source", None):
        report_from(args, _command(args))
        return 0
    if not args.name:
        raise SuiteError("report needs a sweep NAME (or --from FILE, an archive written by rnnsuite export)")
    name = sweep_name(args.name)
    out = Path(args.output) if args.output else Path("reports") / name
    sweep_file = args.name if name != args.name else None
    result = build_report(name, out, storage=args.storage, tracking_uri=args.tracking_uri,
                          reference=args.reference or DEFAULT_REFERENCE, command=_command(args), sweep_file=sweep_file)
    print(result["status_line"])
    print(f"report {name}: {out / 'index.html'} and {out / 'report.md'} ({result['figures']} figures, "
          f"{result['csvs']} CSVs); logged to MLflow run {result['parent_run_id']} under {ARTIFACT_PATH}/")
    return 0


def report_from(args, command: str) -> dict:
    """The report of the sweep in an archive, built in a throw-away embedded store (the user's stores are not
    touched), so that it is the same report, CSV for CSV, as the one from the stores the archive came from."""
    if args.storage or args.tracking_uri:
        raise SuiteError("report --from reads the archive alone; leave out --storage and --tracking-uri")
    with tempfile.TemporaryDirectory(prefix="rnnsuite-report-from-") as tmp:
        storage, tracking = str(Path(tmp) / "optuna.journal"), f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        got = import_archive(args.source, storage=storage, tracking_uri=tracking)
        name = got["name"]
        if args.name and args.name != name:
            raise SuiteError(f"{args.source} holds sweep {name!r}, not {args.name!r}")
        out = Path(args.output) if args.output else Path("reports") / name
        result = build_report(name, out, storage=storage, tracking_uri=tracking,
                              reference=args.reference or DEFAULT_REFERENCE, command=command, log_artifacts=False,
                              archive=Path(args.source).name)
    print(result["status_line"])
    print(f"report {name} (from {args.source}): {out / 'index.html'} and {out / 'report.md'} "
          f"({result['figures']} figures, {result['csvs']} CSVs)", file=sys.stdout)
    return result


def _command(args) -> str:
    reference = args.reference if args.reference and args.reference != DEFAULT_REFERENCE else None
    return command_line(["rnnsuite", "report", *([args.name] if args.name else [])],
                        [("-o", args.output), ("--from", getattr(args, "source", None)), ("--storage", args.storage),
                         ("--tracking-uri", args.tracking_uri), ("--reference", reference)])


def build_report(name: str, out: Path, *, storage: str | None = None, tracking_uri: str | None = None,
                 reference: str = DEFAULT_REFERENCE, test: str = "welch", command: str = "",
                 sweep_file: str | None = None, log_artifacts: bool = True, archive: str = "") -> dict:
    """Read, analyse, draw, render, write and log one report; returns what was made (for the CLI and benchmarks).

    test: "welch" (Welch's t-test) or "mannwhitney" (Mann–Whitney U); sweep_file: the file the sweep ran from,
    when known, for the reproduction command."""
    data = load(name, storage, tracking_uri)  # the stores are checked before anything is written
    data.archive = archive
    an = analyse(data, reference, test)  # so is --reference
    design = design_table(an)
    if design is not None:
        an.tables["design"] = design
    figures = {**all_figures(an), "design": design_figure(an)}
    claims = build_claims(an, task_title(an))
    doc = document(an, figures, command, sweep_file, claims)
    written = write(out, doc, an, figures)
    written.append(write_claims(out, claims))
    parent_id = data.parent.info.run_id
    if log_artifacts:
        _log(data, written, parent_id)
    return {"status_line": status_line(an), "figures": sum(f is not None for f in figures.values()),
            "csvs": sum(p.suffix == ".csv" for p in written), "files": written, "parent_run_id": parent_id,
            "analysis": an, "claims": claims}


def _log(data: SweepData, files: list[Path], run_id: str) -> None:
    import mlflow  # heavy: deferred for the CLI's start-up, as in .data

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
                                  "design", "seeds", "verdicts", "gate_hist")}
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
def status_line(an: Analysis) -> str:
    p = an.progress
    done = (f"{p['search_done']} of {p['search_total']} search trials and {p['confirm_done']} of "
            f"{p['confirm_total']} confirmation runs are done")
    if p["finished"]:
        return f"Sweep {an.data.name} is finished: {done}."
    running = f" ({p['running']} running now)" if p["running"] else ""
    return f"Sweep {an.data.name} is still running: {done}{running}."


# ---------------------------------------------------------------------------------------------- the document
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
    doc.add(Heading("Files"), Items([f"`{n}.csv`: {h}" for n, h in CSV_HELP.items()]
                                    + ["`claims.json`: every sentence of the summary with its numbers and the table "
                                       "and columns it came from (`python -m suite.report_check DIR` recomputes "
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
    _figure_or(doc, figures.get("gate_hist"), "Histograms of the gate activations: not recorded (runs logged before "
                                              "diagnostics/gate_hist.csv existed).")
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
