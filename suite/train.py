"""One training run: config -> task, model, Lightning Trainer -> an MLflow run -> RunResult.

Used by ``rnnsuite train`` and by every sweep trial, so a trial is exactly a run.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import os
import shutil
import sys
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins import TorchCheckpointIO

from . import __version__, tasks
from .tasks.base import split_batch
from .config import RunConfig, build_config
from .diagnostics import DiagnosticsCallback
from .gpu import apply_precision_policy, precision_tags
from .lit import StopRun, SuiteModule
from .model import SequenceModel
from .provenance import lock_tags
from .registry import SuiteError
from .logger import INTERRUPTED_BEFORE_TRAINING, StepTimer, SuiteLogger, interrupts_outside_database_code
from .tracking import (artifact_location, check_tracking, first_line, git_commit, mark_stopped, mask,
                       prepare_local_store, resolve_tracking_uri, runs_dir)

STATUS_FINISHED, STATUS_FAILED, STATUS_KILLED = "FINISHED", "FAILED", "KILLED"


@dataclass
class RunResult:
    run_id: str
    status: str  # the MLflow status: FINISHED, FAILED (diverged or crashed) or KILLED (interrupted)
    metrics: dict[str, float] = field(default_factory=dict)
    reason: str = ""  # why a run did not finish
    outcome: str = "finished"  # finished, diverged, pruned, killed, failed

    @property
    def exit_code(self) -> int:
        return {"finished": 0, "pruned": 0, "killed": 130}.get(self.outcome, 1)


def resolve_device(name: str) -> str:
    if name == "cuda" and not torch.cuda.is_available():
        raise SuiteError("train.device=cuda but no CUDA GPU is available here; use --device cpu or auto")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def build_task(cfg: RunConfig):
    try:
        return tasks.build(cfg.task.name, **cfg.task.options)
    except SuiteError:
        raise  # already one line written for the user (a missing data folder names what to put where)
    except (TypeError, ValueError, OverflowError) as exc:  # an option of the wrong type reaching the task's code
        if isinstance(exc, SuiteError):  # the task's own one-line message, not wrapped in a second one
            raise
        raise SuiteError(f"task {cfg.task.name!r}: bad option value ({first_line(exc)})") from None


def chrono_horizon(cfg: RunConfig, task) -> int | None:
    """model.chrono_init: true -> the task's sequence length (the longest dependency it can ask for)."""
    c = cfg.model.chrono_init
    if c is False:
        return None
    if c is True:
        return max(3, int(task.seq_len))
    return int(c)


def build_model(cfg: RunConfig, task) -> SequenceModel:
    m = cfg.model
    opts = dict(m.cell_options)
    t_max = chrono_horizon(cfg, task)
    if t_max is not None:
        opts["chrono_init"] = t_max
    if m.init != "orthogonal":
        opts["init"] = m.init
        opts["init_range"] = m.init_range
    readout = getattr(task, "readout", "step")
    if m.bidirectional and readout == "step":
        raise SuiteError(f"model.bidirectional: task {task.name!r} predicts at every step from the past, which a "
                         "backward cell would see; use a classification task (one prediction per sequence)")
    try:
        model = SequenceModel(m.cell, task.encoding, task.input_size, task.output_size, m.hidden_size,
                              layers=m.layers, dropout=m.dropout, embedding_size=m.embedding_size,
                              tie_weights=m.tie_weights, readout=readout, seq_len=task.seq_len,
                              bidirectional=m.bidirectional, **opts)
    except SuiteError as exc:
        raise SuiteError(f"model: {exc}") from None
    except (ValueError, TypeError, OverflowError) as exc:
        raise SuiteError(f"model: {first_line(exc)}") from None
    if m.init == "uniform":
        model.reset_uniform(m.init_range)  # Zaremba et al. 2014: every parameter U(-r, r), embeddings too
    return model


def checkpoint_root(cfg: RunConfig) -> Path:
    """Where a run's checkpoint folder (<root>/<run id>) goes: train.checkpoint_dir, else <runs dir>/checkpoints."""
    if cfg.train.checkpoint_dir:
        return Path(cfg.train.checkpoint_dir).expanduser().absolute()
    return runs_dir() / "checkpoints"


