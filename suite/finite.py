"""The NaN/inf check of a training loss without a host sync per step.

``if not torch.isfinite(loss)`` reads the loss back to Python every step; on a GPU that waits for the whole step
to finish and empties the launch queue. :class:`FiniteWatch` keeps, on the loss's device, the first step at which
each model's loss was not finite and that loss; the training loop reads it back (one transfer) only at a step
where something is about to be recorded (:func:`check_due`), so a diverged run still stops with the step and value
of its first bad loss, before any NaN is logged, checkpointed or validated.
"""
from __future__ import annotations

import torch
from torch import Tensor


def check_due(step: int, train, total_steps: int) -> bool:
    """Whether optimizer step ``step`` (0-based) records anything: train/* metrics (Lightning logs step s when
    (s + 1) % log_every == 0), per-gate gradient norms (s % grad_every == 0), diagnostics or validation after
    it, or it is the last step. The loss must be known finite before those."""
    done = step + 1
    return (done % train.log_every == 0 or step % train.grad_every == 0 or done % train.val_every == 0
            or bool(train.diag_every and done % train.diag_every == 0) or done >= total_steps)


class FiniteWatch:
    """First non-finite loss per model, kept on the device: ``watch`` each step, ``read`` when due."""

    def __init__(self, models: int = 1):
        self.models = models
        self.first: Tensor | None = None  # (models,) step of the first non-finite loss, -1 while none
        self.value: Tensor | None = None  # (models,) that loss
        self._rows: dict[tuple[int, ...], Tensor] = {}  # index tensors on the device, one per set of live models

    def watch(self, losses: Tensor, step: int, rows: list[int] | None = None) -> None:
        """Record this step's losses ((len(rows),) or a scalar for one model); no host transfer."""
        losses = losses.detach().reshape(-1).float()
        if self.first is None:
            self.first = torch.full((self.models,), -1, dtype=torch.long, device=losses.device)
            self.value = torch.zeros(self.models, device=losses.device)
        if rows is None:
            first, value = self.first, self.value
        else:
            index = self._index(rows, losses.device)
            first, value = self.first.index_select(0, index), self.value.index_select(0, index)
        new = ~torch.isfinite(losses) & (first < 0)
        first = torch.where(new, torch.full_like(first, step), first)
        value = torch.where(new, losses, value)
        if rows is None:
            self.first, self.value = first, value
        else:
            self.first = self.first.index_copy(0, index, first)
            self.value = self.value.index_copy(0, index, value)

    def _index(self, rows: list[int], device) -> Tensor:
        key = tuple(rows)
        if key not in self._rows:  # a host-to-device copy only when a model joins or leaves
            self._rows = {key: torch.tensor(rows, dtype=torch.long, device=device)}
        return self._rows[key]

    def read(self, extra: Tensor | None = None) -> tuple[list[tuple[int, float] | None], list[float]]:
        """One host transfer: per model (first bad step, its loss) or None, and ``extra`` as floats."""
        if self.first is None:
            return [None] * self.models, [] if extra is None else extra.detach().reshape(-1).tolist()
        parts = [self.first.double(), self.value.double()]
        if extra is not None:
            parts.append(extra.detach().reshape(-1).double())
        host = torch.cat(parts).tolist()
        m = self.models
        bad = [(int(host[k]), host[m + k]) if host[k] >= 0 else None for k in range(m)]
        return bad, host[2 * m:]
