"""The MLflow logger a training run owns (Lightning's MLFlowLogger with batched writes)."""
from __future__ import annotations

import re
import time
from typing import Any, Mapping

from lightning.pytorch.loggers import MLFlowLogger

from .tracking import mask


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
