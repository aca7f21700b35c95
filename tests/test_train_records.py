"""What a training run records: the resolved config and the task's "solved" criterion in MLflow, train/* metrics
of a run shorter than train.log_every, best.ckpt, git.commit, the global tracking URI left alone, a bf16 run.

Every run here is tiny (adding T=10, hidden 8, a handful of steps); one module-scoped run serves several tests.
"""
from __future__ import annotations

import math
import os
import re
import subprocess
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
import yaml

from suite import tasks
from suite.assemble import resolved_config, task_record
from suite.config import build_config
from suite.tracking import mask
from suite.train import run

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"task.length": 10, "task.val_size": 64, "model.hidden_size": 8, "train.progress": False}


def _head() -> str:
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("gaps")
    return {"uri": f"sqlite:///{root / 'mlflow.db'}", "root": root}


@pytest.fixture(scope="module")
def short_run(store):
    """7 steps, train.log_every at its default 50, validation at the end: the shape of a quick smoke run."""
    head = _head()
    cfg = build_config({"task": {"name": "adding"}}, overrides={
        **SMALL, "tracking.uri": store["uri"], "train.steps": 7, "train.checkpoint_dir": str(store["root"] / "ck")})
    assert cfg.train.log_every == 50 and "batch_size" not in cfg.task.options  # left to the task's defaults
    result = run(cfg)
    assert result.status == "FINISHED"
    client = mlflow.MlflowClient(store["uri"])
    return {"result": result, "run": client.get_run(result.run_id), "client": client, "head": head, "cfg": cfg}


# ------------------------------------------------------------------------------------ 1. resolved config
def test_resolved_task_options_are_logged_with_the_tasks_defaults(short_run, store):
    params = short_run["run"].data.params
    defaults = tasks.options("adding")
    assert params["task.name"] == "adding"
    assert params["task.length"] == "10" and params["task.val_size"] == "64"  # as set
    for option in ("batch_size", "eval_batch_size"):  # not set anywhere: the task's own defaults
        assert params[f"task.{option}"] == str(defaults[option]), option
    assert defaults["batch_size"] == 64 and defaults["eval_batch_size"] == 256
    built = tasks.build("adding", length=10, val_size=64)
    assert {k for k in params if k.startswith("task.") and k.split(".", 1)[1] in built.options} == \
        {f"task.{k}" for k in built.options}  # every resolved option, nothing missing


def test_tracking_uri_and_checkpoint_dir_are_logged_resolved_not_empty(short_run, store):
    params = short_run["run"].data.params
    assert params["tracking.uri"] == store["uri"]
    assert params["train.checkpoint_dir"] == str(store["root"] / "ck")
    path = short_run["client"].download_artifacts(short_run["result"].run_id, "config.yaml", str(store["root"]))
    logged = yaml.safe_load(Path(path).read_text())
    assert logged["task"] == {"name": "adding", **tasks.build("adding", length=10, val_size=64).options}
    assert logged["tracking"]["uri"] == store["uri"] and logged["train"]["checkpoint_dir"] == str(store["root"] / "ck")
    assert build_config(logged).task.options["batch_size"] == 64  # a resume builds the same task


def test_resolved_config_masks_the_uri_and_fills_the_default_checkpoint_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("RNNSUITE_HOME", str(tmp_path / "home"))
    from suite.assemble import checkpoint_root

    cfg = build_config({"task": {"name": "copy"}})
    task = tasks.build("copy")
    out = resolved_config(cfg, task, "postgresql://ann:s3cret-pw@db.example:5432/mlflow", checkpoint_root(cfg))
    assert out.tracking.uri == "postgresql://ann:***@db.example:5432/mlflow"
    assert out.tracking.uri == mask("postgresql://ann:s3cret-pw@db.example:5432/mlflow")
    assert out.train.checkpoint_dir == str((tmp_path / "home").resolve() / "checkpoints")
    assert out.task.options == task.options and out.task.options["symbols"] == 10 and out.task.options["alphabet"] == 10
    assert cfg.tracking.uri == "" and cfg.train.checkpoint_dir == "" and cfg.task.options == {}  # input untouched
    flat = out.flat()
    assert flat["task.length"] == 100 and flat["task.variable"] is False and "s3cret" not in str(flat)


# ----------------------------------------------------------------------------------------- 2. "solved"
def test_solved_criterion_is_logged_with_the_run(short_run):
    data = short_run["run"].data
    adding = tasks.build("adding")
    assert data.tags["task.solved"] == adding.solved
    assert data.tags["task.solved_metric"] == "val/mse" and data.tags["task.solved_op"] == "<"
    assert float(data.tags["task.solved_threshold"]) == adding.solved_rule.threshold  # exact: repr round-trips
    assert adding.solved_rule.threshold == pytest.approx(0.01 / 6, rel=1e-12)
    assert data.tags["task.solved_rule"] == "val/mse < 0.00166667"
    assert float(data.params["task.baseline"]) == pytest.approx(1 / 6)
    # task.* params stay the task's options: the report rebuilds the task from them
    from suite.report.data import rebuild_task

    params = {f"params.{k}": v for k, v in data.params.items()}
    rebuilt, note = rebuild_task(pd.DataFrame([params]), "adding")
    assert note == "" and rebuilt.options == tasks.build("adding", length=10, val_size=64).options


