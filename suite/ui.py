"""``rnnsuite ui``: the MLflow UI and optuna-dashboard side by side, on 127.0.0.1 unless asked otherwise.

Both run as child processes (``python -m mlflow server`` and ``optuna-dashboard``), each in its own process group
so that a terminal's Ctrl-C reaches only this process, which then stops both (SIGTERM, then SIGKILL after a
timeout) and exits 0. Nothing is started when a store is missing or a port is taken. Passwords never reach the
terminal, and a storage URL with a password never reaches a child's command line (``ps``): MLflow reads it from
MLFLOW_BACKEND_STORE_URI and optuna-dashboard from a private TOML file.
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import deque
from pathlib import Path
from urllib.parse import urlsplit

from .registry import SuiteError

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
READY_TIMEOUT_S = 180.0  # both servers take ~10 s on a 2-core machine; a busy one can take much longer
STOP_TIMEOUT_S = 10.0
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|Exit)(?::\s|$)")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "ui", help="the MLflow UI and optuna-dashboard on 127.0.0.1 (Ctrl-C stops both)",
        description="Start the MLflow UI (mlflow server) on the tracking store and optuna-dashboard on the Optuna "
        "storage, wait until both answer, print their URLs and run until Ctrl-C or SIGTERM. Both listen on "
        "127.0.0.1 unless --host says otherwise; they have no authentication.")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else "
                   "sqlite:///rnnsuite-runs/mlflow.db); for an http(s):// tracking server only the dashboard starts")
    p.add_argument("--storage", help="Optuna storage: a journal file path, sqlite:///PATH or postgresql://... "
                   "(default $RNNSUITE_STORAGE, else rnnsuite-runs/optuna.journal)")
    p.add_argument("--host", default="127.0.0.1", help="interface both servers bind (default 127.0.0.1; anything "
                   "else exposes them without authentication)")
    p.add_argument("--port", type=int, default=5000, help="MLflow UI port (default 5000)")
    p.add_argument("--dashboard-port", type=int, default=8080, help="optuna-dashboard port (default 8080)")
    p.set_defaults(func=_cmd_ui)


# ---------------------------------------------------------------------------------------------- checks

def host_warning(host: str) -> str | None:
    """The warning line for a host other than loopback, else None."""
    if host in LOCAL_HOSTS:
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass
    return (f"rnnsuite: warning: --host {host} makes the MLflow UI and optuna-dashboard reachable from the network "
            "with no authentication; for a shared server use MLflow's basic-auth app "
            "(mlflow server --app-name basic-auth) behind TLS")


def check_port(host: str, port: int, flag: str) -> None:
    """Raise a one-line SuiteError unless `port` can be bound on `host` right now."""
    if not 1 <= port <= 65535:
        raise SuiteError(f"{flag} {port} is not a TCP port (1-65535)")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise SuiteError(f"cannot resolve --host {host!r}: {exc.strerror}") from None
    with socket.socket(family, kind, proto) as sock:
        # SO_REUSEADDR, as the servers set it: a port left in TIME_WAIT by a stopped server is free, a listener
        # on it is not
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            if exc.errno == 98 or "in use" in str(exc).lower():
                raise SuiteError(f"port {port} on {host} is already in use; stop what listens there or choose "
                                 f"another with {flag}") from None
            raise SuiteError(f"cannot listen on {host}:{port} ({flag}): {exc.strerror or exc}") from None


def _sqlite_path(url: str) -> Path | None:
    return Path(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else None


def _has_password(url: str) -> bool:
    from .tracking import mask

    return mask(url) != url


# ---------------------------------------------------------------------------------------------- plan

class _Plan:
    """What to start: commands, environments and the URLs to probe; built and checked before anything runs."""

    def __init__(self, args):
        from .storage import check_storage_url, is_journal, storage_url
        from .tracking import artifact_location, mask, resolve_tracking_uri

        self.host = args.host
        self.tracking_uri = resolve_tracking_uri(args.tracking_uri)
        self.storage = storage_url(args.storage)
        check_storage_url(self.storage)
        self.tmpdir: str | None = None
        env = dict(os.environ)
        # MLflow 3's server also launches a job runner for GenAI evaluation jobs: an extra process we never use
        env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
        self.env = env

        scheme = urlsplit(self.tracking_uri).scheme
        self.mlflow_cmd: list[str] | None = None
        self.mlflow_env = dict(env)
        if scheme in ("http", "https", "databricks"):
            self.mlflow_url = mask(self.tracking_uri)  # a tracking server already serves its own UI
        else:
            db = _sqlite_path(self.tracking_uri)
            if db is not None and not db.is_file():
                raise SuiteError(f"no MLflow database at {db}; run `rnnsuite train` or `rnnsuite sweep` first "
                                 "(or pass --tracking-uri)")
            cmd = [sys.executable, "-m", "mlflow", "server", "--host", args.host, "--port", str(args.port),
                   "--workers", "1"]
            if _has_password(self.tracking_uri):
                self.mlflow_env["MLFLOW_BACKEND_STORE_URI"] = self.tracking_uri
            else:
                cmd += ["--backend-store-uri", self.tracking_uri]
            artifacts = artifact_location(self.tracking_uri)
            if artifacts:
                # the embedded runs keep artifacts beside the database as file:// URIs (tracking.artifact_location);
                # experiments created in the UI get the same root, and proxied uploads land there too
                cmd += ["--default-artifact-root", artifacts, "--artifacts-destination", artifacts]
            self.mlflow_cmd = cmd
            self.mlflow_url = _url(args.host, args.port)

        exe = Path(sys.executable).with_name("optuna-dashboard")
        exe = str(exe) if exe.exists() else shutil.which("optuna-dashboard")
        if not exe:
            raise SuiteError("optuna-dashboard is not installed; pip install optuna-dashboard")
        if is_journal(self.storage):
            if not Path(self.storage).is_file():
                raise SuiteError(f"no Optuna journal at {self.storage}; run `rnnsuite sweep` first (or pass --storage)")
            storage_args = [self.storage]
        else:
            db = _sqlite_path(self.storage)
            if db is not None and not db.is_file():
                raise SuiteError(f"no Optuna database at {db}; run `rnnsuite sweep` first (or pass --storage)")
            storage_args = [self.storage]
            if _has_password(self.storage):
                self.tmpdir = tempfile.mkdtemp(prefix="rnnsuite-ui-")  # mode 0700
                config = Path(self.tmpdir) / "dashboard.toml"
                config.touch(mode=0o600)
                config.write_text(f"[optuna_dashboard]\nstorage = {_toml_string(self.storage)}\n")
                storage_args = ["--from-config", str(config)]
        # wsgiref (threaded): one process, and no gunicorn control socket shared by every dashboard of this user
        self.dashboard_cmd = [exe, *storage_args, "--host", args.host, "--port", str(args.dashboard_port),
                              "--server", "wsgiref"]
        self.dashboard_url = _url(args.host, args.dashboard_port)
        self.probe_host = "127.0.0.1" if args.host in ("0.0.0.0", "") else "::1" if args.host == "::" else args.host

    def cleanup(self) -> None:
        if self.tmpdir:
            shutil.rmtree(self.tmpdir, ignore_errors=True)


def _toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string (escapes included)


def _url(host: str, port: int, path: str = "") -> str:
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}{path}"


# ---------------------------------------------------------------------------------------------- children

def _linux_die_with_parent():
    """preexec_fn: the child gets SIGTERM if this process dies without stopping it (kill -9, a crash)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
    except (OSError, AttributeError):
        return None

    def preexec():
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    return preexec


