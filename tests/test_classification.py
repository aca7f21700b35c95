"""Sequence classification: MNIST-1D, sequential/permuted MNIST from IDX files, readouts, bidirectional layers."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from suite import tasks
from suite.config import build_config
from suite.diagnostics import gradient_profile
from suite.model import SequenceModel
from suite.packed import packable
from suite.registry import SuiteError
from suite.assemble import build_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rows(x: torch.Tensor) -> set:
    return {tuple(r) for r in x.flatten(1).tolist()}


# ----------------------------------------------------------------------------- MNIST-1D
def test_mnist1d_shapes_and_splits():
    task = tasks.build("mnist1d")
    assert (task.seq_len, task.input_size, task.output_size, task.encoding) == (40, 1, 10, "real")
    batch = next(task.train_batches(0, "cpu"))
    assert batch.x.shape == (100, 40, 1) and batch.x.dtype == torch.float32
    assert batch.y.shape == (100,) and batch.y.dtype == torch.long and int(batch.y.max()) <= 9
    val, test = task.val_batches("cpu"), task.test_batches("cpu")
    assert sum(b.size for b in val) == 500 and sum(b.size for b in test) == 1000
    assert len(task.splits["train"].y) == 3500
    assert not rows(task.splits["train"].x) & rows(val[0].x)  # held out, not also trained on
    published = tasks.build("mnist1d", protocol="published")
    assert len(published.splits["train"].y) == 4000  # the paper trains on every training example
    assert torch.equal(published.val_batches("cpu")[0].x, test[0].x)  # and validates on the test set
    # the hold-out comes from the published training examples: together they are the 4,000
    assert rows(task.splits["train"].x) | rows(val[0].x) == rows(published.splits["train"].x)


def test_mnist1d_generation_leaves_the_global_random_state_alone():
    from suite.tasks import mnist1d

    mnist1d.generate.cache_clear()
    np.random.seed(7)
    expected = np.random.rand()
    np.random.seed(7)
    mnist1d.generate()
    assert np.random.rand() == expected


def test_every_training_example_is_seen_once_per_epoch():
    task = tasks.build("mnist1d", batch_size=500)
    stream = task.train_batches(3, "cpu")
    epoch = torch.cat([next(stream).y for _ in range(7)])  # 3,500 / 500
    assert torch.equal(torch.bincount(epoch, minlength=10), torch.bincount(task.splits["train"].y, minlength=10))
    again = tasks.build("mnist1d", batch_size=500).train_batches(3, "cpu")
    assert torch.equal(next(again).x, next(tasks.build("mnist1d", batch_size=500).train_batches(3, "cpu")).x)


def checksum(name, opts) -> str:
    task = tasks.build(name, **opts)
    parts = [task.val_batches("cpu")[0], task.test_batches("cpu")[0], next(task.train_batches(5, "cpu"))]
    return ",".join(f"{float(b.x.double().sum()):.6f}:{float((b.x.double().flatten() * torch.arange(b.x.numel())).sum()):.4f}:"
                    f"{int(b.y.sum())}" for b in parts)


def test_splits_and_permutation_are_identical_in_another_process():
    cases = [("mnist1d", {}), ("mnist1d", {"permute": True}), ("mnist1d", {"protocol": "published"})]
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from tests.test_classification import checksum; "
            f"print('|'.join(checksum(n, o) for n, o in {cases!r}))")
    env = {**os.environ, "PYTHONHASHSEED": "4321"}
    out = subprocess.run([sys.executable, "-c", code, str(ROOT)], capture_output=True, text=True, env=env,
                         check=True, cwd=ROOT).stdout.strip()
    assert out == "|".join(checksum(n, o) for n, o in cases)
    assert len(set(out.split("|"))) == 3


def test_permutation_is_fixed_and_applied_to_every_split():
    plain, shuffled = tasks.build("mnist1d"), tasks.build("mnist1d", permute=True)
    order = shuffled.order
    assert sorted(order.tolist()) == list(range(40)) and order.tolist() != list(range(40))
    assert torch.equal(tasks.build("mnist1d", permute=True).order, order)  # one permutation, not one per build
    for split in ("val_batches", "test_batches"):
        assert torch.equal(getattr(shuffled, split)("cpu")[0].x, getattr(plain, split)("cpu")[0].x[:, order])
    a, b = next(plain.train_batches(9, "cpu")), next(shuffled.train_batches(9, "cpu"))
    assert torch.equal(b.x, a.x[:, order]) and torch.equal(a.y, b.y)  # same examples, same order, steps permuted


def test_baselines_are_what_a_memoryless_predictor_scores():
    task = tasks.build("mnist1d")
    b = task.baseline
    assert b.metric == "acc" and b.higher_is_better and dict(b.others) == {"chance (1/10)": 0.1}
    majority = int(torch.bincount(task.splits["train"].y).argmax())

    def constant(batch):  # ignores the sequence: always the training set's most frequent class
        out = torch.full((batch.size, 1, 10), -1e4)
        out[..., majority] = 1e4
        return out

    metrics = task.evaluate((constant(v), v) for v in task.val_batches("cpu"))
    assert metrics["acc"] == pytest.approx(b.value, abs=1e-12)
    on_test = task.evaluate((constant(t), t) for t in task.test_batches("cpu"))
    assert on_test["acc"] == pytest.approx(task.empirical_baseline(), abs=1e-12)
    assert (round(b.value, 3), round(task.empirical_baseline(), 3)) == (0.086, 0.098)  # quoted in docs/tasks.md
    uniform = task.evaluate((torch.zeros(v.size, 1, 10), v) for v in task.val_batches("cpu"))
    assert uniform["loss"] == pytest.approx(math.log(10), rel=1e-6)  # chance in nats
    assert task.metric == "acc" and task.direction == "maximize" and task.solved is None


def test_published_numbers():
    assert {p.description: p.value for p in tasks.build("mnist1d").published}["GRU (bidirectional, 6 units)"] == 0.91
    shuffled = {p.description: p.value for p in tasks.build("mnist1d", permute=True).published}
    assert shuffled["GRU (bidirectional, 6 units), spatially shuffled"] == 0.57
    assert all(p.metric == "test/acc" for p in tasks.build("mnist1d").published)


@pytest.mark.parametrize("opts,fragment", [
    ({"readout": "max"}, "readout='max' must be one of last, mean, flatten"),
    ({"protocol": "paper"}, "protocol='paper' must be one of holdout, published"),
    ({"val_size": 4000}, "val_size=4000 must be below the 4000 training examples"),
    ({"permute": "yes"}, "permute='yes' must be true or false"),
])
def test_bad_options(opts, fragment):
    with pytest.raises(SuiteError, match=fragment):
        tasks.build("mnist1d", **opts)


# ----------------------------------------------------------------------------- readouts and bidirectional layers
def test_readouts_read_the_per_step_outputs():
    torch.manual_seed(0)
    step = SequenceModel("gru", "real", 3, 4, 8).double()
    x = torch.randn(5, 7, 3, dtype=torch.double)
    per_step, _ = step(x)  # (5, 7, 4)
    for readout, expected in (("last", per_step[:, -1:]), ("mean", per_step.mean(1, keepdim=True))):
        model = SequenceModel("gru", "real", 3, 4, 8, readout=readout).double()
        model.load_state_dict(step.state_dict())
        out, _ = model(x)
        assert out.shape == (5, 1, 4) and torch.allclose(out, expected)
    flat = SequenceModel("gru", "real", 3, 4, 8, readout="flatten", seq_len=7).double()
    flat.layers.load_state_dict(step.layers.state_dict())
    h, _ = step.layers[0](x)
    out, _ = flat(x)
    assert flat.head.weight.shape == (4, 7 * 8)
    assert torch.allclose(out[:, 0], h.flatten(1) @ flat.head.weight.T + flat.head.bias)
    with pytest.raises(SuiteError, match="flatten"):
        SequenceModel("gru", "real", 3, 4, 8, readout="flatten")


def test_bidirectional_gru_matches_torch():
    torch.manual_seed(0)
    model = SequenceModel("gru", "real", 1, 10, 6, readout="flatten", seq_len=40, bidirectional=True).double()
    ref = torch.nn.GRU(1, 6, batch_first=True, bidirectional=True).double()
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(ref, f"{name}_l0").copy_(getattr(model.layers[0].fwd.rnn, f"{name}_l0"))
            getattr(ref, f"{name}_l0_reverse").copy_(getattr(model.layers[0].bwd.rnn, f"{name}_l0"))
    x = torch.randn(5, 40, 1, dtype=torch.double)
    out, _ = ref(x)
    got, _ = model(x)
    assert torch.allclose(got[:, 0], model.head(out.flatten(1)), atol=1e-12)
    # the published model's size: 2 x 162 recurrent + 480 x 10 + 10 head parameters
    assert sum(p.numel() for p in model.parameters()) == 324 + 4810


def test_bidirectional_needs_a_readout_and_is_not_packed():
    cfg = build_config({"task": {"name": "copy", "length": 5}, "model": {"bidirectional": True}})
    from suite.assemble import build_task

    with pytest.raises(SuiteError, match="model.bidirectional"):
        build_model(cfg, build_task(cfg))
    bi = build_config({"task": {"name": "mnist1d"}, "model": {"bidirectional": True}})
    assert "bidirectional" in packable(bi)
    assert packable(build_config({"task": {"name": "mnist1d", "readout": "flatten"}})) is None


@pytest.mark.parametrize("bidirectional", [False, True])
def test_gradient_profile_reads_the_loss_at_the_last_step(bidirectional):
    task = tasks.build("mnist1d")
    cfg = build_config({"task": {"name": "mnist1d"}, "model": {"hidden_size": 8, "bidirectional": bidirectional}})
    model = build_model(cfg, task)
    batch = task.val_batches("cpu")[0]
    small = type(batch)(batch.x[:16], batch.y[:16])
    profile, stats = gradient_profile(model, task, small)
    assert len(profile["h"]) == 40 and profile["h"][-1] > 0
    assert stats["gates/l0/z/saturation"] >= 0


@pytest.mark.parametrize("cell", ["gru", "mingru"])  # the fused batched loop, and vmapped reference steps
@pytest.mark.parametrize("readout", ["last", "mean", "flatten"])
def test_a_pack_reads_out_as_each_model_alone(cell, readout):
    from suite.batched import BatchedModel
    from suite.assemble import build_task

    cfg = build_config({"task": {"name": "mnist1d", "readout": readout}, "model": {"cell": cell, "hidden_size": 5}})
    task = build_task(cfg)
    models = []
    for k in range(3):
        torch.manual_seed(k)
        models.append(build_model(cfg, task).double())
    batches = task.train_batches(0, "cpu")
    x = torch.stack([next(batches).x[:4].double() for _ in range(3)])  # (3, 4, 40, 1)
    batched = BatchedModel(models, [0.0] * 3)
    batched.train(False)
    params, buffers = batched.stacked(models, [0, 1, 2])
    out, _ = batched(params, buffers, x)
    assert out.shape == (3, 4, 1, 10)
    for k, model in enumerate(models):
        alone, _ = model(x[k])
        assert torch.allclose(out[k], alone, atol=1e-10, rtol=0)


# ----------------------------------------------------------------------------- through the CLI: a run, a sweep, a report
def cli(*args, cwd, timeout=600):
    return subprocess.run([sys.executable, "-m", "suite", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)


def test_cli_train_on_mnist1d_learns(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = cli("train", "--task", "mnist1d", "--cell", "gru", "--steps", "60", "--set", "model.hidden_size=16",
              "--set", "task.readout=flatten", "--set", "optim.lr=0.01", "--set", "train.val_every=60",
              "--set", "train.diag_every=0", "--set", "train.progress=false", "--tracking-uri", uri, "--json",
              cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    payload = json.loads(out.stdout.strip().splitlines()[-1])
    assert payload["status"] == "FINISHED"
    baseline = tasks.build("mnist1d").baseline.value
    assert payload["val/acc"] > baseline + 0.1 and payload["test/acc"] > baseline + 0.1  # learnt something
    import mlflow

    run = mlflow.MlflowClient(uri).get_run(payload["run_id"])
    assert run.data.params["task.baseline_metric"] == "acc"
    assert float(run.data.params["task.baseline"]) == pytest.approx(baseline)
    assert run.data.params["task.readout"] == "flatten" and run.data.params["model.bidirectional"] == "False"
    assert "diag/grad_decay" in run.data.metrics  # the gradient profile ran on the classification loss


@pytest.mark.slow
def test_tiny_sweep_and_report_on_mnist1d(tmp_path):
    import pandas as pd
    import yaml

    spec = {"name": "tinycls", "task": "mnist1d",
            "base": {"model": {"hidden_size": 8},
                     "train": {"val_every": 20, "diag_every": 0, "log_every": 10, "progress": False}},
            "cells": ["gru", "mingru"], "budget": {"trials": 2, "steps": 20},
            "search": {"optim.lr": {"type": "loguniform", "low": 3e-3, "high": 3e-2}},
            "sampler": {"name": "random", "seed": 0}, "pruner": {"name": "none"},
            "confirm": {"top_k": 1, "seeds": 2}, "pack": 2}  # packs of 2: classification trains packed too
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    storage, tracking = str(tmp_path / "optuna.journal"), f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = cli("sweep", str(tmp_path / "s.yaml"), "--storage", storage, "--tracking-uri", tracking, "--quiet",
              cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    import mlflow

    client = mlflow.MlflowClient(tracking)
    trials = [r for r in client.search_runs([client.get_experiment_by_name("tinycls").experiment_id])
              if r.data.tags.get("rnnsuite.level") == "trial"]
    assert len(trials) == 2 * (2 + 2) and all(r.info.status == "FINISHED" for r in trials)
    assert any(r.data.tags.get("pack.size") == "2" for r in trials)  # trained in packs
    done = cli("report", "tinycls", "-o", str(tmp_path / "rep"), "--storage", storage, "--tracking-uri", tracking,
               cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    board = pd.read_csv(tmp_path / "rep" / "leaderboard.csv")
    ours = board[board["source"] == "this sweep"]
    assert sorted(ours["cell"]) == ["gru", "mingru"] and (ours["n"] == 2).all()
    assert ours["val_acc_mean"].between(0, 1).all() and ours["test_acc_mean"].between(0, 1).all()
    reference = dict(zip(board["cell"], board["test_acc_mean"]))
    assert reference["chance (1/10)"] == pytest.approx(0.1)
    assert reference["baseline"] == pytest.approx(tasks.build("mnist1d").baseline.value)
    assert reference["GRU (bidirectional, 6 units)"] == pytest.approx(0.91)  # published, in the test column
    # an accuracy beats its baseline from above: its interval on the analysis scale (a logit) above the stricter,
    # i.e. the higher, of the baseline's formula value and the same predictor scored on the test set
    for _, row in ours.iterrows():
        assert row["baseline_used"] == pytest.approx(max(row["baseline_formula"], row["baseline_empirical"]))
        expected = "yes" if row["test_acc_lo"] > row["baseline_used"] else (
            "unsure" if row["test_acc_center"] > row["baseline_used"] else "no")
        assert row["beats_baseline"] == expected
    assert "is above the stricter (higher) of the two baselines" in (tmp_path / "rep" / "report.md").read_text()


def test_per_gate_gradient_norms_cover_both_directions():
    from suite.diagnostics import gate_grad_norms

    task = tasks.build("mnist1d")
    batch = task.val_batches("cpu")[0]
    norms = {}
    for bidirectional in (False, True):
        cfg = build_config({"task": {"name": "mnist1d"}, "model": {"hidden_size": 8, "bidirectional": bidirectional}})
        model = build_model(cfg, task)
        out, _ = model(batch.x[:16])
        task.loss(out, type(batch)(batch.x[:16], batch.y[:16])).backward()
        norms[bidirectional] = gate_grad_norms(model)
        if bidirectional:  # a gate's norm is over its blocks in both directions
            layer = model.layers[0]
            squares = 0.0
            for name, param in layer.named_parameters():
                gates = layer.param_gates.get(name)
                if gates and "z" in gates:
                    squares += float(param.grad.chunk(len(gates))[gates.index("z")].norm() ** 2)
            assert norms[True]["grad/l0/z"] == pytest.approx(squares ** 0.5, rel=1e-5)
            assert sum(1 for n in layer.param_gates if n.startswith("bwd.")) >= 2
    assert set(norms[False]) == set(norms[True]) >= {"grad/l0/r", "grad/l0/z", "grad/l0/n", "grad/head"}
