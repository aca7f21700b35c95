"""Section 7 of a report (fairness and reproducibility) and the caveats: budgets, provenance, the commands that
rebuild it, and where the stores are, shown relative to $RNNSUITE_HOME (or the working directory) rather than as
absolute local paths.
"""
from __future__ import annotations

import json
import os
import platform
import shlex
from importlib import metadata
from pathlib import Path

from ..config import SWEEPS_DIR
from ..tracking import mask, runs_dir
from .render import Code, Document, Heading, Items, Para, TableBlock
from .tables import Analysis

ARTIFACT_PATH = "report"
PACKAGES = ("rnnsuite", "torch", "lightning", "mlflow", "optuna", "optuna-integration", "numpy", "pandas", "scipy",
            "matplotlib", "scikit-learn")


def shown_path(path: str) -> str:
    """A local path as a report shows it: $RNNSUITE_HOME/..., ./... under the working directory, else
    <local>/NAME: no absolute path of the machine that built it."""
    p = Path(path)
    if not p.is_absolute():
        return path
    for root, name in ((runs_dir(), "$RNNSUITE_HOME" if os.environ.get("RNNSUITE_HOME") else "./rnnsuite-runs"),
                       (Path.cwd().resolve(), ".")):
        try:
            return f"{name}/{p.resolve().relative_to(root)}"
        except ValueError:
            continue
    return f"<local>/{p.name}"


def shown_store(url: str) -> str:
    """A store URL masked (passwords) and with a local file path shown by shown_path."""
    url = mask(url)
    for prefix in ("sqlite:///", "journal:///"):
        if url.startswith(prefix):
            return prefix + shown_path(url[len(prefix):])
    if "://" not in url:
        return shown_path(url)
    return url


def shown_command(command: str) -> str:
    """A command line with every absolute local path (alone or inside a sqlite:/// URL) shown by shown_path."""
    try:
        parts = shlex.split(command)
    except ValueError:
        return mask(command)
    return shlex.join(shown_store(p) if p.startswith(("/", "sqlite:///")) else mask(p) for p in parts)


def fairness_section(doc: Document, an: Analysis, command: str, sweep_file: str | None) -> None:
    d = an.data
    s = d.spec
    doc.add(Heading("7. Fairness and reproducibility"),
            Para(f"Every cell had the same budget: {s['trials']} search trials of "
                 + (f"{s['steps']} steps" if s["steps"] else f"{s['epochs']} epochs")
                 + f" each (pruned trials count), then the top {s['top_k']} configuration(s) re-trained with seeds "
                   f"{', '.join(map(str, s['seeds'])) or '—'}. Failed trials (crashes, lost workers) do not count "
                   "and were retried."),
            TableBlock(an.tables["fairness"], "Trials and compute per cell."),
            TableBlock(an.tables["compute"], "What the whole sweep cost: the training time its runs logged and their "
                       "durations, summed (packed runs each count their pack's time), the wall time during which at "
                       "least one run was active (time between sessions not counted), and the span from the first "
                       "start to the last end."))
    doc.add(Items(_provenance(an)))
    doc.add(Para("Commands:"), Code("\n".join(commands(an, command, sweep_file))))


def caveats_section(doc: Document, an: Analysis) -> None:
    """What the intervals do not cover (issue 21, point 6)."""
    s = an.data.spec
    sampler = s.get("sampler") or {}
    doc.add(Heading("Caveats"), Items([
        f"The confirmation seeds ({', '.join(map(str, s['seeds'])) or '—'}) re-train one fixed configuration per "
        "cell: they measure training noise only (initialisation and data order), not how well another search would "
        "have tuned the cell.",
        f"The search ran once per cell (one sampler seed, {sampler.get('seed', 'not recorded')}; "
        f"{s['trials']} trials), so tuning noise — a different search finding a better or worse configuration — "
        "is not in the intervals; a cell that is 'better' here is better at this budget with this search.",
        "With few seeds, 'inconclusive' is the expected outcome for cells within a factor of a few of each other; "
        "it is not 'equal'. Only 'equivalent' (two one-sided tests against the stated margin) says the difference "
        "is small.",
        "Diverged seeds are counted in n planned and marked, but have no value: the intervals cover the finished "
        "seeds only."]))


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
            f"Equivalence margin (sweep key report.equivalence): [{an.margin[0]:g}, {an.margin[1]:g}]",
            f"Git commit of the runs: {commits}" + (" (more than one: the code changed during the sweep)"
                                                    if "," in commits else ""),
            f"rnnsuite version of the runs: {_distinct(an, 'rnnsuite.version')}; device: {_distinct(an, 'device')}",
            f"Package lock of the runs (requirements.lock, sha256 prefix): {_distinct(an, 'rnnsuite.lock')}; "
            f"installed versions matched it: {_distinct(an, 'rnnsuite.lock_match')}",
            f"Packages where this report was built (Python {platform.python_version()}): {', '.join(versions)}",
            _mlflow_line(an)]


def _mlflow_line(an: Analysis) -> str:
    """Where the report sits in MLflow. A report built from an archive is not logged anywhere: it was read from a
    throw-away store whose run ids change with every rebuild, so it names the archive to import instead."""
    if an.data.archive:
        return (f"MLflow: experiment {an.data.name}, in the archive `{an.data.archive}` (`rnnsuite import` it to "
                f"browse its runs in the MLflow UI; a report built from an archive is not logged to MLflow)")
    return (f"MLflow: experiment {an.data.name}, parent run `{an.data.parent.info.run_id}` (this report is logged "
            f"there under `{ARTIFACT_PATH}/`)")


def task_title(an: Analysis) -> str:
    """'adding (length=200)': the task and the options that define it."""
    task = an.data.task
    if task is None:
        return an.data.spec["task"]
    opts = ", ".join(f"{k}={v}" for k, v in task.options.items() if k in ("length", "level", "bptt"))
    return f"{task.name} ({opts})" if opts else task.name


def _search_seeds(an: Analysis) -> str:
    runs = an.data.runs
    if not len(runs):
        return "—"
    seeds = sorted(runs.loc[runs["phase"] == "search", "seed"].dropna().astype(int).unique())
    return ", ".join(map(str, seeds)) or "—"


def _json(value) -> str:
    return json.dumps(value, separators=(", ", ": "))


def commands(an: Analysis, command: str, sweep_file: str | None) -> list[str]:
    """The sweep's command as it recorded it (tag rnnsuite.command), else rebuilt from its file and stores (a
    sweep run before the tag existed, said so)."""
    d = an.data
    flags = f" --storage {shlex.quote(shown_store(d.storage_url))} --tracking-uri " \
            f"{shlex.quote(shown_store(d.tracking_uri))}"
    sweep = d.parent.data.tags.get("rnnsuite.command")
    if sweep:
        sweep = shown_command(sweep)
    elif sweep_file:
        sweep = f"rnnsuite sweep {shlex.quote(shown_path(sweep_file))}{flags}   # rebuilt: the sweep predates " \
                "its recorded command"
    else:
        shipped = (SWEEPS_DIR / f"{d.name}.yaml").is_file()
        sweep = (f"rnnsuite sweep {'sweeps/' if shipped else 'PATH/TO/'}{d.name}.yaml{flags}   # rebuilt: the "
                 "sweep predates its recorded command")
    report = shown_command(command) if command else f"rnnsuite report {d.name}{flags}"
    return [f"# the sweep\n{sweep}", f"# this report\n{report}"]


