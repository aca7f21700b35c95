"""Packed trials: M models of one shape trained together, one optimizer step for all, each as if alone.

Recurrent models in these benchmarks are small, so one of them leaves most of a machine idle: every time step is
a handful of tiny kernels whose launch and dispatch cost more than their arithmetic. A pack runs the M models of
a sweep's trials through ONE batched forward and backward: their parameters are stacked along a new leading
dimension (differentiably, from each model's own leaf tensors, every step), one fused time loop runs all M
recurrences (the cell's own hand-written step and backward on the stacked weights, see :class:`BatchedModel`),
and the per-model losses are summed, so each model's gradient lands in its own parameters exactly as if it had
trained alone. Everything after the backward pass is per model and uses the same code as a single run: its own
torch optimizer and schedule (:func:`suite.lit.build_optimizer`), its own global-norm clipping, gradient-norm
and gate diagnostics on its own module, its own MLflow run with the same metrics, params, tags and artifacts, and
its own pruning decisions. A model that diverges (NaN/inf loss) or is pruned leaves the pack; the others go on.

Why not Lightning here: a Trainer fits one LightningModule with one set of loggers; a pack needs M optimizers,
M MLflow runs and members that leave mid-fit. The loop below is the training step of :class:`suite.lit.SuiteModule`
spelled out for M models, and a test checks that it reproduces single (Lightning) runs to 1e-4.

What may differ inside a pack (``FREE_KEYS``): every optimizer setting, the seed (hence data and initialisation),
dropout, initialisation scheme and chrono init. Everything else (cell, sizes, task, steps) defines the pack's
shape: :func:`pack_key` groups trials by it.
"""
from __future__ import annotations

import copy
import math
import os
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import MethodType
from typing import Any, Callable

import torch
from torch import Tensor, nn

from . import __version__
from .config import RunConfig
from .model import pool
from .provenance import lock_tags
from .registry import SuiteError
from .tracking import mark_stopped

FREE_PREFIXES = ("optim.",)
FREE_KEYS = {"train.seed", "model.dropout", "model.init", "model.init_range", "model.chrono_init"}


def pack_key(cfg: RunConfig) -> tuple:
    """What must be equal for two runs to share a pack: every setting except the free ones and tracking."""
    flat = cfg.flat()
    return tuple(sorted((k, repr(v)) for k, v in flat.items()
                        if not k.startswith(FREE_PREFIXES) and k not in FREE_KEYS and not k.startswith("tracking.")))


def packable(cfg: RunConfig) -> str | None:
    """None if runs of this config can be packed, else the reason (one line)."""
    from .train import build_task

    if cfg.train.precision != "32":
        return f"train.precision={cfg.train.precision}: a pack trains in float32 only"
    task = build_task(cfg)
    if getattr(task, "steps_per_epoch", None):
        return f"task {cfg.task.name} carries state across windows in epochs; pack only synthetic tasks"
    from .train import build_model

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


# ---------------------------------------------------------------------------------------------- the batched model
def _reference_forward(self, x: Tensor, state):
    """The cell's maths from its own ``project``/``step``: what vmap maps over for cells without ``packs``."""
    xp = self.project(x).transpose(0, 1)  # (T, B, K)
    hs = []
    for xp_t in xp:
        state = self.step(xp_t, state)
        hs.append(state[0])
    return torch.stack(hs, 1), state


class _PackDropout(nn.Module):
    """Dropout whose rate is a per-model buffer (stacked like a parameter, so each model keeps its own)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("p", torch.zeros(()))

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x
        return _drop(x, 1.0 - self.p)


def _drop(x: Tensor, keep: Tensor) -> Tensor:
    return x * (torch.rand_like(x) < keep).to(x.dtype) / keep


class _LayerCall(nn.Module):
    """What :func:`torch.func.functional_call` swaps a pack's stacked parameters into: a layer's ``project``
    (under vmap, one model at a time) or its ``fused_weights`` (once, stacked (M, ...))."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x: Tensor | None = None):
        return self.layer.fused_weights() if x is None else self.layer.project(x)


