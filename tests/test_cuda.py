"""The CUDA path beyond a forward pass: hand-written backward against the reference on the GPU, no host sync
inside the fused loops or between a pack's checks, packs against single runs, bf16, a Lightning run that records
its device and precision, and a two-worker sweep. Skipped without a GPU; ``make gpu-check`` runs them
(``pytest -m cuda``)."""
from __future__ import annotations

import math

import mlflow
import pytest
import torch

from suite import cells
from suite.cells.base import reference_paths
from suite.config import build_config
from suite.gpu import apply_precision_policy
from suite.packed import Member, run_pack
from suite.train import run

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

NAMES = cells.names()


@pytest.fixture(autouse=True)
def _one_float32_precision():
    """As every run, pack and benchmark does at its start: without it torch leaves cuDNN's RNNs on its default
    (TF32 from torch 2.9 on), and lstm/gru on the GPU differ from the CPU by ~1e-3 (seen on an H200)."""
    apply_precision_policy()
NEEDS_PROJECTION = {"mut1", "mut2"}


def make(name, i=5, h=16, dtype=torch.float64):
    kw = {"project_input": True} if name in NEEDS_PROJECTION and i != h else {}
    torch.manual_seed(0)
    cell = cells.build(name, i, h, **kw).to(device="cuda", dtype=dtype)
    with torch.no_grad():  # non-zero biases and larger weights, so every term of the backward matters
        for p in cell.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return cell.train()


def forward_backward(cell, x, reference: bool):
    for p in cell.parameters():
        p.grad = None
    x = x.detach().clone().requires_grad_(True)  # a leaf, whatever the caller passed, so that x.grad is kept
    with reference_paths() if reference else torch.enable_grad():
        out, final = cell(x)
    final = (final,) if isinstance(final, torch.Tensor) else tuple(final)
    w = torch.linspace(0.5, 1.5, out.shape[1], dtype=out.dtype, device=out.device).view(1, -1, 1)
    loss = (out.sin() * w).sum() + sum((f * f).sum() * (k + 2) for k, f in enumerate(final))
    loss.backward()
    grads = [x.grad] + [p.grad for p in cell.parameters()]
    return out.detach(), [g.detach() for g in grads]


@pytest.mark.parametrize("name", NAMES)
def test_the_fast_path_backward_matches_the_reference_on_cuda(name):
    """In float64 on the GPU, the fused loop and its hand-written backward (cuDNN for lstm/gru) give the outputs
    and gradients of the reference steps under autograd; in float32 the GPU matches the CPU."""
    cell = make(name)
    x = torch.randn(6, 40, 5, device="cuda", dtype=torch.float64)  # T=40 crosses the backward's chunk boundary
    out, grads = forward_backward(cell, x, reference=False)
    ref_out, ref_grads = forward_backward(cell, x, reference=True)
    torch.testing.assert_close(out, ref_out, atol=1e-9, rtol=1e-9)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-8, rtol=1e-8)
    cell32 = make(name, dtype=torch.float32)
    cpu = make(name, dtype=torch.float32).cpu()
    cpu.load_state_dict({k: v.cpu() for k, v in cell32.state_dict().items()})
    out_gpu, g_gpu = forward_backward(cell32, x.float(), reference=False)
    out_cpu, g_cpu = forward_backward(cpu, x.float().cpu(), reference=False)
    torch.testing.assert_close(out_gpu.cpu(), out_cpu, atol=1e-4, rtol=1e-4)
    for g, r in zip(g_gpu, g_cpu):
        scale = max(1.0, r.abs().max().item())
        torch.testing.assert_close(g.cpu() / scale, r / scale, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", [n for n in NAMES if cells.build(n, 4, 4, **(
    {"project_input": False} if n in NEEDS_PROJECTION else {})).fast_path])
def test_the_fused_loops_do_not_sync_with_the_host(name):
    """What CUDA graphs need, and what keeps the GPU busy without them: no read-back inside the loops."""
    cell = make(name, dtype=torch.float32)
    x = torch.randn(8, 30, 5, device="cuda", requires_grad=True)
    forward_backward(cell, x, reference=False)  # warm-up: allocator, cuBLAS handles
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out, _ = cell(x)
        out.square().sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


FAST = [n for n in NAMES if cells.build(n, 4, 4, **({"project_input": False} if n in NEEDS_PROJECTION else {})
                                         ).fast_path]


@pytest.mark.parametrize("name", FAST)
def test_cuda_graphs_replay_the_eager_loop_exactly(name, monkeypatch):
    """RNNSUITE_CUDA_GRAPHS=1: the forward loop and the hand-written backward are captured once per shape and
    replayed; outputs and gradients equal the eager loop's, also on new inputs (a replay, not the capture)."""
    from suite.cells import graphs

    cell = make(name, dtype=torch.float32)
    xs = [torch.randn(8, 30, 5, device="cuda") for _ in range(3)]
    eager = [forward_backward(cell, x, reference=False) for x in xs]
    monkeypatch.setenv(graphs.ENV, "1")
    graphed = [forward_backward(cell, x, reference=False) for x in xs]
    assert graphs.CACHE.failures(cell) == {} and graphs.CACHE.captured(cell) == 2  # the loop and its backward
    for (out_e, g_e), (out_g, g_g) in zip(eager, graphed):
        torch.testing.assert_close(out_g, out_e, atol=1e-6, rtol=1e-6)
        for a, b in zip(g_g, g_e):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    forward_backward(cell, torch.randn(8, 17, 5, device="cuda"), reference=False)  # another T: its own graphs
    assert graphs.CACHE.captured(cell) == 4


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("cuda-runs")
    return {"uri": f"sqlite:///{root / 'mlflow.db'}", "root": root}


