"""Language modelling with truncated backpropagation through time, batched as Zaremba, Sutskever & Vinyals 2014.

Tokens (``encoding`` "embedding", ``input_size`` = ``output_size`` = ``vocab_size``) come from
:mod:`suite.tasks.corpora`: Penn Treebank (``ptb_word``, ``ptb_char``) or any folder (``lm``, ``path=``).

Training: the train stream of N tokens is cut into ``batch_size`` contiguous columns of N // batch_size tokens
(the remainder is dropped) and read in windows of ``bptt`` steps; the target is the next token. An epoch is
the (column length - 1) // bptt full windows (Zaremba's epoch_size); ``Batch.reset`` is True on the first one
only, and the model carries its detached state across the others. The order is fixed (no shuffling), so the
seed of ``train_batches`` is unused.

Evaluation scores EVERY token of the split once: a stream of N tokens has N-1 (input, next-token) pairs, and
they are dealt into ``eval_batch_size`` contiguous columns whose lengths differ by at most one; the one missing
step of the shorter columns is masked. The summed loss of a memoryless predictor is therefore the same for any
eval batch size; a recurrent model starts each column from a zero state, so a smaller eval batch size gives it
more context (the PyTorch example and AWD-LSTM evaluate with 10; the TensorFlow tutorial tests with 1).

Metrics: "loss" (nats per token), "acc" (next-token accuracy) and "ppl" = exp(loss) for words or "bpc" =
loss / ln 2 for characters. Baseline: the add-one-smoothed unigram distribution of train (the best predictor
that ignores context) scored on the validation targets, in ppl or bpc.
"""
from __future__ import annotations

import functools
import math
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from . import corpora
from .base import (Baseline, Batch, Published, Task, Totals, check_choice, check_int, exact, register,
                   token_losses)
from ..registry import SuiteError

ZAREMBA = "Zaremba, Sutskever & Vinyals 2014, Recurrent Neural Network Regularization"


class LanguageModelling(Task):
    encoding = "embedding"
    direction = "minimize"
    solved = None  # "no solved criterion": perplexity has no ceiling to reach

    def _setup(self, corpus: corpora.Corpus, batch_size, bptt, eval_batch_size):
        self.corpus = corpus
        self.batch_size = check_int(self.name, "batch_size", batch_size)
        self.bptt = check_int(self.name, "bptt", bptt)
        self.eval_batch_size = check_int(self.name, "eval_batch_size", eval_batch_size)
        self.vocab_size = self.input_size = self.output_size = corpus.vocab_size
        self.metric = "ppl" if corpus.level == "word" else "bpc"
        self.seq_len = self.bptt
        for split, stream in corpus.splits.items():
            if len(stream) < 2:
                raise SuiteError(f"task {self.name!r}: the {split} split has {len(stream)} token(s); it needs 2")
        self.column_length = len(corpus.splits["train"]) // self.batch_size
        self.steps_per_epoch = (self.column_length - 1) // self.bptt
        if self.steps_per_epoch < 1:
            raise SuiteError(f"task {self.name!r}: {len(corpus.splits['train'])} training tokens are too few for "
                             f"batch_size={batch_size} x (bptt={bptt} + 1)")
        self._on_device: dict = {}

    @property
    def vocab(self) -> tuple[str, ...]:
        return self.corpus.vocab

    # ------------------------------------------------------------------ data
    def _cached(self, key, build):
        if key not in self._on_device:
            self._on_device[key] = build()
        return self._on_device[key]

    def _train_columns(self, device) -> Tensor:
        def build():
            n = self.batch_size * self.column_length
            return self.corpus.splits["train"][:n].to(device).view(self.batch_size, self.column_length)
        return self._cached(("train", str(torch.device(device))), build)  # (B, N // B)

    def train_batches(self, seed: int, device) -> Iterator[Batch]:
        """One epoch; ``seed`` is unused (the order is fixed)."""
        columns, b, w = self._train_columns(device), self.batch_size, self.bptt
        for i in range(self.steps_per_epoch):
            s = i * w
            yield Batch(columns[:, s:s + w], columns[:, s + 1:s + 1 + w], reset=i == 0, n_targets=b * w)

    def _eval_windows(self, split: str, device) -> list[Batch]:
        def build():
            stream = self.corpus.splits[split].to(device)
            pairs, b = len(stream) - 1, self.eval_batch_size
            q, r = divmod(pairs, b)
            lengths = [q + 1] * r + [q] * (b - r)  # column lengths differ by at most one
            starts = torch.tensor([0] + lengths[:-1], device=device).cumsum(0)  # (b,)
            width = q + (r > 0)
            steps = torch.arange(width, device=device)
            valid = steps.unsqueeze(0) < torch.tensor(lengths, device=device).unsqueeze(1)  # (b, width)
            index = (starts.unsqueeze(1) + steps).clamp(max=pairs - 1)  # (b, width)
            x, y = stream[index], stream[index + 1]
            windows = []
            for s in range(0, width, self.bptt):
                e = min(s + self.bptt, width)
                count = sum(max(0, min(n, e) - s) for n in lengths)
                mask = None if count == b * (e - s) else valid[:, s:e]
                windows.append(Batch(x[:, s:e], y[:, s:e], mask, reset=s == 0, n_targets=count))
            return windows
        return self._cached((split, str(torch.device(device))), build)

    def val_batches(self, device) -> list[Batch]:
        return self._eval_windows("valid", device)

    def test_batches(self, device) -> list[Batch]:
        return self._eval_windows("test", device)

    # ------------------------------------------------------------------ objectives and metrics
    def _token_losses(self, outputs: Tensor, batch: Batch) -> Tensor:
        losses = token_losses(outputs, batch.y)  # (B, T)
        return losses if batch.mask is None else losses * batch.mask

    def loss(self, outputs: Tensor, batch: Batch) -> Tensor:
        if batch.mask is None:
            return F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), batch.y.reshape(-1))
        return self._token_losses(outputs, batch).sum() / batch.n_targets

    def score(self, outputs: Tensor, batch: Batch) -> Totals:
        hits = outputs.argmax(-1) == batch.y
        if batch.mask is not None:
            hits = hits & batch.mask
        return {"loss": (exact(self._token_losses(outputs, batch)), batch.n_targets),
                "acc": (exact(hits), batch.n_targets)}

    def summarize(self, totals: Totals) -> dict[str, float]:
        metrics = super().summarize(totals)
        metrics.update(self._from_loss(metrics["loss"]))
        return metrics

    def _from_loss(self, loss: float) -> dict[str, float]:
        if self.metric == "ppl":
            return {"ppl": math.exp(loss) if loss < 700 else math.inf}
        return {"bpc": loss / math.log(2)}

    # ------------------------------------------------------------------ reference points
    @functools.cached_property
    def baseline(self) -> Baseline:
        counts = torch.bincount(self.corpus.splits["train"], minlength=self.vocab_size).double() + 1
        log_p = (counts / counts.sum()).log()
        nats = -log_p[self.corpus.splits["valid"][1:]].mean().item()
        formula = "exp(H)" if self.metric == "ppl" else "H / ln 2"
        return Baseline(self.metric, self._from_loss(nats)[self.metric],
                        f"{formula}, H = cross-entropy of the add-one-smoothed train unigram on the valid targets",
                        "unigram model: the best predictor that ignores context")

    def memoryless_outputs(self, batch: Batch) -> Tensor:
        """The add-one-smoothed train unigram's log-probabilities at every step, whatever came before: (B, T, V)."""
        counts = torch.bincount(self.corpus.splits["train"], minlength=self.vocab_size).float() + 1
        log_p = (counts / counts.sum()).log().to(batch.x.device)
        return log_p.expand(*batch.x.shape, self.vocab_size)

    def describe(self) -> str:
        return (f"{self.name}: {self.corpus.level}-level {self.corpus.source}, vocabulary {self.vocab_size}, "
                f"{len(self.corpus.splits['train']):,} training tokens; batch {self.batch_size}, bptt {self.bptt}, "
                f"{self.steps_per_epoch} steps per epoch; unigram baseline {self.metric} {self.baseline.value:.4g}")


