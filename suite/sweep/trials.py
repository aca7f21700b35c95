"""One trial of a sweep, from ``ask`` to ``tell``: recorded to this worker at once and checked against the budget
(another worker may have taken the last place at the same moment: it is failed before any training, so budgets
are exact), turned into a run config and trained by the same :func:`suite.train.run` as ``rnnsuite train``, its
outcome told; a crash is told FAIL and its configuration retried (up to MAX_RETRIES times), an interrupt too.

The objective only turns a trial's sampled values into a run config: the trial object never reaches model or
task code (optuna-examples).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time

from optuna.trial import TrialState

from .. import train
from ..config import RunConfig
from ..gpu import is_unrecoverable_cuda_error, release_cuda_memory
from ..process import process_id
from ..tracking import NOTE, first_line, mask
from .callbacks import OptunaPruning, RecordRunId
from .configs import base_config, trial_config
from .contract import LEVEL_TAG, PHASE_CONFIRM, PHASE_SEARCH
from .leases import Heartbeat
from .ledger import SweepRuns
from .space import distributions
from .spec import SweepSpec
from .studies import Studies, enqueue_retry, frozen

CRASH_STREAK = 10  # a worker whose last this-many trials all crashed stops (a broken setup, not a bad config)


class TrialRunner:
    """Asks, trains and tells the trials of one worker; remembers its crashes since the last trained trial and
    an error that left its GPU unusable."""

    def __init__(self, spec: SweepSpec, studies: Studies, runs: SweepRuns, metric: str, direction: str,
                 tracking_uri: str, host: str):
        self.spec, self.studies, self.runs = spec, studies, runs
        self.metric, self.direction, self.tracking_uri, self.host = metric, direction, tracking_uri, host
        self.crashes: list[str] = []  # this worker's crashed trials since its last trained one
        self.gpu_failure = ""  # an error that left this process's CUDA context unusable (suite.gpu)

    def run_trial(self, cell: str, phase: str) -> None:
        """Ask one trial and train it alone."""
        study = self.studies.study(cell, phase)
        trial = self.ask(study, cell, phase)
        if trial is None:
            return
        params, seed = self.trial_params(trial, phase)
        beat = Heartbeat(trial)
        beat.start()
        try:
            cfg, tags = self.run_config(cell, phase, trial, params, seed)
            outcome, value, reason = self.fit(cell, phase, trial, cfg, tags)
        except KeyboardInterrupt:
            beat.stop()
            self.fail_interrupted(study, trial, phase)
            raise
        except Exception as exc:  # a crash: the trial does not count and is retried
            beat.stop()
            self.crashed(study, trial, phase, exc)
            return
        beat.stop()
        if not self.tell(study, trial, phase, outcome, value, reason):
            raise KeyboardInterrupt

    def ask(self, study, cell: str, phase: str):
        """``ask`` one trial, record this worker on it at once, and check that it may train (budget, queue).
        Returns the trial, or None after telling it FAIL (nothing was trained)."""
        trial = study.ask(self.search_space(study, cell)) if phase == PHASE_SEARCH else study.ask()
        # first thing after `ask`: a trial without its worker can only be reaped after NO_WORKER_GRACE
        trial.set_user_attr("worker", f"{self.host}:{os.getpid()}")
        trial.set_user_attr("worker_id", process_id(os.getpid()))
        trial.set_user_attr("heartbeat", time.time())
        if phase == PHASE_SEARCH:
            if not self.studies.within_budget(study, trial) or self.studies.duplicate_design(study, trial):
                study.tell(trial, state=TrialState.FAIL)
                return None
        elif "config" not in trial.user_attrs or self.studies.duplicate_confirm(study, trial):
            study.tell(trial, state=TrialState.FAIL)  # raced past the queue: no training was done
            return None
        return trial

    def search_space(self, study, cell: str) -> dict:
        """The cell's distributions; where its study already holds trials of another distribution for a key (a
        sweep begun before refused choice values were left out), that one: Optuna refuses to change a categorical
        space within a study, and the sweep must resume."""
        space = distributions(self.spec.search_for(cell))
        for t in study.get_trials(deepcopy=False):
            for key, dist in t.distributions.items():
                if key in space and dist != space[key]:
                    space[key] = dist
        return space

    def trial_params(self, trial, phase: str) -> tuple[dict, int]:
        if phase == PHASE_SEARCH:
            return dict(trial.params), base_config(self.spec).train.seed
        return json.loads(trial.user_attrs["config"]), int(trial.user_attrs["seed"])

    def tell(self, study, trial, phase: str, outcome: str, value, reason: str) -> bool:
        """Tell a trained trial's outcome; False if it was interrupted (told FAIL and retried: the caller stops)."""
        self.crashes.clear()  # it trained: whatever crashed before was not the whole worker
        if outcome == "finished" and value is not None and math.isfinite(value):
            study.tell(trial, value)
        elif outcome in ("finished", "pruned", "diverged"):
            if reason:
                trial.set_user_attr("pruned_reason", reason)
            study.tell(trial, state=TrialState.PRUNED)
        else:  # killed
            self.fail_interrupted(study, trial, phase)
            return False
        return True

    def fail_interrupted(self, study, trial, phase: str) -> None:
        trial.set_user_attr("fail_reason", "interrupted")
        study.tell(trial, state=TrialState.FAIL)
        if phase == PHASE_SEARCH:
            enqueue_retry(study, frozen(study, trial), lost=True)

    def crashed(self, study, trial, phase: str, exc: BaseException) -> None:
        trial.set_user_attr("fail_reason", f"{exc.__class__.__name__}: {mask(str(exc))[:300]}")
        trial.set_user_attr("crashed", True)
        study.tell(trial, state=TrialState.FAIL)
        if phase == PHASE_SEARCH:
            enqueue_retry(study, frozen(study, trial))
        self.crashes.append(f"{study.study_name}#{trial.number}: {first_line(exc)}")
        print(f"rnnsuite: trial {study.study_name}#{trial.number} crashed: {first_line(exc)}", file=sys.stderr)
        release_cuda_memory()  # the failed trial's cached blocks: the next trial may need them
        if is_unrecoverable_cuda_error(exc):  # every later kernel of this process fails alike: stop the worker
            self.gpu_failure = first_line(exc)  # Worker.work stops once the trials in hand are told

    def run_config(self, cell, phase, trial, params, seed) -> tuple[RunConfig, dict[str, str]]:
        """A trial's run config and the tags of its MLflow run (the same for a trial trained alone or packed)."""
        cfg = trial_config(self.spec, cell, params, seed)
        study_name = self.spec.study_name(cell, phase)
        cfg.tracking.uri = self.tracking_uri
        cfg.tracking.experiment = self.spec.name
        label = f"{cell}-t{trial.number}" if phase == PHASE_SEARCH else \
            f"{cell}-confirm-r{trial.user_attrs['rank']}-s{seed}"
        cfg.tracking.run_name = label
        tags = {"sweep": self.spec.name, "task": self.spec.task_label, "cell": cell, "study": study_name,
                "trial": str(trial.number), "phase": phase, "seed": str(seed), LEVEL_TAG: "trial"}
        if phase == PHASE_CONFIRM:
            tags.update({"confirm.rank": str(trial.user_attrs["rank"]),
                         "confirm.source_trial": str(trial.user_attrs["source_trial"])})
        what = (f"Search trial {trial.number}" if phase == PHASE_SEARCH else
                f"Confirmation run of the rank-{trial.user_attrs['rank']} configuration, seed {seed},")
        tags[NOTE] = (f"{what} of {cell} in sweep {self.spec.name}. Objective: `{self.metric}` ({self.direction}); "
                      f"compare runs on `{self.metric}`, `train/loss` and `train/grad_norm` (pick them under "
                      "Columns once: MLflow keeps the choice per experiment).")
        return cfg, tags

    def fit(self, cell, phase, trial, cfg, tags):
        """Train one trial alone with :func:`suite.train.run`: (outcome, objective value, reason)."""
        trial.set_user_attr("hidden_size", cfg.model.hidden_size)
        callbacks = [RecordRunId(trial)]
        if phase == PHASE_SEARCH:
            callbacks.append(OptunaPruning(trial, self.metric, self.spec.warmup))
        result = train.run(cfg, tags=tags, callbacks=callbacks, parent_run_id=self.runs.study_run(cell))
        return self.record_result(trial, result)

    def record_result(self, trial, result) -> tuple[str, float | None, str]:
        """The run of a trained trial and its objective on the trial: (outcome, objective value, reason)."""
        trial.set_user_attr("mlflow_run_id", result.run_id)
        value = result.metrics.get(self.metric)
        if value is not None:
            trial.set_user_attr("value", value)
        return result.outcome, value, result.reason
