"""`rnnsuite ui` on a small embedded store, its refusals, and the real-server helpers in tests/servers.py."""
from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.servers import free_port, http_get, mlflow_server, port_is_free, postgres_server

STUDY = "ui-test/adding/gru"


def _env(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RNNSUITE_STORAGE")}
    env.update(RNNSUITE_HOME=str(tmp_path / "home"), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def _make_store(root: Path) -> tuple[str, str]:
    """An embedded store as `rnnsuite train`/`sweep` leave it: one MLflow run with an artifact, one Optuna trial."""
    import optuna
    from mlflow import MlflowClient
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    from suite.tracking import artifact_location

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("ui-test", artifact_location=artifact_location(uri))
    run = client.create_run(exp).info.run_id
    client.log_metric(run, "val/loss", 0.25)
    note = root / "note.txt"
    note.write_text("hello from the embedded store")
    client.log_artifact(run, str(note))
    client.set_terminated(run)
    journal = str(root / "optuna.journal")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=STUDY, storage=JournalStorage(JournalFileBackend(journal)))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    return uri, journal


def _post_json(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return _make_store(tmp_path_factory.mktemp("store"))


def test_ui_serves_mlflow_and_dashboard_then_stops_on_sigint(tmp_path, store):
    uri, journal = store
    port, dash_port = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "suite", "ui", "--tracking-uri", uri, "--storage", journal,
                             "--port", str(port), "--dashboard-port", str(dash_port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(tmp_path))
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    try:
        ready, deadline = None, time.monotonic() + 150
        while ready is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if "Ctrl-C" in line:
                ready = line
        assert ready, f"no URLs line; exit code {proc.poll()}; stderr: {proc.stderr.read() if proc.poll() else ''}"
        mlflow_url, dash_url = re.findall(r"http://127\.0\.0\.1:\d+", ready)
        assert (mlflow_url, dash_url) == (f"http://127.0.0.1:{port}", f"http://127.0.0.1:{dash_port}")

        found = _post_json(f"{mlflow_url}/api/2.0/mlflow/experiments/search", {"max_results": 100})
        exp = next(e for e in found["experiments"] if e["name"] == "ui-test")
        runs = _post_json(f"{mlflow_url}/api/2.0/mlflow/runs/search", {"experiment_ids": [exp["experiment_id"]]})
        run_id = runs["runs"][0]["info"]["run_id"]
        # the embedded file:// artifacts are visible through the UI's own endpoints
        listed = json.loads(http_get(f"{mlflow_url}/api/2.0/mlflow/artifacts/list?run_id={run_id}"))
        assert [f["path"] for f in listed["files"]] == ["note.txt"]
        assert http_get(f"{mlflow_url}/get-artifact?path=note.txt&run_uuid={run_id}") == \
            b"hello from the embedded store"

        studies = json.loads(http_get(f"{dash_url}/api/studies"))
        assert [s["study_name"] for s in studies["study_summaries"]] == [STUDY]

        # every socket the servers listen on is on the loopback interface: nothing is exposed to the network
        listening = _listening(_descendants(proc.pid))
        assert {port, dash_port} <= {p for _, p in listening}, listening
        assert all(addr in ("127.0.0.1", "::1") for addr, _ in listening), listening

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        assert port_is_free(port) and port_is_free(dash_port)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # its children get SIGTERM from it (or PR_SET_PDEATHSIG)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_ui_stops_mlflow_when_the_dashboard_dies_and_masks_the_password(tmp_path, store):
    uri, _ = store
    port = free_port()
    storage = f"postgresql+psycopg2://rnnsuite:s3cret-pw@127.0.0.1:{free_port()}/rnnsuite"  # nobody listens
    out = subprocess.run([sys.executable, "-m", "suite", "ui", "--tracking-uri", uri, "--storage", storage,
                          "--port", str(port), "--dashboard-port", str(free_port())],
                         capture_output=True, text=True, env=_env(tmp_path), timeout=150)
    assert out.returncode == 2
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and "optuna-dashboard exited early" in err[0] and "Connection refused" in err[0], err
    assert "s3cret-pw" not in out.stdout + out.stderr and "rnnsuite:***@" in out.stdout
    assert port_is_free(port)


def _descendants(pid: int) -> set[int]:
    """pid and every process below it (the servers run in their own sessions, so not by process group)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, grew = {pid}, True
    while grew:
        more = {p for p, parent in parents.items() if parent in found} - found
        found |= more
        grew = bool(more)
    return found


def _listening(pids: set[int]) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN state held by one of `pids` (Linux /proc)."""
    import ipaddress

    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] != "0A" or cols[9] not in inodes:  # 0A: LISTEN
                continue
            hex_addr, hex_port = cols[1].split(":")
            raw = bytes.fromhex(hex_addr)
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # host-order words
            addr = str(ipaddress.ip_address(raw))
            if addr.startswith("::ffff:"):
                addr = addr[7:]
            out.append((addr, int(hex_port, 16)))
    return out


# ------------------------------------------------------------------------------------ refusals, in process

@pytest.fixture
def no_children(monkeypatch):
    """Fail the test if anything tries to start a process."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"a process was started: {args[0] if args else kwargs}")

    monkeypatch.setattr(subprocess, "Popen", refuse)


@pytest.fixture
def clean_env(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RNNSUITE_STORAGE", raising=False)
    monkeypatch.setenv("RNNSUITE_HOME", str(tmp_path / "home"))


def _ui(*argv) -> int:
    from suite.cli import main

    return main(["ui", *map(str, argv)])


@pytest.mark.parametrize("busy", ["--port", "--dashboard-port"])
def test_ui_refuses_a_port_in_use_and_starts_nothing(tmp_path, capsys, no_children, clean_env, busy):
    (tmp_path / "mlflow.db").touch()
    (tmp_path / "optuna.journal").touch()
    ports = {"--port": free_port(), "--dashboard-port": free_port()}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", ports[busy]))
        taken.listen()
        code = _ui("--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--storage", tmp_path / "optuna.journal",
                   *[x for kv in ports.items() for x in kv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and f"port {ports[busy]}" in err[0] and "in use" in err[0] and busy in err[0]


def test_ui_refuses_a_missing_store_and_creates_nothing(tmp_path, capsys, no_children, clean_env):
    missing = tmp_path / "nowhere"
    assert _ui("--tracking-uri", f"sqlite:///{missing / 'mlflow.db'}", "--storage", missing / "optuna.journal") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no MLflow database at" in err[0] and "rnnsuite train" in err[0]
    assert not missing.exists()

    (tmp_path / "mlflow.db").touch()
    assert _ui("--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--storage", missing / "optuna.journal") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no Optuna journal at" in err[0]
    assert not missing.exists()

    # the defaults: nothing under $RNNSUITE_HOME yet, and it stays that way
    assert _ui() == 2
    assert "no MLflow database at" in capsys.readouterr().err
    assert not (tmp_path / "home").exists()


def test_ui_on_another_host_warns_first(tmp_path, capsys, no_children, clean_env):
    (tmp_path / "mlflow.db").touch()
    (tmp_path / "optuna.journal").touch()
    with socket.socket() as taken:  # so that nothing starts: the warning comes before any check
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        code = _ui("--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--storage", tmp_path / "optuna.journal",
                   "--host", "0.0.0.0", "--port", taken.getsockname()[1], "--dashboard-port", free_port())
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 2
    assert err[0].startswith("rnnsuite: warning: --host 0.0.0.0") and "no authentication" in err[0]
    assert "already in use" in err[1]


def test_ui_binds_loopback_unless_told_otherwise():
    from suite.cli import build_parser

    args = build_parser().parse_args(["ui"])
    assert args.host == "127.0.0.1"


def test_host_warning_only_off_loopback():
    from suite.ui import host_warning

    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert host_warning(host) is None
    warning = host_warning("0.0.0.0")
    assert "no authentication" in warning and "--app-name basic-auth" in warning and "\n" not in warning


# ------------------------------------------------------------------------------------ tests/servers.py

def test_postgres_and_mlflow_server_helpers(tmp_path):
    import psycopg2
    from mlflow import MlflowClient

    with postgres_server(tmp_path) as url:
        assert re.fullmatch(r"postgresql://rnnsuite:\w+@127\.0\.0\.1:\d+/rnnsuite", url)
        with psycopg2.connect(url) as conn, conn.cursor() as cur:
            cur.execute("select current_user, current_database()")
            assert cur.fetchone() == ("rnnsuite", "rnnsuite")
        conn.close()
        wrong = re.sub(r":(\w+)@", ":not-the-password@", url)
        with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
            psycopg2.connect(wrong)

        # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; the project installs psycopg2(-binary)
        with mlflow_server(url.replace("postgresql://", "postgresql+psycopg2://", 1), tmp_path / "artifacts") as server:
            client = MlflowClient(tracking_uri=server)
            exp_id = client.create_experiment("servers-test")
            assert client.get_experiment_by_name("servers-test").experiment_id == exp_id
            run = client.create_run(exp_id).info.run_id
            client.log_text(run, "proxied", "hello.txt")  # uploaded through the server's artifact proxy
        assert list((tmp_path / "artifacts").rglob("hello.txt"))
        mlflow_port = int(server.rsplit(":", 1)[1])
        assert port_is_free(mlflow_port)
        pg_port = int(url.rsplit(":", 1)[1].split("/")[0])
    assert port_is_free(pg_port)
