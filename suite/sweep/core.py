"""One sweep against one Optuna storage and one MLflow tracking URI, composed of its parts: the studies
(:mod:`.studies`), the MLflow parent runs (:mod:`.ledger`), the leases on running trials (:mod:`.leases`), the
trials alone or packed (:mod:`.trials`, :mod:`.packing`) and the worker loop (:mod:`.worker`)."""
from __future__ import annotations

import socket

import optuna

from .. import tasks
from ..storage import check_storage_url, is_local, open_storage, storage_url as resolve_storage
from ..tracking import check_tracking, mask, prepare_local_store, resolve_tracking_uri
from .configs import base_config
from .contract import PHASE_SEARCH, SweepRecord
from .leases import Leases
from .ledger import SweepRuns
from .packing import PackRunner
from .spec import SweepSpec
from .studies import Studies, pruning_rule
from .trials import TrialRunner
from .worker import Worker


class Sweep:
    """One sweep against one Optuna storage and one MLflow tracking URI."""

    def __init__(self, spec: SweepSpec, storage_url: str | None = None, tracking_uri: str | None = None):
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.spec = spec
        self.command = ""  # the command line, tagged rnnsuite.command on the parent run (run_sweep sets it)
        self.storage_url = resolve_storage(storage_url)
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        base = base_config(spec)
        task = tasks.build(**{"name": base.task.name, **base.task.options})
        # Everything remote is reached before anything local is created: a wrong password or host leaves no
        # stray journal, database or folder behind.
        check_storage_url(self.storage_url)
        check_tracking(self.tracking_uri)
        storage = None if is_local(self.storage_url) else open_storage(self.storage_url)
        prepare_local_store(self.tracking_uri)
        if storage is None:
            storage = open_storage(self.storage_url)
        self.storage = storage
        self.metric = spec.metric or f"val/{task.metric}"
        self.direction = spec.direction or task.direction
        self.host = socket.gethostname()
        self.runs = SweepRuns(spec, self.tracking_uri)
        self.studies = Studies(spec, storage, self.direction, on_chosen=self.runs.log_best)
        self.leases = Leases(self.studies, self.runs, self.host)
        self.trials = TrialRunner(spec, self.studies, self.runs, self.metric, self.direction, self.tracking_uri,
                                  self.host)
        self.worker = Worker(spec, self.studies, self.leases, self.trials, PackRunner(spec, self.studies,
                                                                                      self.trials))

    # ------------------------------------------------------------------ the parts most callers need
    def study(self, cell: str, phase: str = PHASE_SEARCH):
        return self.studies.study(cell, phase)

    @property
    def client(self):
        return self.runs.client

    def study_run(self, cell: str) -> str:
        return self.runs.study_run(cell)

    def counts(self, cell: str, phase: str = PHASE_SEARCH) -> dict[str, int]:
        return self.studies.counts(cell, phase)

    def done(self) -> bool:
        return self.studies.done()

    def confirm_planned(self, cell: str) -> int | None:
        return self.studies.confirm_planned(cell)

    def enqueue_design(self, cell: str) -> int:
        return self.studies.enqueue_design(cell)

    def ensure_confirm_queue(self, cell: str) -> None:
        self.studies.ensure_confirm_queue(cell)

    def reap(self, cell: str, phase: str) -> int:
        return self.leases.reap(cell, phase)

    def work(self, progress=None) -> None:
        self.worker.work(progress)

    # ------------------------------------------------------------------ begin and end
    def record(self) -> SweepRecord:
        """The sweep as its parent run records it (suite.sweep.contract): what `rnnsuite report` reads back."""
        s = self.spec
        return SweepRecord(cells=list(s.cells), trials=s.trials, steps=s.steps, epochs=s.epochs, metric=self.metric,
                           direction=self.direction, search=s.search, sampler=s.sampler, pruner=s.pruner,
                           design=s.design, param_match=s.param_match, top_k=s.top_k, seeds=list(s.seeds),
                           storage=mask(self.storage_url), task=s.task_label, description=s.description)

    def prepare(self) -> None:
        """Studies and the parent runs exist before any worker starts (so workers do not race to make them)."""
        self.runs.record_sweep(self.record(), self.command, self.done)
        rule = pruning_rule(self.spec, self.metric, self.direction)
        for cell in self.spec.cells:
            self.studies.study(cell)
            self.runs.record_study(cell, rule)
            self.studies.enqueue_design(cell)

    def finish(self) -> None:
        """Log each study's confirmation summary; end the parent runs FINISHED and any trial run a kill left
        RUNNING (the sweep is done: nothing of it runs any more) KILLED."""
        self.runs.end_orphans()
        for row in self.studies.summary_rows():
            self.runs.finish_study(row, self.studies.study(row["cell"]))
        self.runs.finish_sweep()
