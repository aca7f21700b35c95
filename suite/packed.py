"""Packed trials: M models of one shape trained together, one optimizer step for all, each as if alone.

Recurrent models in these benchmarks are small, so one of them leaves most of a machine idle: every time step is
a handful of tiny kernels whose launch and dispatch cost more than their arithmetic. A pack runs the M models of
a sweep's trials through ONE batched forward and backward: their parameters are stacked along a new leading
dimension (differentiably, from each model's own leaf tensors, every step), one fused time loop runs all M
recurrences (the cell's own hand-written step and backward on the stacked weights, see
:class:`suite.batched.BatchedModel`), and the per-model losses are summed, so each model's gradient lands in its
own parameters exactly as if it had trained alone. Everything after the backward pass is per model and uses the
same code as a single run: its own torch optimizer and schedule (:func:`suite.lit.build_optimizer`), its own
global-norm clipping, gradient-norm and gate diagnostics on its own module, its own MLflow run with the same
metrics, params, tags and artifacts, and its own pruning decisions. A model that diverges (NaN/inf loss) or is
pruned leaves the pack; the others go on.

Why not Lightning here: a Trainer fits one LightningModule with one set of loggers; a pack needs M optimizers,
M MLflow runs and members that leave mid-fit. The loop below is the training step of :class:`suite.lit.SuiteModule`
spelled out for M models, and a test checks that it reproduces single (Lightning) runs to 1e-4.

What may differ inside a pack (``FREE_KEYS``): every optimizer setting, the seed (hence data and initialisation),
dropout, initialisation scheme and chrono init. Everything else (cell, sizes, task, steps) defines the pack's
shape: :func:`pack_key` groups trials by it.
"""
from __future__ import annotations

import math
import os
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from tqdm import tqdm

from .assemble import (build_model, build_task, checkpoint_root, diag_batch, log_run_config, quiet_libraries,
                       resolve_device, run_tags)
from .batched import BatchedModel, packs_fast
from .cells.base import KernelChoice, kernel_choice
from .config import RunConfig
from .diagnostics import Recorder, batch_to, gate_grad_norms
from .finite import FiniteWatch, check_due
from .gpu import apply_precision_policy, deterministic_algorithms
from .lit import build_optimizer
from .logger import SuiteLogger, interrupts_outside_database_code
from .registry import SuiteError
from .tracking import artifact_location, mark_stopped, mask, prepare_local_store, resolve_tracking_uri
from .train import RunResult, progress_bars_visible

FREE_PREFIXES = ("optim.",)
FREE_KEYS = {"train.seed", "model.dropout", "model.init", "model.init_range", "model.chrono_init"}


def pack_key(cfg: RunConfig) -> tuple:
    """What must be equal for two runs to share a pack: every setting except the free ones and tracking."""
    flat = cfg.flat()
    return tuple(sorted((k, repr(v)) for k, v in flat.items()
                        if not k.startswith(FREE_PREFIXES) and k not in FREE_KEYS and not k.startswith("tracking.")))


def packable(cfg: RunConfig) -> str | None:
    """None if runs of this config can be packed, else the reason (one line)."""
    if cfg.train.precision != "32":
        return f"train.precision={cfg.train.precision}: a pack trains in float32 only"
    task = build_task(cfg)
    if getattr(task, "steps_per_epoch", None):
        return f"task {cfg.task.name} carries state across windows in epochs; pack only synthetic tasks"
    if cfg.model.bidirectional:
        return "model.bidirectional: a pack runs one direction per layer"
    with torch.device("meta"):
        model = build_model(cfg, task) if cfg.model.init != "uniform" else None
    if model is not None and any(True for _ in model.buffers()):
        return f"cell {cfg.model.cell} keeps running statistics (batch norm) that a pack cannot share"
    return None


@dataclass
class Member:
    """One run of a pack: its config and how it reports (the sweep passes its trial here)."""

    cfg: RunConfig
    tags: dict[str, str] = field(default_factory=dict)
    parent_run_id: str | None = None
    on_start: Callable[[str], None] | None = None  # called with the MLflow run id once it exists
    should_prune: Callable[[float, int], bool] | None = None  # (objective value, step) -> prune now?
    monitor: str = ""  # the metric should_prune receives, e.g. "val/mse"
    on_end: Callable[[Any], None] | None = None  # called with its RunResult the moment it leaves the pack