def resolved_config(cfg: RunConfig, task, uri: str, ckpt_root: Path) -> RunConfig:
    """The config as the run uses it, for MLflow's params and config.yaml: the built task's options with every
    default filled in (task.length, task.batch_size, task.val_size, ...), the tracking URI the run goes to
    (masked: no password in params or artifacts) and the checkpoint folder, instead of the empty strings that
    mean "the default". Resuming from it builds the same task."""
    out = copy.deepcopy(cfg)
    out.task.options = dict(task.options)
    out.tracking.uri = mask(uri)
    out.train.checkpoint_dir = str(ckpt_root)
    return out


def task_record(task) -> tuple[dict, dict]:
    """(params, tags) that put the task's reference points on every run: the baseline (params task.baseline and
    task.baseline_metric, tag baseline.formula) and the "solved" criterion as tags: task.solved (its text; LM
    tasks have none and say so) and, where the task has a rule, task.solved_metric, task.solved_op,
    task.solved_threshold and task.solved_rule ("val/mse < 0.00166667").

    The criterion goes in tags, not params: the task.* params are the task's options (the report rebuilds the
    task from them), and the criterion follows from the options rather than being one."""
    b = task.baseline
    params = {"task.baseline": b.value, "task.baseline_metric": b.metric}
    tags = {"baseline.formula": b.formula, "task.solved": task.solved or "none (no solved criterion for this task)"}
    rule = task.solved_rule
    if rule is not None:
        tags.update({"task.solved_metric": f"val/{rule.metric}", "task.solved_op": rule.op,
                     "task.solved_threshold": repr(float(rule.threshold)), "task.solved_rule": rule.describe()})
    return params, tags


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def progress_bars_visible(stream=None) -> bool:
    """Progress bars draw with control codes (Lightning's on stdout, a pack's tqdm on stderr): on a terminal only.
    Redirected into a log they were nearly all of it (a `make demo > log` wrote 1.96 MB), and tell a reader
    nothing the sweep's own lines do not."""
    try:
        return (stream or sys.stdout).isatty()
    except (AttributeError, ValueError):  # replaced or closed stdout
        return False


