"""Sequence classification: a whole sequence in, one class out (MNIST-1D, sequential and permuted MNIST).

A subclass loads a fixed dataset (:meth:`ClassificationTask.load`: train and test examples on the CPU); this base
owns everything else:

* ``encoding`` "real": x is (B, T, features) float, y is (B,) long class indices.
* ``readout`` (option): where the model's head reads the last layer's outputs, "last" (the last step), "mean"
  (the mean over time) or "flatten" (all T steps concatenated into one linear layer); the model returns one
  output per sequence, (B, 1, classes). See :data:`suite.model.READOUTS`.
* Splits. ``protocol: holdout`` (the default, what sweeps use): ``val_size`` training examples, chosen by a
  permutation seeded from the task's settings (SHA-256, identical in every process), are held out as the
  validation set and the model trains on the rest; the test set is the dataset's own. ``protocol: published``
  trains on every training example and validates on the test set, as the papers that report test accuracy after
  the last step do; a sweep run this way chooses on the test set, so its numbers are not held-out estimates.
* ``permute: true`` applies ONE fixed permutation of the time steps, seeded from the sequence length only, to
  every sequence of every split (permuted MNIST; MNIST-1D's "spatially shuffled" form).
* Training batches: each epoch a fresh order of the training examples from ``torch.Generator(device)`` seeded
  with the run's seed; the last partial batch of an epoch is dropped (every batch has ``batch_size`` rows).
  The stream is endless: runs count steps (``train.steps``), not epochs.
* Loss: cross-entropy of the class; metrics "loss" and "acc" (the objective, maximised).
* Baseline: the majority class of the training examples, scored on the validation set (what a predictor that
  ignores the sequence achieves); chance, 1/classes, is listed beside it.
"""
from __future__ import annotations

from typing import Iterator, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..registry import SuiteError
from .base import Baseline, Batch, Task, Totals, check_bool, check_choice, check_int, exact, split_batch, stable_seed

READOUTS = ("last", "mean", "flatten")  # the model's pooled readouts (suite.model.READOUTS less "step")
PROTOCOLS = ("holdout", "published")


class Examples(NamedTuple):
    """Examples of one split on the CPU: x (N, T, features) (any dtype; :meth:`ClassificationTask.inputs`
    turns it into floats) and y (N,) long."""

    x: Tensor
    y: Tensor


