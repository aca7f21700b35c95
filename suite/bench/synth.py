"""Synthetic sweeps for the report's scale benchmark (``python -m suite.report N``) and the tests: the runs and
studies a real sweep leaves behind. Benchmark and test support, not part of a report: no report module imports it.

The same experiment layout as :mod:`suite.sweep` (a parent run, a study run per cell, a trial run per trial with
the tags, params, metric histories and gradient-profile artifact that :func:`suite.train.run` logs) and the same
Optuna studies, written fast: one ``log_batch`` per run for its params and one per 1,000 metrics (MLflow's
limit), trials added to the journal with ``add_trials``. Values follow a plausible model (a per-cell quality, a
best learning rate, exponential learning curves, seeded noise), so every figure has something to draw.
"""
from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
import optuna
from mlflow.entities import Metric, Param
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState, create_trial

from .. import cells
from ..tracking import artifact_location
from ..report.command import build_report

CELLS = ("gru", "lstm", "sgru", "mgu", "ugrnn", "janet", "mut1", "ligru", "mingru", "minlstm", "cifg", "gru1")
SEEDS = (1, 2, 3)
LENGTH, STEPS = 50, 1000  # adding problem T=50, trained 1,000 steps
VAL_EVERY, LOG_EVERY, DIAG_EVERY, GRAD_EVERY = 100, 20, 500, 50
BASELINE = 1 / 6


def _gate_names(cell: str) -> tuple[str, ...]:
    return tuple(getattr(cells.CELLS.get(cell).builder, "gate_names", ()))


def _params(cell: str, lr: float, clip: float, seed: int, name: str, uri: str) -> dict:
    """The flattened run config a trial logs (train.run: cfg.flat() plus cell, n_params, seed, baseline)."""
    return {"task.name": "adding", "task.length": LENGTH, "task.batch_size": 64, "task.val_size": 512,
            "model.cell": cell, "model.hidden_size": 64, "model.layers": 1, "model.dropout": 0.0,
            "model.chrono_init": False, "model.init": "orthogonal", "optim.name": "adam", "optim.lr": lr,
            "optim.clip": clip, "optim.schedule": "constant", "optim.weight_decay": 0.0, "train.steps": STEPS,
            "train.epochs": 0, "train.seed": seed, "train.device": "auto", "train.log_every": LOG_EVERY,
            "train.val_every": VAL_EVERY, "train.diag_every": DIAG_EVERY, "train.grad_every": GRAD_EVERY,
            "tracking.uri": uri, "tracking.experiment": name, "cell": cell,
            "n_params": 1000 * (2 + len(_gate_names(cell))) + 65, "seed": seed, "task.baseline": BASELINE,
            "task.baseline_metric": "mse"}


class _Model:
    """A cell's response to its hyperparameters: final MSE = floor · exp(k · (log10 lr − best)²) · noise."""

    def __init__(self, index: int, rng: np.random.Generator):
        self.floor = 10 ** (-3.2 + 0.25 * index)  # cells differ by a quarter decade each
        self.best = -2.0 + 0.1 * (index % 5)
        self.rng = rng
        self.decay = -0.3 - 0.35 * (index % 4)  # log10 gradient decay over the sequence after training

    def final(self, lr: float) -> float:
        value = self.floor * math.exp(2.5 * (math.log10(lr) - self.best) ** 2) * math.exp(self.rng.normal(0, 0.3))
        return min(value, BASELINE * 1.02)

    def curve(self, final: float, steps: np.ndarray) -> np.ndarray:
        return final + (BASELINE - final) * np.exp(-steps / 120.0)


