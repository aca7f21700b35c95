"""Reading a sweep back for a report: MLflow runs (search_runs into pandas), histories, profiles, Optuna studies.

Every store is checked before it is opened, so an unknown sweep or an unreachable store is one line and nothing is
written (no empty SQLite file, no journal). Only what a report needs is read: the final values of every trial run
(one paged search), and metric histories and gradient-profile artifacts of the confirmation runs alone (a few per
cell), so a report over a thousand trials reads in seconds. mlflow, optuna, the tasks (torch) and the sweep
(lightning) are imported inside the functions that use them, so that importing this module (rnnsuite export does)
stays fast.
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys
import tempfile
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pandas as pd
import yaml

from .. import tracking
from ..registry import SuiteError
from ..storage import is_journal, open_storage, storage_url
from ..tracking import mask, resolve_tracking_uri
from ..sweep.contract import (LEVEL_TAG, PHASE_CONFIRM, ContractError, SweepRecord, recorded_storage, study_name,
                              sweep_of)
from .keys import parse_equivalence

PAGE = 5000  # runs per search_runs page
PROFILE = "diagnostics/grad_profile.csv"
GATE_HIST = "diagnostics/gate_hist.csv"  # runs since issue 21; older runs have none ("not recorded")
TAGS_KEPT = ("cell", "phase", "trial", "seed", "study", "task", "confirm.rank", "confirm.source_trial", "device",
             "git.commit", "rnnsuite.version", "rnnsuite.lock", "rnnsuite.lock_match", "pruned.reason", "pruned.step",
             "failure.reason", "failure.step", "mlflow.parentRunId", "rnnsuite.command", "rnnsuite.source_run_id")


@dataclass
class SweepData:
    """Everything a report is computed from; tables and figures never touch the stores again."""

    name: str
    tracking_uri: str
    storage_url: str
    parent: Any  # the sweep's parent MLflow run (an mlflow.entities.Run)
    spec: dict  # the sweep as its parent run's params describe it (cells, metric, direction, budget, seeds...)
    runs: pd.DataFrame  # one row per trial run; columns run_id, status, tags.*, params.*, metrics.*
    histories: pd.DataFrame  # run_id, key, step, value: confirmation runs only
    profiles: pd.DataFrame  # run_id, step, state, t, norm: ||dL/dh_t|| of confirmation runs
    trials: dict[str, dict[str, list]]  # cell -> {"search": [FrozenTrial], "confirm": [FrozenTrial]}
    search_studies: dict[str, Any]  # cell -> optuna Study (for hyperparameter importance)
    confirm_planned: dict[str, int | None]  # cell -> confirmation runs enqueued (None until its search ended)
    gate_hists: pd.DataFrame = None  # run_id, step, layer, gate, bin, lo, hi, fraction (where logged)
    task: Any = None  # the Task (baseline, solved, published), None if it cannot be rebuilt here
    task_note: str = ""  # why the task could not be rebuilt
    notes: list[str] = field(default_factory=list)
    archive: str = ""  # the archive (rnnsuite export) the report was built from, when it was


# ---------------------------------------------------------------------------------------------- the stores
def check_tracking(uri: str) -> None:
    """Refuse a missing SQLite file (MLflow would create an empty one) or an unreachable server or database
    (one short probe by tracking.check_tracking: MLflow's own client retries for minutes)."""
    if urlsplit(uri).scheme == "sqlite":
        path = Path(uri[len("sqlite:///"):])
        if not path.is_file():
            raise SuiteError(f"no MLflow database at {path}; run `rnnsuite sweep` first (or pass --tracking-uri)")
        return
    tracking.check_tracking(uri)


def mlflow_client(uri: str):
    import mlflow  # heavy: deferred, so that importing the report (or rnnsuite export) starts fast

    check_tracking(uri)
    try:
        return mlflow.MlflowClient(uri)
    except Exception as exc:  # e.g. a database server that refuses the connection
        raise SuiteError(f"cannot open MLflow tracking at {mask(uri)}: {_first_line(exc)}") from None


def _first_line(exc: Exception) -> str:
    return (mask(str(exc)).strip().splitlines() or [exc.__class__.__name__])[0][:200]


def find_parent(client, name: str, uri: str):
    """(experiment id, the sweep's parent run); an unknown name lists the sweeps the store holds."""
    try:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            known = sorted(e.name for e in client.search_experiments(max_results=1000)
                           if e.tags.get("rnnsuite.sweep"))
            raise SuiteError(f"no sweep named {name!r} in MLflow at {mask(uri)}; sweeps there: "
                             f"{', '.join(known) or 'none'}")
        found = client.search_runs([exp.experiment_id], f"tags.`{LEVEL_TAG}` = 'sweep'",
                                   order_by=["attributes.start_time ASC"], max_results=1)
    except SuiteError:
        raise
    except Exception as exc:
        raise SuiteError(f"cannot read MLflow tracking at {mask(uri)}: {_first_line(exc)}") from None
    if not found:
        raise SuiteError(f"experiment {name!r} in MLflow at {mask(uri)} has no rnnsuite sweep run")
    return exp.experiment_id, found[0]


def choose_storage(flag: str | None, parent) -> str:
    """--storage, else $RNNSUITE_STORAGE, else where the sweep says its studies are (its tag rnnsuite.storage, set
    by its last sweep command or import; else its first storage param) when that is a local path that exists
    here or an unmasked URL, else the embedded journal."""
    if flag or os.environ.get("RNNSUITE_STORAGE"):
        return storage_url(flag)
    recorded = recorded_storage(parent.data.params, parent.data.tags)
    if recorded and "***" not in recorded:
        local = Path(recorded) if is_journal(recorded) else \
            Path(recorded[len("sqlite:///"):]) if recorded.startswith("sqlite:///") else None
        if local is None or local.is_file():
            return recorded
    return storage_url(None)


def open_optuna(url: str):
    return open_storage(url, create=False)


# ---------------------------------------------------------------------------------------------- the sweep
def parse_spec(parent, run_cells: list[str]) -> dict:
    """The sweep's definition from its parent run (suite.sweep.contract.SweepRecord, logged by Sweep.prepare)."""
    try:
        record = SweepRecord.from_run(parent.data.params, parent.data.tags)
    except ContractError as exc:
        raise SuiteError(str(exc)) from None
    spec = dataclasses.asdict(record)
    spec["cells"] = record.cells or run_cells
    spec["equivalence"] = parse_equivalence(record.equivalence)
    return spec


def search_frame(client, experiment_id: str) -> pd.DataFrame:
    """Every run of the experiment in MLflow's search_runs layout (tags.*, params.*, metrics.*), paged."""
    rows, token = [], None
    while True:
        page = client.search_runs([experiment_id], max_results=PAGE, page_token=token)
        for run in page:
            row = {"run_id": run.info.run_id, "status": run.info.status, "start_time": run.info.start_time,
                   "end_time": run.info.end_time, "run_name": run.info.run_name,
                   "level": run.data.tags.get(LEVEL_TAG, "")}
            row.update({f"tags.{k}": v for k, v in run.data.tags.items() if k in TAGS_KEPT})
            row.update({f"params.{k}": v for k, v in run.data.params.items()})
            row.update({f"metrics.{k}": _from_mlflow(v) for k, v in run.data.metrics.items()})
            rows.append(row)
        token = page.token
        if not token:
            break
    return pd.DataFrame(rows)


def _from_mlflow(value: float) -> float:
    """A metric as it was logged: MLflow's SQL stores keep ±inf as ±sys.float_info.max, which averaged over seeds
    printed rnn_tanh's -inf gradient decay (no gradient reaches the first steps) as a 309-digit number."""
    if isinstance(value, float) and abs(value) == sys.float_info.max:
        return math.copysign(math.inf, value)
    return value


SOURCE_RUN_ID = "tags.rnnsuite.source_run_id"  # on an imported run: the id it was first logged under


def original_run_id(row) -> str:
    """The id a run was logged under where the sweep ran (an imported run's new id differs), so that a report's
    CSVs are the same whichever stores it is built from."""
    source = row.get(SOURCE_RUN_ID) if hasattr(row, "get") else None
    return source if isinstance(source, str) and source else row["run_id"]


def trial_runs(frame: pd.DataFrame) -> pd.DataFrame:
    """The trial-level runs with typed columns the tables use: cell, phase, trial, seed, rank, n_params, steps."""
    runs = frame[frame["level"] == "trial"].copy() if len(frame) else frame.copy()
    if runs.empty:
        return pd.DataFrame(columns=["run_id", "status", "cell", "phase", "trial", "seed", "rank", "n_params",
                                     "stopped_at", "steps", "train_s"])
    def num(col):
        return pd.to_numeric(runs[col], errors="coerce") if col in runs else pd.Series(math.nan, index=runs.index)

    runs["cell"] = runs.get("tags.cell")
    runs["phase"] = runs.get("tags.phase")
    runs["trial"] = num("tags.trial")
    runs["seed"] = num("tags.seed")
    runs["rank"] = num("tags.confirm.rank")
    runs["n_params"] = num("params.n_params")
    runs["stopped_at"] = num("tags.pruned.step").fillna(num("tags.failure.step"))
    runs["steps"] = runs["stopped_at"].fillna(num("params.train.steps"))  # pruned or diverged: fewer steps
    runs["train_s"] = num("metrics.time/train_s")
    return runs.reset_index(drop=True)


def _count_epochs(runs: pd.DataFrame, task) -> None:
    """Runs of a sweep that budgets epochs (LM) trained epochs x steps_per_epoch steps, not train.steps."""
    per_epoch = getattr(task, "steps_per_epoch", None)
    if not len(runs) or not per_epoch or "params.train.epochs" not in runs:
        return
    epochs = pd.to_numeric(runs["params.train.epochs"], errors="coerce")
    whole = (epochs > 0) & runs["stopped_at"].isna()
    runs.loc[whole, "steps"] = epochs[whole] * per_epoch


def load_trials(storage, spec: dict, task_label: str, name: str):
    """Search and confirmation trials of every cell from Optuna; a study not created yet is empty."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    known = {s.study_name for s in storage.get_all_studies()}
    trials, studies, planned = {}, {}, {}
    for cell in spec["cells"]:
        base, confirm_name = study_name(name, task_label, cell), study_name(name, task_label, cell, PHASE_CONFIRM)
        trials[cell] = {"search": [], "confirm": []}
        planned[cell] = None
        if base in known:
            studies[cell] = optuna.load_study(study_name=base, storage=storage)
            trials[cell]["search"] = studies[cell].get_trials(deepcopy=False)
        if confirm_name in known:
            confirm = optuna.load_study(study_name=confirm_name, storage=storage)
            trials[cell]["confirm"] = confirm.get_trials(deepcopy=False)
            value = confirm.user_attrs.get("planned")
            planned[cell] = None if value is None else int(value)
    if not any(study_name(name, task_label, c) in known for c in spec["cells"]):
        sweeps = sorted({sweep_of(n) for n in known})
        raise SuiteError(f"the Optuna storage holds no study of sweep {name!r} (it has: "
                         f"{', '.join(sweeps) or 'none'}); pass the sweep's --storage")
    return trials, studies, planned


def rebuild_task(runs: pd.DataFrame, task_label: str):
    """The Task of the sweep from a trial run's task.* params (typed back by YAML), else from its label."""
    from .. import tasks  # imports torch (every task builds tensors): deferred for start-up

    if len(runs):
        row = runs.iloc[0]
        options = {}
        for col, value in row.items():
            key = col[len("params.task."):] if col.startswith("params.task.") else None
            if key and key not in ("name", "baseline", "baseline_metric") and isinstance(value, str):
                options[key] = None if value == "None" else yaml.safe_load(value)
        name = row.get("params.task.name")
    else:
        name, options = task_label, {}
        if task_label in tasks.setting_paths():
            section = dict(tasks.load_settings(task_label)["task"])
            name = section.pop("name")
            options = section
    try:
        return tasks.build(name, **options), ""
    except Exception as exc:  # e.g. a corpus folder that is not on this machine
        return None, f"task {name!r} could not be rebuilt here ({str(exc).splitlines()[0][:160]})"


# ---------------------------------------------------------------------------------------------- histories
def history_keys(row: pd.Series, metric: str, baseline_metric: str | None) -> list[str]:
    """The metric histories a confirmation run contributes: the objective, the baseline's metric, the global
    gradient norm and the gate statistics."""
    keys = {metric, "train/grad_norm"}
    if baseline_metric:
        keys.add(f"val/{baseline_metric}")
    for col in row.index:
        if col.startswith("metrics.gates/") and pd.notna(row[col]) and not col.endswith(("/near0", "/near1")):
            # the ends' start values come from gate_hist.csv (its first and last bins): fewer history reads
            keys.add(col[len("metrics."):])
    return sorted(k for k in keys if f"metrics.{k}" in row.index  # a diverged run's last value may be NaN
                  and (pd.notna(row[f"metrics.{k}"]) or row.get("status") == "FAILED"))


def load_histories(client, confirm: pd.DataFrame, metric: str, baseline_metric: str | None) -> pd.DataFrame:
    jobs = [(r.run_id, key) for _, r in confirm.iterrows() for key in history_keys(r, metric, baseline_metric)]

    def fetch(job):
        run_id, key = job
        return [(run_id, key, m.step, m.value) for m in client.get_metric_history(run_id, key)]

    with ThreadPoolExecutor(max_workers=4) as pool:  # latency-bound (a server, or SQLite reads): overlap them
        parts = list(pool.map(fetch, jobs))
    rows = [row for part in parts for row in part]
    return pd.DataFrame(rows, columns=["run_id", "key", "step", "value"])


@contextmanager
def no_artifact_progress_bars():
    """MLflow draws a progress bar per downloaded artifact; a report downloads dozens."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    old = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def load_profiles(client, confirm: pd.DataFrame, path: str = PROFILE,
                  columns=("step", "state", "t", "norm")) -> pd.DataFrame:
    """A diagnostics CSV artifact (by default the ||dL/dh_t|| profile) of every confirmation run that logged one."""
    frames = []
    with tempfile.TemporaryDirectory(prefix="rnnsuite-report-") as tmp, no_artifact_progress_bars():
        for run_id in confirm["run_id"]:
            try:
                local = client.download_artifacts(run_id, path, str(Path(tmp) / run_id))
            except Exception:
                continue  # a run stopped before its first diagnostics, or one from before the artifact existed
            frame = pd.read_csv(local)
            frame.insert(0, "run_id", run_id)
            frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["run_id", *columns])
    return pd.concat(frames, ignore_index=True)


def _diverged(runs: pd.DataFrame) -> pd.Series:
    reason = runs["tags.failure.reason"] if "tags.failure.reason" in runs else pd.Series("", index=runs.index)
    return (runs["status"] == "FAILED") & reason.fillna("").str.startswith("diverged")


# ---------------------------------------------------------------------------------------------- all of it
def sweep_name(name_or_file: str) -> str:
    """NAME, or the `name:` of a sweep file when NAME looks like one (a .yaml path)."""
    if name_or_file.endswith((".yaml", ".yml")) or "/" in name_or_file or Path(name_or_file).is_file():
        from ..sweep import load_sweep  # imports lightning and torch: deferred for start-up

        return load_sweep(name_or_file).name
    return name_or_file


def load(name: str, storage_flag: str | None, tracking_uri: str | None) -> SweepData:
    """Check the stores, find the sweep and read everything the report needs. Writes nothing."""
    uri = resolve_tracking_uri(tracking_uri)
    client = mlflow_client(uri)
    experiment_id, parent = find_parent(client, name, uri)
    storage_url = choose_storage(storage_flag, parent)
    storage = open_optuna(storage_url)
    frame = search_frame(client, experiment_id)
    runs = trial_runs(frame)
    spec = parse_spec(parent, sorted(runs["cell"].dropna().unique()) if len(runs) else [])
    task_label = spec["task"]
    trials, studies, planned = load_trials(storage, spec, task_label, name)
    task, note = rebuild_task(runs, task_label)
    _count_epochs(runs, task)
    if not spec["metric"] and task is not None:
        spec["metric"] = f"val/{task.metric}"
    baseline_metric = task.baseline.metric if task is not None else None
    confirm = runs[(runs["phase"] == "confirm") & ((runs["status"] == "FINISHED") | _diverged(runs))] \
        if len(runs) else runs  # diverged seeds too: the report draws them, never leaves them out silently
    histories = load_histories(client, confirm, spec["metric"], baseline_metric)
    profiles = load_profiles(client, confirm)
    hists = load_profiles(client, confirm, GATE_HIST, ("step", "layer", "gate", "bin", "lo", "hi", "fraction"))
    return SweepData(name=name, tracking_uri=uri, storage_url=storage_url, parent=parent, spec=spec, runs=runs,
                     histories=histories, profiles=profiles, gate_hists=hists, trials=trials, search_studies=studies,
                     confirm_planned=planned, task=task, task_note=note)
