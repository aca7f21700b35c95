"""Who holds a RUNNING trial, and taking it back when that worker is gone.

A worker records ``worker`` (host:pid, plus the process's boot id and start time, so a recycled pid is not
mistaken for it) and a ``heartbeat`` time on the trial it runs; a RUNNING trial whose worker is gone (same host,
dead pid; or no heartbeat for GRACE seconds) is marked FAIL, its MLflow run ends KILLED and its configuration is
enqueued again (a trial lost to a kill or a crash does not count, and is retried).
"""
from __future__ import annotations

import threading
import time

from optuna.trial import TrialState

from ..process import pid_alive, process_id
from .contract import ARCHIVED_RUNNING, PHASE_SEARCH
from .ledger import SweepRuns
from .studies import Studies, enqueue_retry

GRACE = 180.0  # seconds without a heartbeat before a RUNNING trial of another host counts as lost
NO_WORKER_GRACE = 60.0  # a trial gets its worker within milliseconds of `ask`; one without it this long is lost
HEARTBEAT = 20.0  # seconds between heartbeats


class Leases:
    """Reaps the lost trials of a sweep's studies (as seen from this host)."""

    def __init__(self, studies: Studies, runs: SweepRuns, host: str):
        self.studies, self.runs, self.host = studies, runs, host

    def reap(self, cell: str, phase: str) -> int:
        """Fail RUNNING trials whose worker is gone; end their MLflow runs KILLED; enqueue them again."""
        study = self.studies.study(cell, phase)
        lost = 0
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if not self.is_lost(t):
                continue
            try:  # attributes first: a finished trial cannot be updated
                study._storage.set_trial_user_attr(t._trial_id, "fail_reason", "worker lost (killed or crashed)")
                study._storage.set_trial_user_attr(t._trial_id, "lost", True)
                if not study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                    continue
            except Exception:  # another worker reaped it first
                continue
            self.runs.end_lost_runs(study.study_name, t)
            if phase == PHASE_SEARCH:  # confirmation slots are refilled by Studies.ensure_confirm_queue
                enqueue_retry(study, t, lost=True)
            lost += 1
        return lost

    def is_lost(self, t) -> bool:
        if t.user_attrs.get(ARCHIVED_RUNNING):
            return True
        worker = t.user_attrs.get("worker", "")
        started = t.datetime_start.timestamp() if t.datetime_start else 0
        if not worker:  # killed between `ask` and recording its worker
            return time.time() - started > NO_WORKER_GRACE
        beat = float(t.user_attrs.get("heartbeat", 0) or 0)
        host, _, pid = worker.rpartition(":")
        if host == self.host and pid.isdigit():
            if not pid_alive(int(pid)):
                return True
            recorded, now = t.user_attrs.get("worker_id"), process_id(int(pid))
            return recorded is not None and now is not None and recorded != now  # the pid was recycled
        return time.time() - max(beat, started) > GRACE


class Heartbeat:
    """Beats every HEARTBEAT seconds on one trial, or on each trial still in a dict (a pack's untold trials)."""

    def __init__(self, trials):
        self.trials = trials
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self):
        self._thread.start()

    def _loop(self):
        while not self._stop.wait(HEARTBEAT):
            try:
                trials = list(self.trials.values()) if isinstance(self.trials, dict) else [self.trials]
            except RuntimeError:  # the dict changed while copied: beat at the next interval
                continue
            for trial in trials:
                if self._stop.is_set():
                    return
                try:
                    trial.set_user_attr("heartbeat", time.time())
                except Exception:
                    pass  # a database hiccup (or the trial was told meanwhile): the next beat retries

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=5)
