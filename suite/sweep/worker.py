"""A sweep's worker: takes the next job (the cell with the fewest trials first, so every cell advances at the same
pace; confirmation runs once a cell's search is finished), trains it alone or in a pack, and stops when nothing
is left, when its GPU failed, or when its last CRASH_STREAK trials all crashed (each crash is retried and the
sampler, told nothing by a crash, proposes more: without the stop a broken setup loops for ever)."""
from __future__ import annotations

import time

from ..logger import interrupts_outside_database_code
from ..registry import SuiteError
from .contract import PHASE_CONFIRM, PHASE_SEARCH
from .leases import Leases
from .packing import PackRunner
from .spec import SweepSpec
from .studies import Studies
from .trials import CRASH_STREAK, TrialRunner


class Worker:
    def __init__(self, spec: SweepSpec, studies: Studies, leases: Leases, trials: TrialRunner, packs: PackRunner):
        self.spec, self.studies, self.leases, self.trials, self.packs = spec, studies, leases, trials, packs

    def work(self, progress=None) -> None:
        """Run trials until nothing is left that this worker can start; wait while others still run.

        SIGTERM (``kill``, a scheduler's pre-emption, the parent of ``--workers N``) stops the worker like Ctrl-C
        at any moment, between trials too: the trial in hand is told FAIL and retried, its MLflow run ends
        KILLED."""
        with interrupts_outside_database_code():
            while True:
                job = self.next_job()
                if job is None:
                    if self.anything_running():
                        time.sleep(2.0)
                        continue
                    job = self.next_job()  # a trial that look reaped has been handed back: train it
                    if job is None:
                        return
                cell, phase = job
                if self.spec.pack > 1:
                    self.packs.run(cell, phase)
                else:
                    self.trials.run_trial(cell, phase)
                if progress:
                    progress()
                self.check_health()

    def check_health(self) -> None:
        """Stop (one line) after a GPU failure or CRASH_STREAK crashes in a row: more trials would fail alike."""
        if self.trials.gpu_failure:
            raise SuiteError(f"sweep {self.spec.name}: this worker's GPU failed ({self.trials.gpu_failure}); it "
                             "stops instead of taking more trials, which would fail alike. Its trials are "
                             "retried when the sweep resumes (run the same command)")
        crashes = self.trials.crashes
        if len(crashes) >= CRASH_STREAK:  # each crash is retried, the sampler proposes more: a loop
            raise SuiteError(f"sweep {self.spec.name}: the last {len(crashes)} trials crashed "
                             f"(last: {crashes[-1]}); stopping instead of retrying for ever. Fix "
                             "the cause, then run the same command to resume")

    def anything_running(self) -> bool:
        for cell in self.spec.cells:
            for phase in (PHASE_SEARCH, PHASE_CONFIRM):
                self.leases.reap(cell, phase)
                if self.studies.counts(cell, phase)["running"]:
                    return True
        return False

    def next_job(self) -> tuple[str, str] | None:
        order = []
        for cell in self.spec.cells:
            self.leases.reap(cell, PHASE_SEARCH)
            c = self.studies.counts(cell)
            if c["finished"] + c["running"] < self.spec.trials:
                order.append((c["finished"] + c["running"], cell))
        if order:  # the cell with the fewest trials first: every cell advances at the same pace
            return min(order)[1], PHASE_SEARCH
        for cell in self.spec.cells:
            if not self.studies.search_done(cell):
                continue
            # reap first: a slot whose worker was killed counts as live until it is failed, and only then does
            # ensure_confirm_queue enqueue it again (the other order ended a resumed sweep one run short)
            self.leases.reap(cell, PHASE_CONFIRM)
            self.studies.ensure_confirm_queue(cell)
            if self.studies.counts(cell, PHASE_CONFIRM)["waiting"]:
                return cell, PHASE_CONFIRM
        return None
