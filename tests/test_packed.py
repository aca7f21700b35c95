"""Packed trials: M models trained together must each match the same config trained alone (train.run)."""
from __future__ import annotations

import math
import tempfile
from pathlib import Path

import mlflow
import pytest
import torch

from suite import cells
from suite.batched import BatchedModel
from suite.cells.base import reference_paths
from suite.config import build_config
from suite.packed import Member, pack_key, packable, run_pack
from suite.registry import SuiteError
from suite.train import run

STEPS = 50
VARIANTS = [  # everything a pack lets differ: optimizer, its settings, schedule, clipping, seed, init
    {"optim.lr": 0.01, "train.seed": 1},
    {"optim.lr": 0.003, "train.seed": 2, "optim.clip": 0.1, "model.chrono_init": True},
    {"optim.name": "sgd", "optim.lr": 0.2, "optim.momentum": 0.9, "train.seed": 3, "optim.schedule": "cosine"},
    {"optim.name": "rmsprop", "optim.lr": 0.002, "train.seed": 4, "optim.weight_decay": 1e-3},
]


@pytest.fixture(scope="module")
def uri(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('packed') / 'mlflow.db'}"


def configs(uri, cell, variants=VARIANTS, **base_over):
    base = {"task": {"name": "adding", "length": 20, "batch_size": 16, "val_size": 64},
            "model": {"cell": cell, "hidden_size": 16},
            "train": {"steps": STEPS, "log_every": 1, "val_every": 25, "diag_every": 25, "progress": False,
                      "deterministic": True},
            "tracking": {"uri": uri, "experiment": "packed-test"}}
    return [build_config(base, overrides={**base_over, **v}) for v in variants]


def history(client, run_id, key):
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


@pytest.mark.parametrize("cell", ["lstm", "gru", "sgru"])
def test_packed_models_match_the_same_configs_trained_alone(uri, cell):
    cfgs = configs(uri, cell)
    alone = [run(c) for c in cfgs]
    scratch = set(Path(tempfile.gettempdir()).glob("rnnsuite-pack-diag-*"))
    packed = run_pack([Member(c) for c in cfgs])
    assert set(Path(tempfile.gettempdir()).glob("rnnsuite-pack-diag-*")) == scratch  # artifacts' scratch removed
    client = mlflow.MlflowClient(uri)
    for a, p in zip(alone, packed):
        assert a.status == p.status == "FINISHED"
        la, lp = history(client, a.run_id, "train/loss"), history(client, p.run_id, "train/loss")
        assert sorted(la) == sorted(lp) == list(range(STEPS))
        assert max(abs(la[s] - lp[s]) for s in la) < 1e-4
        assert p.metrics["val/loss"] == pytest.approx(a.metrics["val/loss"], abs=1e-4)
        assert p.metrics["test/loss"] == pytest.approx(a.metrics["test/loss"], abs=1e-4)
        ga, gp = history(client, a.run_id, "train/grad_norm"), history(client, p.run_id, "train/grad_norm")
        assert max(abs(ga[s] - gp[s]) / ga[s] for s in ga) < 1e-3  # per-model clipping sees its own norm
        # a packed trial's run carries what a single run carries (Lightning's own "epoch" counter aside)
        ra, rp = client.get_run(a.run_id), client.get_run(p.run_id)
        assert set(ra.data.metrics) - {"epoch"} == set(rp.data.metrics)
        assert set(ra.data.params) == set(rp.data.params)
        assert {x.path for x in client.list_artifacts(p.run_id, "diagnostics")} == \
            {"diagnostics/grad_profile.csv", "diagnostics/grad_profile.png", "diagnostics/gate_hist.csv"}
        assert {k for k in rp.data.metrics if k.endswith(("/near0", "/near1"))}  # the gate ends, as alone
        assert rp.data.tags["pack.size"] == str(len(cfgs))
        assert "packed: batched fused loops" in rp.data.tags["kernels"]  # the fast path, not vmap


PACKING = [c for c in cells.names() if cells.CELLS.get(c).builder.packs]


def test_the_cells_that_pack_include_lstm_gru_and_sgru():
    assert {"lstm", "gru", "sgru"} <= set(PACKING)
    assert "gru3" not in PACKING and "mingru" not in PACKING  # these run vmapped reference steps


