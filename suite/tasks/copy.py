"""Copying memory (Arjovsky, Shah & Bengio 2016), its variable-delay form, and selective copying (Gu & Dao 2023).

Alphabet of A symbols: blank a0, data symbols a1..a(A-2), delimiter a(A-1) (A=10: a1..a8 data, a9 delimiter).
Inputs are one-hot (``input_size`` = A); outputs are A-1 classes (blank and data symbols: the delimiter is never
a target). With S symbols and delay T:

* ``copy``: S data symbols, T-1 blanks, the delimiter, S blanks (length T+2S); target: T+S blanks, then the
  S symbols. S=10, A=10 is the paper's task (length T+20).
* ``copy`` with ``variable=true``: per sequence the delay d is uniform on {1..T}: S symbols, d-1 blanks, the
  delimiter, the S recall steps, then T-d blanks of padding (input and target blank), so the length stays T+2S
  and d=T is the fixed task. The model must find the delimiter instead of counting to a fixed step.
* ``selective_copy``: the S symbols sit at random distinct positions (kept in order) among T positions of
  blanks (Mamba's "selective copying"), then the delimiter and S recall steps (length T+S+1); T >= S.

Loss: cross-entropy per step averaged over ALL positions (the paper's loss, so the baseline below is comparable
with its curves); "acc" is the per-symbol accuracy on the recall positions only (accuracy over all positions is
~1 for the baseline and says nothing). ``diag_loss`` is the cross-entropy of the recall positions only.

Baseline (every form): a predictor that knows where the recall happens but has no memory of the symbols outputs
blank off the recall and the uniform distribution over the A-2 data symbols on it, costing ln(A-2) nats on each
of the S recall steps and nothing elsewhere: S·ln(A-2)/L nats per step, L the sequence length. For the fixed
task L = T+2S (10·ln 8/(T+20) in the paper); variable copy has the same L and the same value, because locating
the recall needs only the delimiter, not the symbols; selective copy has L = T+S+1.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import (Baseline, Batch, Published, SolvedRule, SyntheticTask, Totals, check_bool, check_int, exact,
                   register, token_losses)
from ..registry import SuiteError

ARJOVSKY = "Arjovsky, Shah & Bengio 2016, Unitary Evolution Recurrent Neural Networks"
SURE = 1e4  # a logit gap that makes softmax exactly one-hot in float32


class CopyFamily(SyntheticTask):
    """Shared loss, metrics and checks of the copy tasks; a subclass writes ``generate`` and ``seq_len``."""

    encoding = "onehot"
    metric = "acc"
    direction = "maximize"
    solved = "recall accuracy >= 0.99 (at most 1 symbol in 100 wrong)"

    def _init_copy(self, length, symbols, alphabet):
        self.length = check_int(self.name, "length", length)
        self.symbols = check_int(self.name, "symbols", symbols)
        self.alphabet = check_int(self.name, "alphabet", alphabet, minimum=4)  # blank, delimiter, >= 2 symbols
        self.input_size = self.alphabet
        self.output_size = self.alphabet - 1  # blank + data symbols
        self.delimiter = self.alphabet - 1

    def _symbols(self, n: int, generator, device) -> Tensor:
        return torch.randint(1, self.alphabet - 1, (n, self.symbols), generator=generator, device=device)  # (n, S)

    # ------------------------------------------------------------------ objectives and metrics
    def loss(self, outputs: Tensor, batch: Batch) -> Tensor:
        return F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), batch.y.reshape(-1))

    def diag_loss(self, outputs: Tensor, batch: Batch) -> Tensor:
        per_step = token_losses(outputs, batch.y)  # (B, L)
        return (per_step * batch.recall).sum() / (batch.size * self.symbols)  # no sync: the count is known

    def score(self, outputs: Tensor, batch: Batch) -> Totals:
        per_step = token_losses(outputs, batch.y)  # (B, L)
        hits = (outputs.argmax(-1) == batch.y) & batch.recall
        return {"loss": (exact(per_step), batch.y.numel()), "acc": (exact(hits), batch.size * self.symbols)}

    @property
    def solved_rule(self) -> SolvedRule:
        return SolvedRule("acc", ">=", 0.99)

    @property
    def baseline(self) -> Baseline:
        S, n, L = self.symbols, self.alphabet - 2, self.seq_len
        return Baseline("loss", S * math.log(n) / L, f"{S}·ln({n})/{L} = symbols·ln(alphabet-2)/sequence length",
                        "memoryless predictor: blank off the recall, uniform over the data symbols on it "
                        f"({ARJOVSKY}: 10·ln 8/(T+20))")

    def memoryless_outputs(self, batch: Batch) -> Tensor:
        """Blank off the recall, uniform over the data symbols on it: knows WHERE to recall, not WHAT."""
        blank = F.one_hot(torch.zeros_like(batch.y), self.output_size).float() * SURE  # (B, L, C): all on blank
        uniform = torch.zeros_like(blank)
        uniform[..., 0] = -SURE
        return torch.where(batch.recall.unsqueeze(-1), uniform, blank)


@register("copy", "copying memory: recall 10 symbols after a delay of T steps (variable=true: random delay)",
          ARJOVSKY)
class Copy(CopyFamily):
    def __init__(self, *, length: int = 100, symbols: int = 10, alphabet: int = 10, variable: bool = False,
                 batch_size: int = 64, val_size: int = 1024, eval_batch_size: int = 256):
        # length 100: the paper's shortest T; batch 64, 1024 validation sequences: the reference yardstick
        self._init_copy(length, symbols, alphabet)
        self.variable = check_bool(self.name, "variable", variable)
        self.init_sizes(batch_size, val_size, eval_batch_size)
        self.seq_len = self.length + 2 * self.symbols
        self.options = dict(length=length, symbols=symbols, alphabet=alphabet, variable=variable,
                            batch_size=batch_size, val_size=val_size, eval_batch_size=eval_batch_size)

    def generate(self, n: int, generator, device) -> Batch:
        S, T, L = self.symbols, self.length, self.seq_len
        data = self._symbols(n, generator, device)  # (n, S)
        if self.variable:
            delay = torch.randint(1, T + 1, (n, 1), generator=generator, device=device)  # (n, 1)
        else:
            delay = torch.full((1, 1), T, device=device)
        pos = torch.arange(L, device=device).unsqueeze(0)  # (1, L)
        rel = pos - (S + delay)  # step within the recall, (n or 1, L)
        recall = ((rel >= 0) & (rel < S)).expand(n, L)  # (n, L)
        x = torch.zeros(n, L, dtype=torch.long, device=device)
        x[:, :S] = data
        x = torch.where(rel == -1, self.delimiter, x)
        y = torch.where(recall, data.gather(1, rel.clamp(0, S - 1).expand(n, L)), 0)  # (n, L)
        return Batch(x, y, recall=recall)

    @property
    def published(self) -> list[Published]:
        if self.variable or (self.symbols, self.alphabet) != (10, 10):
            return []
        return [
            Published("LSTM (40 units) beats the memoryless baseline only at T=100; at T>=200 it plateaus at it",
                      "val/loss", None, ARJOVSKY),
            Published("chrono-initialised LSTM and UR-LSTM solve T=500-2000", "val/acc", None,
                      "Tallec & Ollivier 2018; Gu et al. 2020", checked=False),
        ]

    def describe(self) -> str:
        kind = "variable copy, delay uniform on 1.." if self.variable else "copy, T="
        return (f"{kind}{self.length}: {self.symbols} symbols of {self.alphabet - 2}, length {self.seq_len}, "
                f"batch {self.batch_size}; baseline loss {self.baseline.value:.4f}, solved at recall acc 0.99")


@register("selective_copy", "selective copying: recall symbols scattered at random among T blanks, in order",
          "Gu & Dao 2023, Mamba: Linear-Time Sequence Modeling with Selective State Spaces")
class SelectiveCopy(CopyFamily):
    def __init__(self, *, length: int = 100, symbols: int = 10, alphabet: int = 10,
                 batch_size: int = 64, val_size: int = 1024, eval_batch_size: int = 256):
        self._init_copy(length, symbols, alphabet)
        if self.symbols > self.length:
            raise SuiteError(f"task {self.name!r}: option symbols={symbols} must be <= length={length} "
                             "(the positions the symbols are scattered over)")
        self.init_sizes(batch_size, val_size, eval_batch_size)
        self.seq_len = self.length + self.symbols + 1
        self.options = dict(length=length, symbols=symbols, alphabet=alphabet,
                            batch_size=batch_size, val_size=val_size, eval_batch_size=eval_batch_size)

    def generate(self, n: int, generator, device) -> Batch:
        S, T, L = self.symbols, self.length, self.seq_len
        data = self._symbols(n, generator, device)  # (n, S)
        keys = torch.rand(n, T, generator=generator, device=device)
        where = keys.topk(S, dim=1).indices.sort(dim=1).values  # S distinct positions in order, (n, S)
        x = torch.zeros(n, L, dtype=torch.long, device=device)
        x[:, :T].scatter_(1, where, data)
        x[:, T] = self.delimiter
        y = torch.zeros(n, L, dtype=torch.long, device=device)
        y[:, T + 1:] = data
        recall = (torch.arange(L, device=device) > T).expand(n, L)  # (n, L)
        return Batch(x, y, recall=recall)

    @property
    def published(self) -> list[Published]:
        return [Published("minGRU, in Mamba's selective copying setting (length 4096, vocabulary 16; not this "
                          "setting)", "test/acc", 0.995, "Feng et al. 2024, Were RNNs All We Needed?",
                          checked=False)]

    def describe(self) -> str:
        return (f"selective copy: {self.symbols} symbols of {self.alphabet - 2} scattered over {self.length} "
                f"steps, length {self.seq_len}, batch {self.batch_size}; baseline loss {self.baseline.value:.4f}")
