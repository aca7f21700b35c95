"""`rnnsuite train` end to end: learning, MLflow records read back with MLflow's client, failures."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import mlflow
import pytest
import torch

from suite import tasks
from suite.assemble import build_model
from suite.config import build_config
from suite.train import run


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {"uri": f"sqlite:///{root / 'mlflow.db'}", "root": root}


def config(store, task, cell, steps, **over):
    base = {"tracking.uri": store["uri"], "train.progress": False, "train.checkpoint_dir": str(store["root"] / "ckpt"),
            "model.cell": cell, "train.steps": steps}
    base.update(over)
    return build_config(task, overrides=base)


ADDING = {"task": {"name": "adding", "length": 30, "batch_size": 32, "val_size": 256}}


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gated_cells_beat_the_adding_baseline(store, cell):
    cfg = config(store, ADDING, cell, 400, **{"model.hidden_size": 32, "optim.lr": 0.01, "train.val_every": 400})
    result = run(cfg)
    assert result.status == "FINISHED"
    assert result.metrics["val/mse"] < 0.3 * (1 / 6)  # clearly below the 1/6 baseline


def test_a_cell_beats_the_copy_baseline_at_small_t(store):
    task = {"task": {"name": "copy", "length": 5, "symbols": 3, "batch_size": 32, "val_size": 256}}
    cfg = config(store, task, "gru", 300, **{"model.hidden_size": 64, "optim.lr": 0.02, "train.val_every": 300})
    result = run(cfg)
    baseline = tasks.build("copy", length=5, symbols=3).baseline.value
    assert result.metrics["val/loss"] < 0.2 * baseline
    assert result.metrics["val/acc"] > 0.9  # chance is 1/8


def test_tanh_rnn_does_worse_than_gated_cells_at_length(store):
    task = {"task": {"name": "adding", "length": 100, "batch_size": 32, "val_size": 256}}
    over = {"model.hidden_size": 32, "optim.lr": 0.01, "train.val_every": 300}
    tanh = run(config(store, task, "rnn_tanh", 300, **over)).metrics["val/mse"]
    gru = run(config(store, task, "gru", 300, **over)).metrics["val/mse"]
    assert tanh > 0.8 * (1 / 6)  # stuck near the baseline
    assert gru < 0.5 * tanh


def test_run_is_recorded_in_mlflow(store):
    cfg = config(store, ADDING, "lstm", 20, **{"model.hidden_size": 8, "train.log_every": 5, "train.val_every": 10,
                                               "train.diag_every": 10, "train.grad_every": 5})
    result = run(cfg)
    client = mlflow.MlflowClient(store["uri"])
    r = client.get_run(result.run_id)
    assert r.info.status == "FINISHED"
    m, p, t = r.data.metrics, r.data.params, r.data.tags
    for key in ("train/loss", "train/grad_norm", "train/grad_norm_clipped", "val/loss", "val/acc", "val/mse",
                "test/mse", "grad/l0/i", "grad/l0/f", "grad/l0/g", "grad/l0/o", "grad/head",
                "gates/l0/f/mean", "gates/l0/f/saturation", "gates/l0/f/near0", "gates/l0/f/near1",
                "diag/grad_decay", "diag/grad_decay_c"):
        assert key in m, key
    for key in ("task.name", "task.length", "model.cell", "model.hidden_size", "optim.lr", "train.seed",
                "cell", "n_params", "seed", "task.baseline"):
        assert key in p, key
    assert float(p["task.baseline"]) == pytest.approx(1 / 6)
    assert int(p["n_params"]) == 4 * 8 * (2 + 8 + 2) + 9  # nn.LSTM two biases + the 8->1 head
    for key in ("task", "cell", "rnnsuite.version", "device", "baseline.formula"):
        assert key in t, key
    arts = {a.path for a in client.list_artifacts(result.run_id)}
    assert "config.yaml" in arts and "diagnostics" in arts
    diag = {a.path for a in client.list_artifacts(result.run_id, "diagnostics")}
    assert diag == {"diagnostics/grad_profile.csv", "diagnostics/grad_profile.png", "diagnostics/gate_hist.csv"}
    history = client.get_metric_history(result.run_id, "train/loss")
    assert [h.step for h in history] == [4, 9, 14, 19]  # every log_every steps (0-based step index)
    diag_steps = sorted({h.step for h in client.get_metric_history(result.run_id, "diag/grad_decay")})
    assert diag_steps == [0, 10, 20]  # start, every diag_every steps, end
    step_ms = client.get_metric_history(result.run_id, "time/step_ms")
    assert [h.step for h in step_ms] == [5, 10, 15, 20] and all(h.value > 0 for h in step_ms)
    assert 0 < m["time/train_s"] < sum(h.value for h in step_ms) * 5 / 1000 * 1.01 + 1e-9  # the intervals add up
    path = client.download_artifacts(result.run_id, "diagnostics/grad_profile.csv", str(store["root"]))
    rows = open(path).read().splitlines()
    assert rows[0] == "step,state,t,norm" and len(rows) == 1 + 3 * 2 * 30  # 3 steps x (h, c) x T


def test_logged_grad_norm_is_clip_grad_norms_value(store):
    cfg = config(store, ADDING, "gru", 1, **{"model.hidden_size": 8, "train.log_every": 1, "optim.clip": 0.5})
    result = run(cfg)
    logged = mlflow.MlflowClient(store["uri"]).get_metric_history(result.run_id, "train/grad_norm")[0].value
    clipped = mlflow.MlflowClient(store["uri"]).get_metric_history(result.run_id, "train/grad_norm_clipped")[0].value
    # the same first step by hand
    task = tasks.build("adding", length=30, batch_size=32, val_size=256)
    pl.seed_everything(cfg.train.seed, verbose=False)
    model = build_model(cfg, task)
    batch = next(iter(task.train_batches(cfg.train.seed, "cpu")))
    out, _ = model(batch.x)
    task.loss(out, batch).backward()
    expected = torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5).item()
    assert logged == pytest.approx(expected, rel=1e-5)
    assert clipped == pytest.approx(min(expected, 0.5), rel=1e-5)


def test_nan_loss_fails_the_run_with_its_reason(store):
    cfg = config(store, ADDING, "rnn_tanh", 50, **{"optim.name": "sgd", "optim.lr": 1e30, "optim.clip": 0.0})
    result = run(cfg)
    assert result.status == "FAILED" and "diverged" in result.reason
    r = mlflow.MlflowClient(store["uri"]).get_run(result.run_id)
    assert r.info.status == "FAILED"
    assert "loss is" in r.data.tags["failure.reason"] and int(r.data.tags["failure.step"]) < 50


class StopAt(pl.Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:
            raise KeyboardInterrupt


def test_interrupted_run_is_killed_and_resumes_its_steps_and_run(store):
    cfg = config(store, ADDING, "sgru", 30, **{"model.hidden_size": 8, "train.log_every": 5, "train.val_every": 10})
    first = run(cfg, callbacks=[StopAt(12)])
    client = mlflow.MlflowClient(store["uri"])
    assert first.status == "KILLED"
    assert client.get_run(first.run_id).info.status == "KILLED"
    second = run(cfg, resume_run_id=first.run_id)
    assert second.run_id == first.run_id and second.status == "FINISHED"
    steps = [h.step for h in client.get_metric_history(first.run_id, "train/loss")]
    assert steps == [4, 9, 14, 19, 24, 29]  # one history, continued where it stopped
    assert client.get_run(first.run_id).info.status == "FINISHED"


def test_damaged_checkpoint_is_detected_and_the_run_trained_again(store, capfd):
    cfg = config(store, ADDING, "gru", 30, **{"model.hidden_size": 8, "train.log_every": 5, "train.val_every": 10})
    first = run(cfg, callbacks=[StopAt(12)])
    last = store["root"] / "ckpt" / first.run_id / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # a torn write
    second = run(cfg, resume_run_id=first.run_id)  # neither a crash nor a crash loop
    assert second.status == "FINISHED" and second.run_id != first.run_id
    assert f"the checkpoint of run {first.run_id} is damaged" in capfd.readouterr().err
    client = mlflow.MlflowClient(store["uri"])
    old, new = client.get_run(first.run_id), client.get_run(second.run_id)
    assert old.data.tags["rnnsuite.restarted_as"] == second.run_id and "damaged" in old.data.tags["failure.reason"]
    assert new.data.tags["rnnsuite.restart_of"] == first.run_id
    assert [h.step for h in client.get_metric_history(second.run_id, "train/loss")] == [4, 9, 14, 19, 24, 29]


def test_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    """A temporary file beside the checkpoint, synced, then renamed over it; a write that dies leaves the old one."""
    from suite.checkpoints import AtomicCheckpointIO

    io, path = AtomicCheckpointIO(), tmp_path / "ckpt" / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "state_dict": {}}, path)
    synced, replaced = [], []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: replaced.append((Path(a), Path(b))) or real_replace(a, b))
    io.save_checkpoint({"global_step": 2, "state_dict": {}}, path)
    assert torch.load(path, weights_only=False)["global_step"] == 2
    (tmp_file, target), = replaced
    assert target == path and tmp_file.parent == path.parent and tmp_file.name.startswith(".last.ckpt.")
    assert len(synced) >= 2  # the file before the rename, the folder after it

    def torn(obj, f, *args, **kwargs):  # the process dies after part of the bytes reached the disk
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", torn)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 3, "state_dict": {}}, path)
    assert torch.load(path, weights_only=False)["global_step"] == 2  # the previous checkpoint, whole
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # and nothing else


def test_lm_smoke_two_layer_lstm(store):
    task = {"task": {"name": "ptb_word", "batch_size": 20, "bptt": 20, "eval_batch_size": 50}}
    cfg = config(store, task, "lstm", 40, **{"model.layers": 2, "model.hidden_size": 32, "optim.lr": 0.01,
                                             "train.val_every": 40, "train.diag_every": 0})
    result = run(cfg)
    assert result.status == "FINISHED"
    assert math.isfinite(result.metrics["val/ppl"]) and result.metrics["val/ppl"] < 2000  # vocabulary: 10,000
    assert math.isfinite(result.metrics["test/ppl"])


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "suite", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_cli_train_json(store, tmp_path):
    out = cli("train", "--task", "adding", "--cell", "mgu", "--steps", "5", "--set", "task.length=10",
              "--set", "train.progress=false", "--tracking-uri", store["uri"], "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    payload = json.loads(out.stdout.strip().splitlines()[-1])
    assert payload["status"] == "FINISHED" and "val/mse" in payload and "test/mse" in payload
    assert mlflow.MlflowClient(store["uri"]).get_run(payload["run_id"]).data.params["model.cell"] == "mgu"


@pytest.mark.parametrize("args,message", [
    (["--cell", "gruu"], "unknown cell 'gruu'"),
    (["--task", "addding"], "unknown task 'addding'"),
    (["--steps", "-3"], "train.steps must be > 0"),
    (["--set", "optim.lr=0"], "optim.lr must be > 0"),
    (["--set", "optim.name=adagrad"], "optim.name='adagrad' is not accepted"),
    (["--set", "model.peepholes=true"], "does not take option 'peepholes'"),
    (["--set", "task.length=-5"], "length"),
    (["--task", "missing/file.yaml"], "does not exist"),
    (["--tracking-uri", "ftp://host/x"], "unsupported scheme 'ftp'"),
] + ([(["--device", "cuda"], "no CUDA GPU")] if not torch.cuda.is_available() else []))
def test_cli_bad_input_is_one_line_exit_2_and_writes_nothing(args, message, tmp_path):
    out = cli("train", "--steps", "2", *args, cwd=tmp_path) if "--steps" not in args else cli("train", *args, cwd=tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in out.stderr
    assert list(tmp_path.iterdir()) == []  # no stray database, run or folder


@pytest.mark.parametrize("cell", ["mut1", "mut2"])
def test_model_projects_the_input_for_cells_that_need_it(cell):
    from suite.model import SequenceModel

    model = SequenceModel(cell, "real", 2, 1, 16, layers=2)
    assert model.layers[0].project_input is True and model.layers[1].project_input is False
    out, _ = model(torch.randn(3, 5, 2))
    assert out.shape == (3, 5, 1)


def test_sigterm_writes_a_checkpoint_and_ends_the_run_killed(store, tmp_path):
    import signal
    import time

    home = tmp_path / "home"
    proc = subprocess.Popen([sys.executable, "-m", "suite", "train", "--task", "adding", "--cell", "gru",
                             "--steps", "100000", "--set", "train.progress=false", "--set", "task.length=50",
                             "--tracking-uri", store["uri"], "--set", f"train.checkpoint_dir={home}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    client = mlflow.MlflowClient(store["uri"])
    deadline = time.time() + 120
    run_id = None
    try:
        while time.time() < deadline and run_id is None:  # wait until training has logged its first metrics
            time.sleep(1)
            exp = client.get_experiment_by_name("rnnsuite")
            for r in client.search_runs(exp.experiment_id, "attributes.status = 'RUNNING'") if exp else []:
                if r.data.params.get("train.checkpoint_dir") == str(home) and "train/loss" in r.data.metrics:
                    run_id = r.info.run_id
        assert run_id, "the run never started"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert client.get_run(run_id).info.status == "KILLED"
    assert (home / run_id / "last.ckpt").exists()
    assert f"run {run_id} KILLED" in err and "Traceback" not in err


_SIGTERM_BEFORE_THE_FIT = """
import os, signal, sys
import suite.train as train
real = train.TaskData
def task_data(*args, **kwargs):  # the run exists and holds its params; Lightning has not started yet
    os.kill(os.getpid(), signal.SIGTERM)
    return real(*args, **kwargs)
