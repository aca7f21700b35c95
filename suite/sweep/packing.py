"""Packed trials (``pack: M`` in the file, ``--pack M`` on the command line): a worker asks for up to M trials of
one study at once (never more than the budget has left, each checked after ``ask`` and each recording its worker,
so a killed pack's trials are reaped and retried one by one like unpacked ones), groups them by shape
(:func:`suite.packed.pack_key`: cell, sizes, layers, task; learning rate, clipping, dropout, init and seed may
differ) and trains each group in one batched step (:func:`suite.packed.run_pack`); a group of one, or a config
:func:`suite.packed.packable` refuses (LM tasks, batch-norm cells, bf16-mixed precision), trains alone as usual.
Each model reports to its own trial (intermediate values, the same pruner) and its own nested MLflow trial run,
and is told to Optuna the moment it leaves the pack (finished, pruned, diverged), so a kill only loses the models
still training.
"""
from __future__ import annotations

import sys
from functools import partial

from ..packed import Member, pack_key, packable, run_pack
from .callbacks import PackPruning
from .configs import trial_config
from .contract import PHASE_SEARCH
from .leases import Heartbeat
from .space import first_point
from .spec import SweepSpec
from .studies import Studies
from .trials import TrialRunner


class PackRunner:
    """Trains a worker's trials M at a time where their shapes allow."""

    def __init__(self, spec: SweepSpec, studies: Studies, trials: TrialRunner):
        self.spec, self.studies, self.trials = spec, studies, trials
        self._reasons: dict[str, str | None] = {}  # cell -> why its trials cannot be packed (None: they can)
        self._noted: set[str] = set()  # cells whose "not packed" note was printed

    def size(self, cell: str, phase: str) -> int:
        """How many trials the next pack of `cell` asks for: ``pack``, never more than the budget has left
        (search) or than the queue holds (confirmation); 1 where the cell's trials cannot be packed."""
        size = self.spec.pack
        if size > 1 and self.unpackable(cell):
            return 1
        if phase == PHASE_SEARCH:
            c = self.studies.counts(cell)
            size = min(size, self.spec.trials - c["finished"] - c["running"])
        else:
            size = min(size, self.studies.counts(cell, phase)["waiting"])
        return max(1, size)

    def unpackable(self, cell: str) -> str | None:
        """Why `cell`'s trials cannot be packed (an LM task, a batch-norm cell), noted once; None if they can."""
        if cell not in self._reasons:
            reason = packable(trial_config(self.spec, cell, first_point(self.spec.search_for(cell)), seed=0))
            self._reasons[cell] = reason
            if reason:
                self.note_unpacked(cell, reason)
        return self._reasons[cell]

    def note_unpacked(self, cell: str, reason: str) -> None:
        if cell not in self._noted:
            self._noted.add(cell)
            print(f"rnnsuite: note: {cell} trials are not packed ({reason}); training them one at a time",
                  file=sys.stderr, flush=True)

    def run(self, cell: str, phase: str) -> None:
        """Ask for up to ``pack`` trials of one study and train them together, one pack per shape."""
        size = self.size(cell, phase)
        if size <= 1:
            self.trials.run_trial(cell, phase)
            return
        study = self.studies.study(cell, phase)
        asked = []
        for _ in range(size):
            trial = self.trials.ask(study, cell, phase)
            if trial is None:  # another worker took the last place, or the queue ran dry: train what we have
                break
            asked.append(trial)
        if asked:
            self.run_asked(cell, phase, study, asked)

    def run_asked(self, cell: str, phase: str, study, asked: list) -> None:
        """Train asked trials grouped by shape: a group of two or more as one pack, a group of one alone."""
        open_ = {t.number: t for t in asked}  # asked, not yet told: what a stop must fail and retry
        beat = Heartbeat(open_)
        beat.start()
        try:
            groups: dict[tuple, list] = {}
            for trial in asked:
                params, seed = self.trials.trial_params(trial, phase)
                try:
                    cfg, tags = self.trials.run_config(cell, phase, trial, params, seed)
                    key = pack_key(cfg)
                except Exception as exc:  # its config cannot be built: this trial crashes, not its pack-mates
                    del open_[trial.number]
                    self.trials.crashed(study, trial, phase, exc)
                    continue
                groups.setdefault(key, []).append((trial, cfg, tags))
            for group in groups.values():
                try:
                    reason = packable(group[0][1]) if len(group) > 1 else None
                except Exception as exc:
                    for trial, _, _ in group:
                        del open_[trial.number]
                        self.trials.crashed(study, trial, phase, exc)
                    continue
                if reason:
                    self.note_unpacked(cell, reason)
                if len(group) == 1 or reason:
                    for trial, cfg, tags in group:
                        self.run_alone(cell, phase, study, trial, cfg, tags, open_)
                else:
                    self.run_packed(cell, phase, study, group, open_)
        except KeyboardInterrupt:
            beat.stop()
            for trial in list(open_.values()):
                self.trials.fail_interrupted(study, trial, phase)
            raise
        finally:
            beat.stop()

    def run_alone(self, cell, phase, study, trial, cfg, tags, open_: dict) -> None:
        try:
            outcome, value, reason = self.trials.fit(cell, phase, trial, cfg, tags)
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            del open_[trial.number]
            self.trials.crashed(study, trial, phase, exc)
            return
        del open_[trial.number]
        if not self.trials.tell(study, trial, phase, outcome, value, reason):
            raise KeyboardInterrupt

    def run_packed(self, cell, phase, study, group: list, open_: dict) -> None:
        members = []
        warmup = self.spec.warmup
        for trial, cfg, tags in group:
            trial.set_user_attr("hidden_size", cfg.model.hidden_size)
            members.append(Member(
                cfg, tags=tags, parent_run_id=self.trials.runs.study_run(cell), monitor=self.trials.metric,
                on_start=partial(trial.set_user_attr, "mlflow_run_id"),
                should_prune=PackPruning(trial, cfg.train.steps // 4 if warmup is None else warmup)
                if phase == PHASE_SEARCH else None,
                on_end=partial(self.member_ended, study, trial, phase, open_)))
        try:
            run_pack(members)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # the pack crashed: every member still training crashed with it
            for trial, _, _ in group:
                if trial.number in open_:
                    del open_[trial.number]
                    self.trials.crashed(study, trial, phase, exc)

    def member_ended(self, study, trial, phase: str, open_: dict, result) -> None:
        """A model left its pack: tell its trial now (a pack stopped or crashed is handled by its caller)."""
        if result.outcome not in ("finished", "pruned", "diverged"):
            return
        outcome, value, reason = self.trials.record_result(trial, result)
        self.trials.tell(study, trial, phase, outcome, value, reason)
        open_.pop(trial.number, None)
