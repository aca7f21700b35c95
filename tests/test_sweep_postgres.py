"""Sweeps on real services, as teams run them: PostgreSQL as the Optuna storage and as the backend of a real
`mlflow server`, several worker processes sharing the sweep; and those services failing under it (a database
restart, a tracking server away for 30 s). The servers are started here on 127.0.0.1 and stopped after; where
they cannot start the tests fail (CI installs Debian's postgresql)."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest
import sqlalchemy

from servers import MlflowServer, postgres_cluster
from suite.tracking import sqlalchemy_url
from test_sweep import TINY, assert_exact, cli, write


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pg")
    with postgres_cluster(tmp) as cluster:
        # Optuna and MLflow both keep an alembic_version table: one database each
        optuna_url = cluster.create_database("optuna")
        server = MlflowServer(sqlalchemy_url(cluster.url), tmp / "artifacts")
        server.start()
        try:
            yield {"storage": optuna_url, "tracking": server.url, "password": cluster.password, "cluster": cluster,
                   "server": server}
        finally:
            server.stop()


def _env(tmp_path: Path, **extra) -> dict:
    """A clean environment: no tracking URI or storage inherited from other tests (MLflow exports one)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RNNSUITE_", "PG"))}
    env.update(RNNSUITE_HOME=str(tmp_path / "home"), OMP_NUM_THREADS="1", **extra)
    return env


@contextlib.contextmanager
def _polled_study(storage: str, study_name: str):
    """The study, read through an engine that closes its connections when done (NullPool, then dispose). The
    tests poll every 0.5 s: an engine per poll left to the garbage collector kept its pooled connection open,
    and a slow machine's polling filled PostgreSQL's 100 slots ("too many clients")."""
    rdb = optuna.storages.RDBStorage(sqlalchemy_url(storage), engine_kwargs={"poolclass": sqlalchemy.pool.NullPool})
    try:
        yield optuna.load_study(study_name=study_name, storage=rdb)
    finally:
        rdb.engine.dispose()


def _finished(storage: str, study_name: str) -> int:
    """Finished trials of a study, -1 if it cannot be read now."""
    try:
        with _polled_study(storage, study_name) as study:
            return sum(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
                       for t in study.trials)
    except Exception:  # not created yet, or the database is down right now
        return -1


def _wait_for(predicate, proc, timeout=300):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"the sweep ended early: {proc.communicate()}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.5)


def test_four_workers_share_a_sweep_on_postgres_and_mlflow_server(services, tmp_path):
    """Four processes, one PostgreSQL storage and one tracking server: exact counts, no lost update. The storage
    URL carries no password: libpq reads PGPASSWORD, as the README documents."""
    spec = dict(TINY, name="pg", cells=["gru", "sgru"], budget={"trials": 4, "steps": 20})
    no_password = services["storage"].replace(f":{services['password']}@", "@")
    out = subprocess.run([sys.executable, "-m", "suite", "sweep", str(write(tmp_path, spec)), "--storage",
                          no_password, "--tracking-uri", services["tracking"], "--workers", "4", "--quiet"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=900,
                         env=_env(tmp_path, PGPASSWORD=services["password"]))
    assert out.returncode == 0, out.stderr
    for bad in ("Traceback", "database is locked", "could not serialize", "deadlock", "duplicate key"):
        assert bad not in out.stderr, out.stderr
    runs = assert_exact(sqlalchemy_url(services["storage"]), services["tracking"], spec)
    assert any(r.data.tags.get("rnnsuite.level") == "sweep" for r in runs)
    assert services["password"] not in out.stdout + out.stderr


def _grep_tree(root: Path, secret: bytes) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and secret in path.read_bytes():
            hits.append(str(path))
    return hits


@pytest.mark.slow
def test_passwords_never_reach_output_records_or_files(services, tmp_path):
    """A password in the storage URL and in the tracking URI (MLflow straight on PostgreSQL): not in stdout or
    stderr of sweep, train, report and ui (errors included), not in any MLflow param, tag or artifact, not in any
    file under the runs folder, the report or the working folder."""
    cluster, secret = services["cluster"], services["password"]
    tracking = sqlalchemy_url(cluster.create_database("direct"))
    storage = services["storage"]
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = _env(tmp_path)
    spec = dict(TINY, name="secret", cells=["gru"], budget={"trials": 2, "steps": 10}, confirm={"top_k": 1, "seeds": 1})
    sweep_file = write(tmp_path, spec)

    def rnnsuite(*args, code=0):
        out = subprocess.run([sys.executable, "-m", "suite", *args], capture_output=True, text=True, cwd=cwd,
                             env=env, timeout=600)
        assert out.returncode == code, (args[0], out.stderr)
        return out.stdout + out.stderr

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        shown = [
            rnnsuite("sweep", str(sweep_file), "--storage", storage, "--tracking-uri", tracking, "--workers", "2"),
            rnnsuite("train", "--task", "adding", "--cell", "gru", "--steps", "5", "--set", "task.length=10",
                     "--set", "train.progress=false", "--tracking-uri", tracking, "--json"),
            rnnsuite("report", "secret", "--storage", storage, "--tracking-uri", tracking, "-o", str(cwd / "report")),
            # refusals carry the URL in their message
            rnnsuite("sweep", str(sweep_file), "--storage", storage.rsplit("/", 1)[0] + "/nosuchdb", "--tracking-uri",
                     tracking, code=2),
            rnnsuite("train", "--task", "adding", "--steps", "5", "--tracking-uri",
                     tracking.replace(f":{cluster.port}/", f":{cluster.port + 1}/"), code=2),
            rnnsuite("ui", "--tracking-uri", tracking, "--storage", storage, "--port", str(busy.getsockname()[1]),
                     code=2),
        ]
    for text in shown:
        assert secret not in text, text
    assert "***" in shown[3]  # the URL is shown, masked

    client = mlflow.MlflowClient(tracking)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)
    assert len(runs) >= 1 + 1 + 3 + 1  # sweep, study, trials + confirmation, the train run
    downloads = tmp_path / "artifacts"
    for r in runs:
        assert secret not in str(r.data.params) + str(r.data.tags), r.info.run_id
        if client.list_artifacts(r.info.run_id):
            client.download_artifacts(r.info.run_id, "", str(downloads / r.info.run_id))
    assert list(downloads.rglob("config.yaml")), "the trial configs were not found"
    assert _grep_tree(downloads, secret.encode()) == []
    assert list((tmp_path / "home").rglob("*.ckpt")) and list((cwd / "report").rglob("*"))
    assert _grep_tree(tmp_path / "home", secret.encode()) == []  # checkpoints and everything else
    assert _grep_tree(cwd, secret.encode()) == []  # the report, artifacts MLflow keeps in ./mlruns


