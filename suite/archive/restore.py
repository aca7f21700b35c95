"""``rnnsuite import FILE``: an archive -> any MLflow tracking store and Optuna storage.

Order: the whole archive is validated (.fmt.read_archive, and every trial rebuilt as Optuna would take it), the
destination is inspected (read only), and only then written: the MLflow experiment and runs (new run ids; the
source id kept in the tag ``rnnsuite.source_run_id``; every run id in a tag remapped), then the Optuna studies
(trials re-added in number order, so numbers match what MLflow's ``trial`` tags say; ``mlflow_run_id`` and any
other run id in a user attribute remapped). The experiment's tag ``rnnsuite.import`` reads ``incomplete`` until
the last write, so an import killed half-way is recognised and redone by the next ``rnnsuite import``.

A trial RUNNING in the archive is restored RUNNING with the user attribute ``archived_running``: its worker
belongs to the stores it was exported from and can never report here, so the resumed sweep reaps it at once
(sweep.Sweep.reap: FAIL, its MLflow run KILLED, its configuration enqueued again).
"""
from __future__ import annotations

import re
import shutil
from datetime import datetime
from pathlib import Path

from ..registry import SuiteError
from ..sweep.contract import LEVEL_TAG, STORAGE_TAG, sweep_of
from ..tracking import mask
from .export import SOURCE_TAG, origin_id
from .fmt import Archive

IMPORT_TAG, ORIGIN_TAG = "rnnsuite.import", "rnnsuite.origin"  # experiment tags of an imported sweep
RUN_ID = re.compile(r"\b[0-9a-f]{32}\b")  # an MLflow run id inside a tag or attribute value
BATCH = 100  # params or tags per log_batch (MLflow's limit); metrics go 1000 at a time


# ---------------------------------------------------------------------------------------------- validation
def build_trials(archive: Archive) -> dict[str, list]:
    """study name -> its trials as Optuna FrozenTrials, in number order; anything Optuna would refuse is a
    SuiteError now, before a single write."""
    import optuna
    from optuna.distributions import json_to_distribution
    from optuna.trial import FrozenTrial, TrialState

    from ..sweep import ARCHIVED_RUNNING

    out: dict[str, list] = {s["name"]: [] for s in archive.studies}
    try:
        for row in sorted(archive.trials, key=lambda r: (r["study"], int(r["number"]))):
            state = TrialState[row["state"]]
            dists = {k: json_to_distribution(v) for k, v in row["distributions"].items()}
            values = row.get("values")
            inter = {int(k): v for k, v in (row.get("intermediate_values") or {}).items()}
            user = dict(row.get("user_attrs") or {})
            if state == TrialState.RUNNING:
                user[ARCHIVED_RUNNING] = True
            optuna.trial.create_trial(state=state, values=values, params=row["params"], distributions=dists,
                                      user_attrs=user, system_attrs=row.get("system_attrs") or {},
                                      intermediate_values=inter)  # Optuna's own checks: params in range, values
            start, end = (datetime.fromisoformat(row[k]) if row.get(k) else None
                          for k in ("datetime_start", "datetime_complete"))
            if (start is None) != (state == TrialState.WAITING) or (end is None) == state.is_finished():
                raise ValueError(f"trial {row['number']} of {row['study']}: times do not fit state {state.name}")
            out[row["study"]].append(FrozenTrial(
                number=int(row["number"]), state=state, value=None, values=values, datetime_start=start,
                datetime_complete=end, params=row["params"], distributions=dists, user_attrs=user,
                system_attrs=row.get("system_attrs") or {}, intermediate_values=inter, trial_id=-1))
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise SuiteError(f"{archive.path}: damaged archive (a trial Optuna would refuse: "
                         f"{str(exc).splitlines()[0][:150] if str(exc) else exc.__class__.__name__})") from None
    for name, trials in out.items():
        if [t.number for t in trials] != list(range(len(trials))):
            raise SuiteError(f"{archive.path}: damaged archive (study {name} does not number its trials 0..n-1)")
    return out


# ---------------------------------------------------------------------------------------------- the destination
class Destination:
    """The stores an archive goes to; nothing is created until `open_for_writing`."""

    def __init__(self, storage: str | None, tracking_uri: str | None):
        from ..storage import check_storage_url, is_local, open_storage, storage_url
        from ..tracking import check_tracking, resolve_tracking_uri

        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.storage_url = storage_url(storage)
        check_storage_url(self.storage_url)
        check_tracking(self.tracking_uri)  # a remote store that cannot be reached: one line, nothing written
        self.store = None if is_local(self.storage_url) else open_storage(self.storage_url)
        self._client = None

    def local_exists(self, which: str) -> bool:
        url = self.tracking_uri if which == "tracking" else self.storage_url
        if url.startswith("sqlite:///"):
            return Path(url[len("sqlite:///"):]).is_file()
        return "://" not in url and Path(url).is_file() if which == "storage" else True

    def client(self, create: bool = False):
        import mlflow

        from ..tracking import RetryingClient, prepare_local_store

        if self._client is None:
            if not create and not self.local_exists("tracking"):
                return None
            prepare_local_store(self.tracking_uri)
            self._client = RetryingClient(mlflow.MlflowClient(self.tracking_uri))
        return self._client

    def storage(self, create: bool = False):
        from ..storage import open_storage

        if self.store is None and (create or self.local_exists("storage")):
            self.store = open_storage(self.storage_url)
        return self.store

    def studies(self, name: str) -> list[str]:
        store = self.storage()
        return [] if store is None else sorted(s.study_name for s in store.get_all_studies()
                                               if sweep_of(s.study_name) == name)