def _metrics(cell: str, model: _Model, final: float, stop: int, now: int, legacy: bool = False):
    """Metric histories as train.run logs them, up to step `stop` (a pruned trial stops early)."""
    rng = model.rng
    out = []

    def add(key, values, steps):
        out.extend(Metric(key, float(v), now, int(s)) for v, s in zip(values, steps))

    logs = np.arange(LOG_EVERY, stop + 1, LOG_EVERY)
    vals = np.arange(VAL_EVERY - 1, stop, VAL_EVERY)
    diags = np.array(sorted({0, *range(DIAG_EVERY, stop + 1, DIAG_EVERY), stop}))
    grads = np.arange(GRAD_EVERY, stop + 1, GRAD_EVERY)
    train = model.curve(final, logs) * np.exp(rng.normal(0, 0.2, len(logs)))
    add("train/loss", train, logs)
    add("train/grad_norm", 0.3 * np.exp(rng.normal(0, 0.5, len(logs))), logs)
    add("train/grad_norm_clipped", 0.3 * np.exp(rng.normal(0, 0.5, len(logs))), logs)
    add("time/step_ms", 6 + rng.normal(0, 0.3, len(logs)), logs)
    val = model.curve(final, vals + 1)
    add("val/mse", val, vals)
    add("val/loss", val, vals)
    add("val/acc", np.clip(1 - 12 * val, 0, 1), vals)
    for gate in _gate_names(cell):
        frac = np.minimum(diags / STEPS, 1.0)
        sat = 0.6 * frac * rng.uniform(0.5, 1.0)
        add(f"gates/l0/{gate}/saturation", sat, diags)
        if not legacy:  # sweeps logged before issue 21 have saturation only
            add(f"gates/l0/{gate}/near0", 0.3 * sat, diags)
            add(f"gates/l0/{gate}/near1", 0.7 * sat, diags)
        add(f"gates/l0/{gate}/mean", 0.5 + 0.2 * frac * rng.uniform(-1, 1), diags)
        add(f"grad/l0/{gate}", 0.05 * np.exp(rng.normal(0, 0.3, len(grads))), grads)
    add("diag/grad_decay", model.decay * np.minimum(diags / STEPS, 1.0) - 0.5 * (diags == 0), diags)
    add("time/train_s", [stop * 0.006], [stop])
    if stop == STEPS:
        add("test/mse", [final * math.exp(rng.normal(0, 0.05))], [stop])
        add("test/loss", [final], [stop])
        add("test/acc", [max(0.0, 1 - 12 * final)], [stop])
    return out, diags


def _profile(path: Path, model: _Model, diags) -> Path:
    """diagnostics/grad_profile.csv: ||dL/dh_t|| falling towards t = 0 by 10^decay (more after training)."""
    t = np.arange(LENGTH)
    with path.open("w") as f:
        f.write("step,state,t,norm\n")
        for step in diags:
            decay = -2.0 if step == 0 else model.decay
            norms = 1e-2 * 10 ** (decay * (LENGTH - 1 - t) / (LENGTH - 1))
            f.writelines(f"{step},h,{i},{n:.6e}\n" for i, n in zip(t, norms))
    return path


def _gate_hist(path: Path, cell: str, diags) -> Path:
    """diagnostics/gate_hist.csv: every gate spread evenly before training, pushed to both ends after."""
    with path.open("w") as f:
        f.write("step,layer,gate,bin,lo,hi,fraction\n")
        for step in diags:
            fracs = [0.1] * 10 if step == 0 else [0.3] + [0.05] * 8 + [0.3]
            f.writelines(f"{step},l0,{g},{b},{b / 10:g},{(b + 1) / 10:g},{fr}\n" for g in _gate_names(cell)
                         for b, fr in enumerate(fracs))
    return path


