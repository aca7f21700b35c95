"""Training gaps an audit found: the resolved config and the task's "solved" criterion in MLflow, train/*
metrics of a run shorter than train.log_every, learning-rate schedules (and train/lr as logged), best.ckpt,
git.commit, the default store location, the LM state carried across BPTT windows, and a NaN run through the CLI.

Every run here is tiny (adding T=10, hidden 8, a handful of steps); one module-scoped run serves several tests.
"""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
import yaml

from suite import tasks
from suite.assemble import resolved_config, task_record
from suite.config import OptimConfig, TrainConfig, build_config
from suite.lit import SuiteModule, build_optimizer, schedule_factor
from suite.model import SequenceModel
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
    from suite.report_data import rebuild_task

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
    lm = tasks.build("lm", path=str(_corpus(tmp_path)), batch_size=2, bptt=5)
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


# ----------------------------------------------------------------------------------------- 4. schedules
def _factors(schedule, n, total=100, spe=None, **kw):
    o = OptimConfig(schedule=schedule, **kw)
    f = schedule_factor(o, total, spe)
    return [f(s) for s in range(n)]


def test_constant_schedule():
    assert _factors("constant", 5, warmup_steps=3) == [1.0] * 5


def test_step_schedule_halves_each_epoch_after_decay_start_zaremba():
    # Zaremba et al. 2014 (small): 13 epochs, lr 1 for the first 4, then halved every epoch
    per_epoch = _factors("step", 13 * 2, spe=2, decay_start=4, decay_factor=0.5, decay_unit="epoch")
    assert per_epoch[::2] == per_epoch[1::2]  # constant within an epoch
    assert per_epoch[::2] == [1.0] * 4 + [0.5 ** k for k in range(1, 10)]


def test_step_schedule_in_step_units_and_without_epochs():
    assert _factors("step", 5, decay_start=2, decay_factor=0.5, decay_unit="step") == [1, 1, 0.5, 0.25, 0.125]
    # a synthetic task has no epochs: epoch units fall back to steps (documented in OptimConfig)
    assert _factors("step", 4, spe=None, decay_start=1, decay_factor=0.1, decay_unit="epoch") == \
        pytest.approx([1, 0.1, 0.01, 0.001])


def test_cosine_schedule_with_and_without_warmup():
    assert _factors("cosine", 5, total=4) == pytest.approx([1, 0.5 * (1 + math.cos(math.pi / 4)), 0.5,
                                                            0.5 * (1 - math.cos(math.pi / 4)), 0.0])
    assert _factors("cosine", 6, total=6, warmup_steps=2) == pytest.approx(
        [0.5, 1.0, 1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 - math.cos(math.pi / 4))])


def test_warmup_schedule():
    assert _factors("warmup", 5, warmup_steps=3) == pytest.approx([1 / 3, 2 / 3, 1, 1, 1])


@pytest.mark.parametrize("schedule,kw,spe,expected", [
    ("constant", {}, None, [1, 1, 1, 1]),
    ("step", {"decay_start": 1, "decay_unit": "epoch"}, 2, [1, 1, 0.5, 0.5, 0.25, 0.25]),
    ("warmup", {"warmup_steps": 2}, None, [0.5, 1, 1]),
    ("cosine", {}, None, [1, 0.5, 0]),  # total_steps 2
])
def test_build_optimizer_applies_the_schedule_step_by_step(schedule, kw, spe, expected):
    w = torch.nn.Parameter(torch.zeros(2))
    opt, sched = build_optimizer([w], OptimConfig(name="sgd", lr=0.1, schedule=schedule, **kw), 2, spe)
    seen = []
    for _ in expected:
        seen.append(opt.param_groups[0]["lr"])  # the rate the step uses
        w.grad = torch.ones(2)
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.1 * f for f in expected])


def test_logged_train_lr_is_the_rate_each_step_used(store):
    cfg = build_config({"task": {"name": "adding"}}, overrides={
        **SMALL, "tracking.uri": store["uri"], "train.steps": 6, "train.log_every": 1, "optim.lr": 0.01,
        "optim.schedule": "cosine", "optim.warmup_steps": 2, "train.checkpoint_dir": str(store["root"] / "ck")})
    result = run(cfg)
    history = mlflow.MlflowClient(store["uri"]).get_metric_history(result.run_id, "train/lr")
    factor = schedule_factor(cfg.optim, 6, None)
    assert [h.step for h in history] == list(range(6))
    assert [h.value for h in history] == pytest.approx([0.01 * factor(s) for s in range(6)])
    assert history[0].value == pytest.approx(0.005)  # warm-up's first step: half the rate, not the second step's


# --------------------------------------------------------------------- LM state across BPTT windows
def _corpus(tmp_path) -> Path:
    folder = tmp_path / "corpus"
    if not folder.exists():
        folder.mkdir()
        g = torch.Generator().manual_seed(0)
        words = [f"w{i}" for i in range(12)]
        for name, lines in (("train.txt", 40), ("valid.txt", 5), ("test.txt", 5)):
            text = "\n".join(" ".join(words[int(i)] for i in torch.randint(0, 12, (6,), generator=g))
                             for _ in range(lines))
            (folder / name).write_text(text + "\n")
    return folder


def _flat(state):
    return [t for layer in state for t in (layer if isinstance(layer, tuple) else (layer,))]


