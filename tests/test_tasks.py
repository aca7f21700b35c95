"""Tasks: generation, baselines, fixed evaluation sets, LM batching and corpora, named settings, option errors."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from suite import tasks
from suite.registry import SuiteError
from suite.tasks import corpora
from suite.tasks.base import Batch

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "data" / "tiny_corpus"
COPY_FAMILY = [("copy", {}), ("copy", {"variable": True}), ("selective_copy", {})]
BIG = 1e4  # a logit gap that makes softmax exactly one-hot in float32


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small tensors gain nothing from intra-op threads, and on a busy 2-core machine the threads' waiting made
    these tests ~50x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def evaluate(task, batches, predict):
    return task.evaluate((predict(b), b) for b in batches)


def logits_for(target, classes):
    """Outputs that put all mass on ``target`` (B, T) -> (B, T, classes)."""
    return F.one_hot(target, classes).float() * BIG


def small(name, **opts):
    return tasks.build(name, **{"length": 20, "val_size": 256, "eval_batch_size": 100, **opts})


def test_every_task_a_shipped_setting_names_is_registered():
    named = {tasks.load_settings(name)["task"]["name"] for name in tasks.named_settings()}
    assert named and named <= set(tasks.names())
    assert tasks.options("copy")["length"] == 100


# ----------------------------------------------------------------------------- synthetic tasks
@pytest.mark.parametrize("name,opts", COPY_FAMILY)
@pytest.mark.parametrize("length,symbols,alphabet", [(100, 10, 10), (7, 3, 5)])
def test_copy_memoryless_scores_the_baseline(name, opts, length, symbols, alphabet):
    task = tasks.build(name, length=length, symbols=symbols, alphabet=alphabet, val_size=512, **opts)
    metrics = evaluate(task, task.val_batches("cpu"), task.memoryless_outputs)  # knows WHERE to recall, not WHAT
    assert task.baseline.metric == "loss"
    assert metrics["loss"] == pytest.approx(task.baseline.value, abs=1e-3)
    n_data = alphabet - 2
    layout = length + 2 * symbols if name == "copy" else length + symbols + 1
    assert task.baseline.value == pytest.approx(symbols * math.log(n_data) / layout, rel=1e-12)


def test_copy_baseline_values_of_the_paper():
    for length, value in [(100, 0.1733), (200, 0.0945), (500, 0.0400), (1000, 0.0204)]:
        assert tasks.build("copy", length=length).baseline.value == pytest.approx(value, abs=1e-4)


@pytest.mark.parametrize("name,opts", COPY_FAMILY)
def test_copy_perfect_predictor(name, opts):
    task = small(name, **opts)
    batch = next(task.train_batches(0, "cpu"))
    outputs = logits_for(batch.y, task.output_size)
    assert task.loss(outputs, batch).item() == pytest.approx(0, abs=1e-6)
    assert task.diag_loss(outputs, batch).item() == pytest.approx(0, abs=1e-6)
    metrics = evaluate(task, task.val_batches("cpu"), lambda b: logits_for(b.y, task.output_size))
    assert metrics["acc"] == 1 and metrics["loss"] == pytest.approx(0, abs=1e-6)
    assert task.is_solved(metrics) and not task.is_solved({"acc": 0.98})


@pytest.mark.parametrize("name,opts", COPY_FAMILY)
def test_copy_layout(name, opts):
    task = small(name, symbols=4, alphabet=6, **opts)
    batch = next(task.train_batches(3, "cpu"))
    x, y, recall = batch.x, batch.y, batch.recall
    assert x.shape == y.shape == recall.shape == (64, task.seq_len) and x.dtype == torch.long
    assert (recall.sum(1) == 4).all() and (y[~recall] == 0).all()
    assert ((y[recall] >= 1) & (y[recall] <= 4)).all()
    assert ((x == task.delimiter).sum(1) == 1).all()
    delimiter_at = (x == task.delimiter).long().argmax(1)
    first_recall = recall.long().argmax(1)
    assert (first_recall == delimiter_at + 1).all()  # the recall follows the delimiter
    data = x[(x > 0) & (x < task.delimiter)].view(64, 4)  # the data symbols, in order of appearance
    assert torch.equal(data, y[recall].view(64, 4))
    if name == "copy" and not opts:
        assert (delimiter_at == task.length + 3).all()
    if opts.get("variable"):
        assert len(set(delimiter_at.tolist())) > 5  # the delay varies


def test_adding_constant_predictor_and_perfect_predictor():
    task = tasks.build("adding", length=50, val_size=20000, eval_batch_size=5000)
    ones = evaluate(task, task.val_batches("cpu"), lambda b: torch.ones(b.size, 50, 1))
    assert ones["mse"] == ones["loss"] == pytest.approx(1 / 6, abs=0.01) and task.baseline.value == 1 / 6
    assert 0.02 < ones["acc"] < 0.15  # |U1 + U2 - 1| < 0.04 has probability ~0.078

    def perfect(b):
        out = torch.zeros(b.size, 50, 1)
        out[:, -1, 0] = b.y
        return out
    metrics = evaluate(task, task.val_batches("cpu"), perfect)
    assert metrics["mse"] == pytest.approx(0, abs=1e-12) and metrics["acc"] == 1 and task.is_solved(metrics)
    assert not task.is_solved(ones)


def test_adding_layout():
    task = tasks.build("adding", length=11)
    batch = next(task.train_batches(0, "cpu"))
    values, markers = batch.x[..., 0], batch.x[..., 1]
    assert batch.x.shape == (64, 11, 2) and batch.y.shape == (64,)
    assert (markers[:, :5].sum(1) == 1).all() and (markers[:, 5:].sum(1) == 1).all()
    assert torch.allclose((values * markers).sum(1), batch.y)
    assert ((values >= 0) & (values < 1)).all()


@pytest.mark.parametrize("name,opts", COPY_FAMILY + [("adding", {})])
def test_generation_is_seeded(name, opts):
    task = small(name, **opts)

    def first(seed):
        return next(task.train_batches(seed, "cpu"))
    a, b, c = first(1), first(1), first(2)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.x, c.x)
    stream = task.train_batches(1, "cpu")
    assert not torch.equal(next(stream).x, next(stream).x)
    val, test = task.val_batches("cpu"), task.test_batches("cpu")
    assert len(val) == 3 and [v.size for v in val] == [100, 100, 56] and all(v.reset for v in val)
    assert not torch.equal(val[0].x, test[0].x)
    assert task.val_batches("cpu") is val  # built once


def checksum(name, opts) -> str:
    task = tasks.build(name, **opts)
    return ",".join(f"{float(b.x.double().sum()):.6f}:{float(b.y.double().sum()):.6f}:"
                    f"{float((b.x.double().flatten()[::7] * torch.arange(b.x.numel())[::7]).sum()):.6f}"
                    for b in task.val_batches("cpu"))


def test_validation_set_is_identical_in_another_process():
    cases = [("copy", {"length": 30, "val_size": 64}), ("selective_copy", {"length": 30, "val_size": 64}),
             ("adding", {"length": 30, "val_size": 64}), ("copy", {"length": 30, "val_size": 64, "variable": True})]
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from tests.test_tasks import checksum; "
            f"print('|'.join(checksum(n, o) for n, o in {cases!r}))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code, str(ROOT)], capture_output=True, text=True, env=env,
                         check=True, cwd=ROOT).stdout.strip()
    assert out == "|".join(checksum(n, o) for n, o in cases)


def test_validation_set_does_not_depend_on_batching():
    a = tasks.build("copy", length=10, val_size=64, batch_size=8, eval_batch_size=64).val_batches("cpu")
    b = tasks.build("copy", length=10, val_size=64, batch_size=32, eval_batch_size=16).val_batches("cpu")
    assert torch.equal(a[0].x, torch.cat([v.x for v in b]))
    c = tasks.build("copy", length=11, val_size=64).val_batches("cpu")
    assert not torch.equal(a[0].x[:, :10], c[0].x[:, :10])


# ----------------------------------------------------------------------------- language modelling
def test_ptb_word_counts():
    task = tasks.build("ptb_word")
    splits = task.corpus.splits
    assert task.vocab_size == task.input_size == task.output_size == 10_000
    assert {k: len(v) for k, v in splits.items()} == {"train": 929_589, "valid": 73_760, "test": 82_430}
    assert "<eos>" in task.vocab and "<unk>" in task.vocab
    assert task.steps_per_epoch == (929_589 // 20 - 1) // 20
    assert task.metric == "ppl" and task.direction == "minimize" and task.baseline.metric == "ppl"
    assert 500 < task.baseline.value < 1000  # unigram perplexity, far below uniform's 10,000
    assert tasks.build("ptb_word").corpus is task.corpus is corpora.ptb("word")  # tokenised once per process


def test_ptb_char_counts():
    task = tasks.build("ptb_char")
    assert {k: len(v) for k, v in task.corpus.splits.items()} == {"train": 5_017_482, "valid": 393_042,
                                                                   "test": 442_423}
    assert task.vocab_size == 50 and "_" in task.vocab and "\n" in task.vocab and " " not in task.vocab
    text = "".join(task.vocab[i] for i in task.corpus.splits["valid"][:40].tolist())
    assert text.startswith("consumers_may_want_to_move_their_")
    assert task.metric == "bpc" and 3 < task.baseline.value < math.log2(50)


def column_stream(batches, column):
    """The (input, target) pairs of one column across windows, masked positions dropped."""
    xs, ys = [], []
    for b in batches:
        keep = torch.ones_like(b.x[column], dtype=torch.bool) if b.mask is None else b.mask[column]
        xs.append(b.x[column][keep])
        ys.append(b.y[column][keep])
    return torch.cat(xs), torch.cat(ys)


def dummy_outputs(batch, vocab):
    """A fixed memoryless predictor: its logits are a fixed random function of the current input token."""
    table = torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(vocab))
    return table[batch.x]  # (B, T, vocab)


@pytest.mark.parametrize("name,sizes,opts", [
    ("ptb_word", (10, 8), {"bptt": 100}),
    ("ptb_char", (10, 3), {"bptt": 400}),
    ("lm", (3, 2, 5, 40), {"path": str(TINY), "batch_size": 2, "bptt": 2}),  # more columns than pairs too
])
def test_evaluation_covers_every_token_once(name, sizes, opts):
    """Every (token, next token) pair of the split is scored once, and a memoryless predictor's summed loss
    does not depend on the eval batch size (PTB word level checks coverage only: 10k-wide outputs are slow)."""
    totals = []
    for eval_batch_size in sizes:
        task = tasks.build(name, eval_batch_size=eval_batch_size, **opts)
        stream = task.corpus.splits["valid"]
        batches = task.val_batches("cpu")
        assert batches[0].reset and not any(b.reset for b in batches[1:])
        assert sum(b.n_targets for b in batches) == len(stream) - 1
        if name.startswith("ptb"):
            assert any(b.mask is not None for b in batches)  # the remainder is ragged for these sizes
        pairs = [column_stream(batches, j) for j in range(eval_batch_size)]
        assert torch.equal(torch.cat([x for x, _ in pairs]), stream[:-1])
        assert torch.equal(torch.cat([y for _, y in pairs]), stream[1:])
        if name == "ptb_word":
            continue
        totals.append(evaluate(task, batches, lambda b: dummy_outputs(b, task.vocab_size)))
        last = batches[-1]
        outputs = dummy_outputs(last, task.vocab_size)
        assert task.loss(outputs, last).item() == pytest.approx(
            float(task.score(outputs, last)["loss"][0]) / last.n_targets, rel=1e-6)
    for other in totals[1:]:
        assert other["loss"] == pytest.approx(totals[0]["loss"], rel=1e-12)
        assert other["acc"] == totals[0]["acc"]
    if totals:
        metric, loss = task.metric, totals[0]["loss"]
        assert totals[0][metric] == pytest.approx(math.exp(loss) if metric == "ppl" else loss / math.log(2))


def test_training_windows_are_contiguous_columns():
    task = tasks.build("ptb_word", batch_size=4, bptt=35)
    epoch = list(task.train_batches(0, "cpu"))
    assert len(epoch) == task.steps_per_epoch == (929_589 // 4 - 1) // 35
    assert epoch[0].reset and not any(b.reset for b in epoch[1:])
    assert all(b.x.shape == b.y.shape == (4, 35) and b.mask is None and b.n_targets == 140 for b in epoch)
    stream, column = task.corpus.splits["train"], 929_589 // 4
    for j in (0, 3):
        x, y = column_stream(epoch, j)
        assert torch.equal(x, stream[j * column: j * column + len(x)])
        assert torch.equal(y, stream[j * column + 1: j * column + 1 + len(y)])
    again = next(task.train_batches(5, "cpu"))
    assert torch.equal(again.x, epoch[0].x)  # fixed order, as Zaremba et al.


def test_folder_corpus_word_and_char():
    word = tasks.build("lm", path=str(TINY), batch_size=2, bptt=2, eval_batch_size=3)
    assert {k: len(v) for k, v in word.corpus.splits.items()} == {"train": 12, "valid": 4, "test": 6}
    assert word.vocab[:7] == ("the", "cat", "sat", "on", "mat", "<eos>", "dog") and word.vocab_size == 8
    assert word.steps_per_epoch == 2 and word.metric == "ppl"
    assert sum(b.n_targets for b in word.test_batches("cpu")) == 5
    char = tasks.build("lm", path=str(TINY), level="char", batch_size=2, bptt=4)
    assert {k: len(v) for k, v in char.corpus.splits.items()} == {"train": 36, "valid": 12, "test": 17}
    assert "\n" in char.vocab and " " in char.vocab and char.metric == "bpc"
    assert sum(b.n_targets for b in char.val_batches("cpu")) == 11


def test_folder_corpus_errors(tmp_path):
    with pytest.raises(SuiteError, match="needs option path"):
        tasks.build("lm")
    with pytest.raises(SuiteError, match="does not exist"):
        tasks.build("lm", path=str(tmp_path / "nowhere"))
    for name in ("train", "valid"):
        (tmp_path / f"{name}.txt").write_text("a b c d e f g h\n")
    with pytest.raises(SuiteError, match=r"test\.txt is missing") as err:
        tasks.build("lm", path=str(tmp_path))
    assert "\n" not in str(err.value)
    (tmp_path / "test.txt").write_text("  \n")
    with pytest.raises(SuiteError, match=r"test\.txt is empty"):
        tasks.build("lm", path=str(tmp_path))
    (tmp_path / "test.txt").write_text("a b\n")
    assert tasks.build("lm", path=str(tmp_path), batch_size=2, bptt=2).steps_per_epoch == 1  # (9 // 2 - 1) // 2
    with pytest.raises(SuiteError, match="too few"):
        tasks.build("lm", path=str(tmp_path), batch_size=20)


# ----------------------------------------------------------------------------- settings, options, metadata
def test_named_settings_load_and_build():
    named = tasks.named_settings()
    assert set(named) == {"copy-T100", "copy-T200", "copy-T500", "adding-T100", "adding-T200", "adding-T400",
                          "selective-copy", "variable-copy", "ptb-word", "ptb-char",
                          "repro-adding-T200", "repro-copy-T100",  # the reproductions' run settings
                          "mnist1d", "mnist1d-shuffled", "repro-mnist1d", "repro-mnist1d-shuffled"}
    for setting, (path, description) in named.items():
        assert path.is_file() and description and "\n" not in description
        section = dict(tasks.load_settings(setting)["task"])
        task = tasks.build(section.pop("name"), **section)
        assert task.describe() and "\n" not in task.describe()
        assert tasks.build(task.name, **task.options).options == task.options  # options rebuild the task
    assert tasks.build(**tasks.load_settings("copy-T500")["task"]).length == 500
    assert tasks.load_settings(named["ptb-word"][0]) == tasks.load_settings("ptb-word")


def test_a_malformed_setting_breaks_only_its_own_name(tmp_path, monkeypatch):
    (tmp_path / "broken.yaml").write_text("task: {name: adding, length: [200\n")
    monkeypatch.setattr(tasks, "settings_dirs", lambda: [tasks.SETTINGS_DIR, tmp_path])
    assert tasks.load_settings("adding-T200")["task"]["length"] == 200  # the others still load
    with pytest.raises(SuiteError, match=r"malformed YAML in '.*broken.yaml' at line"):
        tasks.load_settings("broken")
    assert tasks.named_settings()["broken"][1].startswith("(cannot be used: malformed YAML in ")  # `list` says why


def test_top_level_tasks_folder_is_the_package_folder():
    top = ROOT / "tasks"
    assert top.is_symlink() and top.resolve() == (ROOT / "suite" / "tasks" / "settings").resolve()
    assert (top / "copy-T100.yaml").is_file()


@pytest.mark.parametrize("content,fragment", [(None, "cannot read .*: it does not exist"),
                                              ("task: [oops\n", "malformed YAML in .* at line"),
                                              ("- 1\n- 2\n", "must hold a mapping"),
                                              ("description: x\n", "needs a 'task:' mapping")])
def test_bad_settings_files(tmp_path, content, fragment):
    path = tmp_path / "bad.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SuiteError, match=fragment) as err:
        tasks.load_settings(path)
    assert "\n" not in str(err.value)
    with pytest.raises(SuiteError, match="unknown task setting 'copy-T101'"):
        tasks.load_settings("copy-T101")


@pytest.mark.parametrize("name,opts,fragment", [
    ("copy", {"length": 0}, "length=0 must be an integer >= 1"),
    ("copy", {"length": 10.0}, "length=10.0 must be an integer"),
    ("copy", {"alphabet": 3}, "alphabet=3 must be an integer >= 4"),
    ("copy", {"symbols": 0}, "symbols=0"),
    ("copy", {"variable": "yes"}, "variable='yes' must be true or false"),
    ("copy", {"batch_size": 0}, "batch_size=0"),
    ("copy", {"bptt": 20}, "does not take option 'bptt'; its options: length, symbols"),
    ("selective_copy", {"length": 5, "symbols": 6}, "symbols=6 must be <= length=5"),
    ("selective_copy", {"variable": True}, "does not take option 'variable'"),
    ("adding", {"length": 1}, "length=1 must be an integer >= 2"),
    ("adding", {"val_size": -1}, "val_size=-1"),
    ("ptb_word", {"bptt": 0}, "bptt=0 must be an integer >= 1"),
    ("ptb_word", {"batch_size": True}, "batch_size=True"),
    ("ptb_char", {"path": "x"}, "does not take option 'path'; its options: batch_size, bptt, eval_batch_size"),
    ("lm", {"path": str(TINY), "level": "byte"}, "level='byte' must be one of word, char"),
    ("nope", {}, "unknown task 'nope'"),
])
def test_bad_options(name, opts, fragment):
    with pytest.raises(SuiteError, match=fragment.replace("(", r"\(")) as err:
        tasks.build(name, **opts)
    assert "\n" not in str(err.value)


# the contract every task keeps (encoding, direction, baseline, published metrics) is in test_tasks_contract.py
@pytest.mark.parametrize("name,metric", [("copy", "acc"), ("selective_copy", "acc"), ("adding", "mse"),
                                         ("ptb_word", "ppl"), ("ptb_char", "bpc")])
def test_metadata(name, metric):
    task = tasks.build(name)
    assert task.metric == metric
    assert task.baseline.value > 0 and task.baseline.formula and task.baseline.source
    assert (task.solved is None) == name.startswith("ptb")
    if name.startswith("ptb"):
        assert not task.is_solved({"ppl": 1.0, "bpc": 0.0})
        assert any(not p.checked and p.label().endswith("(unchecked)") for p in task.published) == (name == "ptb_char")
    batch = task.val_batches("cpu")[0]
    assert isinstance(batch, Batch) and batch.x.dtype == (torch.float32 if task.encoding == "real" else torch.long)
