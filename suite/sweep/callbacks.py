"""How a trial's training reports to its Optuna trial: the objective at each validation (and pruning past the
warm-up), and the MLflow run id from the start."""
from __future__ import annotations

import lightning.pytorch as pl

from ..lit import PrunedRun


class OptunaPruning(pl.Callback):
    """Reports the objective at each validation of the fit and prunes (as optuna-integration's callback, but a
    pruned trial ends its MLflow run FINISHED with pruned.* tags instead of as an error)."""

    def __init__(self, trial, monitor: str, warmup_steps: int | None = 0):
        self.trial, self.monitor, self.warmup = trial, monitor, warmup_steps

    def on_fit_start(self, trainer, module):
        if self.warmup is None:  # an epochs budget: a quarter of this run's steps
            self.warmup = int(trainer.estimated_stepping_batches) // 4

    def on_validation_end(self, trainer, module):
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return
        step = trainer.global_step
        self.trial.report(float(value), step)
        if step >= self.warmup and self.trial.should_prune():
            raise PrunedRun(f"pruned at step {step} ({self.monitor}={float(value):.4g})", step)


class PackPruning:
    """A packed model's pruning decision, as :class:`OptunaPruning` makes it for a model trained alone: report the
    objective at each validation, prune past the warm-up when the study's pruner says so."""

    def __init__(self, trial, warmup_steps: int = 0):
        self.trial, self.warmup = trial, warmup_steps

    def __call__(self, value: float, step: int) -> bool:
        self.trial.report(float(value), step)
        return step >= self.warmup and self.trial.should_prune()


class RecordRunId(pl.Callback):
    """The trial knows its MLflow run from the start, so a killed trial's run can be ended KILLED."""

    def __init__(self, trial):
        self.trial = trial

    def setup(self, trainer, module, stage):
        if trainer.logger is not None:
            self.trial.set_user_attr("mlflow_run_id", trainer.logger.run_id)
