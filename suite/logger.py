"""The MLflow logger a training run owns (Lightning's MLFlowLogger with batched writes), and its step timer."""
from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import threading
import time
from contextlib import contextmanager
from typing import Any, Mapping

import lightning.pytorch as pl
from lightning.pytorch.loggers import MLFlowLogger

from .registry import SuiteError
from .tracking import RetryingClient, first_line, is_transient, mask, retry


@contextmanager
def signal_handlers(handler, signals=(signal.SIGTERM,)):
    """``handler`` for ``signals`` inside the block, the previous handlers put back after it. Yields the previous
    handlers by signal, or None outside the main thread (Python sets handlers there only: the block runs
    unguarded)."""
    try:
        old = {s: signal.signal(s, handler) for s in signals}
    except ValueError:  # not the main thread
        yield None
        return
    try:
        yield old
    finally:
        for s, previous in old.items():
            signal.signal(s, previous)


# Libraries whose code holds database transactions, locks and half-written files. A KeyboardInterrupt raised inside
# them, e.g. in SQLAlchemy's commit of a metric, can leave the SQLite write lock with a connection SQLAlchemy has
# abandoned (an "exit exception" is not rolled back like an error), kept alive by the traceback while the process
# ends its run: the run's own failure tag then fails with "database is locked", and every other worker waits on
# the lock (tests/test_train.py shows it). An import interrupted half-way is the same kind of damage: a module
# left half-initialised, and objects whose __del__ prints "Exception ignored ... Traceback" (pyparsing's, seen when
# a worker was stopped while matplotlib loaded). Interrupts land outside this code instead.
_DATABASE_CODE = ("sqlalchemy", "sqlite3", "mlflow", "optuna", "alembic", "psycopg", "psycopg2", "importlib")
_RESEND_S = 0.05  # how soon an interrupt that arrived inside database code is tried again
_DEFER_MAX_S = 30.0  # a database call this long is stuck: interrupt it anyway rather than never


def in_database_code(frame) -> bool:
    """True when ``frame`` or one of its callers is code of a library in ``_DATABASE_CODE`` (or an import)."""
    while frame is not None:
        name = frame.f_globals.get("__name__") or ""
        if name.partition(".")[0] in _DATABASE_CODE:
            return True
        frame = frame.f_back
    return False


@contextmanager
def interrupts_outside_database_code(signals=(signal.SIGINT, signal.SIGTERM)):
    """Ctrl-C and SIGTERM raise KeyboardInterrupt, but never inside MLflow, Optuna or SQLAlchemy code or an import: a
    signal that arrives there is sent again every 50 ms until the process is back in its own code (for at most 30 s)."""
    deferred_since: list[float] = []

    def handler(signum, frame):
        if frame is not None and in_database_code(frame):
            if not deferred_since:
                deferred_since.append(time.monotonic())
            if time.monotonic() - deferred_since[0] < _DEFER_MAX_S:
                timer = threading.Timer(_RESEND_S, os.kill, (os.getpid(), signum))
                timer.daemon = True
                timer.start()
                return
        deferred_since.clear()
        raise KeyboardInterrupt

    with signal_handlers(handler, signals):
        yield


@contextmanager
def interrupts_deferred():
    """Ctrl-C or SIGTERM inside the block takes effect (as KeyboardInterrupt) when the block ends, not inside it.

    For MLflow's create_run: interrupted after the database has the run but before the caller has its id, the run
    would stay RUNNING for ever. Only the main thread handles signals; elsewhere the block runs unguarded."""
    caught: list[int] = []
    old = None
    try:
        with signal_handlers(lambda signum, frame: caught.append(signum), (signal.SIGINT, signal.SIGTERM)) as old:
            yield
    finally:
        if caught:
            handler = old[caught[0]]
            if callable(handler):  # ours (KeyboardInterrupt) or the caller's
                handler(caught[0], None)
            elif handler == signal.SIG_DFL and caught[0] == signal.SIGTERM:
                os.kill(os.getpid(), signal.SIGTERM)  # default action, now that the block is done
            elif handler != signal.SIG_IGN:
                raise KeyboardInterrupt


INTERRUPTED_BEFORE_TRAINING = "interrupted before training started"