def _batched_outputs(models, x, dropouts=None, fast=True, train=True):
    """Outputs, final states and parameter gradients of the M models through one BatchedModel."""
    dropouts = dropouts or [0.0] * len(models)
    if fast:
        batched = BatchedModel(models, dropouts)
    else:
        with reference_paths():
            batched = BatchedModel(models, dropouts)
    assert batched.fast == fast
    batched.train(train)
    params, buffers = batched.stacked(models, list(range(len(models))))
    out, states = batched(params, buffers, x)
    final = torch.cat([s.flatten(1) for layer in states
                       for s in (layer if isinstance(layer, tuple) else (layer,))], 1)
    loss = (out * out).sum() + out.sum() + (final * final).sum()  # gradients reach every output and the states
    grads = torch.autograd.grad(loss, [params[n] for n in batched.names])
    return out.detach(), final.detach(), grads


@pytest.mark.parametrize("cell", PACKING)
@pytest.mark.parametrize("m", [1, 3])
def test_the_batched_fused_loop_matches_vmapped_reference_steps_and_each_model_alone(cell, m):
    """One fused loop for M models (stacked weights, batches folded into the rows) computes, in float64, what
    the cells' reference steps compute under vmap, forward and backward, and what each model computes alone."""
    cfg = build_config({"task": {"name": "adding", "length": 12, "batch_size": 3},
                        "model": {"cell": cell, "hidden_size": 6, "layers": 2}})
    from suite.assemble import build_model, build_task

    task = build_task(cfg)
    models = []
    for k in range(m):
        torch.manual_seed(k)
        models.append(build_model(cfg, task).double())
    x = torch.stack([next(task.train_batches(k, "cpu")).x.double() for k in range(m)])
    out, final, grads = _batched_outputs(models, x)
    ref_out, ref_final, ref_grads = _batched_outputs(models, x, fast=False)
    assert torch.allclose(out, ref_out, atol=1e-12, rtol=0)
    assert torch.allclose(final, ref_final, atol=1e-12, rtol=0)
    for g, r in zip(grads, ref_grads):
        assert g.shape == r.shape and torch.allclose(g, r, atol=1e-10, rtol=1e-10)
    for k, model in enumerate(models):  # and model k alone, on its own batch
        alone, _ = model(x[k])
        assert torch.allclose(out[k], alone, atol=1e-12, rtol=0)


def test_batched_dropout_uses_each_models_own_rate_in_training_only():
    cfg = build_config({"task": {"name": "adding", "length": 10, "batch_size": 4},
                        "model": {"cell": "sgru", "hidden_size": 8}})
    from suite.assemble import build_model, build_task

    task = build_task(cfg)
    models = [build_model(cfg, task) for _ in range(2)]
    x = torch.stack([next(task.train_batches(0, "cpu")).x] * 2)
    plain, _, _ = _batched_outputs(models, x)
    dropped, _, _ = _batched_outputs(models, x, dropouts=[0.0, 0.5])
    evaluated, _, _ = _batched_outputs(models, x, dropouts=[0.0, 0.5], train=False)
    assert torch.equal(dropped[0], plain[0])  # rate 0: untouched
    assert not torch.allclose(dropped[1], plain[1])  # rate 0.5: masked
    assert torch.equal(evaluated, plain)  # no dropout outside training


def test_a_diverging_member_leaves_without_disturbing_the_others(uri):
    cfgs = configs(uri, "sgru", VARIANTS[:2] + [{"optim.name": "sgd", "optim.lr": 1e30, "optim.clip": 0.0,
                                                  "train.seed": 5}])
    packed = run_pack([Member(c) for c in cfgs])
    alone = [run(c) for c in cfgs[:2]]
    client = mlflow.MlflowClient(uri)
    bad = packed[2]
    assert (bad.status, bad.outcome) == ("FAILED", "diverged")
    tags = client.get_run(bad.run_id).data.tags
    assert "diverged: loss is" in tags["failure.reason"] and int(tags["failure.step"]) < STEPS
    for a, p in zip(alone, packed[:2]):
        assert p.status == "FINISHED"
        assert p.metrics["val/loss"] == pytest.approx(a.metrics["val/loss"], abs=1e-4)


