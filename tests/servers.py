"""Real servers for integration tests: a throw-away PostgreSQL cluster and an MLflow tracking server.

Plain functions and context managers, usable from any test file or fixture. A server that cannot start raises
(RuntimeError with the reason): the tests that need it must fail, not skip. PostgreSQL needs the Debian package
`postgresql` (PostgreSQL 15 binaries in /usr/lib/postgresql/15/bin); as root the cluster runs as the `postgres`
OS user, because PostgreSQL refuses to run as root.
"""
from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

PG_USER = PG_DB = "rnnsuite"


def free_port() -> int:
    """A TCP port nobody listens on right now on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True if `port` can be bound (with SO_REUSEADDR, as servers do: TIME_WAIT does not count as taken)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            return True
        except OSError:
            return False


def http_get(url: str, timeout: float = 5.0) -> bytes:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through an http_proxy
    with opener.open(url, timeout=timeout) as response:
        return response.read()


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Wait until GET url answers 200; raise if `proc` exits first or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            http_get(url, timeout=2)
            return
        except OSError:
            pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} before {url} answered:\n{_tail(log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {timeout:.0f} s:\n{_tail(log)}")
        time.sleep(0.25)


def _tail(log: Path | None, lines: int = 15) -> str:
    if log is None or not log.exists():
        return ""
    text = log.read_text(errors="replace").strip().splitlines()[-lines:]
    return re.sub(r"(://[^/\s:@]*:)([^@/\s]+)(@)", r"\1***\3", "\n".join(text))


def stop_process_group(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGTERM to the process group of `proc` (started with start_new_session=True), SIGKILL after timeout."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    with contextlib.suppress(ProcessLookupError):  # a grandchild left behind
        os.killpg(proc.pid, signal.SIGKILL)


# ------------------------------------------------------------------------------------------------ PostgreSQL

def postgres_bin() -> Path:
    """The newest installed PostgreSQL server binaries (Debian layout); raise if there are none."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name)
                   if p.parent.parent.name.isdigit() else 0)
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise RuntimeError("PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/initdb); "
                       "install them: apt-get install -y postgresql")


@contextlib.contextmanager
def postgres_server(tmp_dir: str | os.PathLike | None = None):
    """A fresh PostgreSQL cluster on 127.0.0.1 with password (scram-sha-256) authentication.

    Yields postgresql://rnnsuite:PASSWORD@127.0.0.1:PORT/rnnsuite (user and database `rnnsuite`); a wrong password
    is refused. The cluster lives in a postgres-owned folder under the system temp dir (pytest's tmp_path is
    root-only, so the `postgres` user could not enter it); its server log is copied to tmp_dir/postgres.log at
    the end when tmp_dir is given. Stopped (pg_ctl stop -m fast) and removed on exit.
    """
    bindir = postgres_bin()
    as_root = os.geteuid() == 0
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    base = Path(tempfile.mkdtemp(prefix="rnnsuite-pg-"))
    data, pwfile, log = base / "data", base / "pwfile", base / "postgres.log"
    password = secrets.token_hex(12)
    pwfile.write_text(password + "\n")
    pwfile.chmod(0o600)
    if as_root:
        shutil.chown(base, "postgres", "postgres")
        shutil.chown(pwfile, "postgres", "postgres")
    port = free_port()
    started = False

    def run(cmd, **kwargs):
        out = subprocess.run(prefix + cmd, capture_output=True, text=True, timeout=120, **kwargs)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:2])} failed ({out.returncode}): {out.stderr.strip()[-2000:]}\n"
                               f"{_tail(log)}")
        return out

    try:
        run([str(bindir / "initdb"), "-D", str(data), "-U", PG_USER, f"--pwfile={pwfile}", "-A", "scram-sha-256",
             "-E", "UTF8", "--no-locale", "--no-sync"])
        run([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o",
             f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off", "start"])
        started = True
        run([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", PG_USER, PG_DB],
            env={**os.environ, "PGPASSWORD": password})
        yield f"postgresql://{PG_USER}:{password}@127.0.0.1:{port}/{PG_DB}"
    finally:
        try:
            if started:
                subprocess.run(prefix + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "60",
                                         "stop"], capture_output=True, timeout=90)
        finally:
            if tmp_dir is not None and log.exists():
                with contextlib.suppress(OSError):
                    shutil.copyfile(log, Path(tmp_dir) / "postgres.log")
            shutil.rmtree(base, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ MLflow

@contextlib.contextmanager
def mlflow_server(backend_url: str, artifacts_dir: str | os.PathLike, timeout: float = 180.0):
    """A real `mlflow server` on 127.0.0.1 (free port, one worker) over `backend_url`; yields its http:// URL.

    Artifacts are proxied by the server (mlflow-artifacts:/) into `artifacts_dir`. The backend URL goes through
    MLFLOW_BACKEND_STORE_URI, so its password is not on a command line. The server log is
    artifacts_dir/../mlflow-server.log and is quoted in the error when the server does not come up.
    """
    artifacts = Path(artifacts_dir).resolve()
    artifacts.mkdir(parents=True, exist_ok=True)
    log = artifacts.parent / "mlflow-server.log"
    port = free_port()
    env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": backend_url, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--artifacts-destination", artifacts.as_uri()]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/health", timeout, proc, log)
        yield url
    finally:
        stop_process_group(proc)