def inspect(dest: Destination, archive: Archive) -> tuple[str, object]:
    """("empty" | "same" | "interrupted", the experiment or None); a different sweep is refused here."""
    name, client = archive.name, dest.client()
    exp = client.get_experiment_by_name(name) if client is not None else None
    studies = dest.studies(name)
    where = f"MLflow at {mask(dest.tracking_uri)} and Optuna at {mask(dest.storage_url)}"
    if exp is None:
        if studies:
            raise SuiteError(f"{where} already hold Optuna studies of a different sweep named {name!r} "
                             f"({studies[0]}, ...); nothing imported")
        return "empty", None
    if exp.lifecycle_stage != "active":
        raise SuiteError(f"MLflow at {mask(dest.tracking_uri)} holds a deleted experiment {name!r}; restore or "
                         "purge it first (mlflow gc); nothing imported")
    if exp.tags.get(IMPORT_TAG) == "incomplete" and exp.tags.get(ORIGIN_TAG) == archive.origin:
        return "interrupted", exp
    runs = _active_runs(client, exp.experiment_id)
    sweeps = [r for r in runs if r.data.tags.get("rnnsuite.level") == "sweep"]
    if not runs and not studies:
        return "empty", exp
    if not sweeps or origin_id(sorted(sweeps, key=lambda r: r.info.start_time or 0)[0]) != archive.origin:
        raise SuiteError(f"{where} already hold a different sweep named {name!r}; nothing imported (import into "
                         "other stores, e.g. another RNNSUITE_HOME)")
    differs = _difference(dest, archive, runs, studies)
    if differs:
        raise SuiteError(f"{where} already hold sweep {name!r} from the same origin in another state ({differs}); "
                         "nothing imported (import into other stores, e.g. another RNNSUITE_HOME)")
    return "same", exp


def _active_runs(client, experiment_id: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], max_results=5000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def _difference(dest: Destination, archive: Archive, runs: list, studies: list[str]) -> str:
    """'' if the stores hold exactly what the archive holds (by origin ids, trial numbers and states)."""
    import optuna

    mine = sorted((origin_id(r), r.info.status) for r in runs)
    theirs = sorted((r["origin_id"], r["status"]) for r in archive.runs)
    if mine != theirs:
        return f"{len(mine)} MLflow runs here, {len(theirs)} in the archive, or other statuses"
    if studies != sorted(s["name"] for s in archive.studies):
        return f"studies {', '.join(studies)} here"
    for name in studies:
        here = [(t.number, t.state.name) for t in optuna.load_study(study_name=name, storage=dest.storage())
                .get_trials(deepcopy=False)]
        there = sorted((int(t["number"]), t["state"]) for t in archive.trials if t["study"] == name)
        if sorted(here) != there:
            return f"study {name}: {len(here)} trials here, {len(there)} in the archive, or other states"
    return ""


def clear_interrupted(dest: Destination, archive: Archive, exp) -> None:
    """Remove what an interrupted import of this sweep wrote (its runs, its studies), to write it again whole."""
    import optuna

    client = dest.client()
    for run in _active_runs(client, exp.experiment_id):
        if SOURCE_TAG in run.data.tags:
            client.delete_run(run.info.run_id)
    for name in dest.studies(archive.name):
        optuna.delete_study(study_name=name, storage=dest.storage())


# ---------------------------------------------------------------------------------------------- writing
def remap(value, ids: dict[str, str]):
    """Every archived run id inside a string (a tag, a user attribute) replaced by the run's new id."""
    if isinstance(value, str):
        return RUN_ID.sub(lambda m: ids.get(m.group(0), m.group(0)), value)
    if isinstance(value, list):
        return [remap(v, ids) for v in value]
    if isinstance(value, dict):
        return {k: remap(v, ids) for k, v in value.items()}
    return value


