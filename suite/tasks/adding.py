"""The adding problem in the form of Arjovsky, Shah & Bengio 2016 (after Le, Jaitly & Hinton 2015).

Two input channels over T steps (``encoding`` "real", ``input_size`` 2): channel 0 holds values ~ U[0, 1],
channel 1 is 0 except for exactly one marker (1.0) in each half, at a uniform position in [0, T//2) and in
[T//2, T). The target is the sum of the two marked values; the model's last-step output (B, T, 1)[:, -1] is
scored by mean squared error.

Baseline: always predicting 1, the mean of the target, costs Var(U1 + U2) = 2/12 = 1/6.
"acc" is the fraction of sequences with |error| < 0.04, the threshold of Hochreiter & Schmidhuber 1997; their
target was 0.5 + (X1+X2)/4 with X in [-1, 1], so on this [0, 2] scale the same threshold is twice as strict.
Solved: MSE below 1% of the baseline (R² >= 0.99, i.e. the model explains 99% of the target's variance); a
criterion that does not depend on the scale of the target, unlike a fixed error threshold.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import (Baseline, Batch, Published, SolvedRule, SyntheticTask, Totals, check_int, exact,
                   register)

ARJOVSKY = "Arjovsky, Shah & Bengio 2016, Unitary Evolution Recurrent Neural Networks"
TOLERANCE = 0.04  # Hochreiter & Schmidhuber 1997: a sequence is "processed correctly" below this error


@register("adding", "adding problem: sum the two marked values of a T-step sequence (MSE)", ARJOVSKY)
class Adding(SyntheticTask):
    encoding = "real"
    metric = "mse"
    direction = "minimize"
    solved = "MSE < 1% of the baseline 1/6 (R² >= 0.99)"
    input_size = 2
    output_size = 1

    def __init__(self, *, length: int = 100, batch_size: int = 64, val_size: int = 1024,
                 eval_batch_size: int = 256):
        # length 100: Arjovsky's shortest T; batch 64, 1024 validation sequences: the reference yardstick
        self.length = check_int(self.name, "length", length, minimum=2)  # one marker in each half
        self.init_sizes(batch_size, val_size, eval_batch_size)
        self.seq_len = self.length
        self.options = dict(length=length, batch_size=batch_size, val_size=val_size,
                            eval_batch_size=eval_batch_size)

    def generate(self, n: int, generator, device) -> Batch:
        T, half = self.length, self.length // 2
        values = torch.rand(n, T, generator=generator, device=device)  # (n, T)
        first = torch.randint(0, half, (n, 1), generator=generator, device=device)
        second = torch.randint(half, T, (n, 1), generator=generator, device=device)
        marks = torch.cat([first, second], dim=1)  # (n, 2)
        markers = torch.zeros(n, T, device=device).scatter_(1, marks, 1.0)
        x = torch.stack([values, markers], dim=-1)  # (n, T, 2)
        y = values.gather(1, marks).sum(dim=1)  # (n,)
        return Batch(x, y)

    @staticmethod
    def _last(outputs: Tensor) -> Tensor:
        return outputs[:, -1, 0]  # (B,)

    def loss(self, outputs: Tensor, batch: Batch) -> Tensor:
        return F.mse_loss(self._last(outputs), batch.y)

    def score(self, outputs: Tensor, batch: Batch) -> Totals:
        error = self._last(outputs).float() - batch.y
        return {"loss": (exact(error.square()), batch.size), "acc": (exact(error.abs() < TOLERANCE), batch.size)}

    def summarize(self, totals: Totals) -> dict[str, float]:
        metrics = super().summarize(totals)
        metrics["mse"] = metrics["loss"]
        return metrics

    @property
    def solved_rule(self) -> SolvedRule:
        return SolvedRule("mse", "<", 0.01 * self.baseline.value)

    @property
    def baseline(self) -> Baseline:
        return Baseline("mse", 1 / 6, "Var(U1 + U2) = 2 · 1/12 = 1/6",
                        f"predicting the mean target 1 ({ARJOVSKY})")

    def memoryless_outputs(self, batch: Batch) -> Tensor:
        """Always the mean target 1, whatever the sequence held."""
        return torch.ones(batch.size, batch.x.shape[1], 1, device=batch.x.device)  # (B, T, 1)

    def empirical_baseline(self) -> float:
        """MSE of predicting the mean target 1 on the fixed test set (0.1746 at T=200, val_size 1024)."""
        y = torch.cat([b.y for b in self.test_batches("cpu")])
        return float((y.double() - 1).square().mean())

    @property
    def published(self) -> list[Published]:
        return [
            Published("LSTM and uRNN beat the baseline at every T (clearly up to T=400; at T=750 not near 0)",
                      "val/mse", None, ARJOVSKY),
            Published("tanh-RNN and IRNN (128 units) do not beat the baseline at any T", "val/mse", None, ARJOVSKY),
        ]

    def describe(self) -> str:
        return (f"adding, T={self.length}: sum of 2 marked values in U[0,1], batch {self.batch_size}; "
                f"baseline MSE 1/6, solved at MSE < {0.01 / 6:.5f}")