def packs_fast(model: nn.Module) -> bool:
    """Whether every layer's cell runs M models in one fused loop (``packs``); otherwise the pack vmaps the
    reference steps, differentiated by autograd (correct, slower)."""
    from .cells.base import fast_paths_enabled

    return fast_paths_enabled() and all(getattr(layer, "packs", False) for layer in model.layers)


class BatchedModel:
    """M SequenceModels of one shape behind one forward, from parameters stacked along a new dim 0.

    Cells with ``packs`` (lstm, gru, sgru and most others) run ONE fused loop for all M models: the input
    projections and the head are vmapped (one batched GEMM each), the recurrence runs the cell's own
    ``forward_step``/``bptt`` on the stacked weights with the M batches folded into the rows (suite.cells.base:
    linear, mm_bt), so every op of a time step, forward and backward, serves the M models at once. Other cells
    run their reference steps under ``torch.func.vmap``, differentiated by autograd.
    """

    def __init__(self, models: list[nn.Module], dropouts: list[float]):
        from torch.func import functional_call, vmap

        self.skeleton = copy.deepcopy(models[0]).to("meta")
        self.fast = packs_fast(models[0])
        if not self.fast:
            for layer in self.skeleton.layers:
                layer.recurrence = MethodType(_reference_forward, layer)
        self.dropout = any(p > 0 for p in dropouts)
        self.skeleton.drop = _PackDropout() if self.dropout else nn.Identity()
        self.names = [n for n, _ in models[0].named_parameters()]
        self.buffer_names = [n for n, _ in self.skeleton.named_buffers()]
        self._rates = torch.tensor(dropouts)
        self._calls = [_LayerCall(layer) for layer in self.skeleton.layers]

        def call(params, buffers, x, state):
            return functional_call(self.skeleton, (params, buffers), (x, state))

        self._fresh = vmap(lambda p, b, x: call(p, b, x, None), in_dims=(0, 0, 0), randomness="different")
        self._carry = vmap(call, in_dims=(0, 0, 0, 0), randomness="different")
        self._shared = vmap(lambda p, b, x: call(p, b, x, None), in_dims=(0, 0, None), randomness="different")
        self._project = [vmap(lambda p, x, c=c: functional_call(c, p, (x,))) for c in self._calls]
        self._head = vmap(lambda p, x: functional_call(self.skeleton.head, p, (x,)))

    def stacked(self, models: list[nn.Module], keep: list[int]):
        """Parameters of the models in ``keep``, stacked along dim 0 (gradients flow back to each model)."""
        own = [dict(models[i].named_parameters()) for i in keep]
        params = {n: torch.stack([p[n] for p in own]) for n in self.names}
        device = params[self.names[0]].device
        buffers = {"drop.p": self._rates[keep].to(device)} if self.dropout else {}
        return params, buffers

    def __call__(self, params, buffers, x: Tensor, state=None, shared_input: bool = False):
        if self.fast and state is None:
            return self._fused(params, buffers, x, shared_input)
        if shared_input:
            return self._shared(params, buffers, x)
        if state is None:
            return self._fresh(params, buffers, x)
        return self._carry(params, buffers, x, state)

    def _fused(self, params, buffers, x: Tensor, shared_input: bool):
        """SequenceModel.forward for M models at once, from a zero state: (M, B, T, output_size), states."""
        from torch.func import functional_call

        from .cells.base import packed_models

        sk = self.skeleton
        m = params[self.names[0]].shape[0]
        h = sk.encode(x)  # onehot or real inputs: no parameters (packs hold synthetic tasks only)
        if shared_input:
            h = h.expand(m, *h.shape)
        rates = buffers.get("drop.p")
        keep = None if rates is None or not sk.training else (1.0 - rates).view(m, 1, 1, 1)
        if keep is not None:
            h = _drop(h, keep)
        states = []
        for i, (layer, project) in enumerate(zip(sk.layers, self._project)):
            own = {"layer." + n.split(".", 2)[2]: v for n, v in params.items() if n.startswith(f"layers.{i}.")}
            xp = project(own, h).flatten(0, 1)  # (M*B, T, K)
            w = functional_call(self._calls[i], own, (None,))  # fused_weights(), stacked (M, ...)
            state = tuple(xp.new_zeros(xp.shape[0], layer.hidden_size) for _ in layer.state_names)
            with packed_models(m):
                out, final = layer.fused_loop(xp, state, w)
            h = out.unflatten(0, (m, -1))  # (M, B, T, H)
            if keep is not None:
                h = _drop(h, keep)
            states.append(tuple(s.unflatten(0, (m, -1)) for s in final))
        head = {n.split(".", 1)[1]: v for n, v in params.items() if n.startswith("head.")}
        return self._head(head, pool(h, sk.readout)), states

    def train(self, mode: bool = True) -> None:
        self.skeleton.train(mode)


