"""``rnnsuite export NAME -o FILE``: a sweep's Optuna studies and MLflow runs -> one archive (see .fmt).

Reads only: the stores are checked as ``rnnsuite report`` checks them (an unknown sweep or an unreachable store is
one line) and nothing is written but FILE, renamed into place once complete.
"""
from __future__ import annotations

import shutil
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from .. import __version__
from ..registry import SuiteError
from ..sweep.contract import sweep_of
from ..report.data import (choose_storage, find_parent, mlflow_client, no_artifact_progress_bars, open_optuna,
                           sweep_name)
from ..tracking import mask, resolve_tracking_uri
from . import fmt

SOURCE_TAG = "rnnsuite.source_run_id"  # on an imported run: the id the run had where it was first logged
REPORT_ARTIFACTS = "report"  # the report a sweep run carries is rebuilt from the data, not archived
PLOTS = ".png"  # diagnostics plots are drawn from the CSV beside them (a third of a run's bytes): not archived
PAGE = 5000


def origin_id(run) -> str:
    """The id a run had in the stores it was first logged to (kept across any number of export/import hops)."""
    return run.data.tags.get(SOURCE_TAG) or run.info.run_id


def export_sweep(name_or_file: str, out: str | Path, storage: str | None = None, tracking_uri: str | None = None,
                 with_checkpoints: bool = False) -> dict:
    name = sweep_name(name_or_file)
    out = Path(out)
    if out.is_dir():
        raise SuiteError(f"-o {out} is a folder; name the archive file, e.g. {out / (name + '.rnnsuite.tar.gz')}")
    uri = resolve_tracking_uri(tracking_uri)
    client = mlflow_client(uri)
    experiment_id, parent = find_parent(client, name, uri)
    storage_url = choose_storage(storage, parent)
    store = open_optuna(storage_url)
    studies = sorted((s for s in store.get_all_studies() if sweep_of(s.study_name) == name),
                     key=lambda s: s.study_name)
    if not studies:
        raise SuiteError(f"the Optuna storage {mask(storage_url)} holds no study of sweep {name!r}; pass the "
                         "sweep's --storage")
    counts = {}
    with tempfile.TemporaryDirectory(prefix="rnnsuite-export-") as tmp:
        staging = Path(tmp) / "archive"
        counts.update(_write_optuna(store, studies, staging))
        counts.update(_write_mlflow(client, experiment_id, staging, with_checkpoints))
        manifest = {"format": fmt.FORMAT, "version": fmt.FORMAT_VERSION, "sweep": name, "origin": origin_id(parent),
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "rnnsuite": __version__,
                    "mlflow": _version("mlflow"), "optuna": _version("optuna"), "with_checkpoints": with_checkpoints,
                    "sweep_file": _sweep_file(name_or_file, name), "counts": counts,
                    "source": {"tracking_uri": mask(uri), "storage": mask(storage_url)}}
        fmt.pack(staging, manifest, out)
    return {"name": name, "path": out, "bytes": out.stat().st_size, **counts}


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


def _sweep_file(name_or_file: str, name: str) -> dict | None:
    """The sweep file's name and text: the file given, else the shipped sweeps/NAME.yaml if it is that sweep."""
    import yaml

    from ..config import find_sweep_file

    try:
        path = find_sweep_file(name_or_file)
        text = path.read_text(encoding="utf-8")
        if (yaml.safe_load(text) or {}).get("name") != name:
            return None
    except (SuiteError, OSError, yaml.YAMLError, AttributeError):
        return None
    return {"name": path.name, "text": text}


# ---------------------------------------------------------------------------------------------- Optuna
def _iso(dt) -> str | None:
    return None if dt is None else dt.isoformat()


