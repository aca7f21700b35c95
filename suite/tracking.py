"""MLflow: where runs go, the buffered logger a training run owns, and secrets kept out of sight.

The embedded default is an SQLite database and an artifact folder under one visible directory
(``./rnnsuite-runs`` or $RNNSUITE_HOME), never MLflow's refused ./mlruns file store.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from .registry import SuiteError

TRACKING_SCHEMES = ("sqlite", "http", "https", "postgresql", "postgresql+psycopg2", "mysql", "databricks", "file")


def runs_dir() -> Path:
    """The visible local folder for the embedded stores, checkpoints and artifacts."""
    return Path(os.environ.get("RNNSUITE_HOME", "rnnsuite-runs")).resolve()


def default_tracking_uri() -> str:
    return f"sqlite:///{runs_dir() / 'mlflow.db'}"


def resolve_tracking_uri(uri: str | None) -> str:
    """The flag, else $MLFLOW_TRACKING_URI, else the embedded SQLite database (folder created on demand)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    scheme = urlsplit(uri).scheme
    if scheme not in TRACKING_SCHEMES:
        raise SuiteError(f"tracking URI {mask(uri)!r} has an unsupported scheme {scheme!r}; use one of "
                         f"{', '.join(s + '://' for s in TRACKING_SCHEMES)}")
    if scheme == "file":
        raise SuiteError("MLflow's file store (file://, ./mlruns) is refused by MLflow 3; use sqlite:///PATH.db "
                         "or an http:// tracking server")
    return sqlalchemy_url(uri)


def sqlalchemy_url(url: str) -> str:
    """postgresql:// names the psycopg 3 driver in SQLAlchemy 2.1; use psycopg2 where only it is installed."""
    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url


