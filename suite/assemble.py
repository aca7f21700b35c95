"""One training run assembled from its config: the task (from a name, a named setting or a file), the model, the
device, the tags and params that record it, the config as the run resolves it.

Used by :func:`suite.train.run`, by every model of a pack (:mod:`suite.packed`) and by a sweep's checks
(:mod:`suite.sweep`), so a run is built and recorded the same way wherever it is trained.
"""
from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path

import torch

from . import __version__, tasks
from .cells import CELLS
from .cells.base import PLAIN_DETERMINISTIC, kernel_choice
from .config import RunConfig, load_yaml
from .gpu import precision_tags
from .model import SequenceModel
from .provenance import lock_tags
from .registry import SuiteError, did_you_mean
from .tasks.base import split_batch
from .tracking import first_line, git_commit, mask, runs_dir


# ---------------------------------------------------------------------------------------------- the task
def task_layer(ref: str, relative_to: Path | None = None) -> tuple[dict, str]:
    """A task reference as ``--task`` and a sweep file's ``task:`` take it -> (a config layer, its label): a YAML
    file (a relative path not found as given is looked for beside `relative_to`), a named setting, or a
    registered task. The label (the file's stem, else the reference) is the task part of a sweep's study names."""
    is_file = ref.endswith((".yaml", ".yml"))
    label = Path(ref).stem if is_file else ref
    if is_file or "/" in ref:
        path = Path(ref)
        if relative_to is not None and not path.is_absolute() and not path.exists():
            path = Path(relative_to).parent / ref
        return load_yaml(path), label
    if ref in tasks.setting_paths():
        return tasks.load_settings(ref), label
    if ref not in tasks.TASKS:
        settings = list(tasks.setting_paths())
        raise SuiteError(f"unknown task {ref!r}{did_you_mean(ref, [*tasks.TASKS.names(), *settings])}; tasks: "
                         f"{', '.join(tasks.TASKS.names())}; named settings: {', '.join(settings)} (or a YAML path)")
    return {"task": {"name": ref}}, label


def check_names(cfg: RunConfig) -> None:
    """The task, the cell and their options are registered ones: one line if not, checked before anything heavy
    is imported (``rnnsuite train`` calls it before Lightning, whose import writes caches to the temp folder)."""
    tasks.TASKS.check_options(cfg.task.name, cfg.task.options)  # an unknown name is the registry's own error
    CELLS.check_options(cfg.model.cell, cfg.model.cell_options)


def build_task(cfg: RunConfig):
    try:
        return tasks.build(cfg.task.name, **cfg.task.options)
    except SuiteError:
        raise  # already one line written for the user (a missing data folder names what to put where)
    except (TypeError, ValueError, OverflowError) as exc:  # an option of the wrong type reaching the task's code
        raise SuiteError(f"task {cfg.task.name!r}: bad option value ({first_line(exc)})") from None


def diag_batch(task, size: int):
    """The fixed diagnostic batch: the first `size` sequences of the first validation batch."""
    return split_batch(task.val_batches("cpu")[0], size)[0]


# ---------------------------------------------------------------------------------------------- the model
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


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


# ---------------------------------------------------------------------------------------------- the device
def resolve_device(name: str) -> str:
    if name == "cuda" and not torch.cuda.is_available():
        raise SuiteError("train.device=cuda but no CUDA GPU is available here; use --device cpu or auto")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def kernel_tags(cfg: RunConfig, device: str) -> dict[str, str]:
    """Tag ``kernels``: the CPU kernels the custom cells' fused loops use (suite.cells.base.kernel_choice:
    $RNNSUITE_KERNELS plain or tuned; train.deterministic keeps the plain ones). Empty off the CPU."""
    if device != "cpu":
        return {}
    return {"kernels": (PLAIN_DETERMINISTIC if cfg.train.deterministic else kernel_choice()).describe()}


def quiet_libraries() -> None:
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


# ---------------------------------------------------------------------------------------------- the record
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


def run_tags(cfg: RunConfig, task, device: str, *extra: dict[str, str], parent_run_id: str | None = None
             ) -> dict[str, str]:
    """The tags of a new run (alone or in a pack): what trained on what, where, with which code and lock, the
    task's reference points; then `extra` in order (later wins), the commit and the parent run."""
    tags = {"task": cfg.task.name, "cell": cfg.model.cell, "rnnsuite.version": __version__, "device": device,
            "seed": str(cfg.train.seed), **lock_tags(), **task_record(task)[1],
            **precision_tags(cfg.train.precision, device)}
    for more in extra:
        tags.update(more)
    commit = git_commit()
    if commit:
        tags["git.commit"] = commit
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    return tags


def log_run_config(logger, run_id: str, cfg: RunConfig, task, model, uri: str, ckpt_root: Path) -> None:
    """A new run's params (the resolved config, cell, parameter count, seed and the task's baseline) and its
    config.yaml artifact, with no password in either."""
    resolved = resolved_config(cfg, task, uri, ckpt_root)
    params = resolved.flat()
    params.update({"cell": cfg.model.cell, "n_params": count_params(model), "seed": cfg.train.seed,
                   **task_record(task)[0]})
    logger.log_params(params)
    logger.experiment.log_text(run_id, mask(resolved.to_yaml()), "config.yaml")