def test_a_pruned_member_leaves_and_ends_finished_with_its_reason(uri):
    cfgs = configs(uri, "gru", VARIANTS[:3])
    seen = []

    def prune_second(value, step):
        seen.append((value, step))
        return True

    members = [Member(cfgs[0]), Member(cfgs[1], should_prune=prune_second, monitor="val/mse"), Member(cfgs[2])]
    packed = run_pack(members)
    assert [p.outcome for p in packed] == ["finished", "pruned", "finished"]
    assert seen == [(seen[0][0], 25)] and math.isfinite(seen[0][0])  # reported at the first validation
    tags = mlflow.MlflowClient(uri).get_run(packed[1].run_id).data.tags
    assert tags["pruned.step"] == "25" and "pruned at step 25" in tags["pruned.reason"]
    assert packed[1].status == "FINISHED"
    assert "test/loss" in packed[0].metrics and "test/loss" not in packed[1].metrics


def test_dropout_differs_per_member_and_trains(uri):
    cfgs = configs(uri, "sgru", VARIANTS[:2], **{"model.dropout": 0.0})
    cfgs[1].model.dropout = 0.5
    packed = run_pack([Member(c) for c in cfgs])
    assert all(p.status == "FINISHED" and math.isfinite(p.metrics["val/loss"]) for p in packed)
    alone = run(cfgs[0])  # the member without dropout is still exact
    assert packed[0].metrics["val/loss"] == pytest.approx(alone.metrics["val/loss"], abs=1e-4)


def test_pack_key_groups_by_shape_only(uri):
    a, b = configs(uri, "gru", VARIANTS[:2])
    assert pack_key(a) == pack_key(b)  # lr, seed, clip, chrono init may differ
    wider = configs(uri, "gru", VARIANTS[:1], **{"model.hidden_size": 32})[0]
    assert pack_key(wider) != pack_key(a)
    with pytest.raises(SuiteError, match="one shape"):
        run_pack([Member(a), Member(wider)])


def test_what_cannot_be_packed_says_why(uri):
    ligru = configs(uri, "ligru", VARIANTS[:1])[0]
    assert "batch norm" in packable(ligru)
    lm = build_config({"task": {"name": "lm", "path": "tests/data/tiny_corpus", "batch_size": 2, "bptt": 2}})
    assert "epochs" in packable(lm)
    assert packable(configs(uri, "mingru", VARIANTS[:1])[0]) is None
    mixed = configs(uri, "sgru", VARIANTS[:1], **{"train.precision": "bf16-mixed"})[0]
    assert "float32 only" in packable(mixed)  # not silently trained in float32 as if it were bf16-mixed
    mingru = run_pack([Member(c) for c in configs(uri, "mingru", VARIANTS[:1], **{"train.steps": 2})])[0]
    kernels = mlflow.MlflowClient(uri).get_run(mingru.run_id).data.tags["kernels"]
    assert "packed: vmapped reference steps" in kernels  # packs, through the slower path, and says so


@pytest.mark.slow
def test_every_packable_cell_runs_in_a_pack(uri):
    from suite import cells

    for cell in cells.names():
        cfgs = configs(uri, cell, [VARIANTS[0], VARIANTS[2]],  # no chrono init: gru2 has no gate bias for it
                       **{"train.steps": 3, "train.val_every": 3, "train.diag_every": 0})
        if packable(cfgs[0]):
            continue
        packed = run_pack([Member(c) for c in cfgs])
        assert all(p.status == "FINISHED" and math.isfinite(p.metrics["val/loss"]) for p in packed), cell
        assert torch.is_grad_enabled()


def test_a_packs_metrics_reach_mlflow_while_it_trains(uri):
    """Each logging interval is written, as for a single run, so the MLflow UI shows a packed trial's curve live
    (before, a pack's metrics waited in memory until 1,000 had gathered or the run ended)."""
    cfgs = configs(uri, "sgru", VARIANTS[:2], **{"train.log_every": 5})
    client, ids, seen = mlflow.MlflowClient(uri), [], []

    def peek(value, step):  # called at each validation, mid-training
        seen.append((step, sorted(history(client, ids[-1], "train/loss"))))
        return False

    members = [Member(cfgs[0]), Member(cfgs[1], on_start=ids.append, should_prune=peek, monitor="val/mse")]
    run_pack(members)
    assert seen[0] == (25, [4, 9, 14, 19, 24])  # every interval up to the first validation, already in MLflow
