"""Optuna storages: the embedded journal file, SQLite, PostgreSQL; URLs checked and secrets masked.

The embedded default is a journal file beside the MLflow database (``rnnsuite-runs/optuna.journal``): Optuna
recommends its journal storage for several worker processes on one machine (SQLite is "not recommended for
parallel" use). ``--storage`` takes sqlite:///PATH, postgresql://USER:PASS@HOST:PORT/DB, or a journal file path.
The environment variable RNNSUITE_STORAGE supplies a URL (with its password) without putting it on a
command line; for PostgreSQL the URL may also leave the password out and let libpq read PGPASSWORD (or
~/.pgpass).

A database that goes away (a restart, a fail-over) does not end a sweep: pooled connections are checked before
use (pool_pre_ping) and every storage call that fails with a connection error is retried with back-off for up to
RNNSUITE_RETRY_S seconds (default 600).
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from urllib.parse import urlsplit

from .registry import SuiteError
from .tracking import connect_args, database_reason, mask, retry, runs_dir, sqlalchemy_url

RDB_SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg2", "mysql", "mysql+pymysql")


def default_storage() -> str:
    return str(runs_dir() / "optuna.journal")


def storage_url(url: str | None) -> str:
    """The flag, else $RNNSUITE_STORAGE, else the embedded journal file."""
    return url or os.environ.get("RNNSUITE_STORAGE") or default_storage()


def is_journal(url: str) -> bool:
    return "://" not in url


def check_storage_url(url: str) -> None:
    if is_journal(url):
        return
    scheme = urlsplit(url).scheme
    if scheme not in RDB_SCHEMES:
        raise SuiteError(f"storage URL {mask(url)!r} has an unsupported scheme {scheme!r}; use sqlite:///PATH, "
                         "postgresql://USER:PASSWORD@HOST:PORT/DB or a journal file path")


def is_local(url: str) -> bool:
    """A journal file or an SQLite database: created on demand, nothing to reach."""
    return is_journal(url) or url.startswith("sqlite:")


def open_storage(url: str | None = None, *, create: bool = True):
    """An Optuna storage for `url`; unreachable databases and bad credentials become one-line SuiteErrors."""
    import optuna  # heavy: loaded by the commands that open a storage, not by the CLI's start-up

    url = storage_url(url)
    check_storage_url(url)
    if is_journal(url):
        path = Path(url)
        if not create and not path.exists():
            raise SuiteError(f"no Optuna journal at {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:///") and not create and not Path(url[len("sqlite:///"):]).exists():
        raise SuiteError(f"no Optuna database at {url[len('sqlite:///'):]}")
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    url = sqlalchemy_url(url)
    # reconnect after a database restart instead of failing the worker; never wait minutes for a dead host
    kwargs = {"pool_pre_ping": True, "connect_args": connect_args(url)}
    if url.startswith("sqlite"):
        kwargs = {"connect_args": {"timeout": 60}}
    try:
        return _retrying_rdb_storage()(url, engine_kwargs=kwargs)
    except ModuleNotFoundError as exc:
        raise SuiteError(f"cannot open Optuna storage {mask(url)}: the driver {exc.name!r} is not installed "
                         "(pip install 'rnnsuite[postgres]')") from None
    except Exception as exc:
        raise SuiteError(f"cannot open Optuna storage {mask(url)}: {database_reason(exc)}") from None


_RETRYING = None
_NOT_RETRIED = {"upgrade", "get_current_version", "get_head_version", "get_all_versions", "remove_session",
                "check_trial_is_updatable"}
# private methods Optuna's _CachedStorage calls on its backend directly (optuna/storages/_cached_storage.py):
# without them a worker's progress poll (get_trials -> _get_trials) fails at the first database restart
_PRIVATE_RETRIED = {"_create_new_trial", "_set_trial_param", "_get_trials", "_get_best_trial_id",
                    "_get_stale_trial_ids"}
_in_call = threading.local()  # a retried method calling another one: only the outermost call retries


def _retrying_rdb_storage():
    """RDBStorage whose public methods retry connection errors (each call is one transaction, so a call that
    failed can be made again). A subclass, so Optuna still wraps it in its cache like any RDBStorage."""
    global _RETRYING
    if _RETRYING is None:
        from optuna.storages import RDBStorage

        def wrap(name, method):
            def call(self, *args, **kwargs):
                if not getattr(self, "_rnnsuite_ready", False) or getattr(_in_call, "active", False):
                    return method(self, *args, **kwargs)  # construction (fail at once, one line), or nested

                def once():
                    _in_call.active = True
                    try:
                        return method(self, *args, **kwargs)
                    finally:
                        _in_call.active = False

                return retry(once, f"Optuna storage {name}")

            call.__name__ = name
            return call

        methods = {name: wrap(name, getattr(RDBStorage, name)) for name in dir(RDBStorage)
                   if (not name.startswith("_") or name in _PRIVATE_RETRIED) and name not in _NOT_RETRIED
                   and callable(getattr(RDBStorage, name))}

        def __init__(self, *args, **kwargs):
            RDBStorage.__init__(self, *args, **kwargs)
            self._rnnsuite_ready = True

        def __setstate__(self, state):  # Optuna pickles storages for its heartbeat thread
            RDBStorage.__setstate__(self, state)
            self._rnnsuite_ready = True

        _RETRYING = type("RetryingRDBStorage", (RDBStorage,), {**methods, "__init__": __init__,
                                                                "__setstate__": __setstate__,
                                                                "__module__": __name__})
        globals()["RetryingRDBStorage"] = _RETRYING  # picklable by name
    return _RETRYING