def test_lm_module_carries_the_state_across_windows_detached_and_resets_at_epoch_start(tmp_path):
    torch.manual_seed(0)
    task = tasks.build("lm", path=str(_corpus(tmp_path)), batch_size=2, bptt=5)
    assert task.steps_per_epoch >= 3
    model = SequenceModel("lstm", task.encoding, task.input_size, task.output_size, 8, layers=2)
    module = SuiteModule(model, task, OptimConfig(), TrainConfig(), task.steps_per_epoch)
    passed = []
    real_forward = model.forward
    model.forward = lambda x, state=None: passed.append(state) or real_forward(x, state)

    windows = list(task.train_batches(0, "cpu"))
    assert [w.reset for w in windows] == [True] + [False] * (len(windows) - 1)  # one epoch: reset at its start
    module.on_train_epoch_start()
    _, loss1 = module.model_step(windows[0], "train")
    final1 = _flat(module._state["train"])
    assert passed[0] is None and all(t.requires_grad for t in final1)  # window 1 starts from zeros, in a graph
    loss1.backward()  # frees window 1's graph

    _, loss2 = module.model_step(windows[1], "train")
    into2 = _flat(passed[1])
    assert len(into2) == len(final1) == 4  # (h, c) of both layers
    for carried, final in zip(into2, final1):
        assert torch.equal(carried, final)  # the values carry over
        assert not carried.requires_grad and carried.grad_fn is None  # cut from window 1's graph
    loss2.backward()  # would fail ("backward through the graph a second time") if window 1's graph were reached
    assert all(p.grad is not None for p in model.parameters())

    module.on_train_epoch_start()  # a new epoch
    module.model_step(windows[2], "train")
    assert passed[2] is None  # reset, even though windows[2].reset is False
    module.model_step(windows[0], "train")
    module.model_step(windows[0], "train")  # a batch that says reset restarts from zeros as well
    assert passed[4] is None


def test_lm_evaluation_starts_each_pass_from_zero(tmp_path):
    task = tasks.build("lm", path=str(_corpus(tmp_path)), batch_size=2, bptt=5, eval_batch_size=2)
    model = SequenceModel("gru", task.encoding, task.input_size, task.output_size, 8)
    module = SuiteModule(model, task, OptimConfig(), TrainConfig(), task.steps_per_epoch)
    passed = []
    real_forward = model.forward
    model.forward = lambda x, state=None: passed.append(state) or real_forward(x, state)
    module.model_step(next(task.train_batches(0, "cpu")), "train")  # a training state exists
    module._eval_start("val")
    with torch.no_grad():
        for batch in task.val_batches("cpu"):
            module._eval_step(batch, "val")
    assert len(passed) >= 4  # a training window, then several validation windows
    assert passed[1] is None and all(s is not None for s in passed[2:])  # val never reads the train state
    assert module._state["train"] is not None


# --------------------------------------------------------------------------------------------- CLI runs
def _cli(args, cwd, env=None):
    env = {k: v for k, v in (env or os.environ).items() if k not in ("RNNSUITE_HOME", "MLFLOW_TRACKING_URI")}
    return subprocess.run([sys.executable, "-m", "suite", *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=300)


def test_default_store_is_rnnsuite_runs_mlflow_db_in_the_working_directory(tmp_path):
    out = _cli(["train", "--task", "adding", "--cell", "gru", "--steps", "5", "--set", "task.length=10",
                "--set", "task.val_size=64", "--set", "model.hidden_size=8", "--set", "train.progress=false",
                "--json"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""  # a successful run prints nothing on stderr (no MLflow/Lightning chatter)
    root = tmp_path.resolve() / "rnnsuite-runs"
    assert (root / "mlflow.db").is_file()
    assert not (tmp_path / "mlruns").exists()  # never MLflow's refused file store
    run_id = json.loads(out.stdout.strip().splitlines()[-1])["run_id"]
    uri = f"sqlite:///{root / 'mlflow.db'}"
    r = mlflow.MlflowClient(uri).get_run(run_id)
    assert r.info.status == "FINISHED"
    assert r.data.params["tracking.uri"] == uri
    assert r.data.params["train.checkpoint_dir"] == str(root / "checkpoints")
    assert (root / "checkpoints" / run_id / "last.ckpt").is_file()
    assert "train/loss" in r.data.metrics  # 5 steps < log_every 50, flushed at the end


def test_nan_loss_through_the_cli_is_one_line_on_stderr_and_a_nonzero_exit(tmp_path):
    db = tmp_path / "fresh" / "mlflow.db"  # a new store: table creation must not print either
    out = _cli(["train", "--task", "adding", "--cell", "rnn_tanh", "--steps", "50", "--set", "task.length=10",
                "--set", "task.val_size=64", "--set", "optim.name=sgd", "--set", "optim.lr=1e30",
                "--set", "optim.clip=0", "--set", "train.progress=false", "--tracking-uri", f"sqlite:///{db}"],
               cwd=tmp_path)
    assert out.returncode != 0 and out.returncode != 2  # a failed run, not a usage error
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert re.fullmatch(r"rnnsuite: run [0-9a-f]{32} FAILED: diverged: loss is (nan|inf|-inf) at step \d+", lines[0])
    assert "Traceback" not in out.stderr
    run_id = lines[0].split()[2]
    assert mlflow.MlflowClient(f"sqlite:///{db}").get_run(run_id).info.status == "FAILED"


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