def trial_row(study_name: str, t) -> dict:
    from optuna.distributions import distribution_to_json

    return {"study": study_name, "number": t.number, "state": t.state.name, "values": t.values,
            "datetime_start": _iso(t.datetime_start), "datetime_complete": _iso(t.datetime_complete),
            "params": t.params, "distributions": {k: distribution_to_json(d) for k, d in t.distributions.items()},
            "user_attrs": t.user_attrs, "system_attrs": t.system_attrs,
            "intermediate_values": {str(step): v for step, v in sorted(t.intermediate_values.items())}}


def _write_optuna(store, studies, staging: Path) -> dict:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study_rows, trial_rows = [], []
    for s in studies:
        study_rows.append({"name": s.study_name, "directions": [d.name for d in s.directions],
                           "user_attrs": s.user_attrs, "system_attrs": s.system_attrs})
        trials = optuna.load_study(study_name=s.study_name, storage=store).get_trials(deepcopy=False)
        trial_rows += [trial_row(s.study_name, t) for t in sorted(trials, key=lambda t: t.number)]
    fmt.write_jsonl(staging / fmt.STUDIES, study_rows)
    fmt.write_jsonl(staging / fmt.TRIALS, trial_rows)
    return {"studies": len(study_rows), "trials": len(trial_rows)}


# ---------------------------------------------------------------------------------------------- MLflow
def _all_runs(client, experiment_id: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], max_results=PAGE, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def _write_mlflow(client, experiment_id: str, staging: Path, with_checkpoints: bool) -> dict:
    exp = client.get_experiment(experiment_id)
    (staging / fmt.EXPERIMENT).parent.mkdir(parents=True, exist_ok=True)
    import json

    (staging / fmt.EXPERIMENT).write_text(json.dumps({"name": exp.name, "tags": dict(exp.tags)}, sort_keys=True),
                                          encoding="utf-8")
    runs = sorted(_all_runs(client, experiment_id), key=lambda r: (r.info.start_time or 0, r.info.run_id))
    rows, metrics, artifacts, checkpoints = [], [], 0, 0
    for run in runs:
        info, data = run.info, run.data
        rows.append({"run_id": info.run_id, "origin_id": origin_id(run),
                     "parent_run_id": data.tags.get("mlflow.parentRunId"), "run_name": info.run_name,
                     "status": info.status, "start_time": info.start_time, "end_time": info.end_time,
                     "tags": dict(data.tags), "params": dict(data.params)})
        for key in sorted(data.metrics):
            metrics += [(info.run_id, key, m.step, m.timestamp, m.value) for m in client.get_metric_history(
                info.run_id, key)]
        artifacts += _download_artifacts(client, info.run_id, staging / "artifacts" / info.run_id)
        if with_checkpoints:
            checkpoints += _copy_checkpoints(data.tags.get("rnnsuite.checkpoint_dir"),
                                             staging / "checkpoints" / info.run_id)
    fmt.write_jsonl(staging / fmt.RUNS, rows)
    fmt.write_metrics(staging / fmt.METRICS, metrics)
    return {"runs": len(rows), "metric_values": len(metrics), "artifacts": artifacts, "checkpoints": checkpoints}


def _download_artifacts(client, run_id: str, dest: Path) -> int:
    with no_artifact_progress_bars():
        entries = [e for e in client.list_artifacts(run_id) if e.path != REPORT_ARTIFACTS]
        for entry in entries:
            dest.mkdir(parents=True, exist_ok=True)
            client.download_artifacts(run_id, entry.path, str(dest))
    for plot in dest.rglob(f"*{PLOTS}") if dest.is_dir() else []:
        plot.unlink()
    return sum(1 for p in dest.rglob("*") if p.is_file()) if dest.is_dir() else 0


def _copy_checkpoints(folder: str | None, dest: Path) -> int:
    """A run's checkpoint files, where its checkpoint folder is on this machine (written by `rnnsuite train`)."""
    if not folder or not Path(folder).is_dir():
        return 0
    files = [p for p in Path(folder).iterdir() if p.is_file() and p.suffix == ".ckpt"]
    for p in files:
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, dest / p.name)
    return len(files)
