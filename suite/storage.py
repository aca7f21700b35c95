"""Optuna storages: the embedded journal file, SQLite, PostgreSQL; URLs checked and secrets masked.

The embedded default is a journal file beside the MLflow database (``rnnsuite-runs/optuna.journal``): Optuna
recommends its journal storage for several worker processes on one machine (SQLite is "not recommended for
parallel" use). ``--storage`` takes sqlite:///PATH, postgresql://USER:PASS@HOST:PORT/DB, or a journal file path.
The environment variable RNNSUITE_STORAGE supplies a URL (with its password) without putting it on a
command line.
"""
from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from .registry import SuiteError
from .tracking import mask, runs_dir, sqlalchemy_url

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


def open_storage(url: str | None = None, *, create: bool = True):
    """An Optuna storage for `url`; unreachable databases and bad credentials become one-line SuiteErrors."""
    import optuna

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
    kwargs = {"pool_pre_ping": True}  # reconnect after a database restart instead of failing the worker
    if url.startswith("sqlite"):
        kwargs = {"connect_args": {"timeout": 60}}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    except Exception as exc:
        first = mask(str(exc)).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise SuiteError(f"cannot open Optuna storage {mask(url)}: {first[:200]}") from None
