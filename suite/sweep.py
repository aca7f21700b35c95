"""Sweeps: every cell tuned with the same budget by Optuna, every trial an MLflow run, resumable, many workers.

A sweep file names a task, the cells, a search space over run-config keys, the budget and a confirmation
protocol. Each (sweep, task, cell) gets one Optuna study ``<sweep>/<task>/<cell>`` that ends with exactly
``budget.trials`` finished (COMPLETE or PRUNED) trials; then the top-k configurations are re-trained with S
seeds in a second study ``<sweep>/<task>/<cell>/confirm`` whose trials are enqueued, fixed configurations.
Those confirmation numbers are what reports compare (Greff et al. 2017; Melis et al. 2018).

Coordination lives in the Optuna storage, so workers on one machine or many share a sweep:
* a worker records ``worker`` (host:pid, plus the process's boot id and start time, so a recycled pid is not
  mistaken for it) and a ``heartbeat`` time on the trial it runs; a RUNNING trial whose worker is gone (same
  host, dead pid; or no heartbeat for GRACE seconds) is marked FAIL, its MLflow run ends KILLED and its
  configuration is enqueued again (a trial lost to a kill or a crash does not count, and is retried; a
  configuration that crashes its worker MAX_RETRIES times is given up, a killed one is always retried);
* after ``ask`` a worker checks its trial is within the budget (another worker may have taken the last
  place at the same moment) and otherwise fails it at once, before any training, so budgets are exact.
* the confirmation queue is derived from the finished search and written once (``chosen``); every (rank, seed)
  without a live or finished trial is enqueued again, so a sweep killed anywhere, even while enqueueing, resumes
  to exactly top_k x seeds confirmation runs; MLflow runs left RUNNING by a kill are ended KILLED at the end.
* every value the sampler can give a cell builds: load_sweep tries each choice value and bound on each cell, leaves
  choice values a cell refuses out of its space (SweepSpec.search_for) and refuses the rest; a worker whose last
  CRASH_STREAK trials all crashed stops with one line (each crash is retried and the sampler, told nothing by a
  crash, proposes more: without the stop a broken setup loops for ever).
The objective only turns a trial's sampled values into a run config and calls the same ``train.run`` as
``rnnsuite train``: the trial object never reaches model or task code (optuna-examples).

Packed trials (``pack: M`` in the file, ``--pack M`` on the command line): a worker asks for up to M trials of one
study at once (never more than the budget has left, each checked after ``ask`` as above and each recording its
worker, so a killed pack's trials are reaped and retried one by one like unpacked ones), groups them by shape
(:func:`suite.packed.pack_key`: cell, sizes, layers, task; learning rate, clipping, dropout, init and seed may
differ) and trains each group in one batched step (:func:`suite.packed.run_pack`); a group of one, or a config
:func:`suite.packed.packable` refuses (LM tasks, batch-norm cells, bf16-mixed precision), trains alone as usual.
Each model reports to its own trial (intermediate values, the same pruner) and its own nested MLflow trial run,
and is told to Optuna the moment it leaves the pack (finished, pruned, diverged), so a kill only loses the models
still training.
"""
from __future__ import annotations

import functools
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from .config import RunConfig, build_config, load_yaml
from .lit import PrunedRun
from .logger import interrupts_outside_database_code
from .gpu import is_unrecoverable_cuda_error, release_cuda_memory, worker_devices
from .registry import SuiteError
from .report.keys import PARAM as REPORT_PARAM, check_report_block, equivalence_param
from .search import (DEFAULT_MARGIN, DESIGN_ATTR, DESIGN_KINDS, MarginPruner, default_points, design_points,
                     distributions, first_point, make_sampler as _sampler_for, prune_rule)
from .tracking import NOTE, RetryingClient, command_line, first_line, mask

GRACE = 180.0  # seconds without a heartbeat before a RUNNING trial of another host counts as lost
NO_WORKER_GRACE = 60.0  # a trial gets its worker within milliseconds of `ask`; one without it this long is lost
HEARTBEAT = 20.0  # seconds between heartbeats
MAX_RETRIES = 2  # a configuration that crashes its worker this often is not enqueued again
CRASH_STREAK = 10  # a worker whose last this-many trials all crashed stops (a broken setup, not a bad config)
# user attribute of a trial that was RUNNING in an imported archive (rnnsuite import): its worker reports to the
# stores it was exported from, never to these, so the trial is lost here and reaped at once
ARCHIVED_RUNNING = "archived_running"
PHASE_SEARCH, PHASE_CONFIRM = "search", "confirm"
DIST_TYPES = ("loguniform", "uniform", "int", "choice")
SPEC_KEYS = ("name", "description", "task", "base", "cells", "budget", "search", "param_match", "sampler",
             "design", "pruner", "objective", "confirm", "pack", "report")


