"""The one thin LightningModule for every task: the network and the task are injected.

``model_step`` serves train, validation and test. Validation and test aggregate the task's summed scores over
the whole fixed evaluation set, so a metric is exact (not a mean of batch means). Language-model state is carried
across truncated-BPTT windows (detached) and reset where the task says so (Zaremba et al. 2014).
"""
from __future__ import annotations

import math

import lightning.pytorch as pl
import torch
from torch import Tensor

from .config import OptimConfig, TrainConfig
from .diagnostics import gate_grad_norms
from .finite import FiniteWatch, check_due
from .model import SequenceModel, detach_state


class StopRun(Exception):
    """Raised inside training to end a run early with a known outcome (see train.run)."""

    outcome = "failed"  # RunResult.outcome
    status = "FAILED"  # the MLflow run status

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


class DivergedError(StopRun):
    """The training loss became NaN or infinite."""

    outcome = "diverged"

    def __init__(self, step: int, value: float):
        super().__init__(f"loss is {value} at step {step}", step)
        self.value = value


class PrunedRun(StopRun):
    """A sweep's pruner stopped the run; it ended early by design, so its MLflow run is FINISHED."""

    outcome = "pruned"
    status = "FINISHED"


class SuiteModule(pl.LightningModule):
    def __init__(self, model: SequenceModel, task, optim: OptimConfig, train: TrainConfig,
                 steps_per_epoch: int | None = None):
        super().__init__()
        self.model = model
        self.task = task
        self.optim_cfg = optim
        self.train_cfg = train
        self.steps_per_epoch = steps_per_epoch
        self._state = {"train": None, "val": None, "test": None}
        self.validated_at: int | None = None  # optimizer step of the last validation
        self._totals: dict[str, dict] = {}
        self._grad_norm: Tensor | None = None
        self._lr: float | None = None  # the learning rate the current step's optimizer step uses
        self._finite = FiniteWatch()  # the first non-finite training loss, read back only when due

    # ------------------------------------------------------------------ the shared step
    def model_step(self, batch, stage: str):
        state = None if batch.reset else detach_state(self._state[stage])
        out, state = self.model(batch.x, state)
        self._state[stage] = state
        return out, self.task.loss(out, batch)

    def training_step(self, batch, batch_idx):
        out, loss = self.model_step(batch, "train")
        step = self.global_step
        self._finite.watch(loss, step)  # on the device: no host sync per step
        if check_due(step, self.train_cfg, self.total_steps()):  # before anything of this step is recorded
            self.raise_if_diverged()
        self.log("train/loss", loss, prog_bar=True, batch_size=batch.x.shape[0])
        return loss

    def raise_if_diverged(self) -> None:
        """DivergedError at the first step whose loss was NaN/inf (one host transfer; called when due)."""
        bad = self._finite.read()[0][0]
        if bad is not None:
            raise DivergedError(*bad)

    def _eval_step(self, batch, stage: str):
        out, _ = self.model_step(batch, stage)
        totals = self._totals.setdefault(stage, {})
        for name, (s, n) in self.task.score(out, batch).items():
            old = totals.get(name, (0.0, 0))
            totals[name] = (old[0] + s.detach().double(), old[1] + n)

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    def _eval_start(self, stage: str):
        self._totals[stage] = {}
        self._state[stage] = None

    def _eval_end(self, stage: str):
        totals = {k: (float(s), n) for k, (s, n) in self._totals.pop(stage, {}).items()}
        if totals:
            metrics = self.task.summarize(totals)
            self.log_dict({f"{stage}/{k}": float(v) for k, v in metrics.items()}, prog_bar=(stage == "val"))

    def on_validation_epoch_start(self):
        if not self.trainer.sanity_checking:
            self.raise_if_diverged()  # a validation at an epoch's end (LM) need not fall on a checked step
        self._eval_start("val")

    def on_validation_epoch_end(self):
        self._eval_end("val")
        if not self.trainer.sanity_checking:
            self.validated_at = self.trainer.global_step  # the end of a run validates only if this is behind

    def on_test_epoch_start(self):
        self._eval_start("test")

    def on_test_epoch_end(self):
        self._eval_end("test")

    def on_train_epoch_start(self):
        self._state["train"] = None

    # ------------------------------------------------------------------ gradients
    def on_before_optimizer_step(self, optimizer):
        # Read here, not in on_train_batch_end: Lightning steps a per-step scheduler BEFORE that hook, so the
        # optimizer would already hold the next step's rate there and train/lr would lead by one step.
        self._lr = optimizer.param_groups[0]["lr"]
        step = self.global_step
        if self.logger is not None and step % self.train_cfg.grad_every == 0:
            self.logger.log_metrics(gate_grad_norms(self.model), step=step)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        # The norm clipping computes anyway is the one logged: no second pass over the gradients.
        clip = self.optim_cfg.clip
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        self._grad_norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else math.inf, foreach=True)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self._grad_norm is not None:
            norm = self._grad_norm
            clip = self.optim_cfg.clip
            clipped = torch.clamp(norm, max=clip) if clip > 0 else norm
            lr = self._lr if self._lr is not None else self.optimizers().param_groups[0]["lr"]
            self.log_dict({"train/grad_norm": norm, "train/grad_norm_clipped": clipped, "train/lr": lr},
                          batch_size=batch.x.shape[0])

    def on_train_end(self):
        """Flush the last step's train/* metrics when Lightning did not log that step.

        Lightning writes step metrics to the logger only every ``log_every_n_steps`` steps, so a run that ends
        between two logging steps (any run shorter than train.log_every) would report train/loss in its result
        (and ``--json``) that never reached MLflow. Logged at the last step's index, as Lightning would have.
        """
        trainer = self.trainer
        step = trainer.fit_loop.epoch_loop._batches_that_stepped  # what Lightning's logging counts, resumes too
        if self.logger is None or step == 0 or step % trainer.log_every_n_steps == 0:
            return  # nothing trained, or Lightning logged the last step itself
        last = {k: float(v) for k, v in trainer.callback_metrics.items()
                if k.startswith("train/") and v.numel() == 1}
        if last:
            self.logger.log_metrics(last, step=step - 1)

    # ------------------------------------------------------------------ optimizer and schedule
    def configure_optimizers(self):
        opt, sched = build_optimizer(self.model.parameters(), self.optim_cfg, self.total_steps(),
                                     self.steps_per_epoch)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def total_steps(self) -> int:
        t = self.train_cfg
        if t.epochs and self.steps_per_epoch:
            return t.epochs * self.steps_per_epoch
        return t.steps