def prepare_local_store(uri: str) -> None:
    """Create the folder of a local SQLite store and its MLflow schema, once, under a file lock.

    Two processes started at the same moment on a new store (two `rnnsuite train` commands, say) would otherwise
    both run MLflow's schema migrations and one would die with alembic's "Online migration expected to match one
    row" error. A new database is built beside its final name and renamed into place once its schema is complete:
    a process killed during MLflow's migrations (dozens of steps, each its own transaction on SQLite) would
    otherwise leave a half-migrated file on which every later command fails ("table _alembic_tmp_... already
    exists"). MLflow's INFO lines about creating tables are silenced: stderr carries only rnnsuite's own lines.
    """
    if not uri.startswith("sqlite:///"):
        return
    import fcntl  # Unix only: the rest of this module imports on any platform

    db = Path(uri[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    import mlflow  # noqa: F401  (mlflow configures its loggers on import: quiet them after that)

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    with open(db.with_name(db.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            from mlflow.tracking._tracking_service.utils import _get_store

            if not db.exists() or db.stat().st_size == 0:
                _create_schema_atomically(db)
            _get_store(uri)  # migrates an older schema if need be; cached for this process's later clients
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _create_schema_atomically(db: Path) -> None:
    """MLflow's schema in a temporary file of db's folder, then renamed to db (the caller holds db's lock)."""
    from mlflow.store.db.utils import _initialize_tables, create_sqlalchemy_engine

    for stale in db.parent.glob(f".{db.name}.creating-*"):  # left by a process killed here before
        stale.unlink(missing_ok=True)
    tmp = db.with_name(f".{db.name}.creating-{os.getpid()}")
    engine = create_sqlalchemy_engine(f"sqlite:///{tmp}")
    try:
        _initialize_tables(engine)
    finally:
        engine.dispose()
    os.replace(tmp, db)


def artifact_location(uri: str) -> str | None:
    """Keep local artifacts beside the local database; servers decide their own."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        return (db.parent / "artifacts").resolve().as_uri()
    return None


SECRET_ENV = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "PGPASSWORD", "RNNSUITE_STORAGE_PASSWORD")
# a URL's user:password@ (the password may hold '@' and ':'; the host part never holds '/'), and password=... in a
# query string (SQLAlchemy and libpq accept both)
_URL_PASSWORD = re.compile(r"(\w+://[^/\s:@]*:)([^/\s]+)(@)")
_QUERY_PASSWORD = re.compile(r"((?:password|passwd|pwd)=)([^&\s'\"]+)", re.IGNORECASE)


def mask(text: str) -> str:
    """Replace every password in text with ***: in URLs (user:PASSWORD@host, ?password=...) and the values of the
    credential environment variables (MLFLOW_TRACKING_PASSWORD, MLFLOW_TRACKING_TOKEN, PGPASSWORD)."""
    text = _QUERY_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1***\3", str(text)))
    for name in SECRET_ENV:
        secret = os.environ.get(name)
        if secret and len(secret) >= 4:  # a 1-3 character "password" would mask half the output
            text = text.replace(secret, "***")
    return text


# ------------------------------------------------------------------------------------------- servers that come back
RETRY_ENV = "RNNSUITE_RETRY_S"
RETRY_S = 600.0  # how long a sweep waits for a tracking server or database that went away before giving up


def retry_patience() -> float:
    try:
        return max(0.0, float(os.environ.get(RETRY_ENV, RETRY_S)))
    except ValueError:
        return RETRY_S


_TRANSIENT_WORDS = ("could not connect", "connection refused", "connection reset", "connection aborted",
                    "server closed the connection", "terminating connection", "the database system is",
                    "database is locked", "max retries exceeded", "timed out", "timeout", "broken pipe",
                    "remote end closed", "no route to host", "network is unreachable", "temporarily unavailable",
                    "ssl syscall", "eof detected", "too many 5", "too many error responses")


def is_transient(exc: BaseException) -> bool:
    """True for an error a server or database that is down, restarting or overloaded gives: worth retrying.

    Walks the exception chain: MLflow wraps the requests/urllib3 error it gave up on, Optuna wraps SQLAlchemy's.
    Wrong credentials, unknown runs and invalid values are not transient."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        module = type(exc).__module__ or ""
        name = type(exc).__name__
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return True
        if module.startswith(("requests", "urllib3")) and name in (
                "ConnectionError", "ConnectTimeout", "ReadTimeout", "Timeout", "RetryError", "ChunkedEncodingError",
                "MaxRetryError", "NewConnectionError", "ProtocolError", "ProxyError"):
            return True
        if module.startswith("sqlalchemy"):
            if getattr(exc, "connection_invalidated", False) or name == "DisconnectionError":
                return True
            if name in ("OperationalError", "InterfaceError") and \
                    any(w in str(exc).lower() for w in _TRANSIENT_WORDS):
                return True
        if module.startswith("psycopg") and any(w in str(exc).lower() for w in _TRANSIENT_WORDS):
            return True
        if name == "MlflowException" and getattr(exc, "error_code", "") in ("TEMPORARILY_UNAVAILABLE",
                                                                            "REQUEST_LIMIT_EXCEEDED"):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def first_line(exc: BaseException, limit: int = 200) -> str:
    text = mask(str(exc)).strip()
    return f"{exc.__class__.__name__}: {text.splitlines()[0][:limit]}" if text else exc.__class__.__name__


def retry(fn, what: str, patience: float | None = None):
    """fn(), retried with exponential back-off (1, 2, 4 ... 30 s) while it fails with a transient error, for up
    to `patience` seconds (RNNSUITE_RETRY_S, default 600); one line on stderr when waiting starts and ends."""
    patience = retry_patience() if patience is None else patience
    deadline = time.monotonic() + patience
    delay, waited = 1.0, False
    while True:
        try:
            result = fn()
        except Exception as exc:
            if not is_transient(exc) or time.monotonic() + delay > deadline:
                raise
            if not waited:
                print(f"rnnsuite: {what} failed ({first_line(exc, 150)}); retrying for up to {patience:.0f} s",
                      file=sys.stderr, flush=True)
                waited = True
            time.sleep(delay)
            delay = min(2 * delay, 30.0)
            continue
        if waited:
            print(f"rnnsuite: {what} succeeded again", file=sys.stderr, flush=True)
        return result


class RetryingClient:
    """An MlflowClient whose every call is retried through `retry` (a tracking server restarting, a database
    failing over); ``raw`` is the plain client for callers that handle failures themselves."""

    def __init__(self, client, patience: float | None = None):
        self.raw = client
        self.patience = patience

    def __getattr__(self, name):
        attr = getattr(self.raw, name)
        if name.startswith("_") or not callable(attr):
            return attr

        def call(*args, **kwargs):
            return retry(lambda: attr(*args, **kwargs), f"MLflow {name}", self.patience)

        call.__name__ = name
        return call


def check_tracking(uri: str, timeout: float = 10.0) -> None:
    """Fail fast, with one line, when a remote tracking store cannot be reached or refuses the credentials.

    Called before anything is written: a typo in a URL must not leave half a sweep behind, nor wait through
    MLflow's own retries (about four minutes). Local SQLite stores are created on demand and not probed."""
    scheme = urlsplit(uri).scheme
    if scheme in ("http", "https"):
        _check_http_tracking(uri, timeout)
    elif scheme.startswith(("postgresql", "mysql")):
        _check_database(uri, "MLflow tracking database", timeout)


def _check_http_tracking(uri: str, timeout: float) -> None:
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    try:
        response = http_request(get_default_host_creds(uri), "/api/2.0/mlflow/experiments/search", "POST",
                                max_retries=0, backoff_factor=0, timeout=timeout, raise_on_status=False,
                                json={"max_results": 1})
    except Exception as exc:
        raise SuiteError(f"cannot reach MLflow tracking server {mask(uri)}: {_reason(exc)}") from None
    if response.status_code in (401, 403):
        raise SuiteError(f"MLflow tracking server {mask(uri)} refused the credentials (HTTP {response.status_code}); "
                         "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)")
    if response.status_code >= 400:
        raise SuiteError(f"MLflow tracking server {mask(uri)} answered HTTP {response.status_code} "
                         f"(is this an MLflow server?)")


def _reason(exc: BaseException) -> str:
    """The root cause of a connection error, in a few words (requests' messages nest three exceptions deep)."""
    text = mask(str(exc))
    for pattern in (r"\[Errno -?\d+\] ([^'\")]+)", r"(Connection refused|timed out|Name or service not known)"):
        found = re.search(pattern, text)
        if found:
            return found.group(1).strip()
    return first_line(exc)


def connect_args(url: str, timeout: float = 10.0) -> dict:
    """Driver options for SQLAlchemy engines: a bounded connect time (an unroutable host would hang ~2 min)."""
    if url.startswith("postgresql"):
        return {"connect_timeout": int(timeout)}
    if url.startswith("mysql"):
        return {"connect_timeout": int(timeout)}
    return {}


def _check_database(url: str, what: str, timeout: float) -> None:
    import sqlalchemy  # heavy: this module is loaded by every command, a database check is rare

    url = sqlalchemy_url(url)
    try:
        engine = sqlalchemy.create_engine(url, connect_args=connect_args(url, timeout), poolclass=sqlalchemy.pool.NullPool)
        with engine.connect():
            pass
    except ModuleNotFoundError as exc:
        raise SuiteError(f"cannot open {what} {mask(url)}: the driver {exc.name!r} is not installed "
                         "(pip install 'rnnsuite[postgres]')") from None
    except Exception as exc:
        raise SuiteError(f"cannot open {what} {mask(url)}: {database_reason(exc)}") from None


def database_reason(exc: BaseException) -> str:
    """The driver's own first line (psycopg2: 'connection to server ... failed: ...'), masked."""
    orig = getattr(exc, "orig", None) or exc
    text = mask(str(orig)).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return exc.__class__.__name__
    line = lines[0]
    if len(lines) > 1 and lines[0].endswith(("failed:", "failed")):
        line = f"{lines[0]} {lines[1]}"
    return line[:250]


def git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parents[1]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def mark_stopped(client, run_id: str, outcome: str, reason: str, step: int | None = None) -> None:
    """Tag why a run stopped early (``pruned.reason``/``.step`` or ``failure.reason``/``.step``); a pruned or
    diverged run also says so in its name and at the top of its description, which MLflow's run list and run page
    show (a pruned trial otherwise reads as a green "Finished" run)."""
    key = "pruned" if outcome == "pruned" else "failure"
    client.set_tag(run_id, f"{key}.reason", reason)
    if step is not None:
        client.set_tag(run_id, f"{key}.step", str(step))
    if outcome not in ("pruned", "diverged"):
        return
    run = client.get_run(run_id)
    name, marker = run.info.run_name or "", f"[{outcome}]"
    if marker not in name:
        client.update_run(run_id, name=f"{name} {marker}".strip())
    note = run.data.tags.get(NOTE, "")
    client.set_tag(run_id, NOTE, f"**{outcome.upper()}**" + (f" at step {step}" if step is not None else "")
                   + f": {reason}" + (f"\n\n{note}" if note else ""))


NOTE = "mlflow.note.content"  # MLflow's run description (Markdown), shown on the run page


def command_line(words: list[str], flags) -> str:
    """An rnnsuite command as typed, for a report to show: `words`, then each (flag, value) whose value is set,
    the value masked (a password in a store URL never reaches a report)."""
    parts = list(words)
    for flag, value in flags:
        if value is not None and value != "":
            parts += [flag, mask(str(value))]
    return shlex.join(parts)