def _quiet_libraries() -> None:
    for name in ("lightning.pytorch", "lightning.fabric", "lightning", "alembic", "mlflow"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # "Experiment with name X not found. Creating it.": a WARNING for the normal first run of a store; stderr
    # carries only rnnsuite's own lines (a failed run: exactly one)
    logging.getLogger("lightning.pytorch.loggers.mlflow").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*Consider setting `persistent_workers=True`.*")
    warnings.filterwarnings("ignore", message=".*The number of training batches.*")
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
    warnings.filterwarnings("ignore", category=FutureWarning, module="mlflow")
    warnings.filterwarnings("ignore", message=".*exists and is not empty.*")  # resuming writes beside old ckpts


def run(cfg: RunConfig, *, resume_run_id: str | None = None, tags: dict[str, str] | None = None,
        callbacks: list | None = None, parent_run_id: str | None = None) -> RunResult:
    """Train one model as configured; every outcome ends its MLflow run with a status and a reason."""
    _quiet_libraries()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    apply_precision_policy()  # one float32 precision for cuDNN's RNNs and the custom cells' matmuls
    ktags = kernel_tags(cfg, device)  # a bad $RNNSUITE_KERNELS is refused before anything is written
    task = build_task(cfg)
    pl.seed_everything(cfg.train.seed, verbose=False)
    model = build_model(cfg, task)
    uri = resolve_tracking_uri(cfg.tracking.uri)
    check_tracking(uri)  # an unreachable server or refused credentials: one line, nothing written
    ckpt_root = checkpoint_root(cfg)
    restart_of, damage, resumed = None, "", None
    if resume_run_id:
        last = ckpt_root / resume_run_id / "last.ckpt"
        if not last.exists():
            raise SuiteError(f"run {resume_run_id} has no checkpoint at {last}; cannot resume it")
        resumed, damage = load_checkpoint(last)
        if damage:  # a truncated or corrupt file: train again from scratch rather than crash on every resume
            restart_of, resume_run_id = resume_run_id, None
    prepare_local_store(uri)
    task_params, task_tags = task_record(task)
    run_tags = {"task": cfg.task.name, "cell": cfg.model.cell, "rnnsuite.version": __version__,
                "device": device, "seed": str(cfg.train.seed), **lock_tags(), **ktags, **task_tags,
                **precision_tags(cfg.train.precision, device), **(tags or {})}
    commit = git_commit()
    if commit:
        run_tags["git.commit"] = commit
    if parent_run_id:
        run_tags["mlflow.parentRunId"] = parent_run_id
    if restart_of:
        run_tags["rnnsuite.restart_of"] = restart_of
    logger = SuiteLogger(experiment_name=cfg.tracking.experiment, tracking_uri=uri,
                         run_name=cfg.tracking.run_name or None, tags=run_tags,
                         artifact_location=artifact_location(uri), run_id=resume_run_id)
    # Ctrl-C and SIGTERM end the run KILLED from here on (in the fit too), raised only outside database code so
    # that ending the run never waits on a lock an interrupted write still holds
    with interrupts_outside_database_code():
        try:
            run_id = logger.start()  # creates the experiment and the run
            return _prepare_and_fit(cfg, task, model, uri, ckpt_root, run_id, logger, logger.experiment, device,
                                    restart_of, damage, resume_run_id, resumed, task_params, callbacks)
        except (KeyboardInterrupt, SystemExit) as exc:  # before the fit began (during it, _fit ends the run itself)
            if logger.end_before_training(exc) is None:  # interrupted before MLflow had the run: nothing to end
                raise
            return RunResult(logger._run_id, STATUS_KILLED, reason=INTERRUPTED_BEFORE_TRAINING, outcome="killed")


def _prepare_and_fit(cfg, task, model, uri, ckpt_root, run_id, logger, client, device, restart_of, damage,
                     resume_run_id, resumed, task_params, callbacks) -> RunResult:
    """Record the new run's configuration (or reopen a resumed one), build the trainer and train."""
    ckpt_dir = ckpt_root / run_id
    ckpt_path = None
    start_step = 0
    if restart_of:
        print(f"rnnsuite: the checkpoint of run {restart_of} is damaged ({damage}); training from step 0 again "
              f"as run {run_id}", file=sys.stderr, flush=True)
        client.set_tag(restart_of, "rnnsuite.restarted_as", run_id)
        client.set_tag(restart_of, "failure.reason", f"checkpoint damaged ({damage}); restarted as run {run_id}")
    if resume_run_id:
        client.update_run(run_id, status="RUNNING")
        ckpt_path = str(ckpt_dir / "last.ckpt")
        start_step = int(resumed.get("global_step", 0))
        del resumed
    else:
        resolved = resolved_config(cfg, task, uri, ckpt_root)
        params = resolved.flat()
        params.update({"cell": cfg.model.cell, "n_params": count_params(model), "seed": cfg.train.seed,
                       **task_params})
        logger.log_params(params)
        client.log_text(run_id, mask(resolved.to_yaml()), "config.yaml")  # no password in an artifact
        client.set_tag(run_id, "rnnsuite.checkpoint_dir", str(ckpt_dir))

    data = TaskData(task, cfg.train.seed, start_step)
    steps_per_epoch = getattr(task, "steps_per_epoch", None)
    module = SuiteModule(model, task, cfg.optim, cfg.train, steps_per_epoch)
    diag_batch = _diag_batch(task, cfg.train.diag_batch)
    tmp = Path(tempfile.mkdtemp(prefix="rnnsuite-diag-"))
    monitor = f"val/{task.metric}"
    cbs = [DiagnosticsCallback(task, diag_batch, cfg.train.diag_every, tmp),
           ModelCheckpoint(dirpath=str(ckpt_dir), filename="best", monitor=monitor,
                           mode="min" if task.direction == "minimize" else "max", save_last=True,
                           save_top_k=1, auto_insert_metric_name=False),
           _InterruptCheckpoint(ckpt_dir), StepTimer(cfg.train.log_every), *(callbacks or [])]
    try:
        with _deterministic_flag_restored():
            trainer = pl.Trainer(**_trainer_args(cfg, task, device), logger=logger, callbacks=cbs,
                                 plugins=[AtomicCheckpointIO()])
            return _fit(trainer, module, data, ckpt_path, task, logger, client, run_id)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def _deterministic_flag_restored():
    """Lightning's Trainer(deterministic=True) turns torch's deterministic algorithms on for the whole process and
    never off: every later run of that process (a sweep worker's next trial, a notebook) would then run, and
    tag its kernels, as deterministic. The flag is put back when the run ends."""
    on, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(on, warn_only=warn_only)


def _fit(trainer, module, data, ckpt_path, task, logger, client, run_id) -> RunResult:
    result = RunResult(run_id, STATUS_FINISHED)
    final: dict[str, float] = {}
    try:  # run's interrupt handler is in place: Ctrl-C and SIGTERM arrive here as KeyboardInterrupt
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
        if trainer.interrupted:
            raise KeyboardInterrupt
        if _last_val_step(trainer) != trainer.global_step:
            trainer.validate(module, datamodule=data, verbose=False)
        final = _scalars(trainer.callback_metrics)
        if task.test_batches("cpu") is not None:
            trainer.test(module, datamodule=data, verbose=False)
            final.update(_scalars(trainer.callback_metrics))
    except StopRun as exc:
        result = RunResult(run_id, exc.status, reason=f"{exc.outcome}: {exc}", outcome=exc.outcome)
        mark_stopped(client, run_id, exc.outcome, result.reason, exc.step)
    except (KeyboardInterrupt, SystemExit):
        result = RunResult(run_id, STATUS_KILLED, reason=f"interrupted at step {trainer.global_step}",
                           outcome="killed")
        client.set_tag(run_id, "failure.reason", result.reason)
    except Exception as exc:
        reason = f"{exc.__class__.__name__}: {mask(str(exc))[:300]}"
        with contextlib.suppress(Exception):  # the tracking server may be what failed: keep the first error
            client.set_tag(run_id, "failure.reason", reason)
            logger.terminate(STATUS_FAILED)
        raise
    result.metrics = final or _scalars(trainer.callback_metrics)
    logger.terminate(result.status)
    return result


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written atomically: a temporary file in the checkpoint's own folder, fsync, then os.replace.

    A process killed mid-write leaves the previous checkpoint intact (or none), never a truncated one. Lightning's
    own save stages the bytes in the system temp folder and moves them, which is a copy (not atomic) when that
    folder is another file system (a tmpfs /tmp), leaves the whole file behind there when killed, and syncs
    nothing to disk.
    """

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(path.parent)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX: a directory entry is data of the directory)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove_stale_temporaries(folder: Path) -> None:
    """Temporary files of writers that died mid-save (``.NAME.PID.tmp`` whose PID is gone)."""
    for tmp in folder.glob(".*.tmp"):
        pid = tmp.name.rsplit(".", 2)[-2]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            with contextlib.suppress(OSError):
                tmp.unlink()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def load_checkpoint(path: Path) -> tuple[dict | None, str]:
    """(the checkpoint, "") if `path` loads as a Lightning checkpoint, else (None, what is wrong with it)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # truncated: "PytorchStreamReader failed reading zip archive", EOFError, ...
        return None, first_line(exc, 120)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "global_step" not in ckpt:
        return None, "not a Lightning checkpoint"
    return ckpt, ""


class TaskData(pl.LightningDataModule):
    """Adapts a Task to Lightning's data hooks; batches are made on the training device by the task."""

    def __init__(self, task, seed: int, start_step: int):
        super().__init__()
        self.task, self.seed, self.start_step = task, seed, start_step

    def _device(self):
        return self.trainer.strategy.root_device

    def train_dataloader(self):
        # A resumed run continues with fresh batches: seeded by (seed, step), not replayed.
        seed = self.seed if not self.start_step else self.seed * 1_000_003 + self.start_step
        return _Batches(lambda: self.task.train_batches(seed, self._device()),
                        getattr(self.task, "steps_per_epoch", None))

    def val_dataloader(self):
        # wrapped: Lightning would read a plain list as a list of dataloaders
        batches = self.task.val_batches(self._device())
        return _Batches(lambda: batches, len(batches))

    def test_dataloader(self):
        batches = self.task.test_batches(self._device()) or []
        return _Batches(lambda: batches, len(batches))

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return batch  # already made on the device


class _Batches:
    """A re-iterable view of a batch-producing function (one call per epoch)."""

    def __init__(self, make, length: int | None):
        self.make, self.length = make, length

    def __iter__(self):
        return iter(self.make())

    def __len__(self):
        if self.length is None:
            raise TypeError("infinite")
        return self.length


def kernel_tags(cfg: RunConfig, device: str) -> dict[str, str]:
    """Tag ``kernels``: the CPU kernels the custom cells' fused loops use (suite.cells.base.kernel_choice:
    $RNNSUITE_KERNELS plain or tuned; train.deterministic keeps the plain ones). Empty off the CPU."""
    if device != "cpu":
        return {}
    from .cells.base import _PLAIN_DETERMINISTIC, kernel_choice

    return {"kernels": (_PLAIN_DETERMINISTIC if cfg.train.deterministic else kernel_choice()).describe()}


def _trainer_args(cfg: RunConfig, task, device: str) -> dict:
    t = cfg.train
    spe = getattr(task, "steps_per_epoch", None)
    progress = t.progress and not os.environ.get("RNNSUITE_QUIET") and progress_bars_visible()
    args = dict(accelerator="gpu" if device == "cuda" else "cpu", devices=1, precision=t.precision,
                log_every_n_steps=t.log_every, enable_progress_bar=progress, enable_model_summary=False,
                num_sanity_val_steps=0, deterministic=t.deterministic or None, gradient_clip_val=None,
                enable_checkpointing=True, default_root_dir=str(Path(tempfile.gettempdir()) / "rnnsuite-pl"))
    if t.epochs and spe:
        args.update(max_epochs=t.epochs, max_steps=-1)
    else:
        args.update(max_steps=t.steps, max_epochs=-1)
        if spe:  # an LM trained for a number of steps: validate every val_every steps within epochs
            args.update(val_check_interval=min(t.val_every, spe, t.steps))
        else:
            args.update(val_check_interval=min(t.val_every, t.steps), check_val_every_n_epoch=None)
    return args


def _scalars(metrics) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if v.numel() == 1}


