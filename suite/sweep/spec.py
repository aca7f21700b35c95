"""The sweep file: read, validated (every problem one line naming the key) and resolved into a SweepSpec.

Blocks with fixed keys (the file itself, budget, confirm, objective, sampler, pruner, design) are typed records
read by the config's own typed loader (:func:`suite.config.typed`: unknown keys, wrong types); the checks here
are the ranges and choices. Every value the sampler can give a cell must build: each choice value and bound is
tried on each cell, choice values a cell refuses are left out of its space (:meth:`SweepSpec.search_for`) and the
rest refused.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import cells as zoo
from ..assemble import task_layer
from ..config import find_sweep_file, load_yaml, typed
from ..registry import SuiteError
from ..report.keys import check_report_block
from .configs import build_task_and_model, trial_config
from .contract import PHASE_SEARCH, study_name
from .space import DEFAULT_MARGIN, DESIGN_KINDS, default_points, design_points, first_point

DIST_TYPES = ("loguniform", "uniform", "int", "choice")
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "hyperband", "none")


# ---------------------------------------------------------------------------------------------- the file's blocks
@dataclass
class SweepFile:
    """The keys a sweep file may hold (docs/sweeps.md)."""

    name: str
    task: Any  # a named setting, a task name, a tasks/ file, or a task section mapping
    cells: Any
    budget: dict
    description: str = ""
    base: Any = None
    cell_base: Any = None
    search: Any = None
    param_match: int = 0
    sampler: Any = None
    design: Any = None
    pruner: Any = None
    objective: Any = None
    confirm: Any = None
    pack: Any = 1
    report: Any = None


@dataclass
class Budget:
    trials: int  # finished trials per cell: the equal budget
    steps: int = 0  # training steps per trial (0 with epochs)
    epochs: int = 0


@dataclass
class Confirm:
    top_k: int = 1  # configurations re-trained
    seeds: Any = 3  # a count (seeds 1..n) or a list of seeds


@dataclass
class Objective:
    metric: str = ""  # "" = the task's default, e.g. val/mse
    direction: str = ""  # "" = the task's


@dataclass
class Sampler:
    name: str = "tpe"
    seed: int = 0


@dataclass
class Pruner:
    name: str = "median"
    warmup_steps: int | None = None  # None: a quarter of the run's steps (SweepSpec.warmup)
    startup_trials: int = 2
    margin: float = DEFAULT_MARGIN  # how far behind the median a trial must be (suite.sweep.space.MarginPruner)


@dataclass
class Design:
    kind: str = "sobol"
    points: int | None = None  # None: a third of the budget, at least 2


# ---------------------------------------------------------------------------------------------- the spec
@dataclass
class SweepSpec:
    name: str
    task: str | dict  # resolved at load into a config layer (a mapping with a task section)
    cells: list[str]
    trials: int  # finished trials per cell: the equal budget
    steps: int  # training steps per trial (0 with epochs)
    epochs: int = 0
    search: dict[str, dict] = field(default_factory=dict)  # dotted config key -> distribution
    base: dict[str, Any] = field(default_factory=dict)  # run-config sections fixed for every trial
    # cell -> run-config sections that replace the base's keys for that cell alone (e.g. chrono off for a cell
    # without a gate bias); every trial and seed of that cell trains with them, and its runs record them
    cell_base: dict[str, dict[str, Any]] = field(default_factory=dict)
    param_match: int = 0  # solve hidden_size so the recurrent layers have this many parameters (±10%)
    sampler: dict = field(default_factory=lambda: {"name": "tpe", "seed": 0})
    # the shared initial design (suite.sweep.space): kind sobol, lhs or none; points resolved at load (default: a
    # third of the budget, at least 2)
    design: dict = field(default_factory=lambda: {"kind": "none", "points": 0})
    # warmup_steps None: a quarter of the run's steps; margin: how far behind the median a trial must be
    pruner: dict = field(default_factory=lambda: dataclasses.asdict(Pruner()))
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

    def base_for(self, cell: str) -> dict[str, Any]:
        """The base sections `cell` trains from: the file's base with its cell_base keys replacing the base's."""
        own = self.cell_base.get(cell) or {}
        return {section: {**(self.base.get(section) or {}), **own.get(section, {})}
                for section in {*self.base, *own}}

    def search_for(self, cell: str) -> dict[str, dict]:
        """The search space of one cell: the file's, less the choice values the cell does not take (a cell without
        a gate bias cannot be chrono-initialised: model.chrono_init=true is not sampled for it)."""
        out = {}
        for key, dist in self.search.items():
            gone = [v for v, _ in self.refused.get(cell, {}).get(key, [])]
            out[key] = dict(dist, values=[v for v in dist["values"] if v not in gone]) if gone else dist
        return out

    def refusal_notes(self) -> list[str]:
        return [f"{cell} does not take {key}={yaml_value(v)} ({why}); its search leaves that value out"
                for cell, keys in self.refused.items() for key, values in keys.items() for v, why in values]

    def left_out(self, cell: str) -> list[str]:
        """``key=value`` for every choice value left out of `cell`'s space (tag search.left_out of its study)."""
        return [f"{key}={yaml_value(v)}" for key, values in self.refused.get(cell, {}).items() for v, _ in values]

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
        return study_name(self.name, self.task_label, cell, phase)

    @property
    def confirm_runs(self) -> int:
        return self.top_k * len(self.seeds)