# ---------------------------------------------------------------------------------------------- one member's run
class _Run:
    """A member's model, optimizer, MLflow run and diagnostics: the per-model half of a packed step."""

    def __init__(self, index: int, member: Member, task, model: nn.Module, total_steps: int, device: str,
                 size: int, batch, pack_id: str = ""):
        self.index, self.member, self.cfg, self.model = index, member, member.cfg, model
        self.opt, self.sched = build_optimizer(model.parameters(), self.cfg.optim, total_steps, None)
        self.batches = task.train_batches(self.cfg.train.seed, device)
        self.alive = True
        self.outcome, self.status, self.reason = "finished", "FINISHED", ""
        self.metrics: dict[str, float] = {}
        self.diagnostics = Recorder(task, batch)  # gate statistics and gradient profiles on the fixed batch
        self.train_s = 0.0  # this member's share of the pack's training time
        self.logger = _open_logger(self.cfg, task, model, member, device, size, index, pack_id)
        self.run_id = self.logger.run_id
        if member.on_start:
            member.on_start(self.run_id)

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.logger.log_metrics(metrics, step=step)
        self.metrics.update({k: v for k, v in metrics.items() if "/" in k})

    def diagnose(self, step: int) -> None:
        stats = self.diagnostics.measure(self.model, step)
        if stats is not None:
            self.log(stats, step=step)

    def end(self, status: str, outcome: str, reason: str = "", step: int | None = None) -> None:
        """Leave the pack: flush, write the diagnostics artifacts, tag why, set the MLflow status."""
        self.alive = False
        self.status, self.outcome, self.reason = status, outcome, reason
        client, rid = self.logger.experiment, self.run_id
        if reason:
            mark_stopped(client, rid, outcome, reason, step)
        self.upload()
        self.logger.terminate(status)
        if self.member.on_end:  # e.g. the sweep tells the trial now: a later kill of the pack cannot lose it
            self.member.on_end(self.result())

    def upload(self) -> None:
        with tempfile.TemporaryDirectory(prefix="rnnsuite-pack-diag-") as folder:  # MLflow keeps its own copies
            for path in self.diagnostics.write(Path(folder)):
                self.logger.experiment.log_artifact(self.run_id, str(path), "diagnostics")

    def result(self) -> RunResult:
        final = {k: v for k, v in self.metrics.items() if k.startswith(("train/", "val/", "test/"))}
        return RunResult(self.run_id, self.status, final, self.reason, self.outcome)


def _kernels(model: nn.Module) -> str:
    """Tag ``kernels`` of a pack on the CPU: batched fused loops (baddbmm), or vmapped reference steps."""
    det = "; deterministic algorithms on" if torch.are_deterministic_algorithms_enabled() else ""
    if packs_fast(model):
        return KernelChoice(False, kernel_choice().tanh_via_sigmoid, f"packed: batched fused loops (baddbmm){det}"
                            ).describe()
    return KernelChoice(False, False, f"packed: vmapped reference steps{det}").describe()


def _open_logger(cfg: RunConfig, task, model, member: Member, device: str, size: int, index: int,
                 pack_id: str = ""):
    """The member's MLflow run with the params, tags and config artifact of a single run (train.run)."""
    uri = resolve_tracking_uri(cfg.tracking.uri)
    prepare_local_store(uri)
    pack = {"pack.size": str(size), "pack.index": str(index), **({"pack.id": pack_id} if pack_id else {})}
    kernels = {"kernels": _kernels(model)} if device == "cpu" else {}
    tags = run_tags(cfg, task, device, pack, member.tags, kernels, parent_run_id=member.parent_run_id)
    logger = SuiteLogger(experiment_name=cfg.tracking.experiment, tracking_uri=uri,
                         run_name=cfg.tracking.run_name or None, tags=tags, artifact_location=artifact_location(uri))
    try:
        run_id = logger.start()
        log_run_config(logger, run_id, cfg, task, model, uri, checkpoint_root(cfg))  # as train.run logs it
    except BaseException as exc:  # the run exists but is not the pack's yet: end it here
        logger.end_before_training(exc)
        raise
    return logger


# ---------------------------------------------------------------------------------------------- the pack
def run_pack(members: list[Member]) -> list:
    """Train every member's config together; returns one :class:`suite.train.RunResult` per member, in order."""
    if not members:
        return []
    keys = {pack_key(m.cfg) for m in members}
    if len(keys) > 1:
        raise SuiteError("a pack holds runs of one shape only (same cell, sizes, task and steps)")
    apply_precision_policy()  # as train.run: one float32 precision for every cell
    # train.deterministic is part of the pack's shape (pack_key), so every member asks the same
    with interrupts_outside_database_code(), deterministic_algorithms(members[0].cfg.train.deterministic):
        return _Pack(members).fit()  # SIGTERM ends a pack like Ctrl-C: its live members' runs end KILLED