def config(store, cell="gru", steps=30, **over):
    base = {"task": {"name": "adding", "length": 20, "batch_size": 16, "val_size": 64},
            "model": {"cell": cell, "hidden_size": 16},
            "train": {"steps": steps, "progress": False, "device": "cuda", "log_every": 1, "val_every": 15,
                      "diag_every": 15, "checkpoint_dir": str(store["root"] / "ckpt")},
            "tracking": {"uri": store["uri"], "experiment": "cuda-test"}}
    return build_config(base, overrides=over)


@pytest.mark.parametrize("precision", ["32", "bf16-mixed"])
def test_a_lightning_run_on_cuda_records_its_device_and_precision(store, precision):
    result = run(config(store, "lstm", **{"train.precision": precision}))
    assert result.status == "FINISHED" and math.isfinite(result.metrics["val/loss"])
    tags = mlflow.MlflowClient(store["uri"]).get_run(result.run_id).data.tags
    assert tags["device"] == "cuda" and tags["device.name"] == torch.cuda.get_device_name()
    assert tags["precision.cudnn_rnn_fp32"] == "ieee" and tags["precision.autocast"] == precision


@pytest.mark.parametrize("cell", ["gru", "sgru"])
def test_packed_models_on_cuda_match_the_same_runs_alone(store, cell):
    variants = [{"optim.lr": 0.01, "train.seed": 1}, {"optim.lr": 0.003, "train.seed": 2, "optim.clip": 0.1}]
    cfgs = [config(store, cell, **v) for v in variants]
    alone = [run(c) for c in cfgs]
    packed = run_pack([Member(c) for c in cfgs])
    client = mlflow.MlflowClient(store["uri"])
    for a, p in zip(alone, packed):
        assert a.status == p.status == "FINISHED"
        la = {m.step: m.value for m in client.get_metric_history(a.run_id, "train/loss")}
        lp = {m.step: m.value for m in client.get_metric_history(p.run_id, "train/loss")}
        assert sorted(la) == sorted(lp) and max(abs(la[s] - lp[s]) for s in la) < 1e-3
        assert p.metrics["val/loss"] == pytest.approx(a.metrics["val/loss"], abs=1e-3)
        assert client.get_run(p.run_id).data.tags["device"] == "cuda"


def test_packs_with_cuda_graphs_match_packs_without(store, monkeypatch):
    from suite.cells import graphs

    cfgs = [config(store, "sgru", **{"optim.lr": 0.01, "train.seed": k}) for k in range(3)]
    eager = run_pack([Member(c) for c in cfgs])
    monkeypatch.setenv(graphs.ENV, "1")
    graphed = run_pack([Member(c) for c in cfgs])
    client = mlflow.MlflowClient(store["uri"])
    for a, b in zip(eager, graphed):
        assert a.status == b.status == "FINISHED"
        assert b.metrics["val/loss"] == pytest.approx(a.metrics["val/loss"], abs=1e-5)
        assert client.get_run(b.run_id).data.tags["cuda.graphs"] == "on"


def test_a_packs_steps_between_checks_do_not_sync_with_the_host(store, monkeypatch):
    """Between two steps that record something, a pack's training reads nothing back from the GPU."""
    from suite import finite

    real = finite.check_due

    def due(step, train, total):
        torch.cuda.set_sync_debug_mode("default")
        answer = real(step, train, total)
        if not answer:  # until the next step's check: the rest of this step and the next forward
            torch.cuda.set_sync_debug_mode("error")
        return answer

    monkeypatch.setattr(finite, "check_due", due)
    over = {"train.log_every": 10, "train.grad_every": 10, "train.val_every": 20, "train.diag_every": 0}
    try:
        results = run_pack([Member(config(store, "sgru", 20, **{**over, "train.seed": k})) for k in range(3)])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert [r.status for r in results] == ["FINISHED"] * 3


SWEEP = """
name: cuda-two-workers
task: adding
base:
  task: {length: 20, batch_size: 16, val_size: 64}
  model: {hidden_size: 16}
  train: {device: cuda, val_every: 20, diag_every: 20, log_every: 10}
cells: [gru, sgru]
budget: {trials: 2, steps: 20}
search:
  optim.lr: {type: loguniform, low: 0.003, high: 0.03}
sampler: {name: random, seed: 0}
pruner: {name: none}
confirm: {top_k: 1, seeds: 2}
pack: 2
"""


def test_a_two_worker_packed_sweep_on_cuda_finishes_its_budget(tmp_path, monkeypatch):
    from suite.sweep import run_sweep

    monkeypatch.setenv("RNNSUITE_QUIET", "1")
    path = tmp_path / "sweep.yaml"
    path.write_text(SWEEP)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert run_sweep(str(path), str(tmp_path / "optuna.journal"), uri, workers=2) == 0
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("cuda-two-workers")
    trials = [r for r in client.search_runs([exp.experiment_id]) if "trial" in r.data.tags]
    assert len(trials) == 2 * (2 + 2)  # 2 cells x (2 search trials + 2 confirmation seeds)
    assert {r.info.status for r in trials} == {"FINISHED"}
    assert {r.data.tags["device"] for r in trials} == {"cuda"}