class _Child:
    def __init__(self, name: str, cmd: list[str], env: dict, probe: str):
        self.name, self.probe = name, probe
        self.lines: deque[str] = deque(maxlen=300)
        preexec = _linux_die_with_parent() if sys.platform.startswith("linux") else None
        try:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, env=env, start_new_session=True,
                                         preexec_fn=preexec)
        except OSError as exc:
            raise SuiteError(f"cannot start {name}: {exc}") from None
        self.reader = threading.Thread(target=self._read, daemon=True)

    def _read(self) -> None:
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").strip()
            if line:
                self.lines.append(line)

    def last_line(self) -> str:
        """Its last stderr line; for a Python traceback the root cause (a chain ends in a vaguer wrapper)."""
        from .tracking import mask

        self.reader.join(timeout=2)
        lines = list(self.lines)
        errors = [line for line in lines if _EXCEPTION_LINE.match(line)]
        line = errors[0] if errors else lines[-1] if lines else "(no output)"
        return mask(line)[:300]

    def answers(self) -> bool:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via an http_proxy
        try:
            with opener.open(self.probe, timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        _stop_group(self.proc)


def _stop_group(proc: subprocess.Popen, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM to the child's process group (MLflow's uvicorn, too), SIGKILL after `timeout`."""
    pgid = proc.pid
    if proc.poll() is None:
        _killpg(pgid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _killpg(pgid, signal.SIGKILL)
            proc.wait()
    deadline = time.monotonic() + timeout
    while _group_alive(pgid):  # a grandchild that outlived its parent
        if time.monotonic() > deadline:
            _killpg(pgid, signal.SIGKILL)
            break
        time.sleep(0.1)
    if proc.stderr:
        proc.stderr.close()


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    proc_dir = Path("/proc")
    if not proc_dir.is_dir():
        try:
            os.killpg(pgid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False
    for stat in proc_dir.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # state, ppid, pgrp; zombies hold no port
            return True
    return False


class _Stop(Exception):
    """SIGTERM or SIGHUP: leave the wait loop and stop both children."""


def _raise_stop(signum, frame):
    raise _Stop()


# ---------------------------------------------------------------------------------------------- command

def _cmd_ui(args) -> int:
    from .tracking import mask

    plan = _Plan(args)
    try:
        warning = host_warning(args.host)
        if warning:
            print(warning, file=sys.stderr)
        if args.port == args.dashboard_port and plan.mlflow_cmd:
            raise SuiteError(f"--port and --dashboard-port are both {args.port}; choose two ports")
        if plan.mlflow_cmd:
            check_port(args.host, args.port, "--port")
        check_port(args.host, args.dashboard_port, "--dashboard-port")
        return _serve(plan, args, mask)
    finally:
        plan.cleanup()


def _serve(plan: _Plan, args, mask) -> int:
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGHUP, _raise_stop)
    children: list[_Child] = []
    try:
        shown = f"MLflow on {mask(plan.tracking_uri)}" if plan.mlflow_cmd else ""
        print(f"starting {shown + ' and ' if shown else ''}optuna-dashboard on {mask(plan.storage)} ...", flush=True)
        if plan.mlflow_cmd:
            children.append(_Child("MLflow UI", plan.mlflow_cmd, plan.mlflow_env,
                                   _url(plan.probe_host, args.port, "/health")))
        children.append(_Child("optuna-dashboard", plan.dashboard_cmd, plan.env,
                               _url(plan.probe_host, args.dashboard_port, "/api/studies")))
        for child in children:
            child.reader.start()

        pending = list(children)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while pending:
            _check_alive(children)
            pending = [c for c in pending if not c.answers()]
            if pending and time.monotonic() > deadline:
                c = pending[0]
                raise SuiteError(f"{c.name} did not answer on {c.probe} within {READY_TIMEOUT_S:.0f} s; "
                                 f"its last line: {c.last_line()}")
            if pending:
                time.sleep(0.25)
        print(f"MLflow UI {plan.mlflow_url} | Optuna dashboard {plan.dashboard_url} | Ctrl-C to stop",
              flush=True)
        while True:
            _check_alive(children)
            time.sleep(0.5)
    except (KeyboardInterrupt, _Stop):
        return 0
    finally:
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        for child in children:
            child.stop()
        for s, handler in old.items():
            signal.signal(s, handler)


def _check_alive(children: list[_Child]) -> None:
    for child in children:
        code = child.proc.poll()
        if code is not None:
            raise SuiteError(f"{child.name} exited early (code {code}): {child.last_line()}")