def build_optimizer(params, o: OptimConfig, total_steps: int, steps_per_epoch: int | None):
    """The optimizer and its per-step learning-rate schedule (shared by single and packed runs)."""
    if o.name == "adam":
        opt = torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
    elif o.name == "adamw":
        opt = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
    elif o.name == "sgd":
        opt = torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    else:
        opt = torch.optim.RMSprop(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=schedule_factor(o, total_steps, steps_per_epoch))
    return opt, sched


def schedule_factor(o: OptimConfig, total_steps: int, steps_per_epoch: int | None):
    """The learning-rate multiplier as a function of the optimizer step (a picklable closure)."""
    warm = max(0, o.warmup_steps)

    def factor(step: int) -> float:
        if o.schedule == "constant":
            return 1.0
        if warm and step < warm and o.schedule in ("warmup", "cosine"):
            return (step + 1) / warm
        if o.schedule == "warmup":
            return 1.0
        if o.schedule == "cosine":
            progress = min(1.0, (step - warm) / max(1, total_steps - warm))
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        # "step": Zaremba et al. 2014: multiply by decay_factor each unit after the first decay_start units
        unit = step // steps_per_epoch if (o.decay_unit == "epoch" and steps_per_epoch) else step
        return o.decay_factor ** max(0, unit + 1 - o.decay_start)

    return factor