class _Writer:
    """Writes runs into one experiment with batched calls."""

    def __init__(self, client, experiment_id: str, name: str, uri: str, tmp: Path, legacy: bool = False):
        self.client, self.exp, self.name, self.uri, self.tmp = client, experiment_id, name, uri, tmp
        self.legacy = legacy  # write what sweeps logged before issue 21 (no gate ends, no histogram)

    def parent_runs(self, cells, trials: int, done: bool) -> tuple[str, dict]:
        c = self.client
        parent = c.create_run(self.exp, run_name=self.name, tags={
            "rnnsuite.level": "sweep", "rnnsuite.key": self.name, "sweep": self.name, "task": "adding",
            "description": f"synthetic sweep of {len(cells)} cells for the report's scale benchmark"}).info.run_id
        params = {"trials_per_cell": trials, "steps": STEPS, "epochs": 0, "cells": ",".join(cells),
                  "metric": "val/mse", "direction": "minimize", "sampler": json.dumps({"name": "tpe", "seed": 0}),
                  "pruner": json.dumps({"name": "median", "warmup_steps": 200, "startup_trials": 2}),
                  "param_match": 0, "confirm.top_k": 1, "confirm.seeds": ",".join(map(str, SEEDS)),
                  "search": json.dumps({"optim.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-1},
                                        "optim.clip": {"type": "choice", "values": [1.0, 5.0]}}),
                  "storage": "(synthetic)"}
        c.log_batch(parent, params=[Param(k, str(v)) for k, v in params.items()])
        studies = {}
        for cell in cells:
            study = f"{self.name}/adding/{cell}"
            studies[cell] = c.create_run(self.exp, run_name=study, tags={
                "rnnsuite.level": "study", "rnnsuite.key": study, "sweep": self.name, "task": "adding",
                "cell": cell, "study": study, "mlflow.parentRunId": parent}).info.run_id
            if done:
                c.set_terminated(studies[cell], "FINISHED")
        if done:
            c.set_terminated(parent, "FINISHED")
        return parent, studies

    def trial_run(self, cell, model, study_run, trial, phase, seed, lr, clip, final, stop, rank=None) -> str:
        c = self.client
        study = f"{self.name}/adding/{cell}" + ("/confirm" if phase == "confirm" else "")
        tags = {"rnnsuite.level": "trial", "sweep": self.name, "task": "adding", "cell": cell, "study": study,
                "trial": str(trial), "phase": phase, "seed": str(seed), "device": "cpu", "rnnsuite.version": "0.1.0",
                "git.commit": "0" * 40, "mlflow.parentRunId": study_run}
        if rank is not None:
            tags.update({"confirm.rank": str(rank), "confirm.source_trial": "0"})
        if stop < STEPS:
            tags.update({"pruned.reason": f"pruned: pruned at step {stop}", "pruned.step": str(stop)})
        run_id = c.create_run(self.exp, run_name=f"{cell}-{phase}-{trial}", tags=tags).info.run_id
        params = [Param(k, str(v)) for k, v in _params(cell, lr, clip, seed, self.name, self.uri).items()]
        c.log_batch(run_id, params=params)
        metrics, diags = _metrics(cell, model, final, stop, int(time.time() * 1000), self.legacy)
        for i in range(0, len(metrics), 1000):
            c.log_batch(run_id, metrics=metrics[i:i + 1000])
        c.log_artifact(run_id, str(_profile(self.tmp / "grad_profile.csv", model, diags)), "diagnostics")
        if not self.legacy:
            c.log_artifact(run_id, str(_gate_hist(self.tmp / "gate_hist.csv", cell, diags)), "diagnostics")
        c.set_terminated(run_id, "FINISHED")
        return run_id