@register("lm", "language modelling on a folder with train.txt, valid.txt, test.txt (word or char level)",
          ZAREMBA)
class FolderLM(LanguageModelling):
    metric = "ppl"  # at level=word; "bpc" at level=char (set per instance)

    def __init__(self, *, path: str | None = None, level: str = "word", batch_size: int = 20, bptt: int = 20,
                 eval_batch_size: int = 10):
        if path is None:
            raise SuiteError(f"task {self.name!r} needs option path=FOLDER (with train.txt, valid.txt, test.txt); "
                             "for Penn Treebank use the tasks ptb_word or ptb_char")
        check_choice(self.name, "level", level, corpora.LEVELS)
        self._setup(corpora.folder(path, level), batch_size, bptt, eval_batch_size)
        self.options = dict(path=str(path), level=level, batch_size=batch_size, bptt=bptt,
                            eval_batch_size=eval_batch_size)


@register("ptb_word", "word-level Penn Treebank (Mikolov split, 10k vocabulary), perplexity", ZAREMBA)
class PTBWord(LanguageModelling):
    level = "word"
    metric = "ppl"

    def __init__(self, *, batch_size: int = 20, bptt: int = 20, eval_batch_size: int = 10):
        # batch 20, bptt 20: Zaremba's small model; eval batch 10: the PyTorch example and AWD-LSTM
        self._setup(corpora.ptb(self.level), batch_size, bptt, eval_batch_size)
        self.options = dict(batch_size=batch_size, bptt=bptt, eval_batch_size=eval_batch_size)

    @property
    def published(self) -> list[Published]:
        rows = [("Zaremba small (2x200, no dropout)", 120.7, 114.5, ZAREMBA),
                ("Zaremba small, TensorFlow tutorial", 121.4, 115.9, "TensorFlow PTB tutorial"),
                ("Zaremba medium (2x650, dropout 0.5)", 86.2, 82.7, ZAREMBA),
                ("Zaremba large (2x1500, dropout 0.65)", 82.2, 78.4, ZAREMBA)]
        out = []
        for description, val, test, citation in rows:
            out += [Published(description, "val/ppl", val, citation),
                    Published(description, "test/ppl", test, citation)]
        return out + [
            Published("tuned LSTM (24M parameters)", "test/ppl", 58.3, "Melis, Dyer & Blunsom 2018"),
            Published("AWD-LSTM (24M parameters, no cache)", "test/ppl", 57.3, "Merity, Keskar & Socher 2017"),
        ]


@register("ptb_char", "character-level Penn Treebank (Mikolov's ptb.char convention), bits per character",
          "Mikolov et al. 2012, Subword Language Modeling with Neural Networks")
class PTBChar(PTBWord):
    level = "char"
    metric = "bpc"

    @property
    def published(self) -> list[Published]:
        return [
            Published("plain LSTM", "test/bpc", 1.36, "secondary sources", checked=False),
            Published("Fast-Slow RNN", "test/bpc", 1.19, "Mujika, Meier & Steger 2017"),
            Published("best published models, about", "test/bpc", 1.17, "secondary sources", checked=False),
        ]