# ---------------------------------------------------------------------------------------------- the file
@dataclass
class SweepSpec:
    name: str
    task: str | dict  # a named setting, a task name, a tasks/ file, or a task section mapping
    cells: list[str]
    trials: int  # finished trials per cell: the equal budget
    steps: int  # training steps per trial (0 with epochs)
    epochs: int = 0
    search: dict[str, dict] = field(default_factory=dict)  # dotted config key -> distribution
    base: dict[str, Any] = field(default_factory=dict)  # run-config sections fixed for every trial
    param_match: int = 0  # solve hidden_size so the recurrent layers have this many parameters (±10%)
    sampler: dict = field(default_factory=lambda: {"name": "tpe", "seed": 0})
    # the shared initial design (suite.search): kind sobol, lhs or none; points resolved at load (default: a
    # third of the budget, at least 2)
    design: dict = field(default_factory=lambda: {"kind": "none", "points": 0})
    # warmup_steps None: a quarter of the run's steps; margin: how far behind the median a trial must be
    pruner: dict = field(default_factory=lambda: {"name": "median", "warmup_steps": None, "startup_trials": 2,
                                                  "margin": DEFAULT_MARGIN})
    metric: str = ""  # objective, e.g. "val/mse"; "" = the task's default
    direction: str = ""
    top_k: int = 1
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    description: str = ""
    task_label: str = ""  # the task part of study names
    pack: int = 1  # trials of one shape trained together in one step (1: one at a time)
    report: dict = field(default_factory=dict)  # how its report judges (suite.report.keys): equivalence margin
    # cell -> {key: [choice values the cell refuses, with the reason]}: left out of that cell's search space
    refused: dict[str, dict[str, list[tuple[Any, str]]]] = field(default_factory=dict)

    def search_for(self, cell: str) -> dict[str, dict]:
        """The search space of one cell: the file's, less the choice values the cell does not take (a cell without
        a gate bias cannot be chrono-initialised: model.chrono_init=true is not sampled for it)."""
        out = {}
        for key, dist in self.search.items():
            gone = [v for v, _ in self.refused.get(cell, {}).get(key, [])]
            out[key] = dict(dist, values=[v for v in dist["values"] if v not in gone]) if gone else dist
        return out

    def refusal_notes(self) -> list[str]:
        return [f"{cell} does not take {key}={_yaml_value(v)} ({why}); its search leaves that value out"
                for cell, keys in self.refused.items() for key, values in keys.items() for v, why in values]

    def design_for(self, cell: str) -> list[tuple[int, dict[str, Any]]]:
        """The shared design points `cell` trains, with their indices: every point but those holding a choice
        value the cell refuses (noted by :meth:`design_notes`)."""
        space = self.search_for(cell)
        return [(i, point) for i, point in enumerate(self.design_points)
                if all(v in space[k]["values"] for k, v in point.items() if space[k]["type"] == "choice")]

    @functools.cached_property
    def design_points(self) -> list[dict[str, Any]]:
        return design_points(self.search, self.design, self.sampler.get("seed", 0))

    def design_notes(self) -> list[str]:
        notes = []
        for cell in self.cells:
            kept = {i for i, _ in self.design_for(cell)}
            skipped = [str(i) for i in range(len(self.design_points)) if i not in kept]
            if skipped:
                notes.append(f"{cell} skips shared design point(s) {', '.join(skipped)} (a value it does not take); "
                             "its sampler proposes those trials instead")
        return notes

    @property
    def warmup(self) -> int | None:
        """The pruner's warm-up in steps: the file's, else a quarter of a steps budget (None for an epochs
        budget: a quarter of the run's steps, known when it starts)."""
        w = self.pruner.get("warmup_steps")
        return w if w is not None else (self.steps // 4 if self.steps else None)

    def study_name(self, cell: str, phase: str = PHASE_SEARCH) -> str:
        base = f"{self.name}/{self.task_label}/{cell}"
        return base if phase == PHASE_SEARCH else f"{base}/confirm"

    @property
    def confirm_runs(self) -> int:
        return self.top_k * len(self.seeds)


def _need(cond: bool, message: str) -> None:
    if not cond:
        raise SuiteError(message)


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and validate a sweep file; every problem is one line naming the key. Nothing is written."""
    from .config import find_sweep_file

    path = find_sweep_file(path)
    data = load_yaml(path)
    unknown = sorted(set(data) - set(SPEC_KEYS), key=str)
    _need(not unknown, f"{path}: unknown sweep key {unknown[0]!r}; accepted: {', '.join(SPEC_KEYS)}"
          if unknown else "")
    for key in ("name", "task", "cells", "budget"):
        _need(key in data, f"{path}: missing sweep key {key!r}")
    name = data["name"]
    _need(isinstance(name, str) and name and "/" not in name and name.strip() == name,
          f"{path}: name must be a non-empty string without '/', got {name!r}")
    cells = data["cells"]
    _need(isinstance(cells, list) and cells and all(isinstance(c, str) for c in cells),
          f"{path}: cells must be a non-empty list of cell names")
    _need(len(set(cells)) == len(cells), f"{path}: cells lists a cell twice")
    from . import cells as zoo

    for c in cells:
        zoo.CELLS.get(c)  # unknown cell: the registry's error lists the valid names
    budget = data["budget"]
    _need(isinstance(budget, dict), f"{path}: budget must be a mapping with trials and steps (or epochs)")
    bad = sorted(set(budget) - {"trials", "steps", "epochs"}, key=str)
    _need(not bad, f"{path}: unknown budget key {bad[0]!r}; accepted: trials, steps, epochs" if bad else "")
    trials = budget.get("trials")
    _need(isinstance(trials, int) and not isinstance(trials, bool) and trials > 0,
          f"{path}: budget.trials must be a positive integer, got {trials!r}")
    steps, epochs = budget.get("steps", 0), budget.get("epochs", 0)
    for k, v in (("steps", steps), ("epochs", epochs)):
        _need(isinstance(v, int) and not isinstance(v, bool) and v >= 0,
              f"{path}: budget.{k} must be a positive integer, got {v!r}")
    _need(bool(steps) != bool(epochs), f"{path}: budget needs exactly one of steps or epochs")
    spec = SweepSpec(name=name, task=data["task"], cells=cells, trials=trials, steps=steps, epochs=epochs,
                     description=str(data.get("description", "")))
    spec.search = _check_search(path, data.get("search") or {})
    spec.base = data.get("base") or {}
    _need(isinstance(spec.base, dict), f"{path}: base must be a mapping of run-config sections")
    pm = data.get("param_match", 0)
    _need(isinstance(pm, int) and not isinstance(pm, bool) and pm >= 0,
          f"{path}: param_match must be a positive integer (parameters), got {pm!r}")
    _need(not (pm and "model.hidden_size" in spec.search),
          f"{path}: param_match solves model.hidden_size; do not also search it")
    spec.param_match = pm
    spec.sampler = _check_choice_block(path, "sampler", data.get("sampler"), {"name": "tpe", "seed": 0},
                                       ("tpe", "random"), {"seed"})
    spec.design = _check_design(path, data.get("design"), trials, spec.search)
    spec.pruner = _check_pruner(path, data.get("pruner"))
    confirm = data.get("confirm") or {}
    _need(isinstance(confirm, dict), f"{path}: confirm must be a mapping with top_k and seeds")
    bad = sorted(set(confirm) - {"top_k", "seeds"}, key=str)
    _need(not bad, f"{path}: unknown confirm key {bad[0]!r}; accepted: top_k, seeds" if bad else "")
    spec.top_k = confirm.get("top_k", 1)
    _need(isinstance(spec.top_k, int) and not isinstance(spec.top_k, bool) and 1 <= spec.top_k <= trials,
          f"{path}: confirm.top_k must be an integer in [1, budget.trials], got {spec.top_k!r}")
    seeds = confirm.get("seeds", 3)
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        _need(seeds >= 1, f"{path}: confirm.seeds must be >= 1, got {seeds}")
        seeds = list(range(1, seeds + 1))
    _need(isinstance(seeds, list) and seeds and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                    for s in seeds)
          and len(set(seeds)) == len(seeds), f"{path}: confirm.seeds must be a count or a list of distinct seeds")
    spec.seeds = seeds
    objective = data.get("objective") or {}
    _need(isinstance(objective, dict), f"{path}: objective must be a mapping with metric and direction")
    bad = sorted(set(objective) - {"metric", "direction"}, key=str)
    _need(not bad, f"{path}: unknown objective key {bad[0]!r}; accepted: metric, direction" if bad else "")
    spec.metric = objective.get("metric", "")
    _need(isinstance(spec.metric, str), f"{path}: objective.metric must be a metric name such as val/mse, "
          f"got {spec.metric!r}")
    spec.direction = objective.get("direction", "")
    _need(spec.direction in ("", "minimize", "maximize"),
          f"{path}: objective.direction must be minimize or maximize, got {spec.direction!r}")
    spec.pack = check_pack(data.get("pack", 1), f"{path}: pack")
    spec.report = check_report_block(path, data.get("report"))
    _resolve_task(spec, path)
    for cell in cells:
        _check_cell_space(spec, cell, path)
    return spec


def _check_cell_space(spec: SweepSpec, cell: str, path) -> None:
    """Every value the sampler can give `cell` must build, or the sweep would crash trial after trial (a crashed
    trial tells the sampler nothing, so it proposes the same value again). Each choice value and each bound is
    tried alone on the base config: choice values the cell refuses are left out of its space (noted), a refused
    bound or a choice with no value left is an error; then the cell's first point must build too."""
    def refusal(params: dict) -> str | None:
        try:
            build_task_and_model(trial_config(spec, cell, params, seed=0))
        except SuiteError as exc:
            return str(exc)
        return None

    for key, dist in spec.search.items():
        if dist["type"] == "choice":
            refused = [(v, why) for v in dist["values"] if (why := refusal({key: v})) is not None]
            _need(len(refused) < len(dist["values"]),
                  f"{path}: search.{key}: cell {cell!r} takes none of its values ({refused[0][1] if refused else ''})")
            if refused:
                spec.refused.setdefault(cell, {})[key] = refused
        else:
            for bound in ("low", "high"):
                why = refusal({key: dist[bound]})
                _need(why is None, f"{path}: search.{key}.{bound}={dist[bound]} is refused for cell {cell!r}: {why}")
    # a combination of accepted values can still be refused: the first point of the cell's space must build
    cfg = trial_config(spec, cell, first_point(spec.search_for(cell)), seed=0)
    build_task_and_model(cfg)


def _yaml_value(v) -> str:
    return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


def check_pack(value, where: str = "pack") -> int:
    """``pack``: how many trials of one shape train together; an integer >= 1 (1 = one at a time)."""
    _need(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
          f"{where} must be an integer >= 1 (trials trained together in one step; 1 = one at a time), "
          f"got {value!r}")
    return value


def _check_choice_block(path, key, block, default, names, extra, floats=frozenset()):
    block = default if block is None else block
    _need(isinstance(block, dict), f"{path}: {key} must be a mapping with a name, got {block!r}")
    merged = {**default, **block}
    bad = sorted(set(merged) - {"name"} - extra, key=str)
    _need(not bad, f"{path}: unknown {key} key {bad[0]!r}; accepted: name, {', '.join(sorted(extra))}"
          if bad else "")
    _need(isinstance(merged["name"], str) and merged["name"] in names,
          f"{path}: {key}.name={merged['name']!r}; choose one of: {', '.join(names)}")
    for k in extra:
        v = merged.get(k, 0)
        if k in floats:
            _need(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0,
                  f"{path}: {key}.{k} must be a non-negative number, got {v!r}")
        else:
            _need(isinstance(v, int) and not isinstance(v, bool) and v >= 0,
                  f"{path}: {key}.{k} must be a non-negative integer, got {v!r}")
    return merged


def _check_design(path, block, trials: int, search: dict) -> dict:
    """``design: {kind: sobol|lhs|none, points: k}``; k defaults to a third of the budget (at least 2)."""
    block = {} if block is None else block
    _need(isinstance(block, dict), f"{path}: design must be a mapping with kind and points, got {block!r}")
    bad = sorted(set(block) - {"kind", "points"}, key=str)
    _need(not bad, f"{path}: unknown design key {bad[0]!r}; accepted: kind, points" if bad else "")
    kind = block.get("kind", "sobol")
    _need(kind in DESIGN_KINDS, f"{path}: design.kind={kind!r}; choose one of: {', '.join(DESIGN_KINDS)}")
    points = block.get("points", default_points(trials))
    _need(isinstance(points, int) and not isinstance(points, bool) and 0 <= points <= trials,
          f"{path}: design.points must be an integer in [0, budget.trials={trials}], got {points!r}")
    if kind == "none" or not search:  # nothing to spread over: every trial is the same configuration
        return {"kind": "none", "points": 0}
    return {"kind": kind, "points": points}


def _check_pruner(path, block) -> dict:
    default = {"name": "median", "warmup_steps": None, "startup_trials": 2, "margin": DEFAULT_MARGIN}
    if isinstance(block, dict) and "warmup_steps" in block and block["warmup_steps"] is None:
        block = {k: v for k, v in block.items() if k != "warmup_steps"}  # null: the default
    warmup_given = isinstance(block, dict) and "warmup_steps" in block
    merged = _check_choice_block(path, "pruner", block, {**default, "warmup_steps": 0},
                                 ("median", "hyperband", "none"), {"warmup_steps", "startup_trials", "margin"},
                                 floats={"margin"})
    if not warmup_given:
        merged["warmup_steps"] = None  # a quarter of the run's steps (SweepSpec.warmup)
    return merged


def _check_search(path, search: dict) -> dict[str, dict]:
    _need(isinstance(search, dict), f"{path}: search must map config keys (e.g. optim.lr) to distributions")
    out = {}
    for key, dist in search.items():
        where = f"{path}: search.{key}"
        _need(isinstance(key, str) and "." in key, f"{where}: search keys are dotted config keys such as optim.lr")
        _need(isinstance(dist, dict) and "type" in dist,
              f"{where} must be a mapping with a type ({', '.join(DIST_TYPES)})")
        kind = dist["type"]
        _need(kind in DIST_TYPES, f"{where}.type={kind!r}; choose one of: {', '.join(DIST_TYPES)}")
        allowed = {"type", "values"} if kind == "choice" else {"type", "low", "high", "log"}
        bad = sorted(set(dist) - allowed, key=str)
        _need(not bad, f"{where}: unknown key {bad[0]!r}; accepted: {', '.join(sorted(allowed))}" if bad else "")
        if kind == "choice":
            vals = dist.get("values")
            _need(isinstance(vals, list) and vals, f"{where}: choice needs a non-empty list of values")
            _need(all(v is None or isinstance(v, (bool, int, float, str)) for v in vals),
                  f"{where}: choice values must be numbers, strings or booleans")
        else:
            low, high = dist.get("low"), dist.get("high")
            for name, v in (("low", low), ("high", high)):
                if isinstance(v, str):
                    try:
                        v = float(v)
                    except ValueError:
                        pass
                _need(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
                      f"{where}: {kind} needs numeric low and high")
                dist = {**dist, name: v}
            low, high = dist["low"], dist["high"]
            _need(low < high, f"{where}: low must be below high ({low} >= {high})")
            if kind == "loguniform":
                _need(low > 0, f"{where}: loguniform needs low > 0, got {low}")
            if kind == "int":
                _need(float(low).is_integer() and float(high).is_integer(), f"{where}: int needs integer bounds")
                dist = {**dist, "low": int(low), "high": int(high)}
        out[key] = dict(dist)
    return out


def _resolve_task(spec: SweepSpec, path) -> None:
    from . import tasks

    task = spec.task
    if isinstance(task, str):
        spec.task_label = Path(task).stem if task.endswith((".yaml", ".yml")) else task
        if task.endswith((".yaml", ".yml")) or "/" in task:
            p = Path(task)
            if not p.is_absolute() and not p.exists():
                p = Path(path).parent / task
            spec.task = load_yaml(p)
        elif task in tasks.setting_paths():
            spec.task = tasks.load_settings(task)
        else:
            tasks.TASKS.get(task)
            spec.task = {"task": {"name": task}}
    elif isinstance(task, dict) and "name" in task:
        spec.task_label = str(task["name"])
        spec.task = {"task": dict(task)}
    else:
        raise SuiteError(f"{path}: task must be a task name, a named setting, a tasks/ file or a mapping with name")


# ---------------------------------------------------------------------------------------------- trial -> config
def trial_config(spec: SweepSpec, cell: str, params: dict[str, Any], seed: int) -> RunConfig:
    """Plain sampled values -> the run config of one trial (the only place a trial's values go)."""
    overrides = {k: v for k, v in params.items()}
    overrides["model.cell"] = cell
    overrides["train.seed"] = seed
    if spec.steps:  # the budget decides, whatever the task setting says (ptb-word counts epochs)
        overrides["train.steps"] = spec.steps
        overrides["train.epochs"] = 0
    else:
        overrides["train.epochs"] = spec.epochs
    cfg = build_config(spec.task, spec.base, overrides=overrides)
    if spec.param_match:
        cfg = build_config(spec.task, spec.base, overrides={**overrides, "model.hidden_size":
                                                            match_hidden_size(cfg, spec.param_match)})
    return cfg


def recurrent_params(cfg: RunConfig, hidden: int) -> int:
    """Parameters of the recurrent layers at this hidden size (built on the meta device: no memory)."""
    import torch

    from .model import SequenceModel
    from .train import build_task

    task = build_task(cfg)
    with torch.device("meta"):
        model = SequenceModel(cfg.model.cell, task.encoding, task.input_size, task.output_size, hidden,
                              layers=cfg.model.layers, embedding_size=cfg.model.embedding_size,
                              bidirectional=cfg.model.bidirectional, **cfg.model.cell_options)
    return sum(p.numel() for p in model.layers.parameters())


def match_hidden_size(cfg: RunConfig, target: int) -> int:
    """The hidden size whose recurrent-layer parameter count is closest to `target`, within ±10%.

    Only the cells' own parameters are matched: the encoder and head are the same function of the hidden
    size for every cell (Long Range Arena allows ±10%).
    """
    lo, hi = 1, 8192
    while lo < hi:  # smallest h with count >= target (counts grow with h)
        mid = (lo + hi) // 2
        if recurrent_params(cfg, mid) >= target:
            hi = mid
        else:
            lo = mid + 1
    best = min({max(1, lo - 1), lo}, key=lambda h: abs(recurrent_params(cfg, h) - target))
    got = recurrent_params(cfg, best)
    if abs(got - target) > 0.1 * target:
        raise SuiteError(f"param_match={target}: cell {cfg.model.cell!r} has no hidden size within ±10% "
                         f"(closest: hidden_size={best} with {got} parameters)")
    return best


def build_task_and_model(cfg: RunConfig):
    """Build the task and, on the meta device (shapes only, no memory), the model: a check of the config."""
    import torch

    from .train import build_model, build_task

    task = build_task(cfg)
    with torch.device("meta"):  # a hidden_size of 10**6 is refused or accepted, never allocated here
        return task, build_model(cfg, task)


# ---------------------------------------------------------------------------------------------- Optuna objects
def make_sampler(spec: SweepSpec):
    """The sweep's sampler (suite.search.make_sampler): TPE starts modelling after the shared design's points,
    or after a third of the budget (at least 2) of random ones where there is no design."""
    startup = spec.design["points"] or max(2, spec.trials // 3)
    return _sampler_for(spec.sampler["name"], spec.sampler.get("seed", 0), startup)


def make_pruner(spec: SweepSpec):
    import optuna

    p = spec.pruner
    if p["name"] == "none":
        return optuna.pruners.NopPruner()
    if p["name"] == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, spec.warmup or 1),
                                              max_resource=spec.steps or "auto")
    # the warm-up is applied by the callbacks (OptunaPruning, _PackPruning), which know an epochs run's length
    return MarginPruner(startup=p.get("startup_trials", 2), warmup=0, margin=p.get("margin", DEFAULT_MARGIN))


