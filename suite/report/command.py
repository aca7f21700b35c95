"""``rnnsuite report NAME`` (and ``--from FILE``): read, analyse, draw, render, write and log one report."""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from ..archive.command import import_archive
from ..registry import SuiteError
from ..tracking import command_line, mask
from .analysis import analyse
from .claims import build_claims, write_claims
from .data import SweepData, load, sweep_name
from .design import design_figure, design_table
from .document import CSV_HELP, document, status_line
from .plots import all_figures
from .provenance import ARTIFACT_PATH, task_title
from .render import Document, to_html, to_markdown
from .tables import DEFAULT_REFERENCE, Analysis


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
    for stale in known | {f"{n}.csv" for n in CSV_HELP}:
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
