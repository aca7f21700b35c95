"""Optuna glue: a sweep's studies with its sampler and pruner, and what they hold: counts against the budget, the
shared design and the confirmation queue, the checks a trial passes after ``ask``, progress and summaries.

Coordination lives in the Optuna storage, so workers on one machine or many share a sweep: the confirmation queue
is derived from the finished search and written once (``chosen``); every (rank, seed) without a live or finished
trial is enqueued again, so a sweep killed anywhere, even while enqueueing, resumes to exactly top_k x seeds
confirmation runs.
"""
from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from .contract import PHASE_CONFIRM, PHASE_SEARCH
from .space import DEFAULT_MARGIN, DESIGN_ATTR, MarginPruner, make_sampler, prune_rule
from .spec import SweepSpec

MAX_RETRIES = 2  # a configuration that crashes its worker this often is not enqueued again
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
TAKEN = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)  # a place of the budget that is held


# ---------------------------------------------------------------------------------------------- sampler and pruner
def sweep_sampler(spec: SweepSpec):
    """The sweep's sampler (suite.sweep.space.make_sampler): TPE starts modelling after the shared design's points,
    or after a third of the budget (at least 2) of random ones where there is no design."""
    startup = spec.design["points"] or max(2, spec.trials // 3)
    return make_sampler(spec.sampler["name"], spec.sampler.get("seed", 0), startup)


def sweep_pruner(spec: SweepSpec):
    p = spec.pruner
    if p["name"] == "none":
        return optuna.pruners.NopPruner()
    if p["name"] == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, spec.warmup or 1),
                                              max_resource=spec.steps or "auto")
    # the warm-up is applied by the callbacks (suite.sweep.callbacks), which know an epochs run's length
    return MarginPruner(startup=p.get("startup_trials", 2), warmup=0, margin=p.get("margin", DEFAULT_MARGIN))


def pruning_rule(spec: SweepSpec, metric: str, direction: str) -> str:
    p = spec.pruner
    if p["name"] == "none":
        return "no pruning: every search trial trains its whole budget"
    warmup = spec.warmup if spec.warmup is not None else "a quarter of the run's steps"
    if p["name"] == "hyperband":
        return f"Optuna's Hyperband pruner, from {warmup} steps to the budget"
    return prune_rule(metric, direction, warmup, p.get("margin", DEFAULT_MARGIN), p.get("startup_trials", 2))


# ---------------------------------------------------------------------------------------------- trials
def frozen(study, trial):
    """The stored (frozen) trial of a live one."""
    return study._storage.get_trial(trial._trial_id)


def confirm_key(t) -> tuple:
    return (t.user_attrs.get("rank"), t.user_attrs.get("seed"))


def given_up(trials) -> set:
    """Confirmation slots whose configuration crashed its worker more than MAX_RETRIES times."""
    crashes = Counter(confirm_key(t) for t in trials if t.state == TrialState.FAIL and t.user_attrs.get("crashed"))
    return {key for key, n in crashes.items() if n > MAX_RETRIES}


def enqueue_retry(study, t, lost: bool = False) -> None:
    """Enqueue a failed search trial's configuration again; a kill always, a crash up to MAX_RETRIES times."""
    tries = int(t.user_attrs.get("retries", 0)) + (0 if lost else 1)
    if tries > MAX_RETRIES:
        return
    attrs = {k: v for k, v in t.user_attrs.items() if k in ("config", "seed", "rank", "source_trial", DESIGN_ATTR)}
    attrs.update(retries=tries, retry_of=t.number)
    study.enqueue_trial(t.params, user_attrs=attrs, skip_if_exists=False)