def write_synthetic_sweep(root: str | Path, n_runs: int = 1000, n_cells: int = 10, name: str = "synthetic",
                          done: bool = True, seed: int = 0, legacy: bool = False) -> dict:
    """A sweep of about `n_runs` trial runs over `n_cells` cells in root/mlflow.db and root/optuna.journal.

    done=False leaves it mid-search: half of each cell's search trials, no confirmation, one trial RUNNING.
    legacy=True writes what sweeps logged before issue 21: no gates/*/near0|near1, no gate_hist.csv.
    Returns {"name", "storage", "tracking_uri", "runs", "cells"}.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    cells = list(CELLS[:n_cells])
    per_cell = max(len(SEEDS) + 2, n_runs // len(cells))
    trials = per_cell - len(SEEDS)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    storage = str(root / "optuna.journal")
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment(name, artifact_location=artifact_location(uri), tags={"rnnsuite.sweep": name})
    tmp = root / "tmp"
    tmp.mkdir(exist_ok=True)
    writer = _Writer(client, exp, name, uri, tmp, legacy)
    parent, studies = writer.parent_runs(cells, trials, done)
    rng = np.random.default_rng(seed)
    written = 0
    for index, cell in enumerate(cells):
        written += _write_cell(writer, storage, cell, _Model(index, rng), studies[cell], trials, done)
    return {"name": name, "storage": storage, "tracking_uri": uri, "runs": written, "cells": cells,
            "parent_run_id": parent}


def _write_cell(writer: _Writer, storage_path: str, cell: str, model: _Model, study_run: str, trials: int,
                done: bool) -> int:
    """Search trials (some pruned), then the best configuration re-run with every seed; Optuna and MLflow both."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(storage_path))
    dists = {"optim.lr": FloatDistribution(1e-4, 1e-1, log=True), "optim.clip": CategoricalDistribution([1.0, 5.0])}
    search = optuna.create_study(study_name=f"{writer.name}/adding/{cell}", storage=storage)
    confirm = optuna.create_study(study_name=f"{writer.name}/adding/{cell}/confirm", storage=storage)
    rng = model.rng
    made, best = [], None
    count = trials if done else max(1, trials // 2)
    for number in range(count):
        lr, clip = float(10 ** rng.uniform(-4, -1)), float(rng.choice([1.0, 5.0]))
        final = model.final(lr)
        pruned = number >= 2 and final > 5 * model.floor * 10 and rng.random() < 0.5
        stop = 400 if pruned else 1000
        run_id = writer.trial_run(cell, model, study_run, number, "search", 0, lr, clip, final, stop)
        value = float(model.curve(final, np.array([stop]))[0])
        made.append(create_trial(
            params={"optim.lr": lr, "optim.clip": clip}, distributions=dists,
            value=None if pruned else value, state=TrialState.PRUNED if pruned else TrialState.COMPLETE,
            intermediate_values={s: float(model.curve(final, np.array([s + 1]))[0])
                                 for s in range(VAL_EVERY - 1, stop, VAL_EVERY)},
            user_attrs={"mlflow_run_id": run_id, "value": value}))
        if not pruned and (best is None or value < best[0]):
            best = (value, number, lr, clip)
    if not done:
        made.append(create_trial(params={"optim.lr": 1e-3, "optim.clip": 1.0}, distributions=dists,
                                 state=TrialState.RUNNING, user_attrs={"worker": "elsewhere:1"}))
    search.add_trials(made)
    if not done or best is None:
        return count
    confirm.set_user_attr("planned", len(SEEDS))
    config = json.dumps({"optim.lr": best[2], "optim.clip": best[3]})
    for i, seed in enumerate(SEEDS):
        final = model.final(best[2])
        run_id = writer.trial_run(cell, model, study_run, i, "confirm", seed, best[2], best[3], final, STEPS, rank=0)
        value = float(model.curve(final, np.array([STEPS]))[0])
        confirm.add_trial(create_trial(value=value, params={}, distributions={}, user_attrs={
            "config": config, "seed": seed, "rank": 0, "source_trial": best[1], "mlflow_run_id": run_id}))
    return count + len(SEEDS)


# ---------------------------------------------------------------------------------------------- scale benchmark
def scale_benchmark(n_runs: int = 1000, workdir: str | Path | None = None, cells: int = 10) -> dict:
    """Seconds to build a report over `n_runs` synthetic trial runs (parent, study and trial runs with realistic
    metric histories and profile artifacts in a fresh SQLite MLflow store; Optuna studies in a journal).

    Writing the synthetic sweep is not timed; reading, analysing, drawing, rendering, writing and logging the
    report is. Returns {"seconds", "runs", "cells", "write_seconds", "output"}.
    """
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="rnnsuite-report-bench-"))
    start = time.perf_counter()
    made = write_synthetic_sweep(root, n_runs=n_runs, n_cells=cells)
    written = time.perf_counter() - start
    start = time.perf_counter()
    build_report(made["name"], root / "report", storage=made["storage"], tracking_uri=made["tracking_uri"])
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "runs": made["runs"], "cells": len(made["cells"]), "write_seconds": written,
            "output": str(root / "report")}