train.TaskData = task_data
from suite.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_after_the_run_is_created_and_before_the_fit_ends_the_run_killed(store, tmp_path):
    """The window between MLflow's create_run and Lightning's fit (params, the config artifact, the trainer) used
    to die of SIGTERM's default action and leave the run RUNNING for ever (a sweep's workers stopped by their
    parent hit it)."""
    out = subprocess.run([sys.executable, "-c", _SIGTERM_BEFORE_THE_FIT, "train", "--task", "adding", "--cell", "gru",
                          "--steps", "5", "--set", "train.progress=false", "--set", "task.length=5",
                          "--tracking-uri", store["uri"], "--set", f"train.checkpoint_dir={tmp_path / 'ck'}",
                          "--set", "tracking.experiment=term-window"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300,
                         env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1])))
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
    client = mlflow.MlflowClient(store["uri"])
    runs = client.search_runs([client.get_experiment_by_name("term-window").experiment_id])
    assert [r.info.status for r in runs] == ["KILLED"]
    assert runs[0].data.tags["failure.reason"] == "interrupted before training started"
    assert f"run {runs[0].info.run_id} KILLED" in out.stderr


def test_steps_flag_overrides_a_setting_that_counts_epochs(tmp_path):
    # ptb-word.yaml holds train.epochs: 13; --steps 3 must train 3 steps, not 13 epochs
    env = {**__import__("os").environ, "RNNSUITE_HOME": str(tmp_path / "runs")}
    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"  # explicit: MLflow exports MLFLOW_TRACKING_URI in-process
    out = subprocess.run([sys.executable, "-m", "suite", "train", "--task", "ptb-word", "--cell", "lstm", "--steps", "3",
                          "--tracking-uri", uri,
                          "--set", "model.hidden_size=16", "--set", "model.layers=1", "--set", "train.progress=false",
                          "--set", "task.eval_batch_size=200", "--json"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    run_id = json.loads(out.stdout.strip().splitlines()[-1])["run_id"]
    client = mlflow.MlflowClient(uri)
    assert [m.step for m in client.get_metric_history(run_id, "time/train_s")] == [3]
    assert client.get_run(run_id).data.params["train.epochs"] == "0"


def test_an_interrupt_during_run_creation_takes_effect_once_the_run_has_its_id():
    """SuiteLogger creates the MLflow run with interrupts deferred: the id is stored before KeyboardInterrupt."""
    import signal

    from suite.logger import interrupts_deferred, signal_handlers
    from suite.logger import interrupts_outside_database_code

    done = []
    with interrupts_outside_database_code(), pytest.raises(KeyboardInterrupt):
        with interrupts_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # the signal is delivered here, and must not interrupt the block
            done.append("id stored")
    assert done == ["id stored"]
    before = signal.getsignal(signal.SIGINT)
    # Ctrl-C likewise under Python's default SIGINT handler (installed here: the test process's own may differ)
    with signal_handlers(signal.default_int_handler, (signal.SIGINT,)):
        with pytest.raises(KeyboardInterrupt):
            with interrupts_deferred():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)
                done.append("again")
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers put back
    assert done == ["id stored", "again"]
    assert signal.getsignal(signal.SIGINT) is before


def _run_simulated_database_write(module_name: str, done: list) -> None:
    """Call a function whose code belongs to ``module_name``, which gets SIGTERM and works on for 0.3 s."""
    import signal

    ns = {"__name__": module_name}
    exec("import os, signal, time\n"
         "def write(done):\n"
         "    os.kill(os.getpid(), signal.SIGTERM)\n"
         "    t = time.monotonic()\n"
         "    while time.monotonic() - t < 0.3:\n"
         "        pass\n"
         "    done.append('written')\n", ns)
    with pytest.raises(KeyboardInterrupt):
        from suite.logger import interrupts_outside_database_code

        with interrupts_outside_database_code():
            ns["write"](done)
            time.sleep(2.0)  # back in our own code: the interrupt lands here
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers put back


def test_an_interrupt_inside_database_code_lands_once_that_code_returns(monkeypatch):
    done: list = []
    _run_simulated_database_write("sqlalchemy.engine.simulated", done)
    assert done == ["written"]
    _run_simulated_database_write("optuna.storages.simulated", done)
    assert done == ["written", "written"]
    _run_simulated_database_write("suite.simulated", done)  # our own code: interrupted at once
    assert done == ["written", "written"]
    import suite.logger

    monkeypatch.setattr(suite.logger, "_DEFER_MAX_S", 0.1)  # a database call stuck longer is interrupted anyway
    _run_simulated_database_write("mlflow.store.simulated", done)
    assert done == ["written", "written"]


def test_a_kill_during_an_mlflow_commit_leaves_the_store_writable(tmp_path):
    """SIGTERM delivered while SQLAlchemy commits a metric: the interrupt waits for the commit, and ending the run
    (a tag, a status) then succeeds. Raised inside the commit, it left the write lock with a connection SQLAlchemy
    abandoned, and the run's own failure tag failed after 20 s with 'database is locked' (the CI hang of stop 12)."""
    import signal

    from sqlalchemy import event

    from suite.logger import interrupts_outside_database_code

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = client.create_run(client.create_experiment("kill")).info.run_id
    engine = client._tracking_client.store.engine
    fired = []

    def kill_inside_the_commit(conn):
        if not fired:
            fired.append(True)
            os.kill(os.getpid(), signal.SIGTERM)
            t = time.monotonic()
            while time.monotonic() - t < 0.2:  # the signal is delivered here, inside SQLAlchemy's commit
                pass

    event.listen(engine, "commit", kill_inside_the_commit)
    try:
        with pytest.raises(KeyboardInterrupt) as caught, interrupts_outside_database_code():
            client.log_metric(run_id, "loss", 1.5, step=3)
            time.sleep(2.0)
    finally:
        event.remove(engine, "commit", kill_inside_the_commit)
    assert fired and caught.traceback  # the traceback (and its frames) still alive, as in an except block
    started = time.monotonic()
    client.set_tag(run_id, "failure.reason", "interrupted")
    client.set_terminated(run_id, "KILLED")
    assert time.monotonic() - started < 10.0  # no wait on a lock (SQLite's busy timeout is 20 s)
    run = client.get_run(run_id)
    assert run.info.status == "KILLED" and run.data.metrics == {"loss": 1.5}


def test_an_interrupt_during_an_import_lands_once_the_module_is_loaded(tmp_path, monkeypatch):
    """A worker stopped while matplotlib loaded left half-built pyparsing objects whose __del__ printed
    'Exception ignored ... Traceback'; the interrupt now waits for the import to finish."""
    import importlib

    from suite.logger import interrupts_outside_database_code

    (tmp_path / "slow_to_import.py").write_text(
        "import os, signal, time\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "t = time.monotonic()\n"
        "while time.monotonic() - t < 0.3:\n"
        "    pass\n"
        "LOADED = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(KeyboardInterrupt), interrupts_outside_database_code():
        module = importlib.import_module("slow_to_import")
        time.sleep(2.0)
    assert module.LOADED
    monkeypatch.delitem(sys.modules, "slow_to_import")


def test_a_last_validation_that_is_not_the_best_is_not_run_twice(store):
    # lr 1e-30 leaves the weights as they are: the validation at step 20 ties the one at step 10, so the
    # checkpoint keeps step 10's. The run validated its last step already and must not validate it again.
    cfg = config(store, ADDING, "gru", 20, **{"model.hidden_size": 8, "optim.lr": 1e-30, "train.val_every": 10,
                                              "train.diag_every": 0})
    result = run(cfg)
    history = mlflow.MlflowClient(store["uri"]).get_metric_history(result.run_id, "val/loss")
    assert [h.step for h in history] == [9, 19]
    assert history[0].value == history[1].value  # a tie, so not a new best
    # a run that stops between two validations is validated once at its end
    cfg = config(store, ADDING, "gru", 15, **{"model.hidden_size": 8, "train.val_every": 10, "train.diag_every": 0})
    history = mlflow.MlflowClient(store["uri"]).get_metric_history(run(cfg).run_id, "val/loss")
    assert [h.step for h in history] == [9, 15]
