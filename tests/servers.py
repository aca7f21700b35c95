"""Real servers for integration tests: a throw-away PostgreSQL cluster and an MLflow tracking server.

Plain functions and context managers, usable from any test file or fixture. A server that cannot start raises
(RuntimeError with the reason): the tests that need it fail. A server or browser that is not *installed* skips
the tests that need it with the reason (`make test` installs them as root with apt-get: scripts/test-deps), except
under CI (CI=true, as .ci/run sets), where it fails: the integration tests can never silently stop running.
PostgreSQL needs the Debian package `postgresql` (PostgreSQL 15 binaries in /usr/lib/postgresql/15/bin); as root
the cluster runs as the `postgres` OS user, because PostgreSQL refuses to run as root.
RNNSUITE_TEST_HIDE=postgresql,chromium pretends they are not installed (to test this rule).
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
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


def under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def not_installed(reason: str):
    """Skip the calling test (fail under CI) because something it needs is not installed on this machine."""
    import pytest

    if under_ci():
        pytest.fail(f"{reason} (CI=true: the integration tests must run)", pytrace=False)
    pytest.skip(reason)


def _hidden(name: str) -> bool:
    return name in os.environ.get("RNNSUITE_TEST_HIDE", "").split(",")


def browser_path() -> str:
    """Chromium (or Chrome) on PATH, else skip (fail under CI)."""
    for name in BROWSERS:
        found = None if _hidden("chromium") else shutil.which(name)
        if found:
            return found
    not_installed("Chromium is not installed: the report's browser test needs it (make test installs it as root "
                  "with apt-get; or apt-get install chromium)")


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
    """The newest installed PostgreSQL server binaries (Debian layout); skip (fail under CI) if there are none."""
    if _hidden("postgresql"):
        not_installed("PostgreSQL server binaries are not installed (hidden by RNNSUITE_TEST_HIDE)")
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name)
                   if p.parent.parent.name.isdigit() else 0)
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    not_installed("PostgreSQL server binaries are not installed (/usr/lib/postgresql/*/bin/initdb): the "
                  "PostgreSQL tests need them (make test installs them as root with apt-get; or apt-get install "
                  "postgresql)")


class PostgresCluster:
    """A throw-away PostgreSQL cluster on 127.0.0.1 with password (scram-sha-256) authentication.

    ``url`` is postgresql://rnnsuite:PASSWORD@127.0.0.1:PORT/rnnsuite (user and database `rnnsuite`); a wrong
    password is refused. ``stop()``/``start()``/``restart()`` keep the data, port and password (for tests of a
    database that goes away mid-sweep). The cluster lives in a postgres-owned folder under the system temp dir
    (pytest's tmp_path is root-only, so the `postgres` user could not enter it).
    """

    def __init__(self):
        self.bindir = postgres_bin()
        self.prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.base = Path(tempfile.mkdtemp(prefix="rnnsuite-pg-"))
        self.data, self.pwfile, self.log = self.base / "data", self.base / "pwfile", self.base / "postgres.log"
        self.password = secrets.token_hex(12)
        self.port = free_port()
        self.url = f"postgresql://{PG_USER}:{self.password}@127.0.0.1:{self.port}/{PG_DB}"
        self.running = False

    def _run(self, cmd, **kwargs):
        # cwd=/: the postgres user may not enter the caller's working folder
        out = subprocess.run(self.prefix + cmd, capture_output=True, text=True, timeout=120, cwd="/", **kwargs)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:2])} failed ({out.returncode}): {out.stderr.strip()[-2000:]}\n"
                               f"{_tail(self.log)}")
        return out

    def create(self) -> None:
        self.pwfile.write_text(self.password + "\n")
        self.pwfile.chmod(0o600)
        if self.prefix:
            shutil.chown(self.base, "postgres", "postgres")
            shutil.chown(self.pwfile, "postgres", "postgres")
        self._run([str(self.bindir / "initdb"), "-D", str(self.data), "-U", PG_USER, f"--pwfile={self.pwfile}",
                   "-A", "scram-sha-256", "-E", "UTF8", "--no-locale", "--no-sync"])
        self.start()
        self._run([str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", PG_USER, PG_DB],
                  env={**os.environ, "PGPASSWORD": self.password})

    def start(self) -> None:
        self._run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o",
                   f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c full_page_writes=off", "start"])
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """pg_ctl stop: `fast` ends every session (clients see their connections closed), as a restart does."""
        subprocess.run(self.prefix + [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t",
                                      "60", "stop"], capture_output=True, timeout=90, cwd="/")
        self.running = False

    def restart(self, down_s: float = 0.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()

    def create_database(self, name: str) -> str:
        """CREATE DATABASE name; returns its URL (same user and password)."""
        import psycopg2

        conn = psycopg2.connect(self.url)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()
        return self.url.rsplit("/", 1)[0] + "/" + name

    def remove(self, tmp_dir=None) -> None:
        try:
            if self.running:
                self.stop()
        finally:
            if tmp_dir is not None and self.log.exists():
                with contextlib.suppress(OSError):
                    shutil.copyfile(self.log, Path(tmp_dir) / "postgres.log")
            shutil.rmtree(self.base, ignore_errors=True)


@contextlib.contextmanager
def postgres_cluster(tmp_dir: str | os.PathLike | None = None):
    """A started PostgresCluster; stopped (pg_ctl stop -m fast) and removed on exit, its server log copied to
    tmp_dir/postgres.log when tmp_dir is given."""
    cluster = PostgresCluster()
    try:
        cluster.create()
        yield cluster
    finally:
        cluster.remove(tmp_dir)


@contextlib.contextmanager
def postgres_server(tmp_dir: str | os.PathLike | None = None):
    """A fresh PostgreSQL cluster (see PostgresCluster); yields its postgresql:// URL."""
    with postgres_cluster(tmp_dir) as cluster:
        yield cluster.url


# ------------------------------------------------------------------------------------------------ MLflow

class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 (one worker) over `backend_url`; ``stop()`` and ``start()`` keep its
    port, so clients see a server that went away and came back.

    Artifacts are proxied by the server (mlflow-artifacts:/) into `artifacts_dir`. The backend URL goes through
    MLFLOW_BACKEND_STORE_URI, so its password is not on a command line. The server log is
    artifacts_dir/../mlflow-server.log and is quoted in the error when the server does not come up.
    """

    def __init__(self, backend_url: str, artifacts_dir: str | os.PathLike, port: int | None = None,
                 extra_args: list[str] | None = None, env: dict | None = None):
        self.artifacts = Path(artifacts_dir).resolve()
        self.artifacts.mkdir(parents=True, exist_ok=True)
        self.log = self.artifacts.parent / "mlflow-server.log"
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": backend_url, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                    **(env or {})}
        self.env.pop("MLFLOW_TRACKING_URI", None)
        self.cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
                    "--workers", "1", "--artifacts-destination", self.artifacts.as_uri(), *(extra_args or [])]
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180.0) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         env=self.env, start_new_session=True)
        wait_http(self.url + "/health", timeout, self.proc, self.log)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process_group(self.proc)
            self.proc = None


@contextlib.contextmanager
def mlflow_server_process(backend_url: str, artifacts_dir: str | os.PathLike, timeout: float = 180.0, **kwargs):
    """A started MlflowServer, stopped on exit."""
    server = MlflowServer(backend_url, artifacts_dir, **kwargs)
    try:
        server.start(timeout)
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def mlflow_server(backend_url: str, artifacts_dir: str | os.PathLike, timeout: float = 180.0):
    """A real `mlflow server` (see MlflowServer) on a free port; yields its http:// URL."""
    with mlflow_server_process(backend_url, artifacts_dir, timeout) as server:
        yield server.url
