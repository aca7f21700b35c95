"""Parity, an example task plugin (docs/extending.md): the parity problem of Bengio, Simard & Frasconi 1994.

T random bits (x (B, T) long, read one-hot: ``input_size`` 2); the target y (B,) is 1 when the number of ones is
odd. Every bit flips the answer, so a model must carry one bit of state through all T steps. The model's
last-step output (B, T, 2)[:, -1] is scored by cross-entropy ("loss") and accuracy ("acc").

Baseline: a predictor that ignores the bits can only give each class probability 1/2 (the parity of fair bits
is a fair coin): loss ln 2, exactly, on any sample.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from suite.tasks import Baseline, Batch, SolvedRule, SyntheticTask, Totals, check_int, exact, register

BENGIO = "Bengio, Simard & Frasconi 1994, Learning Long-Term Dependencies with Gradient Descent is Difficult"


@register("parity", "parity: is the number of ones among T random bits odd? (cross-entropy at the last step)",
          BENGIO)
class Parity(SyntheticTask):
    encoding = "onehot"
    metric = "acc"
    direction = "maximize"
    solved = "accuracy >= 0.99"
    input_size = 2
    output_size = 2

    def __init__(self, *, length: int = 50, batch_size: int = 64, val_size: int = 1024,
                 eval_batch_size: int = 256):
        self.length = check_int(self.name, "length", length)
        self.init_sizes(batch_size, val_size, eval_batch_size)
        self.seq_len = self.length
        self.options = dict(length=length, batch_size=batch_size, val_size=val_size,
                            eval_batch_size=eval_batch_size)

    def generate(self, n: int, generator, device) -> Batch:
        x = torch.randint(0, 2, (n, self.length), generator=generator, device=device)  # (n, T)
        return Batch(x, x.sum(1) % 2)  # y (n,)

    def loss(self, outputs: Tensor, batch: Batch) -> Tensor:
        return F.cross_entropy(outputs[:, -1], batch.y)

    def score(self, outputs: Tensor, batch: Batch) -> Totals:
        logits = outputs[:, -1].float()  # (B, 2)
        return {"loss": (exact(F.cross_entropy(logits, batch.y, reduction="none")), batch.size),
                "acc": (exact(logits.argmax(-1) == batch.y), batch.size)}

    @property
    def solved_rule(self) -> SolvedRule:
        return SolvedRule("acc", ">=", 0.99)

    @property
    def baseline(self) -> Baseline:
        return Baseline("loss", math.log(2), "ln 2: probability 1/2 for each class",
                        f"a predictor that ignores the bits ({BENGIO})")

    def memoryless_outputs(self, batch: Batch) -> Tensor:
        return torch.zeros(batch.size, self.length, 2, device=batch.x.device)  # (B, T, 2): 1/2 each
