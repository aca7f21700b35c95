"""MLflow: where runs go, the buffered logger a training run owns, and secrets kept out of sight.

The embedded default is an SQLite database and an artifact folder under one visible directory
(``./rnnsuite-runs`` or $RNNSUITE_HOME), never MLflow's refused ./mlruns file store.
"""
from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit, urlunsplit

from lightning.pytorch.loggers import MLFlowLogger

from .registry import SuiteError

TRACKING_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "databricks", "file")


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
    return uri


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


class SuiteLogger(MLFlowLogger):
    """Lightning's MLFlowLogger with batched writes and an explicit final status.

    Metrics are buffered and written with one ``log_batch`` call when Lightning calls ``save()`` (after each
    logging interval) or when the buffer is large, instead of one call per ``log_metrics``; on a shared SQLite
    file each call costs ~50 ms (stack.md). ``finalize`` only flushes: the run's end status (FINISHED, FAILED,
    KILLED) is set once by the training code, which knows why it stopped.
    """

    MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._buffer: list = []

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        for k, v in metrics.items():
            if isinstance(v, str):
                continue
            key = re.sub(r"[^a-zA-Z0-9_/. -]+", "", k)
            self._buffer.append(Metric(key=key, value=float(v), timestamp=now, step=step or 0))
        if len(self._buffer) >= self.MAX_BATCH:
            self.flush()

    def flush(self) -> None:
        while self._buffer:
            chunk, self._buffer = self._buffer[: self.MAX_BATCH], self._buffer[self.MAX_BATCH:]
            self.experiment.log_batch(run_id=self.run_id, metrics=chunk, **self._log_batch_kwargs)

    def save(self) -> None:
        super().save()
        self.flush()

    def finalize(self, status: str = "success") -> None:
        if self._initialized:
            self.flush()

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, mask(str(v))[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.experiment.log_batch(run_id=self.run_id, params=items[i:i + 100])

    def terminate(self, status: str) -> None:
        self.flush()
        self.experiment.set_terminated(self.run_id, status)
