"""MLflow bookkeeping of a sweep: its experiment, the parent run of the sweep and of each study (found by tags, so
that every worker and every resume finds the same ones), what they record, and how they end.

One owner per level of tracking: a trial's own run is written by the training code (suite.train, suite.packed);
the sweep writes only the parent runs and ends runs that a killed worker left behind.
"""
from __future__ import annotations

import sys
from typing import Callable

import mlflow
from mlflow.entities import Param

from ..report.keys import PARAM as REPORT_PARAM, check_report_block, equivalence_param
from ..tracking import RetryingClient, artifact_location, first_line
from .contract import LEVEL_TAG as LEVEL, STORAGE_TAG, SweepRecord
from .spec import SweepSpec

KEY = "rnnsuite.key"  # tag of a parent run: the sweep's or the study's name


class SweepRuns:
    """The sweep's experiment and parent runs in one MLflow tracking store."""

    def __init__(self, spec: SweepSpec, tracking_uri: str):
        self.spec, self.tracking_uri = spec, tracking_uri
        self._client = None

    @property
    def client(self):
        if self._client is None:  # every call retried while the tracking server is away (RNNSUITE_RETRY_S)
            self._client = RetryingClient(mlflow.MlflowClient(self.tracking_uri))
        return self._client

    def experiment_id(self) -> str:
        exp = self.client.get_experiment_by_name(self.spec.name)
        if exp is not None:
            return exp.experiment_id
        try:
            return self.client.create_experiment(self.spec.name, artifact_location=artifact_location(
                self.tracking_uri), tags={"rnnsuite.sweep": self.spec.name})
        except Exception:  # another worker created it at the same moment
            return self.client.get_experiment_by_name(self.spec.name).experiment_id

    def find_or_create_run(self, level: str, key: str, name: str, parent: str | None, tags: dict) -> str:
        exp = self.experiment_id()
        found = self.client.search_runs([exp], f"tags.`{LEVEL}` = '{level}' and tags.`{KEY}` = '{key}'",
                                        order_by=["attributes.start_time ASC"], max_results=1)
        if found:
            return found[0].info.run_id
        all_tags = {LEVEL: level, KEY: key, "sweep": self.spec.name, "task": self.spec.task_label, **tags}
        if parent:
            all_tags["mlflow.parentRunId"] = parent
        return self.client.create_run(exp, run_name=name, tags=all_tags).info.run_id

    def sweep_run(self) -> str:
        return self.find_or_create_run("sweep", self.spec.name, self.spec.name, None,
                                       {"description": self.spec.description})

    def study_run(self, cell: str) -> str:
        name = self.spec.study_name(cell)
        return self.find_or_create_run("study", name, name, self.sweep_run(), {"cell": cell, "study": name})

    # ------------------------------------------------------------------ what the parent runs record
    def record_sweep(self, record: SweepRecord, command: str, done: Callable[[], bool]) -> None:
        """The sweep's parent run: its params (once: a resumed sweep logs them only when there are none), the
        report's margin, the command that ran it, and RUNNING while work is left."""
        rid = self.sweep_run()
        run = self.client.get_run(rid)
        if not run.data.params:  # one call: a kill cannot leave half of them
            self.client.log_batch(rid, params=[Param(k, v) for k, v in record.params().items()])
        if REPORT_PARAM not in run.data.params:  # also on a sweep begun before the key existed
            self.client.log_param(rid, REPORT_PARAM, equivalence_param(self.spec.report or
                                                                       check_report_block("", None)))
        if command and "rnnsuite.command" not in run.data.tags:  # the report prints it to reproduce the sweep
            self.client.set_tag(rid, "rnnsuite.command", command)
        if run.data.tags.get(STORAGE_TAG) != record.storage:  # where the studies are now (a resume may have moved)
            self.client.set_tag(rid, STORAGE_TAG, record.storage)
        if run.info.status != "RUNNING" and not done():
            self.client.update_run(rid, "RUNNING")

    def record_study(self, cell: str, rule: str) -> None:
        """A study's run: the choice values left out of its space (tag search.left_out), the pruning rule in
        words and the shared design points (params, logged once)."""
        rid = self.study_run(cell)
        left_out = self.spec.left_out(cell)
        if left_out:  # the study's own space, as its MLflow run shows it
            self.client.set_tag(rid, "search.left_out", ", ".join(left_out))
        have = self.client.get_run(rid).data.params
        kept = [i for i, _ in self.spec.design_for(cell)]
        params = {"pruner.rule": rule[:6000], "design.kind": self.spec.design["kind"],
                  "design.points": len(self.spec.design_points), "design.trained": ",".join(map(str, kept)) or "none"}
        params = {k: str(v) for k, v in params.items() if k not in have}
        if params:
            self.client.log_batch(rid, params=[Param(k, v) for k, v in params.items()])

    def log_best(self, cell: str, search) -> None:
        """The best search trial of `cell` on its study's run (metric best/value, params best.*)."""
        try:
            best = search.best_trial
        except ValueError:
            return
        rid = self.study_run(cell)
        self.client.log_metric(rid, "best/value", best.value)
        self.client.log_param(rid, "best.trial", best.number)
        for k, v in best.params.items():
            self.client.log_param(rid, f"best.{k}", v)

    # ------------------------------------------------------------------ ending runs
    def end_lost_runs(self, study_name: str, t) -> None:
        """The MLflow run(s) of a lost trial end KILLED, even one that finished before its result reached Optuna:
        the trial does not count, so neither does its run. Found by tags too (the worker may have died before it
        recorded the run id on the trial)."""
        ids = {t.user_attrs.get("mlflow_run_id")} - {None}
        try:
            found = self.client.search_runs([self.experiment_id()], f"tags.study = '{study_name}' and "
                                            f"tags.trial = '{t.number}'", max_results=50)
            ids |= {r.info.run_id for r in found}
            for run_id in ids:
                run = self.client.get_run(run_id)
                if run.info.status != "KILLED":
                    self.client.set_tag(run_id, "failure.reason", "worker lost; trial retried")
                    self.client.set_terminated(run_id, "KILLED")
        except Exception as exc:  # finish() ends whatever is still RUNNING
            print(f"rnnsuite: could not end the MLflow run of lost trial {study_name}#{t.number}: "
                  f"{first_line(exc)}", file=sys.stderr)

    def finish_study(self, row: dict, search) -> None:
        """A finished study's run: the confirmation summary of `row` (Studies.summary_rows), ended FINISHED."""
        rid = self.study_run(row["cell"])
        if "best/value" not in self.client.get_run(rid).data.metrics:  # a kill came before it was logged
            self.log_best(row["cell"], search)
        if row["confirm_mean"] is not None:
            self.client.log_metric(rid, "confirm/mean", row["confirm_mean"])
            self.client.log_metric(rid, "confirm/n", row["confirm_n"])
            if row["confirm_sd"] is not None:
                self.client.log_metric(rid, "confirm/sd", row["confirm_sd"])
        if self.client.get_run(rid).info.status != "FINISHED":
            self.client.set_terminated(rid, "FINISHED")

    def finish_sweep(self) -> None:
        rid = self.sweep_run()
        if self.client.get_run(rid).info.status != "FINISHED":
            self.client.set_terminated(rid, "FINISHED")

    def end_orphans(self) -> None:
        """Trial runs a kill left RUNNING end KILLED (the sweep is done: nothing of it runs any more); a twin
        parent run made by two machines starting at once ends FINISHED."""
        exp = self.experiment_id()
        for run in self.client.search_runs([exp], f"attributes.status = 'RUNNING' and tags.sweep = "
                                           f"'{self.spec.name}'", max_results=5000):
            level = run.data.tags.get(LEVEL)
            if level == "trial":
                self.client.set_tag(run.info.run_id, "failure.reason", "worker lost; trial retried")
                self.client.set_terminated(run.info.run_id, "KILLED")
            elif level in ("sweep", "study") and run.info.run_id not in (self.sweep_run(), *map(
                    self.study_run, self.spec.cells)):
                self.client.set_terminated(run.info.run_id, "FINISHED")