def pruning_rule(spec: SweepSpec, metric: str, direction: str) -> str:
    p = spec.pruner
    if p["name"] == "none":
        return "no pruning: every search trial trains its whole budget"
    warmup = spec.warmup if spec.warmup is not None else "a quarter of the run's steps"
    if p["name"] == "hyperband":
        return f"Optuna's Hyperband pruner, from {warmup} steps to the budget"
    return prune_rule(metric, direction, warmup, p.get("margin", DEFAULT_MARGIN), p.get("startup_trials", 2))


class Sweep:
    """One sweep against one Optuna storage and one MLflow tracking URI."""

    def __init__(self, spec: SweepSpec, storage_url: str | None = None, tracking_uri: str | None = None):
        from . import tasks
        from .storage import check_storage_url, is_local, open_storage, storage_url as resolve_storage
        from .tracking import check_tracking, prepare_local_store, resolve_tracking_uri

        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.spec = spec
        self.command = ""  # the command line, tagged rnnsuite.command on the parent run (run_sweep sets it)
        self.storage_url = resolve_storage(storage_url)
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        task = tasks.build(**{"name": self.base_config().task.name, **self.base_config().task.options})
        # Everything remote is reached before anything local is created: a wrong password or host leaves no
        # stray journal, database or folder behind.
        check_storage_url(self.storage_url)
        check_tracking(self.tracking_uri)
        if not is_local(self.storage_url):
            self.storage = open_storage(self.storage_url)
        prepare_local_store(self.tracking_uri)
        if is_local(self.storage_url):
            self.storage = open_storage(self.storage_url)
        self.metric = spec.metric or f"val/{task.metric}"
        self.direction = spec.direction or task.direction
        self.host = socket.gethostname()
        self._studies: dict[str, Any] = {}
        self._client = None
        self._pack_reasons: dict[str, str | None] = {}  # cell -> why its trials cannot be packed (None: they can)
        self._noted: set[str] = set()  # cells whose "not packed" note was printed
        self._crashes: list[str] = []  # this worker's crashed trials since its last trained one
        self.gpu_failure = ""  # an error that left this process's CUDA context unusable (suite.gpu)

    def base_config(self) -> RunConfig:
        return build_config(self.spec.task, self.spec.base)

    # ------------------------------------------------------------------ storage objects
    def study(self, cell: str, phase: str = PHASE_SEARCH):
        import optuna

        name = self.spec.study_name(cell, phase)
        if name not in self._studies:
            self._studies[name] = optuna.create_study(
                study_name=name, storage=self.storage, direction=self.direction, load_if_exists=True,
                sampler=make_sampler(self.spec), pruner=make_pruner(self.spec))
        return self._studies[name]

    @property
    def client(self):
        import mlflow

        if self._client is None:  # every call retried while the tracking server is away (RNNSUITE_RETRY_S)
            self._client = RetryingClient(mlflow.MlflowClient(self.tracking_uri))
        return self._client

    def experiment_id(self) -> str:
        from .tracking import artifact_location

        exp = self.client.get_experiment_by_name(self.spec.name)
        if exp is not None:
            return exp.experiment_id
        try:
            return self.client.create_experiment(self.spec.name, artifact_location=artifact_location(
                self.tracking_uri), tags={"rnnsuite.sweep": self.spec.name})
        except Exception:  # another worker created it at the same moment
            return self.client.get_experiment_by_name(self.spec.name).experiment_id

    def _find_or_create_run(self, level: str, key: str, name: str, parent: str | None, tags: dict) -> str:
        exp = self.experiment_id()
        found = self.client.search_runs([exp], f"tags.`rnnsuite.level` = '{level}' and tags.`rnnsuite.key` = "
                                        f"'{key}'", order_by=["attributes.start_time ASC"], max_results=1)
        if found:
            return found[0].info.run_id
        all_tags = {"rnnsuite.level": level, "rnnsuite.key": key, "sweep": self.spec.name,
                    "task": self.spec.task_label, **tags}
        if parent:
            all_tags["mlflow.parentRunId"] = parent
        run = self.client.create_run(exp, run_name=name, tags=all_tags)
        return run.info.run_id

    def sweep_run(self) -> str:
        rid = self._find_or_create_run("sweep", self.spec.name, self.spec.name, None,
                                       {"description": self.spec.description})
        return rid

    def study_run(self, cell: str) -> str:
        name = self.spec.study_name(cell)
        return self._find_or_create_run("study", name, name, self.sweep_run(), {"cell": cell, "study": name})

    def prepare(self) -> None:
        """Studies and the parent runs exist before any worker starts (so workers do not race to make them)."""
        rid = self.sweep_run()
        run = self.client.get_run(rid)
        if not run.data.params:
            params = {"trials_per_cell": self.spec.trials, "steps": self.spec.steps, "epochs": self.spec.epochs,
                      "cells": ",".join(self.spec.cells), "metric": self.metric, "direction": self.direction,
                      "sampler": json.dumps(self.spec.sampler), "pruner": json.dumps(self.spec.pruner),
                      "design": json.dumps(self.spec.design),
                      "param_match": self.spec.param_match, "confirm.top_k": self.spec.top_k,
                      "confirm.seeds": ",".join(map(str, self.spec.seeds)),
                      "search": json.dumps(self.spec.search)[:6000], "storage": mask(self.storage_url)}
            from mlflow.entities import Param

            # one call: a kill cannot leave half of them (a resumed sweep logs them only when there are none)
            self.client.log_batch(rid, params=[Param(k, str(v)) for k, v in params.items()])
        if REPORT_PARAM not in run.data.params:  # also on a sweep begun before the key existed
            self.client.log_param(rid, REPORT_PARAM, equivalence_param(self.spec.report or
                                                                       check_report_block("", None)))
        if self.command and "rnnsuite.command" not in run.data.tags:  # the report prints it to reproduce the sweep
            self.client.set_tag(rid, "rnnsuite.command", self.command)
        if run.info.status != "RUNNING" and not self.done():
            self.client.update_run(rid, "RUNNING")
        for cell in self.spec.cells:
            self.study(cell)
            rid = self.study_run(cell)
            left_out = [f"{key}={_yaml_value(v)}" for key, values in self.spec.refused.get(cell, {}).items()
                        for v, _ in values]
            if left_out:  # the study's own space, as its MLflow run shows it
                self.client.set_tag(rid, "search.left_out", ", ".join(left_out))
            self._study_params(cell, rid)
            self.enqueue_design(cell)

    def _study_params(self, cell: str, rid: str) -> None:
        """The search rules on the study's own run: the pruning rule in words and the shared design points."""
        from mlflow.entities import Param

        have = self.client.get_run(rid).data.params
        kept = [i for i, _ in self.spec.design_for(cell)]
        params = {"pruner.rule": pruning_rule(self.spec, self.metric, self.direction)[:6000],
                  "design.kind": self.spec.design["kind"], "design.points": len(self.spec.design_points),
                  "design.trained": ",".join(map(str, kept)) or "none"}
        params = {k: str(v) for k, v in params.items() if k not in have}
        if params:
            self.client.log_batch(rid, params=[Param(k, v) for k, v in params.items()])

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

    # ------------------------------------------------------------------ counting
    def counts(self, cell: str, phase: str = PHASE_SEARCH) -> dict[str, int]:
        from optuna.trial import TrialState

        trials = self.study(cell, phase).get_trials(deepcopy=False)
        c = {s: 0 for s in ("complete", "pruned", "running", "waiting", "fail")}
        for t in trials:
            c[t.state.name.lower()] = c.get(t.state.name.lower(), 0) + 1
        if phase == PHASE_CONFIRM:  # count each (rank, seed) once: duplicates can only come from races
            done = {_confirm_key(t) for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)}
            c["finished"] = len(done)
            c["given_up"] = len(_given_up(trials) - done)
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

    # ------------------------------------------------------------------ stale trials
    def reap(self, cell: str, phase: str) -> int:
        """Fail RUNNING trials whose worker is gone; end their MLflow runs KILLED; enqueue them again."""
        from optuna.trial import TrialState

        study = self.study(cell, phase)
        lost = 0
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if not self._is_lost(t):
                continue
            try:  # attributes first: a finished trial cannot be updated
                study._storage.set_trial_user_attr(t._trial_id, "fail_reason", "worker lost (killed or crashed)")
                study._storage.set_trial_user_attr(t._trial_id, "lost", True)
                if not study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                    continue
            except Exception:  # another worker reaped it first
                continue
            self._end_lost_runs(study.study_name, t)
            if phase == PHASE_SEARCH:  # confirmation slots are refilled by ensure_confirm_queue
                self._retry(study, t, lost=True)
            lost += 1
        return lost

    def _end_lost_runs(self, study_name: str, t) -> None:
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

    def _is_lost(self, t) -> bool:
        if t.user_attrs.get(ARCHIVED_RUNNING):
            return True
        worker = t.user_attrs.get("worker", "")
        started = t.datetime_start.timestamp() if t.datetime_start else 0
        if not worker:  # killed between `ask` and recording its worker
            return time.time() - started > NO_WORKER_GRACE
        beat = float(t.user_attrs.get("heartbeat", 0) or 0)
        host, _, pid = worker.rpartition(":")
        if host == self.host and pid.isdigit():
            if not _pid_alive(int(pid)):
                return True
            recorded, now = t.user_attrs.get("worker_id"), _process_id(int(pid))
            return recorded is not None and now is not None and recorded != now  # the pid was recycled
        return time.time() - max(beat, started) > GRACE

    def _retry(self, study, t, lost: bool = False) -> None:
        """Enqueue a failed search trial's configuration again; a kill always, a crash up to MAX_RETRIES times."""
        tries = int(t.user_attrs.get("retries", 0)) + (0 if lost else 1)
        if tries > MAX_RETRIES:
            return
        attrs = {k: v for k, v in t.user_attrs.items() if k in ("config", "seed", "rank", "source_trial",
                                                                DESIGN_ATTR)}
        attrs.update(retries=tries, retry_of=t.number)
        study.enqueue_trial(t.params, user_attrs=attrs, skip_if_exists=False)

    # ------------------------------------------------------------------ confirmation queue
    def ensure_confirm_queue(self, cell: str) -> None:
        """Enqueue the top-k configurations x seeds once the search of `cell` is finished, and again every
        (rank, seed) that has no live or finished trial (its worker was killed, or killed while enqueueing)."""
        from optuna.trial import TrialState

        confirm = self.study(cell, PHASE_CONFIRM)
        chosen = self._chosen(cell)
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
            self._log_best(cell, search)
        trials = confirm.get_trials(deepcopy=False)
        live = {_confirm_key(t) for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING,
                                                                TrialState.COMPLETE, TrialState.PRUNED)}
        settled = live | _given_up(trials)
        for c in chosen:
            for seed in self.spec.seeds:
                if (c["rank"], seed) not in settled:
                    confirm.enqueue_trial({}, user_attrs={"config": c["config"], "seed": seed, "rank": c["rank"],
                                                          "source_trial": c["source_trial"]}, skip_if_exists=False)

    def _chosen(self, cell: str) -> list[dict] | None:
        attrs = self.study(cell, PHASE_CONFIRM).user_attrs
        if "chosen" in attrs:
            return json.loads(attrs["chosen"])
        return None

    def confirm_planned(self, cell: str) -> int | None:
        """How many confirmation runs the cell gets (top_k x seeds, fewer if too few trials completed);
        None until its search has finished."""
        chosen = self._chosen(cell)
        return None if chosen is None else len(chosen) * len(self.spec.seeds)

    def _log_best(self, cell: str, search) -> None:
        try:
            best = search.best_trial
        except ValueError:
            return
        rid = self.study_run(cell)
        self.client.log_metric(rid, "best/value", best.value)
        self.client.log_param(rid, "best.trial", best.number)
        for k, v in best.params.items():
            self.client.log_param(rid, f"best.{k}", v)

    # ------------------------------------------------------------------ the worker
    def work(self, progress=None) -> None:
        """Run trials until nothing is left that this worker can start; wait while others still run.

        SIGTERM (``kill``, a scheduler's pre-emption, the parent of ``--workers N``) stops the worker like Ctrl-C
        at any moment, between trials too: the trial in hand is told FAIL and retried, its MLflow run ends
        KILLED."""
        with interrupts_outside_database_code():
            while True:
                job = self._next_job()
                if job is None:
                    if self._anything_running():
                        time.sleep(2.0)
                        continue
                    job = self._next_job()  # a trial that look reaped has been handed back: train it
                    if job is None:
                        return
                cell, phase = job
                if self.spec.pack > 1:
                    self.run_pack(cell, phase)
                else:
                    self.run_trial(cell, phase)
                if progress:
                    progress()
                if self.gpu_failure:
                    raise SuiteError(f"sweep {self.spec.name}: this worker's GPU failed ({self.gpu_failure}); it "
                                     "stops instead of taking more trials, which would fail alike. Its trials are "
                                     "retried when the sweep resumes (run the same command)")
                if len(self._crashes) >= CRASH_STREAK:  # each crash is retried, the sampler proposes more: a loop
                    raise SuiteError(f"sweep {self.spec.name}: the last {len(self._crashes)} trials crashed "
                                     f"(last: {self._crashes[-1]}); stopping instead of retrying for ever. Fix "
                                     "the cause, then run the same command to resume")

    def _anything_running(self) -> bool:
        for cell in self.spec.cells:
            for phase in (PHASE_SEARCH, PHASE_CONFIRM):
                self.reap(cell, phase)
                if self.counts(cell, phase)["running"]:
                    return True
        return False

    def _next_job(self) -> tuple[str, str] | None:
        order = []
        for cell in self.spec.cells:
            self.reap(cell, PHASE_SEARCH)
            c = self.counts(cell)
            if c["finished"] + c["running"] < self.spec.trials:
                order.append((c["finished"] + c["running"], cell))
        if order:  # the cell with the fewest trials first: every cell advances at the same pace
            return min(order)[1], PHASE_SEARCH
        for cell in self.spec.cells:
            if not self.search_done(cell):
                continue
            # reap first: a slot whose worker was killed counts as live until it is failed, and only then does
            # ensure_confirm_queue enqueue it again (the other order ended a resumed sweep one run short)
            self.reap(cell, PHASE_CONFIRM)
            self.ensure_confirm_queue(cell)
            if self.counts(cell, PHASE_CONFIRM)["waiting"]:
                return cell, PHASE_CONFIRM
        return None

    def run_trial(self, cell: str, phase: str) -> None:
        study = self.study(cell, phase)
        trial = self._ask(study, cell, phase)
        if trial is None:
            return
        params, seed = self._trial_params(trial, phase)
        beat = _Heartbeat(trial)
        beat.start()
        try:
            outcome, value, reason = self._train(cell, phase, trial, params, seed)
        except KeyboardInterrupt:
            beat.stop()
            self._fail_interrupted(study, trial, phase)
            raise
        except Exception as exc:  # a crash: the trial does not count and is retried
            beat.stop()
            self._crashed(study, trial, phase, exc)
            return
        beat.stop()
        if not self._tell(study, trial, phase, outcome, value, reason):
            raise KeyboardInterrupt

    def _ask(self, study, cell: str, phase: str):
        """``ask`` one trial, record this worker on it at once, and check that it may train (budget, queue).
        Returns the trial, or None after telling it FAIL (nothing was trained)."""
        from optuna.trial import TrialState

        trial = study.ask(self._search_space(study, cell)) if phase == PHASE_SEARCH else study.ask()
        # first thing after `ask`: a trial without its worker can only be reaped after NO_WORKER_GRACE
        trial.set_user_attr("worker", f"{self.host}:{os.getpid()}")
        trial.set_user_attr("worker_id", _process_id(os.getpid()))
        trial.set_user_attr("heartbeat", time.time())
        if phase == PHASE_SEARCH:
            if not self._within_budget(study, trial) or self._duplicate_design(study, trial):
                study.tell(trial, state=TrialState.FAIL)
                return None
        else:
            if "config" not in trial.user_attrs or self._duplicate_confirm(study, trial):
                study.tell(trial, state=TrialState.FAIL)  # raced past the queue: no training was done
                return None
        return trial

    def _search_space(self, study, cell: str) -> dict:
        """The cell's distributions; where its study already holds trials of another distribution for a key (a
        sweep begun before refused choice values were left out), that one: Optuna refuses to change a categorical
        space within a study, and the sweep must resume."""
        space = distributions(self.spec.search_for(cell))
        for t in study.get_trials(deepcopy=False):
            for key, dist in t.distributions.items():
                if key in space and dist != space[key]:
                    space[key] = dist
        return space

    def _trial_params(self, trial, phase: str) -> tuple[dict, int]:
        if phase == PHASE_SEARCH:
            return dict(trial.params), self.base_config().train.seed
        return json.loads(trial.user_attrs["config"]), int(trial.user_attrs["seed"])

    def _tell(self, study, trial, phase: str, outcome: str, value, reason: str) -> bool:
        """Tell a trained trial's outcome; False if it was interrupted (told FAIL and retried: the caller stops)."""
        from optuna.trial import TrialState

        self._crashes.clear()  # it trained: whatever crashed before was not the whole worker
        if outcome == "finished" and value is not None and math.isfinite(value):
            study.tell(trial, value)
        elif outcome in ("finished", "pruned", "diverged"):
            if reason:
                trial.set_user_attr("pruned_reason", reason)
            study.tell(trial, state=TrialState.PRUNED)
        else:  # killed
            self._fail_interrupted(study, trial, phase)
            return False
        return True

    def _fail_interrupted(self, study, trial, phase: str) -> None:
        from optuna.trial import TrialState

        trial.set_user_attr("fail_reason", "interrupted")
        study.tell(trial, state=TrialState.FAIL)
        if phase == PHASE_SEARCH:
            self._retry(study, trial_frozen(study, trial), lost=True)

    def _crashed(self, study, trial, phase: str, exc: BaseException) -> None:
        from optuna.trial import TrialState

        trial.set_user_attr("fail_reason", f"{exc.__class__.__name__}: {mask(str(exc))[:300]}")
        trial.set_user_attr("crashed", True)
        study.tell(trial, state=TrialState.FAIL)
        if phase == PHASE_SEARCH:
            self._retry(study, trial_frozen(study, trial))
        self._crashes.append(f"{study.study_name}#{trial.number}: {first_line(exc)}")
        print(f"rnnsuite: trial {study.study_name}#{trial.number} crashed: {first_line(exc)}", file=sys.stderr)
        release_cuda_memory()  # the failed trial's cached blocks: the next trial may need them
        if is_unrecoverable_cuda_error(exc):  # every later kernel of this process fails alike: stop the worker
            self.gpu_failure = first_line(exc)  # work() stops once the trials in hand are told

    # ------------------------------------------------------------------ packed trials
    def pack_size(self, cell: str, phase: str) -> int:
        """How many trials the next pack of `cell` asks for: ``pack``, never more than the budget has left
        (search) or than the queue holds (confirmation); 1 where the cell's trials cannot be packed."""
        size = self.spec.pack
        if size > 1 and self._unpackable(cell):
            return 1
        if phase == PHASE_SEARCH:
            c = self.counts(cell)
            size = min(size, self.spec.trials - c["finished"] - c["running"])
        else:
            size = min(size, self.counts(cell, PHASE_CONFIRM)["waiting"])
        return max(1, size)

    def _unpackable(self, cell: str) -> str | None:
        """Why `cell`'s trials cannot be packed (an LM task, a batch-norm cell), noted once; None if they can."""
        from .packed import packable

        if cell not in self._pack_reasons:
            reason = packable(trial_config(self.spec, cell, first_point(self.spec.search_for(cell)), seed=0))
            self._pack_reasons[cell] = reason
            if reason:
                self._note_unpacked(cell, reason)
        return self._pack_reasons[cell]

    def _note_unpacked(self, cell: str, reason: str) -> None:
        if cell not in self._noted:
            self._noted.add(cell)
            print(f"rnnsuite: note: {cell} trials are not packed ({reason}); training them one at a time",
                  file=sys.stderr, flush=True)

    def run_pack(self, cell: str, phase: str) -> None:
        """Ask for up to ``pack`` trials of one study and train them together, one pack per shape."""
        size = self.pack_size(cell, phase)
        if size <= 1:
            self.run_trial(cell, phase)
            return
        study = self.study(cell, phase)
        trials = []
        for _ in range(size):
            trial = self._ask(study, cell, phase)
            if trial is None:  # another worker took the last place, or the queue ran dry: train what we have
                break
            trials.append(trial)
        if trials:
            self._run_trials(cell, phase, study, trials)

    def _run_trials(self, cell: str, phase: str, study, trials: list) -> None:
        """Train asked trials grouped by shape: a group of two or more as one pack, a group of one alone."""
        from .packed import pack_key, packable

        open_ = {t.number: t for t in trials}  # asked, not yet told: what a stop must fail and retry
        beat = _Heartbeat(open_)
        beat.start()
        try:
            groups: dict[tuple, list] = {}
            for trial in trials:
                params, seed = self._trial_params(trial, phase)
                try:
                    cfg, tags = self._run_config(cell, phase, trial, params, seed)
                    key = pack_key(cfg)
                except Exception as exc:  # its config cannot be built: this trial crashes, not its pack-mates
                    del open_[trial.number]
                    self._crashed(study, trial, phase, exc)
                    continue
                groups.setdefault(key, []).append((trial, cfg, tags))
            for group in groups.values():
                try:
                    reason = packable(group[0][1]) if len(group) > 1 else None
                except Exception as exc:
                    for trial, _, _ in group:
                        del open_[trial.number]
                        self._crashed(study, trial, phase, exc)
                    continue
                if reason:
                    self._note_unpacked(cell, reason)
                if len(group) == 1 or reason:
                    for trial, cfg, tags in group:
                        self._run_alone(cell, phase, study, trial, cfg, tags, open_)
                else:
                    self._run_packed(cell, phase, study, group, open_)
        except KeyboardInterrupt:
            beat.stop()
            for trial in list(open_.values()):
                self._fail_interrupted(study, trial, phase)
            raise
        finally:
            beat.stop()

    def _run_alone(self, cell, phase, study, trial, cfg, tags, open_: dict) -> None:
        try:
            outcome, value, reason = self._fit(cell, phase, trial, cfg, tags)
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            del open_[trial.number]
            self._crashed(study, trial, phase, exc)
            return
        del open_[trial.number]
        if not self._tell(study, trial, phase, outcome, value, reason):
            raise KeyboardInterrupt

    def _run_packed(self, cell, phase, study, group: list, open_: dict) -> None:
        from functools import partial

        from .packed import Member, run_pack

        members = []
        for trial, cfg, tags in group:
            trial.set_user_attr("hidden_size", cfg.model.hidden_size)
            members.append(Member(
                cfg, tags=tags, parent_run_id=self.study_run(cell), monitor=self.metric,
                on_start=partial(trial.set_user_attr, "mlflow_run_id"),
                should_prune=_PackPruning(trial, cfg.train.steps // 4 if self.spec.warmup is None else self.spec.warmup)
                if phase == PHASE_SEARCH else None,
                on_end=partial(self._member_ended, study, trial, phase, open_)))
        try:
            run_pack(members)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # the pack crashed: every member still training crashed with it
            for trial, _, _ in group:
                if trial.number in open_:
                    del open_[trial.number]
                    self._crashed(study, trial, phase, exc)

    def _member_ended(self, study, trial, phase: str, open_: dict, result) -> None:
        """A model left its pack: tell its trial now (a pack stopped or crashed is handled by its caller)."""
        if result.outcome not in ("finished", "pruned", "diverged"):
            return
        trial.set_user_attr("mlflow_run_id", result.run_id)
        value = result.metrics.get(self.metric)
        if value is not None:
            trial.set_user_attr("value", value)
        self._tell(study, trial, phase, result.outcome, value, result.reason)
        open_.pop(trial.number, None)

    def _within_budget(self, study, trial) -> bool:
        from optuna.trial import TrialState

        live = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED,
                                                        TrialState.RUNNING))
        numbers = sorted(t.number for t in live)
        ok = trial.number in numbers[: self.spec.trials]
        if not ok:
            trial.set_user_attr("fail_reason", "budget already taken by another worker; not trained")
        return ok

    def _duplicate_design(self, study, trial) -> bool:
        """A design point enqueued twice (two machines started the same sweep at the same moment) trains once."""
        from optuna.trial import TrialState

        point = trial.user_attrs.get(DESIGN_ATTR)
        if point is None:
            return False
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED,
                                                          TrialState.RUNNING)):
            if t.number < trial.number and t.user_attrs.get(DESIGN_ATTR) == point:
                trial.set_user_attr("fail_reason", "duplicate design point; not trained")
                return True
        return False

    def _duplicate_confirm(self, study, trial) -> bool:
        from optuna.trial import TrialState

        # another trial of the same (rank, seed) finished or running: step back (two that start at the same
        # moment both step back, and ensure_confirm_queue enqueues the slot again)
        key = _confirm_key(trial)
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED,
                                                          TrialState.RUNNING)):
            if t.number != trial.number and _confirm_key(t) == key:
                trial.set_user_attr("fail_reason", "duplicate confirmation run; not trained")
                return True
        return False

    def _run_config(self, cell, phase, trial, params, seed) -> tuple[RunConfig, dict[str, str]]:
        """A trial's run config and the tags of its MLflow run (the same for a trial trained alone or packed)."""
        cfg = trial_config(self.spec, cell, params, seed)
        study_name = self.spec.study_name(cell, phase)
        cfg.tracking.uri = self.tracking_uri
        cfg.tracking.experiment = self.spec.name
        label = f"{cell}-t{trial.number}" if phase == PHASE_SEARCH else \
            f"{cell}-confirm-r{trial.user_attrs['rank']}-s{seed}"
        cfg.tracking.run_name = label
        tags = {"sweep": self.spec.name, "task": self.spec.task_label, "cell": cell, "study": study_name,
                "trial": str(trial.number), "phase": phase, "seed": str(seed), "rnnsuite.level": "trial"}
        if phase == PHASE_CONFIRM:
            tags.update({"confirm.rank": str(trial.user_attrs["rank"]),
                         "confirm.source_trial": str(trial.user_attrs["source_trial"])})
        what = (f"Search trial {trial.number}" if phase == PHASE_SEARCH else
                f"Confirmation run of the rank-{trial.user_attrs['rank']} configuration, seed {seed},")
        tags[NOTE] = (f"{what} of {cell} in sweep {self.spec.name}. Objective: `{self.metric}` ({self.direction}); "
                      f"compare runs on `{self.metric}`, `train/loss` and `train/grad_norm` (pick them under "
                      "Columns once: MLflow keeps the choice per experiment).")
        return cfg, tags

    def _train(self, cell, phase, trial, params, seed):
        cfg, tags = self._run_config(cell, phase, trial, params, seed)
        return self._fit(cell, phase, trial, cfg, tags)

    def _fit(self, cell, phase, trial, cfg, tags):
        from .train import run

        trial.set_user_attr("hidden_size", cfg.model.hidden_size)
        callbacks = [_RecordRunId(trial)]
        if phase == PHASE_SEARCH:
            callbacks.append(OptunaPruning(trial, self.metric, self.spec.warmup))
        result = run(cfg, tags=tags, callbacks=callbacks, parent_run_id=self.study_run(cell))
        trial.set_user_attr("mlflow_run_id", result.run_id)
        value = result.metrics.get(self.metric)
        if value is not None:
            trial.set_user_attr("value", value)
        return result.outcome, value, result.reason

    # ------------------------------------------------------------------ summary
    def summary_rows(self) -> list[dict]:
        import statistics

        from optuna.trial import TrialState

        rows = []
        for cell in self.spec.cells:
            c = self.counts(cell)
            best = None
            try:
                best = self.study(cell).best_value
            except ValueError:
                pass
            conf = [t.value for t in self.study(cell, PHASE_CONFIRM).get_trials(
                deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
            rows.append({"cell": cell, "complete": c["complete"], "pruned": c["pruned"], "failed": c["fail"],
                         "best": best, "confirm_n": len(conf),
                         "confirm_mean": statistics.fmean(conf) if conf else None,
                         "confirm_sd": statistics.stdev(conf) if len(conf) > 1 else None})
        return rows

    def finish(self) -> None:
        """Log each study's confirmation summary; end the parent runs FINISHED and any trial run a kill left
        RUNNING (the sweep is done: nothing of it runs any more) KILLED."""
        self._end_orphans()
        for row in self.summary_rows():
            rid = self.study_run(row["cell"])
            if "best/value" not in self.client.get_run(rid).data.metrics:  # a kill came before it was logged
                self._log_best(row["cell"], self.study(row["cell"]))
            if row["confirm_mean"] is not None:
                self.client.log_metric(rid, "confirm/mean", row["confirm_mean"])
                self.client.log_metric(rid, "confirm/n", row["confirm_n"])
                if row["confirm_sd"] is not None:
                    self.client.log_metric(rid, "confirm/sd", row["confirm_sd"])
            if self.client.get_run(rid).info.status != "FINISHED":
                self.client.set_terminated(rid, "FINISHED")
        rid = self.sweep_run()
        if self.client.get_run(rid).info.status != "FINISHED":
            self.client.set_terminated(rid, "FINISHED")

    def _end_orphans(self) -> None:
        exp = self.experiment_id()
        for run in self.client.search_runs([exp], f"attributes.status = 'RUNNING' and tags.sweep = "
                                           f"'{self.spec.name}'", max_results=5000):
            level = run.data.tags.get("rnnsuite.level")
            if level == "trial":
                self.client.set_tag(run.info.run_id, "failure.reason", "worker lost; trial retried")
                self.client.set_terminated(run.info.run_id, "KILLED")
            elif level in ("sweep", "study") and run.info.run_id not in (self.sweep_run(), *map(
                    self.study_run, self.spec.cells)):  # a twin made by two machines starting at once
                self.client.set_terminated(run.info.run_id, "FINISHED")

    def progress_line(self) -> str:
        parts = []
        for cell in self.spec.cells:
            c = self.counts(cell)
            f = self.counts(cell, PHASE_CONFIRM)["finished"]
            best = ""
            try:
                best = f" best {self.study(cell).best_value:.4g}"
            except ValueError:
                pass
            planned = self.confirm_planned(cell)
            planned = self.spec.confirm_runs if planned is None else planned
            parts.append(f"{cell} {c['finished']}/{self.spec.trials}{best} +{f}/{planned}")
        return f"[{self.spec.name}] " + " | ".join(parts)

    def runs_done(self) -> tuple[int, int]:
        """(finished runs, planned runs) over every cell, search and confirmation together."""
        done = total = 0
        for cell in self.spec.cells:
            done += min(self.counts(cell)["finished"], self.spec.trials)
            planned = self.confirm_planned(cell)
            planned = self.spec.confirm_runs if planned is None else planned
            done += min(self.counts(cell, PHASE_CONFIRM)["finished"], planned)
            total += self.spec.trials + planned
        return done, total


def trial_frozen(study, trial):
    return study._storage.get_trial(trial._trial_id)


def _confirm_key(t) -> tuple:
    return (t.user_attrs.get("rank"), t.user_attrs.get("seed"))


def _given_up(trials) -> set:
    """Confirmation slots whose configuration crashed its worker more than MAX_RETRIES times."""
    from collections import Counter

    from optuna.trial import TrialState

    crashes = Counter(_confirm_key(t) for t in trials if t.state == TrialState.FAIL and t.user_attrs.get("crashed"))
    return {key for key, n in crashes.items() if n > MAX_RETRIES}


def _process_id(pid: int) -> str | None:
    """boot id + start time of process `pid` (Linux): tells a live worker from another process that got its pid."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
        return f"{boot}:{stat.rsplit(')', 1)[1].split()[19]}"  # field 22, starttime (after "pid (comm)")
    except (OSError, IndexError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Heartbeat:
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


class OptunaPruning(pl.Callback):
    """Reports the objective at each validation of the fit and prunes (as optuna-integration's callback, but a
    pruned trial ends its MLflow run FINISHED with pruned.* tags instead of as an error)."""

    def __init__(self, trial, monitor: str, warmup_steps: int | None = 0):
        self.trial, self.monitor, self.warmup = trial, monitor, warmup_steps

    def on_fit_start(self, trainer, module):
        if self.warmup is None:  # an epochs budget: a quarter of this run's steps
            self.warmup = int(trainer.estimated_stepping_batches) // 4

    def on_validation_end(self, trainer, module):
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return
        step = trainer.global_step
        self.trial.report(float(value), step)
        if step >= self.warmup and self.trial.should_prune():
            raise PrunedRun(f"pruned at step {step} ({self.monitor}={float(value):.4g})", step)


class _PackPruning:
    """A packed model's pruning decision, as :class:`OptunaPruning` makes it for a model trained alone: report the
    objective at each validation, prune past the warm-up when the study's pruner says so."""

    def __init__(self, trial, warmup_steps: int = 0):
        self.trial, self.warmup = trial, warmup_steps

    def __call__(self, value: float, step: int) -> bool:
        self.trial.report(float(value), step)
        return step >= self.warmup and self.trial.should_prune()


class _RecordRunId(pl.Callback):
    """The trial knows its MLflow run from the start, so a killed trial's run can be ended KILLED."""

    def __init__(self, trial):
        self.trial = trial

    def setup(self, trainer, module, stage):
        if trainer.logger is not None:
            self.trial.set_user_attr("mlflow_run_id", trainer.logger.run_id)


# ---------------------------------------------------------------------------------------------- the command
def run_sweep(path: str, storage: str | None, tracking_uri: str | None, workers: int = 1,
              worker_only: bool = False, pack: int | None = None) -> int:
    spec = load_sweep(path)
    if pack is not None:  # --pack overrides the file's pack:
        spec.pack = check_pack(pack, "--pack")
    sweep = Sweep(spec, storage, tracking_uri)
    if worker_only:
        sweep.work()
        return 0
    sweep.command = sweep_command(path, storage, tracking_uri, workers, pack)
    sweep.prepare()
    for note in spec.refusal_notes() + spec.design_notes():
        print(f"rnnsuite: note: {note}", file=sys.stderr, flush=True)
    if sweep.done():
        sweep.finish()
        print(f"sweep {spec.name}: nothing to do ({spec.trials} trials and up to {spec.confirm_runs} "
              "confirmation runs per cell are finished)")
        _print_summary(sweep)
        return 0
    clock = _Clock(sweep)
    started = clock.started
    if workers <= 1:
        print(sweep.progress_line(), flush=True)
        sweep.work(progress=lambda: print(sweep.progress_line() + clock.suffix(), flush=True))
    else:
        _run_workers(sweep, path, storage, tracking_uri, workers, clock)
    if not sweep.done():
        print(f"rnnsuite: sweep {spec.name} stopped before its budget was spent; run the same command to resume",
              file=sys.stderr)
        return 1
    sweep.finish()
    print(f"sweep {spec.name} finished in {_elapsed(started)}")
    _print_summary(sweep)
    return 0


def sweep_command(path: str, storage: str | None, tracking_uri: str | None, workers: int = 1,
                  pack: int | None = None) -> str:
    """The command line that ran the sweep, as typed (stores masked), for its report's reproduction section."""
    return command_line(["rnnsuite", "sweep", str(path)],
                        [("--storage", storage), ("--tracking-uri", tracking_uri),
                         ("--workers", workers if workers and workers > 1 else None), ("--pack", pack)])


class _Clock:
    """Elapsed time and an ETA from the runs finished since this command started (resumed sweeps included)."""

    def __init__(self, sweep: Sweep):
        self.sweep = sweep
        self.started = time.time()
        self.done0 = sweep.runs_done()[0]

    def suffix(self) -> str:
        done, total = self.sweep.runs_done()
        text = f"  [{done}/{total} runs, {_elapsed(self.started)}"
        if done > self.done0 and done < total:
            rate = (time.time() - self.started) / (done - self.done0)
            text += f", ETA {_duration(rate * (total - done))}"
        return text + "]"


WORKER_STOP_S = 60.0  # how long a worker told to stop (SIGTERM) may take to end its trial


def _run_workers(sweep: Sweep, path, storage, tracking_uri, workers, clock: _Clock) -> None:
    import torch

    # one GPU per worker, round-robin over this process's own CUDA_VISIBLE_DEVICES (indices, UUIDs, MIG ids)
    devices = worker_devices(os.environ.get("CUDA_VISIBLE_DEVICES"), torch.cuda.device_count(), workers)
    procs = []
    for i in range(workers):
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        if devices[i] is not None:
            env["CUDA_VISIBLE_DEVICES"] = devices[i]
        # the stores go by environment, not argv: a password on a command line is visible to every user (ps)
        env.update(RNNSUITE_STORAGE=sweep.storage_url, MLFLOW_TRACKING_URI=sweep.tracking_uri)
        cmd = [sys.executable, "-m", "suite", "sweep", path, "--worker-only", "--quiet", "--pack",
               str(sweep.spec.pack)]
        procs.append(subprocess.Popen(cmd, env=env))
    last = ""
    try:
        with interrupts_outside_database_code():  # SIGTERM (kill, a scheduler's pre-emption) stops the workers too
            while any(p.poll() is None for p in procs):
                line = sweep.progress_line()
                if line != last:
                    print(line + clock.suffix(), flush=True)
                    last = line
                time.sleep(3.0)
    except BaseException:  # Ctrl-C, SIGTERM, an error here: no worker is left training on its own
        for p in procs:
            if p.poll() is None:
                p.terminate()  # each ends its trial KILLED and hands it back to be retried
        deadline = time.monotonic() + WORKER_STOP_S
        for p in procs:
            try:
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:  # stuck: never leave it training on its own
                p.kill()
                p.wait()
                print(f"rnnsuite: worker {p.pid} did not stop within {WORKER_STOP_S:.0f} s of SIGTERM and was killed; "
                      "its trial is retried when the sweep resumes", file=sys.stderr, flush=True)
        raise
    print(sweep.progress_line() + clock.suffix(), flush=True)


def _elapsed(start: float) -> str:
    return _duration(time.time() - start)


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4g}"


def _print_summary(sweep: Sweep) -> None:
    rows = sweep.summary_rows()
    print(f"{'cell':<17}{'complete':>9}{'pruned':>8}{'failed':>8}{'best search':>13}   confirm "
          f"({sweep.metric}, mean ± sd, n)")
    for r in rows:
        conf = f"{_fmt(r['confirm_mean'])} ± {_fmt(r['confirm_sd'])} (n={r['confirm_n']})"
        print(f"{r['cell']:<17}{r['complete']:>9}{r['pruned']:>8}{r['failed']:>8}{_fmt(r['best']):>13}   {conf}")
