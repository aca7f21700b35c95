"""Sweeps: every cell tuned with the same budget by Optuna, every trial an MLflow run, resumable, many workers.

A sweep file names a task, the cells, a search space over run-config keys, the budget and a confirmation
protocol. Each (sweep, task, cell) gets one Optuna study ``<sweep>/<task>/<cell>`` that ends with exactly
``budget.trials`` finished (COMPLETE or PRUNED) trials; then the top-k configurations are re-trained with S
seeds in a second study ``<sweep>/<task>/<cell>/confirm`` whose trials are enqueued, fixed configurations.
Those confirmation numbers are what reports compare (Greff et al. 2017; Melis et al. 2018).

The parts, one module each:
    contract   study names and the parent run's params: what the report and an archive read back
    spec       the sweep file: load_sweep -> SweepSpec (validated, every problem one line naming the key)
    configs    a trial's values -> its run config; parameter matching
    space      distributions, the shared initial design, the trial-seeded sampler, the margin pruner
    studies    Optuna glue: the studies, their counts, design and confirmation queues
    leases     heartbeats and the reaping of trials whose worker is gone
    ledger     MLflow bookkeeping: the experiment and the parent runs
    callbacks  a training run reporting to its trial (pruning, run id)
    trials     one trial from ask to tell, trained by suite.train.run
    packing    trials trained M at a time (suite.packed)
    worker     the loop that takes the next job
    core       Sweep: one sweep on one pair of stores, composed of the above
    command    ``rnnsuite sweep``

Names are loaded on first use (PEP 562): ``from suite.sweep.contract import study_name`` or ``from suite.sweep
import ARCHIVED_RUNNING`` does not load torch, Optuna or MLflow, which the other parts need.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "ARCHIVED_RUNNING": "contract", "PHASE_CONFIRM": "contract", "PHASE_SEARCH": "contract",
    "SweepRecord": "contract", "study_name": "contract",
    "SweepSpec": "spec", "check_pack": "spec", "load_sweep": "spec",
    "build_task_and_model": "configs", "match_hidden_size": "configs", "recurrent_params": "configs",
    "trial_config": "configs",
    "MarginPruner": "space", "design_points": "space", "distributions": "space",
    "MAX_RETRIES": "studies", "Studies": "studies",
    "GRACE": "leases", "HEARTBEAT": "leases", "NO_WORKER_GRACE": "leases",
    "CRASH_STREAK": "trials",
    "Sweep": "core",
    "run_sweep": "command", "sweep_command": "command",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # the next lookup is an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
