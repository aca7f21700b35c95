"""The contract every registered task keeps, parametrised over the task registry: shapes, fixed validation and
test sets (identical in another process), and the baseline's formula against the memoryless predictor the task
defines (:meth:`suite.tasks.Task.memoryless_outputs`). A new task, or a plugin task (``RNNSUITE_PLUGINS=
tests.plugins.parity pytest tests/test_tasks_contract.py``), is checked with no edit here (docs/extending.md)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from suite import tasks
from suite.model import READOUTS
from suite.tasks.base import ENCODINGS
from suite.tasks.lm import LanguageModelling
from tests.test_tasks_mnist import fake_mnist

ROOT = Path(__file__).resolve().parents[1]
NAMES = tasks.names()
# tiny sizes for the options of these conventional names, wherever a task takes them
SMALL = {"length": 12, "batch_size": 8, "val_size": 48, "eval_batch_size": 32, "bptt": 8}
# the tasks that read files: where their test data is (a new one fails here, naming itself, until it is added)
FILES = {"lm": lambda data: {"path": str(ROOT / "tests" / "data" / "tiny_corpus"), "batch_size": 2, "bptt": 2},
         "smnist": lambda data: {"path": str(data / "mnist"), "val_size": 10},
         "psmnist": lambda data: {"path": str(data / "mnist"), "val_size": 10}}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("task_data")
    fake_mnist(folder / "mnist")
    return folder


def tiny_options(name: str, data: Path, **overrides) -> dict:
    accepted = tasks.options(name)
    opts = {k: v for k, v in {**SMALL, **overrides}.items() if k in accepted}
    return {**opts, **FILES.get(name, lambda _: {})(data)}


def fingerprint(name: str, opts: dict) -> list[str]:
    """The fixed sets of a task built from ``opts`` (val and test: every batch), as text."""
    task = tasks.build(name, **opts)
    return [f"{float(b.x.double().sum()):.6f}:{float(b.y.double().sum()):.6f}:"
            f"{float((b.x.double().flatten() * torch.arange(b.x.numel())).sum()):.4f}"
            for b in [*task.val_batches("cpu"), *(task.test_batches("cpu") or [])]]


@pytest.fixture(scope="module")
def other_process(data) -> dict[str, list[str]]:
    """Every task's fingerprint computed in ANOTHER process, with another hash seed (one process for all)."""
    cases = {name: tiny_options(name, data) for name in NAMES}
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); from tests.test_tasks_contract import fingerprint; "
            "print(json.dumps({n: fingerprint(n, o) for n, o in json.loads(sys.argv[2]).items()}))")
    env = {**os.environ, "PYTHONHASHSEED": "2024"}  # the plugins, if any, come along in RNNSUITE_PLUGINS
    out = subprocess.run([sys.executable, "-c", code, str(ROOT), json.dumps(cases)], capture_output=True,
                         text=True, env=env, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", NAMES)
def test_registered_with_a_summary_a_paper_and_its_options(name, data):
    entry = tasks.TASKS.get(name)
    assert entry.summary and entry.source, name
    assert issubclass(entry.builder, tasks.Task) and entry.builder.name == name
    task = tasks.build(name, **tiny_options(name, data))
    assert set(task.options) <= set(tasks.options(name))
    assert task.encoding in ENCODINGS and task.direction in ("minimize", "maximize") and task.readout in READOUTS
    assert all(isinstance(v, int) and v > 0 for v in (task.input_size, task.output_size, task.seq_len))
    b = task.baseline
    assert math.isfinite(b.value) and b.formula and b.source
    assert all(p.metric.split("/")[0] in ("val", "test") for p in task.published)
    assert (task.solved is None) == (task.solved_rule is None)


@pytest.mark.parametrize("name", NAMES)
def test_shapes_loss_and_metrics(name, data):
    task = tasks.build(name, **tiny_options(name, data))
    for batch in (next(task.train_batches(0, "cpu")), task.val_batches("cpu")[0]):
        B, T = batch.x.shape[:2]
        if task.encoding == "real":
            assert batch.x.dtype.is_floating_point and batch.x.shape == (B, T, task.input_size)
        else:  # token ids: one-hot width or vocabulary size input_size
            assert batch.x.dtype == torch.long and batch.x.shape == (B, T)
            assert 0 <= int(batch.x.min()) and int(batch.x.max()) < task.input_size
        assert batch.y.shape[0] == B and batch.size == B and batch.n_targets > 0
        steps = T if task.readout == "step" else 1  # a pooled readout gives one output per sequence
        outputs = torch.zeros(B, steps, task.output_size, requires_grad=True)
        loss = task.loss(outputs, batch)
        assert loss.dim() == 0 and torch.isfinite(loss)
        loss.backward()
        assert outputs.grad.abs().sum() > 0  # the loss reads the outputs
        assert torch.isfinite(task.diag_loss(outputs.detach(), batch))
        metrics = task.summarize(task.score(outputs.detach(), batch))
        assert {task.metric, task.baseline.metric} <= set(metrics), sorted(metrics)
        assert isinstance(task.is_solved(metrics), bool)


@pytest.mark.parametrize("name", NAMES)
def test_fixed_sets_are_identical_in_another_process_and_across_builds(name, data, other_process):
    opts = tiny_options(name, data)
    here = fingerprint(name, opts)
    assert here and here == other_process[name]
    assert fingerprint(name, opts) == here  # a second build in this process too
    task = tasks.build(name, **opts)
    assert task.val_batches("cpu") is task.val_batches("cpu")  # built once, then kept


@pytest.mark.parametrize("name", NAMES)
def test_eval_size_counts_the_sequences_of_each_fixed_set(name, data):
    """What the report's continuity correction takes as N (suite.report.analysis): the sequences a split's
    metric averages over, or None for a task that does not count them in sequences (a corpus counts tokens)."""
    task = tasks.build(name, **tiny_options(name, data))
    for split, batches in (("val", task.val_batches("cpu")), ("test", task.test_batches("cpu"))):
        n = task.eval_size(split)
        assert n is None or (batches is not None and n == sum(b.size for b in batches)), (split, n)
    if not isinstance(task, LanguageModelling):  # every other task counts both fixed sets in sequences
        assert task.eval_size("val") and task.eval_size("test")


@pytest.mark.parametrize("name", NAMES)
def test_baseline_formula_is_what_the_memoryless_predictor_scores(name, data):
    """On a larger validation set where the task takes ``val_size``: a formula that is an expectation (adding's
    1/6) meets a finite sample within its sampling error (at 2,048 sequences ~2.6% for adding), so within 10%; on
    the test set the same predictor gives ``empirical_baseline()`` exactly, where the task computes it. Windows
    of 128 x 32 tokens: evaluation over a whole corpus in a few large batches."""
    task = tasks.build(name, **tiny_options(name, data, val_size=2048, eval_batch_size=128, bptt=32))
    val = task.val_batches("cpu")
    if task.memoryless_outputs(val[0]) is None:
        pytest.skip(f"task {name!r} defines no memoryless predictor (Task.memoryless_outputs)")
    b = task.baseline
    metrics = task.evaluate((task.memoryless_outputs(v), v) for v in val)
    assert metrics[b.metric] == pytest.approx(b.value, rel=0.1, abs=1e-6)
    empirical = task.empirical_baseline()
    if empirical is not None:
        on_test = task.evaluate((task.memoryless_outputs(t), t) for t in task.test_batches("cpu"))
        assert on_test[b.metric] == pytest.approx(empirical, rel=1e-5)