def yaml_value(v) -> str:
    """A choice value as a sweep file writes it (true, null)."""
    return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


def _need(cond: bool, message: str) -> None:
    if not cond:
        raise SuiteError(message)


def _count(v, low: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _block(path, cls, value, kind: str, what: str):
    """A typed block of the file (None: its defaults); unknown keys and wrong types are one line."""
    value = {} if value is None else value
    _need(isinstance(value, dict), f"{path}: {kind} must be a mapping {what}, got {value!r}")
    try:
        return typed(cls, value, kind, "" if kind == "sweep" else f"{kind}.", qualified=False)
    except SuiteError as exc:
        raise SuiteError(f"{path}: {exc}") from None


# ---------------------------------------------------------------------------------------------- load_sweep
def load_sweep(path: str | Path) -> SweepSpec:
    """Read and validate a sweep file; every problem is one line naming the key. Nothing is written."""
    path = find_sweep_file(path)
    f = _block(path, SweepFile, load_yaml(path), "sweep", "")
    _need(bool(f.name) and "/" not in f.name and f.name.strip() == f.name,
          f"{path}: name must be a non-empty string without '/', got {f.name!r}")
    cells = f.cells
    _need(isinstance(cells, list) and cells and all(isinstance(c, str) for c in cells),
          f"{path}: cells must be a non-empty list of cell names")
    _need(len(set(cells)) == len(cells), f"{path}: cells lists a cell twice")
    for c in cells:
        zoo.CELLS.get(c)  # unknown cell: the registry's error lists the valid names
    budget = _block(path, Budget, f.budget, "budget", "with trials and steps (or epochs)")
    _need(budget.trials > 0, f"{path}: budget.trials must be a positive integer, got {budget.trials!r}")
    for k in ("steps", "epochs"):
        _need(getattr(budget, k) >= 0, f"{path}: budget.{k} must be a positive integer, got {getattr(budget, k)!r}")
    _need(bool(budget.steps) != bool(budget.epochs), f"{path}: budget needs exactly one of steps or epochs")
    trials = budget.trials
    spec = SweepSpec(name=f.name, task=f.task, cells=cells, trials=trials, steps=budget.steps, epochs=budget.epochs,
                     description=f.description)
    spec.search = _check_search(path, f.search or {})
    spec.base = f.base or {}
    _need(isinstance(spec.base, dict), f"{path}: base must be a mapping of run-config sections")
    spec.cell_base = _check_cell_base(path, f.cell_base or {}, cells)
    _need(f.param_match >= 0, f"{path}: param_match must be a positive integer (parameters), got {f.param_match!r}")
    _need(not (f.param_match and "model.hidden_size" in spec.search),
          f"{path}: param_match solves model.hidden_size; do not also search it")
    spec.param_match = f.param_match
    spec.sampler = _check_sampler(path, f.sampler)
    spec.design = _check_design(path, f.design, trials, spec.search)
    spec.pruner = _check_pruner(path, f.pruner)
    confirm = _block(path, Confirm, f.confirm, "confirm", "with top_k and seeds")
    _need(1 <= confirm.top_k <= trials,
          f"{path}: confirm.top_k must be an integer in [1, budget.trials], got {confirm.top_k!r}")
    spec.top_k, spec.seeds = confirm.top_k, _check_seeds(path, confirm.seeds)
    objective = _block(path, Objective, f.objective, "objective", "with metric and direction")
    _need(objective.direction in ("", "minimize", "maximize"),
          f"{path}: objective.direction must be minimize or maximize, got {objective.direction!r}")
    spec.metric, spec.direction = objective.metric, objective.direction
    spec.pack = check_pack(f.pack, f"{path}: pack")
    spec.report = check_report_block(path, f.report)
    _resolve_task(spec, path)
    for cell in cells:
        _check_cell_space(spec, cell, path)
    return spec


def _check_cell_base(path, block, cells: list[str]) -> dict[str, dict]:
    """``cell_base: {CELL: {section: {key: value}}}``: per-cell replacements of base keys, for listed cells only."""
    _need(isinstance(block, dict), f"{path}: cell_base must map cell names to run-config sections")
    for cell, sections in block.items():
        _need(cell in cells, f"{path}: cell_base.{cell}: not one of this sweep's cells ({', '.join(cells)})")
        _need(isinstance(sections, dict) and all(isinstance(v, dict) for v in sections.values()),
              f"{path}: cell_base.{cell} must be a mapping of run-config sections, e.g. {{model: {{chrono_init: "
              "false}}")
    return block


def check_pack(value, where: str = "pack") -> int:
    """``pack``: how many trials of one shape train together; an integer >= 1 (1 = one at a time)."""
    _need(_count(value, 1), f"{where} must be an integer >= 1 (trials trained together in one step; 1 = one at a "
          f"time), got {value!r}")
    return value


def _check_seeds(path, seeds) -> list[int]:
    if _count(seeds):
        _need(seeds >= 1, f"{path}: confirm.seeds must be >= 1, got {seeds}")
        seeds = list(range(1, seeds + 1))
    _need(isinstance(seeds, list) and seeds and all(_count(s) for s in seeds) and len(set(seeds)) == len(seeds),
          f"{path}: confirm.seeds must be a count or a list of distinct seeds")
    return seeds


def _check_sampler(path, block) -> dict:
    sampler = _block(path, Sampler, block, "sampler", "with a name")
    _need(sampler.name in SAMPLERS, f"{path}: sampler.name={sampler.name!r}; choose one of: {', '.join(SAMPLERS)}")
    _need(sampler.seed >= 0, f"{path}: sampler.seed must be a non-negative integer, got {sampler.seed!r}")
    return dataclasses.asdict(sampler)


def _check_pruner(path, block) -> dict:
    pruner = _block(path, Pruner, block, "pruner", "with a name")
    _need(pruner.name in PRUNERS, f"{path}: pruner.name={pruner.name!r}; choose one of: {', '.join(PRUNERS)}")
    for k in ("warmup_steps", "startup_trials"):  # warmup_steps null: a quarter of the run's steps
        v = getattr(pruner, k)
        _need(_count(v) or (k == "warmup_steps" and v is None),
              f"{path}: pruner.{k} must be a non-negative integer, got {v!r}")
    _need(pruner.margin >= 0, f"{path}: pruner.margin must be a non-negative number, got {pruner.margin!r}")
    return dataclasses.asdict(pruner)


def _check_design(path, block, trials: int, search: dict) -> dict:
    """``design: {kind: sobol|lhs|none, points: k}``; k defaults to a third of the budget (at least 2)."""
    design = _block(path, Design, block, "design", "with kind and points")
    _need(design.kind in DESIGN_KINDS, f"{path}: design.kind={design.kind!r}; choose one of: {', '.join(DESIGN_KINDS)}")
    points = default_points(trials) if design.points is None else design.points
    _need(_count(points) and points <= trials,
          f"{path}: design.points must be an integer in [0, budget.trials={trials}], got {points!r}")
    if design.kind == "none" or not search:  # nothing to spread over: every trial is the same configuration
        return {"kind": "none", "points": 0}
    return {"kind": design.kind, "points": points}


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
    """The file's ``task:`` (a named setting, a task name, a tasks/ file beside the sweep file, or a mapping with
    a name) -> a config layer, and the task part of the study names."""
    task = spec.task
    if isinstance(task, str):
        spec.task, spec.task_label = task_layer(task, relative_to=path)
    elif isinstance(task, dict) and "name" in task:
        spec.task_label = str(task["name"])
        spec.task = {"task": dict(task)}
    else:
        raise SuiteError(f"{path}: task must be a task name, a named setting, a tasks/ file or a mapping with name")


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