class Studies:
    """The search and confirmation studies of every cell in one Optuna storage. `on_chosen(cell, search study)` is
    called once the confirmation queue of a cell has been chosen (the sweep logs the best search trial then)."""

    def __init__(self, spec: SweepSpec, storage, direction: str,
                 on_chosen: Callable[[str, Any], None] | None = None):
        self.spec, self.storage, self.direction, self.on_chosen = spec, storage, direction, on_chosen
        self._studies: dict[str, Any] = {}

    def study(self, cell: str, phase: str = PHASE_SEARCH):
        name = self.spec.study_name(cell, phase)
        if name not in self._studies:
            self._studies[name] = optuna.create_study(
                study_name=name, storage=self.storage, direction=self.direction, load_if_exists=True,
                sampler=sweep_sampler(self.spec), pruner=sweep_pruner(self.spec))
        return self._studies[name]

    # ------------------------------------------------------------------ counting
    def counts(self, cell: str, phase: str = PHASE_SEARCH) -> dict[str, int]:
        trials = self.study(cell, phase).get_trials(deepcopy=False)
        c = {s: 0 for s in ("complete", "pruned", "running", "waiting", "fail")}
        for t in trials:
            c[t.state.name.lower()] = c.get(t.state.name.lower(), 0) + 1
        if phase == PHASE_CONFIRM:  # count each (rank, seed) once: duplicates can only come from races
            done = {confirm_key(t) for t in trials if t.state in FINISHED}
            c["finished"] = len(done)
            c["given_up"] = len(given_up(trials) - done)
        else:
            c["finished"] = c["complete"] + c["pruned"]
        return c

    def search_done(self, cell: str) -> bool:
        c = self.counts(cell)
        return c["finished"] >= self.spec.trials and c["running"] == 0

    def done(self) -> bool:
        for cell in self.spec.cells:
            planned = self.confirm_planned(cell)
            if not self.search_done(cell) or planned is None:
                return False
            c = self.counts(cell, PHASE_CONFIRM)
            if c["finished"] + c["given_up"] < planned or c["running"]:
                return False
        return True

    # ------------------------------------------------------------------ queues
    def enqueue_design(self, cell: str) -> int:
        """Enqueue the shared design points `cell` takes, once: into a study that holds no trial yet, or only
        design trials (a sweep killed while enqueueing). A study begun without a design (or with another one)
        resumes as it began. Returns how many were enqueued."""
        study = self.study(cell)
        trials = study.get_trials(deepcopy=False)
        if any(DESIGN_ATTR not in t.user_attrs for t in trials):
            return 0
        present = {t.user_attrs[DESIGN_ATTR] for t in trials}
        n = 0
        for i, point in self.spec.design_for(cell):
            if i not in present:
                study.enqueue_trial(point, user_attrs={DESIGN_ATTR: i}, skip_if_exists=False)
                n += 1
        return n

    def ensure_confirm_queue(self, cell: str) -> None:
        """Enqueue the top-k configurations x seeds once the search of `cell` is finished, and again every
        (rank, seed) that has no live or finished trial (its worker was killed, or killed while enqueueing)."""
        confirm = self.study(cell, PHASE_CONFIRM)
        chosen = self.chosen(cell)
        if chosen is None:
            search = self.study(cell)
            complete = [t for t in search.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                        if t.value is not None and math.isfinite(t.value)]
            complete.sort(key=lambda t: t.value, reverse=self.direction == "maximize")
            picked = complete[: self.spec.top_k]
            if len(picked) < self.spec.top_k:  # too few completed (pruned/diverged): fill with the best pruned
                pruned = [t for t in search.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
                          if t.intermediate_values]
                pruned.sort(key=lambda t: list(t.intermediate_values.values())[-1],
                            reverse=self.direction == "maximize")
                picked += pruned[: self.spec.top_k - len(picked)]
            # one write (derived from finished trials only, so every worker computes the same list); every
            # search trial diverged: nothing can be confirmed, and the sweep must still be able to end
            chosen = [{"rank": rank, "source_trial": t.number, "config": json.dumps(t.params)}
                      for rank, t in enumerate(picked)]
            confirm.set_user_attr("chosen", json.dumps(chosen))
            confirm.set_user_attr("planned", len(chosen) * len(self.spec.seeds))
            if self.on_chosen:
                self.on_chosen(cell, search)
        trials = confirm.get_trials(deepcopy=False)
        live = {confirm_key(t) for t in trials if t.state in (TrialState.WAITING, *TAKEN)}
        settled = live | given_up(trials)
        for c in chosen:
            for seed in self.spec.seeds:
                if (c["rank"], seed) not in settled:
                    confirm.enqueue_trial({}, user_attrs={"config": c["config"], "seed": seed, "rank": c["rank"],
                                                          "source_trial": c["source_trial"]}, skip_if_exists=False)

    def chosen(self, cell: str) -> list[dict] | None:
        attrs = self.study(cell, PHASE_CONFIRM).user_attrs
        return json.loads(attrs["chosen"]) if "chosen" in attrs else None

    def confirm_planned(self, cell: str) -> int | None:
        """How many confirmation runs the cell gets (top_k x seeds, fewer if too few trials completed);
        None until its search has finished."""
        chosen = self.chosen(cell)
        return None if chosen is None else len(chosen) * len(self.spec.seeds)

    # ------------------------------------------------------------------ after `ask`
    def within_budget(self, study, trial) -> bool:
        numbers = sorted(t.number for t in study.get_trials(deepcopy=False, states=TAKEN))
        ok = trial.number in numbers[: self.spec.trials]
        if not ok:
            trial.set_user_attr("fail_reason", "budget already taken by another worker; not trained")
        return ok

    def duplicate_design(self, study, trial) -> bool:
        """A design point enqueued twice (two machines started the same sweep at the same moment) trains once."""
        point = trial.user_attrs.get(DESIGN_ATTR)
        if point is None:
            return False
        for t in study.get_trials(deepcopy=False, states=TAKEN):
            if t.number < trial.number and t.user_attrs.get(DESIGN_ATTR) == point:
                trial.set_user_attr("fail_reason", "duplicate design point; not trained")
                return True
        return False

    def duplicate_confirm(self, study, trial) -> bool:
        # another trial of the same (rank, seed) finished or running: step back (two that start at the same
        # moment both step back, and ensure_confirm_queue enqueues the slot again)
        key = confirm_key(trial)
        for t in study.get_trials(deepcopy=False, states=TAKEN):
            if t.number != trial.number and confirm_key(t) == key:
                trial.set_user_attr("fail_reason", "duplicate confirmation run; not trained")
                return True
        return False

    # ------------------------------------------------------------------ progress
    def summary_rows(self) -> list[dict]:
        rows = []
        for cell in self.spec.cells:
            c = self.counts(cell)
            conf = [t.value for t in self.study(cell, PHASE_CONFIRM).get_trials(
                deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
            rows.append({"cell": cell, "complete": c["complete"], "pruned": c["pruned"], "failed": c["fail"],
                         "best": self.best_value(cell), "confirm_n": len(conf),
                         "confirm_mean": statistics.fmean(conf) if conf else None,
                         "confirm_sd": statistics.stdev(conf) if len(conf) > 1 else None})
        return rows

    def best_value(self, cell: str) -> float | None:
        try:
            return self.study(cell).best_value
        except ValueError:  # no completed trial yet
            return None

    def planned(self, cell: str) -> int:
        """Confirmation runs planned for `cell`: as chosen, else top_k x seeds until its search ends."""
        planned = self.confirm_planned(cell)
        return self.spec.confirm_runs if planned is None else planned

    def progress_line(self) -> str:
        parts = []
        for cell in self.spec.cells:
            c = self.counts(cell)
            f = self.counts(cell, PHASE_CONFIRM)["finished"]
            best = self.best_value(cell)
            best = "" if best is None else f" best {best:.4g}"
            parts.append(f"{cell} {c['finished']}/{self.spec.trials}{best} +{f}/{self.planned(cell)}")
        return f"[{self.spec.name}] " + " | ".join(parts)

    def runs_done(self) -> tuple[int, int]:
        """(finished runs, planned runs) over every cell, search and confirmation together."""
        done = total = 0
        for cell in self.spec.cells:
            planned = self.planned(cell)
            done += min(self.counts(cell)["finished"], self.spec.trials)
            done += min(self.counts(cell, PHASE_CONFIRM)["finished"], planned)
            total += self.spec.trials + planned
        return done, total