# ---------------------------------------------------------------------------------------------- one member's run
class _Run:
    """A member's model, optimizer, MLflow run and diagnostics: the per-model half of a packed step."""

    def __init__(self, index: int, member: Member, task, model: nn.Module, total_steps: int, device: str,
                 size: int, pack_id: str = ""):
        from .diagnostics import grad_decay  # noqa: F401  (imported here so failures surface at build time)
        from .lit import build_optimizer
        from .train import count_params

        self.index, self.member, self.cfg, self.model = index, member, member.cfg, model
        self.opt, self.sched = build_optimizer(model.parameters(), self.cfg.optim, total_steps, None)
        self.batches = task.train_batches(self.cfg.train.seed, device)
        self.alive = True
        self.outcome, self.status, self.reason = "finished", "FINISHED", ""
        self.metrics: dict[str, float] = {}
        self.rows: list[tuple[int, str, int, float]] = []  # gradient-profile rows (step, state, t, norm)
        self.hist: list[tuple[int, str, str, int, float]] = []  # gate-histogram rows (diagnostics.hist_rows)
        self.train_s = 0.0  # this member's share of the pack's training time
        self.logger = _open_logger(self.cfg, task, model, member, device, size, index, pack_id)
        self.run_id = self.logger.run_id
        self.n_params = count_params(model)
        if member.on_start:
            member.on_start(self.run_id)

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.logger.log_metrics(metrics, step=step)
        self.metrics.update({k: v for k, v in metrics.items() if "/" in k})

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
        if not self.rows:
            return
        from .diagnostics import write_gate_hist, write_profile

        with tempfile.TemporaryDirectory(prefix="rnnsuite-pack-diag-") as folder:  # MLflow keeps its own copies
            for path in write_profile(self.rows, Path(folder)) + write_gate_hist(self.hist, Path(folder)):
                self.logger.experiment.log_artifact(self.run_id, str(path), "diagnostics")
        self.rows, self.hist = [], []

    def result(self):
        from .train import RunResult

        final = {k: v for k, v in self.metrics.items() if k.startswith(("train/", "val/", "test/"))}
        return RunResult(self.run_id, self.status, final, self.reason, self.outcome)