class _Pack:
    def __init__(self, members: list[Member]):
        cfg = members[0].cfg
        quiet_libraries()
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        reason = packable(cfg)
        if reason:
            raise SuiteError(f"cannot pack: {reason}")
        self.cfg, self.device = cfg, resolve_device(cfg.train.device)
        self.task = build_task(cfg)
        self.steps = cfg.train.steps
        models = []
        for m in members:  # the same order of seeding and building as train.run: identical initialisation
            pl.seed_everything(m.cfg.train.seed, verbose=False)
            models.append(build_model(m.cfg, self.task).to(self.device))
        self.batched = BatchedModel(models, [m.cfg.model.dropout for m in members])
        self.id = uuid.uuid4().hex[:12]  # tag pack.id: which runs trained together
        batch = batch_to(diag_batch(self.task, cfg.train.diag_batch), self.device)
        self.runs = []
        try:  # a kill while the members' runs are being created ends those already created, not leaves them RUNNING
            for i, (m, model) in enumerate(zip(members, models)):
                self.runs.append(_Run(i, m, self.task, model, self.steps, self.device, len(members), batch,
                                      self.id))
        except BaseException as exc:
            self._end_alive(exc)
            raise
        self.finite = FiniteWatch(len(members))  # each member's first non-finite loss, on the device
        self.val = self.task.val_batches(self.device)
        self.test = self.task.test_batches(self.device)

    def _end_alive(self, exc: BaseException) -> None:
        """The pack stopped (KILLED: Ctrl-C, SIGTERM) or crashed (FAILED, with the error): so does every live member."""
        killed = isinstance(exc, (KeyboardInterrupt, SystemExit))
        for r in self.runs:
            if r.alive:
                if killed:
                    r.end("KILLED", "killed", "interrupted (pack stopped)")
                else:
                    r.end("FAILED", "failed", f"{exc.__class__.__name__}: {mask(str(exc))[:300]}")

    # ------------------------------------------------------------------ the loop
    def fit(self) -> list:
        t = self.cfg.train
        bar = _progress(self.steps, len(self.runs), enabled=t.progress and not os.environ.get("RNNSUITE_QUIET"))
        val_interval = min(t.val_every, self.steps)  # as train.py's val_check_interval
        last_val = None
        interval = 0.0  # pack seconds since the last time/step_ms, shared out over the live members
        try:
            self.diagnose(0)
            for s in range(self.steps):
                alive = [r for r in self.runs if r.alive]
                if not alive:
                    break
                started = time.perf_counter()
                losses = self.train_step(s, alive)
                done = s + 1
                if t.diag_every and done % t.diag_every == 0:
                    self.diagnose(done)  # part of a step's cost, as StepTimer counts it for single runs
                elapsed = time.perf_counter() - started
                for r in alive:
                    r.train_s += elapsed / len(alive)
                interval += elapsed / len(alive)
                if done % t.log_every == 0:
                    for r in alive:
                        if r.alive:
                            r.log({"time/step_ms": 1000 * interval / t.log_every}, step=done)
                            r.logger.flush()  # as Lightning's save() per logging interval: live in the UI
                    interval = 0.0
                if done % val_interval == 0:
                    self.validate(s)
                    last_val = done
                if bar is not None:
                    bar.update(1)
                    if losses:  # read back on this step anyway
                        bar.set_postfix(alive=sum(r.alive for r in self.runs),
                                        loss=f"{sum(losses) / len(losses):.4g}")
            self.diagnose(self.steps)
            for r in self.runs:
                if r.alive:
                    r.log({"time/train_s": r.train_s}, step=self.steps)
            if last_val != self.steps and any(r.alive for r in self.runs):
                self.validate(self.steps - 1, prune=False)
            if self.test is not None and any(r.alive for r in self.runs):
                self.evaluate(self.test, "test", self.steps - 1)
            for r in self.runs:
                if r.alive:
                    r.end("FINISHED", "finished")
        except BaseException as exc:
            self._end_alive(exc)
            raise
        finally:
            if bar is not None:
                bar.close()
        return [r.result() for r in self.runs]

    def train_step(self, s: int, alive: list[_Run]) -> list[float]:
        """One optimizer step of every live model; returns their losses where this step reads them back (a step
        that records something: :func:`suite.finite.check_due`), else []. s is the 0-based step index.

        Nothing here reads a tensor back to the host on the other steps: the losses' finiteness is kept on the
        device (:class:`suite.finite.FiniteWatch`) and read, with the losses, in one transfer when due; a model
        whose loss turned NaN/inf in between leaves then, with the step and value of its first bad loss, before
        anything of it is recorded (as DivergedError in a single run)."""
        t = self.cfg.train
        batches = [next(r.batches) for r in alive]
        x = torch.stack([b.x for b in batches])
        params, buffers = self.batched.stacked([r.model for r in self.runs], [r.index for r in alive])
        self.batched.train(True)
        out, _ = self.batched(params, buffers, x)  # (A, B, T, output_size)
        losses = [self.task.loss(out[j], b) for j, b in enumerate(batches)]
        stacked = torch.stack(losses)
        self.finite.watch(stacked, s, [r.index for r in alive])
        values: list[float] = []
        keep = list(range(len(alive)))
        if check_due(s, t, self.steps):
            bad, values = self.finite.read(stacked)  # the one host transfer of this step
            for j, r in enumerate(alive):
                if bad[r.index] is not None:
                    step, value = bad[r.index]
                    r.end("FAILED", "diverged", f"diverged: loss is {value} at step {step}", step=step)
            keep = [j for j, r in enumerate(alive) if r.alive]
        if not keep:
            return []
        runs = [alive[j] for j in keep]
        self.backward(torch.stack([losses[j] for j in keep]).sum(), params, runs, keep)
        log_now = (s + 1) % t.log_every == 0
        for j, r in zip(keep, runs):
            if s % t.grad_every == 0:
                r.log(gate_grad_norms(r.model), step=s)
            clip = r.cfg.optim.clip
            params_r = [p for g in r.opt.param_groups for p in g["params"] if p.grad is not None]
            norm = torch.nn.utils.clip_grad_norm_(params_r, clip if clip > 0 else math.inf, foreach=True)
            r.opt.step()
            lr = r.opt.param_groups[0]["lr"]  # Lightning logs it before the scheduler steps
            r.sched.step()
            r.opt.zero_grad(set_to_none=True)
            if log_now:
                n = float(norm)
                r.log({"train/loss": values[j], "train/grad_norm": n,
                       "train/grad_norm_clipped": min(n, clip) if clip > 0 else n, "train/lr": lr}, step=s)
        return [values[j] for j in keep] if values else []

    def backward(self, loss: Tensor, params: dict[str, Tensor], runs: list[_Run], rows: list[int]) -> None:
        """Each model's gradients, from the summed losses, as distinct tensors in its own ``.grad``.

        Not ``loss.backward()``: the backward of ``torch.stack`` hands every leaf a view of one gradient buffer,
        and where the graph adds two stacked parameters (lstm folds ``bias_ih + bias_hh``) both views share
        memory, so in-place clipping would scale that gradient twice. Gradients of the stacked tensors are
        de-aliased here, then each model gets its own slice.
        """
        names = self.batched.names
        grads = list(torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True))
        seen: set[int] = set()
        for k, g in enumerate(grads):
            if g is None:
                continue
            if g.untyped_storage().data_ptr() in seen:
                grads[k] = g = g.clone()
            seen.add(g.untyped_storage().data_ptr())
        for r, j in zip(runs, rows):
            own = dict(r.model.named_parameters())
            for n, g in zip(names, grads):
                own[n].grad = None if g is None else g[j]

    # ------------------------------------------------------------------ evaluation and diagnostics
    @torch.no_grad()
    def evaluate(self, batches, stage: str, step: int) -> None:
        alive = [r for r in self.runs if r.alive]
        params, buffers = self.batched.stacked([r.model for r in self.runs], [r.index for r in alive])
        self.batched.train(False)
        totals: list[dict] = [{} for _ in alive]
        for batch in batches:
            out, _ = self.batched(params, buffers, batch.x, shared_input=True)  # the same fixed set for all
            for j in range(len(alive)):
                for name, (total, count) in self.task.score(out[j], batch).items():
                    old = totals[j].get(name, (0.0, 0))
                    totals[j][name] = (old[0] + total.double(), old[1] + count)
        for r, tot in zip(alive, totals):
            metrics = self.task.summarize({k: (float(v), n) for k, (v, n) in tot.items()})
            r.log({f"{stage}/{k}": float(v) for k, v in metrics.items()}, step=step)

    def validate(self, s: int, prune: bool = True) -> None:
        self.evaluate(self.val, "val", s)
        if not prune:
            return
        for r in self.runs:
            m = r.member
            if r.alive and m.should_prune is not None and m.monitor in r.metrics:
                value = r.metrics[m.monitor]
                if m.should_prune(value, s + 1):
                    r.end("FINISHED", "pruned", f"pruned: pruned at step {s + 1} ({m.monitor}={value:.4g})",
                          step=s + 1)

    def diagnose(self, step: int) -> None:
        """Gate statistics and the gradient profile of every live model on the fixed diagnostic batch."""
        for r in self.runs:
            if r.alive:
                r.diagnose(step)


def _progress(total: int, size: int, enabled: bool):
    if not enabled or not progress_bars_visible(sys.stderr):  # tqdm draws on stderr: on a terminal only
        return None
    return tqdm(total=total, desc=f"pack of {size}", unit="step", dynamic_ncols=True, leave=False)
