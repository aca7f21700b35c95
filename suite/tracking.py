"""MLflow: where runs go, the buffered logger a training run owns, and secrets kept out of sight.

The embedded default is an SQLite database and an artifact folder under one visible directory
(``./rnnsuite-runs`` or $RNNSUITE_HOME), never MLflow's refused ./mlruns file store.
"""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
import importlib.util
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
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)


def artifact_location(uri: str) -> str | None:
    """Keep local artifacts beside the local database; servers decide their own."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        return (db.parent / "artifacts").resolve().as_uri()
    return None


def mask(text: str) -> str:
    """Replace the password of any URL in text with ***."""
    return re.sub(r"(\w+://[^/\s:@]*:)([^@/\s]+)(@)", r"\1***\3", str(text))


def git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parents[1]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None