def write_mlflow(dest: Destination, archive: Archive, exp, checkpoints_to: Path | None) -> dict[str, str]:
    """The experiment and every run; returns archived run id -> new run id."""
    from ..tracking import artifact_location

    client = dest.client(create=True)
    tags = {k: v for k, v in archive.experiment.get("tags", {}).items() if k not in (IMPORT_TAG, ORIGIN_TAG)}
    if exp is None:
        exp_id = client.create_experiment(archive.name, artifact_location=artifact_location(dest.tracking_uri),
                                          tags={**tags, ORIGIN_TAG: archive.origin, IMPORT_TAG: "incomplete"})
    else:
        exp_id = exp.experiment_id
        for k, v in {**tags, ORIGIN_TAG: archive.origin, IMPORT_TAG: "incomplete"}.items():
            client.set_experiment_tag(exp_id, k, v)
    ids: dict[str, str] = {}
    for row in _parents_first(archive.runs):  # a run's parent exists before it
        tags = {SOURCE_TAG: row["origin_id"]}
        if row.get("parent_run_id"):
            tags["mlflow.parentRunId"] = ids.get(row["parent_run_id"], row["parent_run_id"])
        run = client.create_run(exp_id, start_time=row.get("start_time"), tags=tags, run_name=row.get("run_name"))
        ids[row["run_id"]] = run.info.run_id
    for row in archive.runs:
        _write_run(client, archive, row, ids, checkpoints_to)
    return ids


def _parents_first(rows: list[dict]) -> list[dict]:
    ids = {r["run_id"] for r in rows}
    done, out, left = set(), [], list(rows)
    while left:
        ready = [r for r in left if not r.get("parent_run_id") or r["parent_run_id"] not in ids
                 or r["parent_run_id"] in done]
        if not ready:  # a cycle cannot come from MLflow; keep the rest in their order
            ready = left
        out += ready
        done |= {r["run_id"] for r in ready}
        left = [r for r in left if r["run_id"] not in done]
    return out


def _write_run(client, archive: Archive, row: dict, ids: dict[str, str], checkpoints_to: Path | None) -> None:
    from mlflow.entities import Metric, Param, RunTag

    run_id = ids[row["run_id"]]
    tags = {k: remap(v, ids) for k, v in row["tags"].items() if k not in ("mlflow.runName", SOURCE_TAG)}
    ckpts = archive.files("checkpoints", row["run_id"])
    if ckpts and checkpoints_to is not None:
        folder = checkpoints_to / run_id
        folder.mkdir(parents=True, exist_ok=True)
        for local, rel in ckpts:
            shutil.copy2(local, folder / rel)
        tags["rnnsuite.checkpoint_dir"] = str(folder)
    tag_list = [RunTag(k, str(v)) for k, v in tags.items()]
    params = [Param(k, str(v)) for k, v in row["params"].items()]
    for i in range(0, max(len(tag_list), len(params)), BATCH):
        client.log_batch(run_id, params=params[i:i + BATCH], tags=tag_list[i:i + BATCH])
    metrics = [Metric(key, value, timestamp, step) for key, step, timestamp, value
               in archive.metrics.get(row["run_id"], [])]
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i:i + 1000])
    for local, rel in archive.files("artifacts", row["run_id"]):
        folder = str(Path(rel).parent.as_posix())
        client.log_artifact(run_id, str(local), None if folder == "." else folder)
    if row["status"] != "RUNNING":  # a run RUNNING at export stays so: the resumed sweep reaps it
        client.set_terminated(run_id, row["status"], end_time=row.get("end_time"))


def write_optuna(dest: Destination, archive: Archive, trials: dict[str, list], ids: dict[str, str]) -> None:
    import copy

    import optuna
    from optuna.study import StudyDirection

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store = dest.storage(create=True)
    for s in archive.studies:
        study = optuna.create_study(study_name=s["name"], storage=store,
                                    directions=[StudyDirection[d] for d in s["directions"]])
        for k, v in s.get("user_attrs", {}).items():
            study.set_user_attr(k, remap(v, ids))
        study_id = store.get_study_id_from_name(s["name"])
        for k, v in s.get("system_attrs", {}).items():
            store.set_study_system_attr(study_id, k, v)
        fixed = []
        for t in trials[s["name"]]:
            t = copy.deepcopy(t)
            t.user_attrs = remap(t.user_attrs, ids)
            fixed.append(t)
        study.add_trials(fixed)
        numbers = [t.number for t in study.get_trials(deepcopy=False)]
        if numbers != list(range(len(fixed))):  # a trial number is what MLflow's `trial` tags refer to
            raise SuiteError(f"study {s['name']}: trials were numbered {numbers[:5]}... on import, not 0..n-1")


def finish(dest: Destination, archive: Archive) -> None:
    """The sweep now lives in `dest`: its parent run says so (tag rnnsuite.storage), and the import is complete."""
    client = dest.client()
    exp = client.get_experiment_by_name(archive.name)
    for run in client.search_runs([exp.experiment_id], f"tags.`{LEVEL_TAG}` = 'sweep'"):
        client.set_tag(run.info.run_id, STORAGE_TAG, mask(dest.storage_url))
    client.set_experiment_tag(exp.experiment_id, IMPORT_TAG, "complete")