def _open_logger(cfg: RunConfig, task, model, member: Member, device: str, size: int, index: int,
                 pack_id: str = ""):
    """The member's MLflow run with the params, tags and config artifact of a single run (train.run)."""
    from .gpu import precision_tags
    from .logger import SuiteLogger
    from .tracking import artifact_location, git_commit, mask, prepare_local_store, resolve_tracking_uri
    from .train import checkpoint_root, count_params, resolved_config, task_record

    uri = resolve_tracking_uri(cfg.tracking.uri)
    prepare_local_store(uri)
    task_params, task_tags = task_record(task)
    tags = {"task": cfg.task.name, "cell": cfg.model.cell, "rnnsuite.version": __version__, "device": device,
            "seed": str(cfg.train.seed), **lock_tags(), **task_tags, "pack.size": str(size), "pack.index": str(index),
            **({"pack.id": pack_id} if pack_id else {}), **precision_tags(cfg.train.precision, device),
            **member.tags}
    if device == "cpu":  # the fused loops' kernels in a pack: batched GEMMs, or none (vmapped reference steps)
        from .cells.base import KernelChoice, kernel_choice

        det = "; deterministic algorithms on" if torch.are_deterministic_algorithms_enabled() else ""
        if packs_fast(model):
            tags["kernels"] = KernelChoice(False, kernel_choice().tanh_via_sigmoid, "packed: batched fused loops "
                                           f"(baddbmm){det}").describe()
        else:
            tags["kernels"] = KernelChoice(False, False, f"packed: vmapped reference steps{det}").describe()
    commit = git_commit()
    if commit:
        tags["git.commit"] = commit
    if member.parent_run_id:
        tags["mlflow.parentRunId"] = member.parent_run_id
    logger = SuiteLogger(experiment_name=cfg.tracking.experiment, tracking_uri=uri,
                         run_name=cfg.tracking.run_name or None, tags=tags, artifact_location=artifact_location(uri))
    try:
        run_id = logger.start()
        resolved = resolved_config(cfg, task, uri, checkpoint_root(cfg))  # as train.run logs it: defaults filled in
        params = resolved.flat()
        params.update({"cell": cfg.model.cell, "n_params": count_params(model), "seed": cfg.train.seed,
                       **task_params})
        logger.log_params(params)
        logger.experiment.log_text(run_id, mask(resolved.to_yaml()), "config.yaml")  # no password in an artifact
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
    from .gpu import apply_precision_policy, deterministic_algorithms
    from .logger import interrupts_outside_database_code

    apply_precision_policy()  # as train.run: one float32 precision for every cell
    # train.deterministic is part of the pack's shape (pack_key), so every member asks the same
    with interrupts_outside_database_code(), deterministic_algorithms(members[0].cfg.train.deterministic):
        return _Pack(members).fit()  # SIGTERM ends a pack like Ctrl-C: its live members' runs end KILLED


class _Pack:
    def __init__(self, members: list[Member]):
        import lightning.pytorch as pl

        from .diagnostics import batch_to
        from .finite import FiniteWatch
        from .train import _diag_batch, _quiet_libraries, build_model, build_task, resolve_device

        cfg = members[0].cfg
        _quiet_libraries()
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
        self.runs = []
        try:  # a kill while the members' runs are being created ends those already created, not leaves them RUNNING
            for i, (m, model) in enumerate(zip(members, models)):
                self.runs.append(_Run(i, m, self.task, model, self.steps, self.device, len(members), self.id))
        except BaseException as exc:
            self._end_alive(exc)
            raise
        self.finite = FiniteWatch(len(members))  # each member's first non-finite loss, on the device
        self.diag_batch = batch_to(_diag_batch(self.task, cfg.train.diag_batch), self.device)
        self.val = self.task.val_batches(self.device)
        self.test = self.task.test_batches(self.device)
        self._diagnosed: set[int] = set()

    def _end_alive(self, exc: BaseException) -> None:
        """The pack stopped (KILLED: Ctrl-C, SIGTERM) or crashed (FAILED, with the error): so does every live member."""
        from .tracking import mask

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
        from .diagnostics import gate_grad_norms
        from .finite import check_due

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
        from .diagnostics import diagnose, grad_decay, hist_rows

        if step in self._diagnosed:
            return
        self._diagnosed.add(step)
        for r in self.runs:
            if not r.alive:
                continue
            profile, stats, hist = diagnose(r.model, self.task, self.diag_batch)
            for state, norms in profile.items():
                r.rows.extend((step, state, t, n) for t, n in enumerate(norms))
            r.hist.extend(hist_rows(step, hist))
            stats["diag/grad_decay"] = grad_decay(profile["h"])
            if "c" in profile:
                stats["diag/grad_decay_c"] = grad_decay(profile["c"])
            r.log(stats, step=step)


def _progress(total: int, size: int, enabled: bool):
    import sys

    from .train import progress_bars_visible

    if not enabled or not progress_bars_visible(sys.stderr):  # tqdm draws on stderr: on a terminal only
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=f"pack of {size}", unit="step", dynamic_ncols=True, leave=False)
