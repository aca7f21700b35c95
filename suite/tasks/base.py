"""The contract every task keeps, and the task registry.

A task owns its data, its loss and its metrics; the model and the training loop only see :class:`Batch`es.

* ``encoding`` says how the model reads ``Batch.x``: "onehot" (x: (B, T) long, one-hot of width ``input_size``),
  "embedding" (x: (B, T) long, ``input_size`` = vocabulary size) or "real" (x: (B, T, input_size) float).
* The model returns PER-STEP head outputs (B, T, output_size); ``loss``/``diag_loss``/``score`` take those.
  A task whose ``readout`` is not "step" (classification) gets one output per sequence, (B, 1, output_size).
* ``score`` returns summed quantities ``{name: (sum, count)}`` so that metrics aggregate exactly over any number
  of evaluation batches; ``summarize`` turns the totals into the final metric values (names logged as
  ``val/<name>`` and ``test/<name>``).
* Validation and test sets are fixed: identical across processes, cells and trials for the same settings.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import ClassVar, Iterator, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..registry import Registry, SuiteError

TASKS = Registry("task", "rnnsuite.tasks", name_attribute="name")
register = TASKS.register  # class decorator: @register(name, summary, paper) on a Task subclass (sets cls.name)
ENCODINGS = ("onehot", "embedding", "real")


@dataclass
class Batch:
    """One batch. Synthetic tasks always reset the state; LM resets only at the first window of a pass."""

    x: Tensor  # (B, T) long tokens, or (B, T, C) float for "real" inputs
    y: Tensor  # targets: (B, T) long classes, or (B,) float for a last-step regression
    mask: Tensor | None = None  # (B, T) bool: targets that count (a ragged LM remainder); None = all
    reset: bool = True  # True: start from a zero state; False: carry the (detached) state of the last batch
    recall: Tensor | None = None  # (B, T) bool, copy tasks: the recall positions that "acc" scores
    n_targets: int = -1  # number of targets that count; given by the task so that no device sync is needed

    def __post_init__(self):
        if self.n_targets < 0:
            self.n_targets = self.y.numel() if self.mask is None else int(self.mask.sum())

    @property
    def size(self) -> int:
        """Sequences in the batch (what Lightning's ``self.log(..., batch_size=)`` wants)."""
        return self.x.shape[0]


@dataclass(frozen=True)
class Baseline:
    """The score of a predictor without the skill the task tests; reports draw it as a line."""

    metric: str  # the metric it is expressed in ("loss", "mse", "ppl", "bpc", "acc")
    value: float
    formula: str  # how the value follows from the settings
    source: str  # where the formula comes from
    higher_is_better: bool = False  # True for an accuracy: a cell beats the baseline by scoring above it
    others: tuple[tuple[str, float], ...] = ()  # further reference points in the same metric: (label, value)


@dataclass(frozen=True)
class SolvedRule:
    """The "solved" criterion as data: ``metric op threshold`` on a summarized metric (``mse < 0.00167``).

    ``Task.solved`` is its human text; training logs both (tags ``task.solved``, ``task.solved_metric``,
    ``task.solved_op``, ``task.solved_threshold``) and ``Task.is_solved`` applies it, so the logged rule is the
    one used.
    """

    metric: str  # a key of Task.summarize's result ("mse", "acc"); logged namespaced as val/<metric>
    op: str  # "<", "<=", ">" or ">="
    threshold: float

    def holds(self, metrics: dict) -> bool:
        value = metrics.get(self.metric)
        if value is None or value != value:  # missing or NaN: not solved
            return False
        return {"<": value < self.threshold, "<=": value <= self.threshold,
                ">": value > self.threshold, ">=": value >= self.threshold}[self.op]

    def describe(self) -> str:
        return f"val/{self.metric} {self.op} {self.threshold:.6g}"


class Published(NamedTuple):
    """A published result for reports; value None for a qualitative result."""

    description: str
    metric: str  # namespaced like the logged metric: "test/ppl", "val/acc", ...
    value: float | None
    citation: str
    checked: bool = True  # False: from a secondary source, not confirmed against the paper

    def label(self) -> str:
        return self.description + ("" if self.checked else " (unchecked)")


Totals = dict[str, tuple[Tensor, int]]


def stable_seed(*parts) -> int:
    """A seed from settings that is identical in every process (Python's hash() is salted per process)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & (2**63 - 1)


def exact(values: Tensor) -> Tensor:
    """The sum of per-item values in float64 (float32 on MPS, which lacks it), so that totals over many
    batches do not depend on how the data was batched."""
    values = values.detach()
    return (values.double() if values.device.type != "mps" else values.float()).sum()


def token_losses(outputs: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy per position, (B, T, C) x (B, T) -> (B, T). Classes last: the (B, C, T) layout that
    F.cross_entropy takes for sequences runs ~50x slower on the CPU when it is a transposed view."""
    flat = F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1), reduction="none")
    return flat.view(targets.shape)


