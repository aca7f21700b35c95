"""What a sweep leaves in its stores for others to read back (the report, an archive's import): one record.

* Study names: a sweep's (task, cell) gets the Optuna study ``<sweep>/<task>/<cell>`` for its search and
  ``<sweep>/<task>/<cell>/confirm`` for its confirmation runs (:func:`study_name`).
* The parent run's params: the sweep as run (budget, cells, objective, search space, sampler, pruner, design,
  confirmation protocol, storage), written once by the sweep and read back by ``rnnsuite report``
  (:class:`SweepRecord`). The names are those logged since the first sweeps, so old runs still read. A JSON value
  longer than MLflow's limit on a param is split over ``KEY``, ``KEY.2``, ``KEY.3``, ... and joined on reading;
  a value that does not parse is an error, never an empty mapping.

Only the standard library here: both sides import it without loading torch, Optuna or MLflow.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

PHASE_SEARCH, PHASE_CONFIRM = "search", "confirm"
LEVEL_TAG = "rnnsuite.level"  # tag of every run of a sweep: sweep, study or trial
# user attribute of a trial that was RUNNING in an imported archive (rnnsuite import): its worker reports to the
# stores it was exported from, never to these, so the trial is lost here and reaped at once
ARCHIVED_RUNNING = "archived_running"
PARAM_LIMIT = 6000  # characters MLflow keeps of a param value (mlflow.utils.validation.MAX_PARAM_VAL_LENGTH)
JSON_PARAMS = ("search", "sampler", "pruner", "design")


STORAGE_TAG = "rnnsuite.storage"  # the parent run's tag: where the sweep's studies are NOW (masked), set by every
# sweep command and by an import into its destination; the param `storage` keeps where they were first stored
# (params cannot change), which is stale once a sweep has moved to another store or machine.


def recorded_storage(params: dict[str, str], tags: dict[str, str]) -> str:
    """Where a sweep's parent run says its studies are: the tag, else (a sweep of an older rnnsuite) the param."""
    return tags.get(STORAGE_TAG) or params.get("storage", "")


def study_name(sweep: str, task_label: str, cell: str, phase: str = PHASE_SEARCH) -> str:
    """The Optuna study of one cell's search (or, with ``phase="confirm"``, of its confirmation runs)."""
    base = f"{sweep}/{task_label}/{cell}"
    return base if phase == PHASE_SEARCH else f"{base}/{PHASE_CONFIRM}"


def sweep_of(study: str) -> str:
    """The sweep a study belongs to (the first part of its name)."""
    return study.split("/", 1)[0]


class ContractError(ValueError):
    """A parent run whose params cannot be read back (e.g. a JSON value cut by an rnnsuite before the split)."""


@dataclass(frozen=True)
class SweepRecord:
    """The sweep as its parent MLflow run records it: params (and the tags ``task`` and ``description``)."""

    cells: list[str]
    trials: int  # param trials_per_cell
    steps: int
    epochs: int
    metric: str
    direction: str
    search: dict = field(default_factory=dict)
    sampler: dict = field(default_factory=dict)
    pruner: dict = field(default_factory=dict)
    design: dict = field(default_factory=dict)
    param_match: int = 0
    top_k: int = 1  # param confirm.top_k
    seeds: list[int] = field(default_factory=list)  # param confirm.seeds
    storage: str = ""  # the Optuna storage, masked
    task: str = ""  # tag task: the task part of the study names
    description: str = ""  # tag description
    equivalence: str | None = None  # param report.equivalence as logged (suite.report.keys parses it)

    def params(self) -> dict[str, str]:
        """The parent run's params as logged in one batch (report.equivalence is logged on its own)."""
        out = {"trials_per_cell": str(self.trials), "steps": str(self.steps), "epochs": str(self.epochs),
               "cells": ",".join(self.cells), "metric": self.metric, "direction": self.direction,
               "param_match": str(self.param_match), "confirm.top_k": str(self.top_k),
               "confirm.seeds": ",".join(map(str, self.seeds)), "storage": self.storage}
        for key in JSON_PARAMS:
            out.update(split_param(key, json.dumps(getattr(self, key))))
        return out

    @classmethod
    def from_run(cls, params: dict[str, str], tags: dict[str, str]) -> SweepRecord:
        """Read a parent run back; a param a sweep of an older rnnsuite did not log takes its default."""
        p = params
        return cls(cells=[c for c in p.get("cells", "").split(",") if c], trials=int(p.get("trials_per_cell", 0) or 0),
                   steps=int(p.get("steps", 0) or 0), epochs=int(p.get("epochs", 0) or 0),
                   metric=p.get("metric", ""), direction=p.get("direction", "minimize"),
                   **{key: _json(p, key) for key in JSON_PARAMS}, param_match=int(p.get("param_match", 0) or 0),
                   top_k=int(p.get("confirm.top_k", 1) or 1),
                   seeds=[int(s) for s in p.get("confirm.seeds", "").split(",") if s.strip()],
                   storage=p.get("storage", ""), task=tags.get("task", ""), description=tags.get("description", ""),
                   equivalence=p.get("report.equivalence"))


def split_param(key: str, value: str) -> dict[str, str]:
    """`value` as params of at most PARAM_LIMIT characters: ``key`` holds the first part, ``key.2``, ``key.3``,
    ... the rest (a value that fits is one param, as sweeps have always logged it)."""
    parts = [value[i:i + PARAM_LIMIT] for i in range(0, len(value), PARAM_LIMIT)] or [""]
    return {key if n == 1 else f"{key}.{n}": part for n, part in enumerate(parts, 1)}


def joined_param(params: dict[str, str], key: str) -> str | None:
    """The value :func:`split_param` wrote (None if `key` was not logged)."""
    if key not in params:
        return None
    parts, n = [params[key]], 2
    while f"{key}.{n}" in params:
        parts.append(params[f"{key}.{n}"])
        n += 1
    return "".join(parts)


def _json(params: dict[str, str], key: str) -> dict:
    text = joined_param(params, key)
    if text is None:
        return {}
    try:
        value: Any = json.loads(text)
    except ValueError:
        raise ContractError(f"the sweep's parent run has a param {key!r} that is not JSON ({len(text)} characters"
                            f"{', cut by MLflow' if len(text) >= PARAM_LIMIT else ''}): {text[:60]!r}...") from None
    if not isinstance(value, dict):
        raise ContractError(f"the sweep's parent run has a param {key!r} that is not a JSON object: {text[:60]!r}")
    return value