@pytest.mark.slow
def test_workers_carry_on_across_postgres_restarts(services, tmp_path):
    """PostgreSQL (the Optuna storage and the tracking server's backend) goes down for 5 s, twice, while two
    workers run trials: pooled connections are re-made (pre-ping), calls that hit the gap are retried."""
    spec = dict(TINY, name="pgrestart", cells=["gru", "sgru"], budget={"trials": 4, "steps": 40})
    storage, cluster = services["storage"], services["cluster"]
    proc = subprocess.Popen([sys.executable, "-m", "suite", "sweep", str(write(tmp_path, spec)), "--storage", storage,
                             "--tracking-uri", services["tracking"], "--workers", "2", "--quiet"],
                            cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        total = lambda: sum(max(0, _finished(storage, f"pgrestart/adding/{c}")) for c in spec["cells"])  # noqa: E731
        _wait_for(lambda: total() >= 1, proc)
        cluster.restart(down_s=5)
        _wait_for(lambda: total() >= 4, proc)
        cluster.restart(down_s=5)
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if not cluster.running:
            cluster.start()
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    assert_exact(sqlalchemy_url(storage), services["tracking"], spec)


@pytest.mark.slow
def test_a_sweep_rides_out_a_30_s_tracking_server_outage(services, tmp_path):
    """The mlflow server is stopped for 30 s mid-trial. MLflow's own HTTP retries are cut to ~2 s here, so it is
    rnnsuite's back-off that carries the sweep over the gap (with MLflow's default, ~4 min of retries, too):
    training goes on, buffered metrics are written when the server is back, nothing is lost or duplicated."""
    spec = dict(TINY, name="outage", cells=["gru"], budget={"trials": 3, "steps": 150},
                confirm={"top_k": 1, "seeds": 1})
    spec["base"] = dict(TINY["base"], train={"val_every": 50, "diag_every": 0, "log_every": 5, "progress": False})
    storage, server = services["storage"], services["server"]
    env = _env(tmp_path, MLFLOW_HTTP_REQUEST_MAX_RETRIES="1", MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1",
               MLFLOW_HTTP_REQUEST_TIMEOUT="10")
    proc = subprocess.Popen([sys.executable, "-m", "suite", "sweep", str(write(tmp_path, spec)), "--storage", storage,
                             "--tracking-uri", server.url, "--quiet"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def second_trial_training():
        try:
            with _polled_study(storage, "outage/adding/gru") as study:
                return any(t.state == optuna.trial.TrialState.RUNNING and t.number >= 1
                           and "mlflow_run_id" in t.user_attrs for t in study.trials)
        except KeyError:
            return False

    try:
        _wait_for(second_trial_training, proc)
        server.stop()
        time.sleep(30)
        server.start()
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if server.proc is None:
            server.start()
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    assert "retrying" in err or "MLflow unreachable" in err, "the outage was not felt: " + err
    runs = assert_exact(sqlalchemy_url(storage), server.url, spec)
    client = mlflow.MlflowClient(server.url)
    trained = [r for r in runs if r.data.tags.get("rnnsuite.level") == "trial" and r.info.status == "FINISHED"]
    assert len(trained) == 3 + 1
    for r in trained:  # every logged interval arrived, once
        steps = [h.step for h in client.get_metric_history(r.info.run_id, "train/loss")]
        assert steps == list(range(4, 150, 5)), (r.info.run_name, steps)