# ----------------------------------------------------------------------------- option checks
def check_int(task: str, option: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SuiteError(f"task {task!r}: option {option}={value!r} must be an integer >= {minimum}")
    return value


def check_bool(task: str, option: str, value) -> bool:
    if not isinstance(value, bool):
        raise SuiteError(f"task {task!r}: option {option}={value!r} must be true or false")
    return value


def check_choice(task: str, option: str, value, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise SuiteError(f"task {task!r}: option {option}={value!r} must be one of {', '.join(choices)}")
    return value


class Task:
    """Base class. A subclass sets the class attributes below and ``options`` in its ``__init__``."""

    name: ClassVar[str] = "task"  # set by @register
    encoding: ClassVar[str]  # one of ENCODINGS
    metric: ClassVar[str]  # the default objective of a sweep
    direction: ClassVar[str]  # "minimize" or "maximize"
    solved: ClassVar[str | None] = None  # what "solved" means, or None

    input_size: int
    output_size: int
    seq_len: int  # length of one training sequence / window (e.g. T_max for chrono initialisation)
    readout: str = "step"  # where the model's head reads (suite.model.READOUTS); "step" = every step
    steps_per_epoch: int | None = None  # None: an infinite stream of fresh batches
    options: dict

    # ------------------------------------------------------------------ data
    def train_batches(self, seed: int, device) -> Iterator[Batch]:
        raise NotImplementedError

    def val_batches(self, device) -> list[Batch]:
        raise NotImplementedError

    def test_batches(self, device) -> list[Batch] | None:
        return None

    def eval_size(self, split: str) -> int | None:
        """Examples in the fixed "val" or "test" set (the N of the report's continuity correction for an
        accuracy); None where a split is not counted in examples (a corpus is counted in tokens)."""
        return None

    # ------------------------------------------------------------------ objectives and metrics
    def loss(self, outputs: Tensor, batch: Batch) -> Tensor:
        raise NotImplementedError

    def diag_loss(self, outputs: Tensor, batch: Batch) -> Tensor:
        """The loss the gradient-flow diagnostics differentiate; the training loss unless a task says otherwise."""
        return self.loss(outputs, batch)

    def score(self, outputs: Tensor, batch: Batch) -> Totals:
        raise NotImplementedError

    def summarize(self, totals: Totals) -> dict[str, float]:
        return {key: float(total) / count if count else math.nan for key, (total, count) in totals.items()}

    def evaluate(self, outputs_and_batches) -> dict[str, float]:
        """Convenience: summarize ``score`` over an iterable of (outputs, batch) pairs."""
        totals: dict[str, list] = {}
        for outputs, batch in outputs_and_batches:
            for key, (total, count) in self.score(outputs, batch).items():
                acc = totals.setdefault(key, [0.0, 0])
                acc[0] = acc[0] + total
                acc[1] += count
        return self.summarize({key: (t, c) for key, (t, c) in totals.items()})

    # ------------------------------------------------------------------ reference points
    @property
    def baseline(self) -> Baseline:
        raise NotImplementedError

    @property
    def published(self) -> list[Published]:
        return []

    def memoryless_outputs(self, batch: Batch) -> Tensor | None:
        """The outputs (shaped as the model's) of the predictor ``baseline`` describes, one that ignores the
        sequence's history; the registry-driven tests score it against the baseline's formula. None: no such
        predictor is defined (the baseline is then checked by the task's own tests only)."""
        return None

    def empirical_baseline(self) -> float | None:
        """The baseline's predictor scored on the fixed test set (None where the task does not compute it):
        reports show it beside the formula's value and judge "beats baseline" by the stricter of the two."""
        return None

    @property
    def solved_rule(self) -> SolvedRule | None:
        """The criterion behind ``solved`` as (metric, op, threshold); None where the task has none (LM)."""
        return None

    def is_solved(self, metrics: dict) -> bool:
        rule = self.solved_rule
        return rule is not None and rule.holds(metrics)

    def describe(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.options.items())
        b = self.baseline
        return f"{self.name} ({opts}); baseline {b.metric} {b.value:.4g}"

    def __repr__(self) -> str:
        return f"<Task {self.describe()}>"


def split_batch(batch: Batch, size: int) -> list[Batch]:
    """Cut a batch of independent sequences into batches of at most ``size`` sequences (views, no copies)."""
    pieces = []
    for start in range(0, batch.size, size):
        cut = slice(start, start + size)
        pieces.append(Batch(batch.x[cut], batch.y[cut],
                            None if batch.mask is None else batch.mask[cut], batch.reset,
                            None if batch.recall is None else batch.recall[cut]))
    return pieces


class SyntheticTask(Task):
    """A task whose batches are generated on the fly: fresh training batches, fixed validation/test sets.

    Training batches are generated on ``device`` from ``torch.Generator(device)`` seeded with the run's seed.
    The validation and test sets are generated once on the CPU (bit-identical on every machine and process) from
    a seed derived from the task's settings by SHA-256, then moved to the device and kept there.
    """

    batch_size: int
    val_size: int
    eval_batch_size: int

    def init_sizes(self, batch_size, val_size, eval_batch_size):
        """Check and keep the three sizes every synthetic task takes (call it from ``__init__``)."""
        self.batch_size = check_int(self.name, "batch_size", batch_size)
        self.val_size = check_int(self.name, "val_size", val_size)
        self.eval_batch_size = check_int(self.name, "eval_batch_size", eval_batch_size)
        self._fixed: dict = {}

    def generate(self, n: int, generator: torch.Generator, device) -> Batch:
        """``n`` fresh sequences drawn with ``generator`` on ``device``."""
        raise NotImplementedError

    def identity(self) -> dict:
        """The settings that define the data (not how it is batched): the seed of the fixed sets hangs on it."""
        skip = {"batch_size", "eval_batch_size"}
        return {"task": self.name, **{k: v for k, v in self.options.items() if k not in skip}}

    def train_batches(self, seed: int, device) -> Iterator[Batch]:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
        while True:
            yield self.generate(self.batch_size, generator, device)

    def _fixed_set(self, split: str, device) -> list[Batch]:
        key = (split, str(torch.device(device)))
        if key not in self._fixed:
            generator = torch.Generator()
            generator.manual_seed(stable_seed(self.identity(), split))
            whole = self.generate(self.val_size, generator, "cpu")
            whole = Batch(whole.x.to(device), whole.y.to(device), None, True,
                          None if whole.recall is None else whole.recall.to(device))
            self._fixed[key] = split_batch(whole, self.eval_batch_size)
        return self._fixed[key]

    def val_batches(self, device) -> list[Batch]:
        return self._fixed_set("val", device)

    def test_batches(self, device) -> list[Batch]:
        """A second fixed set, independent of the validation set (model selection uses val, reports use test)."""
        return self._fixed_set("test", device)

    def eval_size(self, split: str) -> int:
        return self.val_size  # the test set is generated with as many sequences as the validation set