class ClassificationTask(Task):
    encoding = "real"
    metric = "acc"
    direction = "maximize"
    solved = None  # accuracy has no ceiling a cell must reach: the report ranks and compares with baselines

    classes: int
    dataset: str  # names the examples (several tasks may read one dataset differently)

    def _setup(self, readout, permute, protocol, val_size, batch_size, eval_batch_size) -> None:
        """Check the shared options, load the data and cut the splits. Call after the subclass's own checks."""
        self.readout = check_choice(self.name, "readout", readout, READOUTS)
        self.permute = check_bool(self.name, "permute", permute)
        self.protocol = check_choice(self.name, "protocol", protocol, PROTOCOLS)
        self.val_size = check_int(self.name, "val_size", val_size)
        self.batch_size = check_int(self.name, "batch_size", batch_size)
        self.eval_batch_size = check_int(self.name, "eval_batch_size", eval_batch_size)
        train, test = self.load()
        n, self.seq_len, self.input_size = train.x.shape
        self.output_size = self.classes
        if self.protocol == "holdout":
            if self.val_size >= n:
                raise SuiteError(f"task {self.name!r}: option val_size={val_size} must be below the {n} training "
                                 "examples it is held out of")
            order = torch.randperm(n, generator=torch.Generator().manual_seed(stable_seed(self.identity(), "val")))
            val, train = Examples(train.x[order[:self.val_size]], train.y[order[:self.val_size]]), \
                Examples(train.x[order[self.val_size:]], train.y[order[self.val_size:]])
        else:
            val = test
        if len(train.y) < self.batch_size:
            raise SuiteError(f"task {self.name!r}: option batch_size={batch_size} exceeds the {len(train.y)} "
                             "training examples")
        self.splits = {"train": train, "val": val, "test": test}
        self.order = None
        if self.permute:
            seed = stable_seed("permute", self.seq_len)  # smnist permute=true = psmnist
            self.order = torch.randperm(self.seq_len, generator=torch.Generator().manual_seed(seed))
        self._on_device: dict = {}

    def load(self) -> tuple[Examples, Examples]:
        """(train, test) examples on the CPU; called once per task instance."""
        raise NotImplementedError

    def identity(self) -> dict:
        """What the held-out split's seed hangs on: the dataset and the hold-out size, not how the examples are
        read (permuted or not, pixels or rows, batched, from which folder), so that smnist and psmnist, or
        mnist1d and its shuffled form, hold out the same examples."""
        return {"dataset": self.dataset, "val_size": self.val_size}

    # ------------------------------------------------------------------ data
    def inputs(self, x: Tensor) -> Tensor:
        """Stored examples -> model inputs (n, T, features) float; the fixed permutation applied."""
        x = x.float()
        return x if self.order is None else x[:, self.order.to(x.device)]

    def _split(self, split: str, device) -> Examples:
        key = (split, str(torch.device(device)))
        if key not in self._on_device:
            x, y = self.splits[split]
            x, y = x.to(device), y.to(device)
            self._on_device[key] = Examples(x if split == "train" else self.inputs(x), y)
        return self._on_device[key]

    def train_batches(self, seed: int, device) -> Iterator[Batch]:
        x, y = self._split("train", device)
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
        b = self.batch_size
        while True:
            order = torch.randperm(len(y), generator=generator, device=device)
            for start in range(0, len(y) - b + 1, b):
                rows = order[start:start + b]
                yield Batch(self.inputs(x[rows]), y[rows], n_targets=b)

    def _eval(self, split: str, device) -> list[Batch]:
        key = (split + "/batches", str(torch.device(device)))
        if key not in self._on_device:
            x, y = self._split(split, device)
            self._on_device[key] = split_batch(Batch(x, y, n_targets=len(y)), self.eval_batch_size)
        return self._on_device[key]

    def val_batches(self, device) -> list[Batch]:
        return self._eval("val", device)

    def test_batches(self, device) -> list[Batch]:
        return self._eval("test", device)

    def eval_size(self, split: str) -> int:
        return len(self.splits[split].y)  # holdout: val_size held out of train; test: the dataset's own

    # ------------------------------------------------------------------ objectives and metrics
    @staticmethod
    def logits(outputs: Tensor) -> Tensor:
        return outputs[:, -1]  # (B, classes): the one pooled output of a readout (the last step of "step")

    def loss(self, outputs: Tensor, batch: Batch) -> Tensor:
        return F.cross_entropy(self.logits(outputs), batch.y)

    def score(self, outputs: Tensor, batch: Batch) -> Totals:
        logits = self.logits(outputs).float()
        losses = F.cross_entropy(logits, batch.y, reduction="none")
        return {"loss": (exact(losses), batch.size), "acc": (exact(logits.argmax(-1) == batch.y), batch.size)}

    # ------------------------------------------------------------------ reference points
    @property
    def baseline(self) -> Baseline:
        majority = self.majority_class()
        rate = float((self.splits["val"].y == majority).double().mean())
        return Baseline("acc", rate, f"share of class {majority} (the training set's most frequent) in the "
                        f"validation set; chance 1/{self.classes} = {1 / self.classes:.4g}",
                        "majority-class predictor: ignores the sequence", higher_is_better=True,
                        others=((f"chance (1/{self.classes})", 1 / self.classes),))

    def majority_class(self) -> int:
        return int(torch.bincount(self.splits["train"].y, minlength=self.classes).argmax())

    def memoryless_outputs(self, batch: Batch) -> Tensor:
        """Always the training set's most frequent class, whatever the sequence held: (B, 1, classes)."""
        logits = torch.full((batch.size, 1, self.classes), -1e4, device=batch.x.device)
        logits[..., self.majority_class()] = 1e4  # softmax exactly one-hot in float32
        return logits

    def empirical_baseline(self) -> float:
        """The baseline's predictor (the training majority class) scored on the fixed test set; main's reports
        (suite.report.evidence.baselines) read it beside ``baseline``."""
        return float((self.splits["test"].y == self.majority_class()).double().mean())

    def describe(self) -> str:
        sizes = "/".join(str(len(self.splits[s].y)) for s in ("train", "val", "test"))
        return (f"{self.name}: {self.seq_len} steps x {self.input_size} features -> {self.classes} classes, "
                f"{'permuted, ' if self.permute else ''}train/val/test {sizes} ({self.protocol}), "
                f"readout {self.readout}, batch {self.batch_size}; majority baseline acc {self.baseline.value:.3f}")