def test_solved_rule_is_the_one_is_solved_applies(tmp_path):
    adding, copy = tasks.build("adding"), tasks.build("copy", length=5)
    assert adding.is_solved({"mse": 0.0016}) and not adding.is_solved({"mse": 0.0017})
    assert not adding.is_solved({"mse": float("nan")}) and not adding.is_solved({})
    assert copy.solved_rule.threshold == 0.99 and copy.is_solved({"acc": 0.99}) and not copy.is_solved({"acc": 0.98})
    params, tags = task_record(copy)
    assert tags["task.solved_metric"] == "val/acc" and tags["task.solved_op"] == ">="
    assert float(tags["task.solved_threshold"]) == 0.99 and tags["task.solved"] == copy.solved
    assert set(params) == {"task.baseline", "task.baseline_metric"}
    lm = tasks.build("lm", path=str(ROOT / "tests" / "data" / "tiny_corpus"), batch_size=2, bptt=2)
    params, tags = task_record(lm)
    assert lm.solved_rule is None and "task.solved_threshold" not in tags
    assert tags["task.solved"].startswith("none") and params["task.baseline_metric"] == "ppl"


# --------------------------------------------------------------------------------- 3. short runs flush
def test_a_run_shorter_than_log_every_has_its_train_metrics_in_mlflow(short_run):
    client, run_id, final = short_run["client"], short_run["result"].run_id, short_run["result"].metrics
    for key in ("train/loss", "train/grad_norm", "train/grad_norm_clipped", "train/lr"):
        history = client.get_metric_history(run_id, key)
        assert [h.step for h in history] == [6], key  # the last step (0-based), once
        assert history[0].value == pytest.approx(final[key], rel=1e-6)  # what --json reports
    assert short_run["run"].data.metrics["train/loss"] == pytest.approx(final["train/loss"], rel=1e-6)


def test_a_run_ending_on_a_logging_step_is_not_logged_twice(store):
    cfg = build_config({"task": {"name": "adding"}}, overrides={
        **SMALL, "tracking.uri": store["uri"], "train.steps": 6, "train.log_every": 3,
        "train.checkpoint_dir": str(store["root"] / "ck")})
    result = run(cfg)
    history = mlflow.MlflowClient(store["uri"]).get_metric_history(result.run_id, "train/loss")
    assert [h.step for h in history] == [2, 5]


# ------------------------------------------------------------------------------------ best.ckpt, git
def test_best_checkpoint_is_written_next_to_last(short_run, store):
    run_id = short_run["result"].run_id
    folder = store["root"] / "ck" / run_id
    assert short_run["run"].data.tags["rnnsuite.checkpoint_dir"] == str(folder)
    assert (folder / "best.ckpt").is_file() and (folder / "last.ckpt").is_file()
    best = torch.load(folder / "best.ckpt", map_location="cpu", weights_only=False)
    assert best["global_step"] == 7 and "state_dict" in best  # the one validation, at the end
    monitor = [v for k, v in best["callbacks"].items() if k.startswith("ModelCheckpoint")][0]
    assert monitor["monitor"] == "val/mse"
    assert float(monitor["best_model_score"]) == pytest.approx(short_run["result"].metrics["val/mse"], rel=1e-6)


def test_git_commit_tag_inside_the_checkout(short_run):
    commit = short_run["run"].data.tags.get("git.commit")
    assert commit and re.fullmatch(r"[0-9a-f]{40}", commit)
    assert commit in {short_run["head"], _head()}  # HEAD when the run started (others may commit meanwhile)



def test_a_run_in_process_leaves_the_global_tracking_uri_alone(store, monkeypatch):
    """Lightning's MLFlowLogger calls mlflow.set_tracking_uri, which also sets $MLFLOW_TRACKING_URI: without
    SuiteLogger putting it back, every later MLflow call of the process, and every child it starts (a sweep's
    workers, a test's `rnnsuite train`), went to the last run's store."""
    import mlflow.tracking._tracking_service.utils as tracking_utils

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)
    cfg = build_config({"task": {"name": "adding"}}, overrides={
        **SMALL, "tracking.uri": store["uri"], "train.steps": 2, "tracking.experiment": "env-leak",
        "train.checkpoint_dir": str(store["root"] / "ck-env")})
    assert run(cfg).status == "FINISHED"
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert tracking_utils._tracking_uri is None
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///somewhere-else.db")  # a user's own setting survives too
    assert run(cfg).status == "FINISHED"
    assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:///somewhere-else.db"


@pytest.mark.parametrize("cell", ["lstm", "sgru"])
def test_a_bf16_mixed_run_finishes_with_finite_metrics(store, cell):
    """train.precision=bf16-mixed (Lightning's autocast; the cells keep their recurrence in the parameters'
    dtype) on the CPU, where the tests run; the same code path serves GPUs."""
    cfg = build_config({"task": {"name": "adding"}}, overrides={
        **SMALL, "model.cell": cell, "tracking.uri": store["uri"], "train.steps": 5, "train.precision": "bf16-mixed",
        "tracking.experiment": "bf16", "train.checkpoint_dir": str(store["root"] / f"ck-bf16-{cell}")})
    result = run(cfg)
    assert result.status == "FINISHED"
    params = mlflow.MlflowClient(store["uri"]).get_run(result.run_id).data.params
    assert params["train.precision"] == "bf16-mixed"
    assert all(math.isfinite(result.metrics[k]) for k in ("train/loss", "val/mse", "test/mse"))