class SuiteLogger(MLFlowLogger):
    """Lightning's MLFlowLogger with batched writes, an explicit final status, and no loss in an outage.

    Metrics are buffered and written with one ``log_batch`` call when Lightning calls ``save()`` (after each
    logging interval) or when the buffer is large, instead of one call per ``log_metrics``; on a shared SQLite
    file each call costs ~50 ms (stack.md). ``finalize`` only flushes: the run's end status (FINISHED, FAILED,
    KILLED) is set once by the training code, which knows why it stopped.

    A tracking server that goes away (restart, network cut) does not stop training and loses nothing: a flush
    that fails with a connection error keeps its metrics for the next flush, and the final flush, like every
    other call through ``experiment``, retries with back-off for up to RNNSUITE_RETRY_S seconds (default 600).
    If the server is still gone then, the error reaches the caller (a sweep fails the trial and runs it again).
    """

    MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._mlflow_client = RetryingClient(self._mlflow_client)  # what `experiment` returns
        self._buffer: list = []
        self._outage_since: float | None = None

    @property
    def experiment(self):
        """Lightning's client, created without leaving MLflow's process-wide tracking URI behind.

        MLFlowLogger calls ``mlflow.set_tracking_uri``, which also sets $MLFLOW_TRACKING_URI: a run started in
        a process (a sweep, a test, a notebook) would silently redirect every later MLflow call of that process,
        and of every child process it starts, to this run's store. The client keeps its own URI; the global one
        is put back."""
        if self._initialized:
            return self._mlflow_client
        from mlflow.tracking._tracking_service import utils

        env, uri = os.environ.get("MLFLOW_TRACKING_URI"), utils._tracking_uri
        try:
            with interrupts_deferred():  # a run created is a run whose id is known: it can be ended KILLED
                return MLFlowLogger.experiment.fget(self)
        finally:
            utils._tracking_uri = uri
            if env is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = env

    def start(self) -> str:
        """Create the run (or reopen ``run_id``) and return its id; an unreachable server or refused credentials
        become one SuiteError line (nothing else is written)."""
        try:
            return self.run_id  # interrupts deferred until the run has its id (see ``experiment``)
        except Exception as exc:
            raise SuiteError(f"cannot reach MLflow tracking at {mask(self._tracking_uri)}: "
                             f"{exc.__class__.__name__}: {mask(str(exc)).splitlines()[0][:200]}") from None

    def end_before_training(self, exc: BaseException) -> str | None:
        """End a run that stopped before its training began: KILLED for Ctrl-C/SIGTERM, else FAILED with the
        error, tagged failure.reason. Returns the status, or None where MLflow never had the run."""
        if self._run_id is None:
            return None
        killed = isinstance(exc, (KeyboardInterrupt, SystemExit))
        status = "KILLED" if killed else "FAILED"
        reason = INTERRUPTED_BEFORE_TRAINING if killed else f"{exc.__class__.__name__}: {mask(str(exc))[:300]}"
        with contextlib.suppress(Exception):  # the tracking server may be what failed: keep the first error
            self.experiment.set_tag(self._run_id, "failure.reason", reason)
            self.terminate(status)
        return status

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

    def flush(self, final: bool = False) -> None:
        """Write the buffered metrics. A chunk leaves the buffer only once MLflow has accepted it."""
        raw = self._mlflow_client.raw
        while self._buffer:
            chunk = self._buffer[: self.MAX_BATCH]

            def send():
                raw.log_batch(run_id=self.run_id, metrics=chunk, **self._log_batch_kwargs)

            try:
                retry(send, "MLflow log_batch") if final else send()
            except Exception as exc:
                if final or not is_transient(exc):
                    raise
                if self._outage_since is None:  # training goes on; the metrics wait in memory
                    self._outage_since = time.monotonic()
                    print(f"rnnsuite: MLflow unreachable ({first_line(exc, 150)}); keeping "
                          f"{len(self._buffer)} metric values and training on", file=sys.stderr, flush=True)
                return
            del self._buffer[: len(chunk)]
            if self._outage_since is not None:
                print(f"rnnsuite: MLflow reachable again after {time.monotonic() - self._outage_since:.0f} s; "
                      "buffered metrics written", file=sys.stderr, flush=True)
                self._outage_since = None

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
        self.flush(final=True)
        self.experiment.set_terminated(self.run_id, status)


class StepTimer(pl.Callback):
    """Wall time of the training loop, validation excluded (diagnostics, logging and checkpoints included: they are
    part of what a trial costs).

    With ``every`` (a training run, ``train.log_every``): logs time/step_ms, the wall milliseconds per optimizer
    step over each logging interval, and at the end time/train_s, their sum over the run, from the start of
    training to the end of its last step. Without (``rnnsuite bench``): logs nothing. Either way ``seconds`` is
    the wall time from the start of training to its end, the other callbacks' end-of-run work before this one
    included, less the validation inside it.
    """

    def __init__(self, every: int | None = None):
        self.every = every
        self.total = 0.0  # seconds of training so far (this process), up to the last step
        self.start = self.end = 0.0
        self.validation = 0.0  # seconds of validation between start and end
        self._mark = self._val_start = self._val = self._interval = 0.0
        self._steps = 0

    def on_train_start(self, trainer, module):
        self.start = self._mark = time.perf_counter()

    def on_validation_start(self, trainer, module):
        self._val_start = time.perf_counter()

    def on_validation_end(self, trainer, module):
        if trainer.state.fn == "fit":  # not a validation or test run after training
            spent = time.perf_counter() - self._val_start
            self._val += spent
            self.validation += spent

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        now = time.perf_counter()
        self._interval += now - self._mark - self._val
        self._mark, self._val = now, 0.0
        self._steps += 1
        if self.every and trainer.global_step % self.every == 0 and trainer.logger is not None:
            self.total += self._interval
            trainer.logger.log_metrics({"time/step_ms": 1000 * self._interval / self._steps},
                                       step=trainer.global_step)
            self._interval, self._steps = 0.0, 0

    def on_train_end(self, trainer, module):
        self.end = time.perf_counter()
        self.total += self._interval
        self._interval, self._steps = 0.0, 0
        if self.every and trainer.logger is not None:
            trainer.logger.log_metrics({"time/train_s": self.total}, step=trainer.global_step)

    @property
    def seconds(self) -> float:
        return self.end - self.start - self.validation
