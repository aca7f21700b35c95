"""Packed trials: M models trained together must each match the same config trained alone (train.run)."""
from __future__ import annotations

import math

import mlflow
import pytest
import torch

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
    packed = run_pack([Member(c) for c in cfgs])
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
            {"diagnostics/grad_profile.csv", "diagnostics/grad_profile.png"}
        assert rp.data.tags["pack.size"] == str(len(cfgs))


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