def _last_val_step(trainer) -> int | None:
    """The optimizer step of the run's last validation (None: none yet). Not the checkpoint's last saved step:
    a validation that did not beat the best saves nothing, and the run would validate its last step twice."""
    return getattr(trainer.lightning_module, "validated_at", None)


def _diag_batch(task, size: int):
    """The fixed diagnostic batch: the first `size` sequences of the first validation batch."""
    return split_batch(task.val_batches("cpu")[0], size)[0]


class _InterruptCheckpoint(pl.Callback):
    """On Ctrl-C / SIGTERM, write last.ckpt so ``rnnsuite train --resume RUN_ID`` continues from there."""

    def __init__(self, folder: Path):
        self.folder = folder

    def on_exception(self, trainer, module, exception):
        if isinstance(exception, KeyboardInterrupt):
            self.folder.mkdir(parents=True, exist_ok=True)
            trainer.save_checkpoint(str(self.folder / "last.ckpt"))


def load_run_config(tracking_uri: str | None, run_id: str) -> RunConfig:
    """The resolved config a run logged (its config.yaml artifact), for --resume."""
    import mlflow
    import yaml

    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise SuiteError(f"cannot resume run {run_id!r}: no MLflow database at {uri[len('sqlite:///'):]}")
    check_tracking(uri)
    client = mlflow.MlflowClient(uri)
    try:
        client.get_run(run_id)
        path = client.download_artifacts(run_id, "config.yaml", tempfile.mkdtemp())
    except Exception as exc:
        raise SuiteError(f"cannot resume run {run_id!r}: {first_line(exc)}") from None
    cfg = build_config(yaml.safe_load(Path(path).read_text()))
    cfg.tracking.uri = uri  # the logged copy has its password masked: use the store the run was found in
    return cfg

