"""What the GPU path asks of the suite, checked without a GPU: worker mapping, the precision policy as recorded,
CUDA-error classification, determinism in packs, and the NaN check without a host sync per step."""
from __future__ import annotations

import math

import mlflow
import pytest
import torch

import suite.train as train_module
from suite import cells, gpu
from suite.config import build_config
from suite.finite import FiniteWatch, check_due
from suite.packed import Member, run_pack
from suite.registry import SuiteError
from suite.train import run


# ---------------------------------------------------------------------------------------------- worker mapping
@pytest.mark.parametrize("parent, count, workers, expected", [
    (None, 2, 4, ["0", "1", "0", "1"]),  # every GPU visible: the machine's indices
    ("2,3", 2, 2, ["2", "3"]),  # the parent's own list, not 0 and 1
    ("2,3", 2, 3, ["2", "3", "2"]),
    ("GPU-aaaa,GPU-bbbb", 2, 2, ["GPU-aaaa", "GPU-bbbb"]),  # UUIDs pass through
    ("MIG-1111, MIG-2222", 2, 2, ["MIG-1111", "MIG-2222"]),  # MIG ids too (spaces trimmed)
    ("5", 1, 2, ["5", "5"]),  # one GPU: both workers share it
    ("3,-1,4", 1, 2, ["3", "3"]),  # CUDA stops at the first invalid entry
    ("", 0, 2, [None, None]),  # no GPU: leave the variable alone
    (None, 0, 1, [None]),
])
def test_worker_devices_index_into_the_parents_visible_list(parent, count, workers, expected):
    assert gpu.worker_devices(parent, count, workers) == expected


# ---------------------------------------------------------------------------------------------- CUDA failures
@pytest.mark.parametrize("message, fatal", [
    ("CUDA error: an illegal memory access was encountered", True),
    ("CUDA error: device-side assert triggered\nCUDA kernel errors might be asynchronously reported", True),
    ("CUDA error: unspecified launch failure", True),
    ("CUDA error: misaligned address", True),
    ("CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasSgemm( handle, opa, opb, m, n, k, ...)`", True),
    ("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.15 GiB total capacity)", False),
    ("loss is nan at step 3", False),
    ("train.device=cuda but no CUDA GPU is available here", False),
])
def test_unrecoverable_cuda_errors_are_told_from_recoverable_ones(message, fatal):
    assert gpu.is_unrecoverable_cuda_error(RuntimeError(message)) is fatal


def test_releasing_cuda_memory_is_a_no_op_without_cuda():
    gpu.release_cuda_memory()  # must not raise (nor initialise CUDA) on a CPU-only machine
    if not torch.cuda.is_available():
        assert not torch.cuda.is_initialized()


# ---------------------------------------------------------------------------------------------- precision policy
def test_the_precision_policy_sets_cudnn_rnns_to_full_float32_and_reads_back():
    rnn = torch.backends.cudnn.rnn
    old = rnn.fp32_precision
    try:
        rnn.fp32_precision = "tf32"  # torch's default
        gpu.apply_precision_policy()
        assert rnn.fp32_precision == "ieee"
        assert gpu.precision_record() == {"precision.cudnn_rnn_fp32": "ieee", "precision.matmul_fp32": "highest"}
        with pytest.raises(ValueError):
            gpu.apply_precision_policy("fast")
    finally:
        rnn.fp32_precision = old


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu-runs")
    return {"uri": f"sqlite:///{root / 'mlflow.db'}", "root": root}


def config(store, cell="gru", steps=6, **over):
    base = {"task": {"name": "adding", "length": 12, "batch_size": 8, "val_size": 16},
            "model": {"cell": cell, "hidden_size": 8},
            "train": {"steps": steps, "progress": False, "checkpoint_dir": str(store["root"] / "ckpt"),
                      "device": "cpu", "diag_batch": 4},
            "tracking": {"uri": store["uri"], "experiment": "gpu-test"}}
    return build_config(base, overrides=over)


def test_every_run_records_the_precision_policy_and_its_device(store):
    torch.backends.cudnn.rnn.fp32_precision = "tf32"  # whatever came before, the run sets the policy
    result = run(config(store, **{"train.precision": "bf16-mixed"}))
    assert result.status == "FINISHED"
    tags = mlflow.MlflowClient(store["uri"]).get_run(result.run_id).data.tags
    assert tags["precision.cudnn_rnn_fp32"] == "ieee"
    assert tags["precision.matmul_fp32"] == "highest"
    assert tags["precision.autocast"] == "bf16-mixed"
    assert "autocast is off inside every recurrence" in tags["precision.recurrence"]
    assert (tags["device"], tags["device.name"]) == ("cpu", "cpu")


@pytest.mark.parametrize("name", ["lstm", "gru", "sgru", "mingru"])
def test_under_autocast_every_recurrence_runs_in_float32(name):
    """The rule the CUDA fix applies to lstm/gru too: autocast changes the input GEMMs, never the recurrence."""
    cell = cells.build(name, 5, 7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = cell(torch.randn(2, 6, 5))
    assert out.dtype == torch.float32


# ---------------------------------------------------------------------------------------------- determinism
def test_logscan_under_deterministic_cuda_kernels_fails_with_one_clear_line(monkeypatch):
    import suite.cells.scan as scan

    def refuse(*args):
        raise RuntimeError("cumsum_cuda_kernel does not have a deterministic implementation, but you set "
                           "'torch.use_deterministic_algorithms(True)'. You can turn off determinism ...")

    monkeypatch.setattr(scan, "log_space_scan", refuse)
    cell = cells.build("mingru", 3, 4, mode="logscan")
    with pytest.raises(SuiteError) as err:
        cell(torch.randn(2, 5, 3))
    line = str(err.value)
    assert "\n" not in line and "mingru mode=logscan" in line and "cumsum_cuda_kernel" in line
    assert "mode=scan" in line and "train.deterministic=false" in line


def test_packs_honour_train_deterministic_and_put_the_flag_back(store):
    seen = []
    torch.use_deterministic_algorithms(False)
    members = [Member(config(store, "sgru", **{"train.deterministic": True, "train.seed": k}),
                      on_start=lambda run_id: seen.append(torch.are_deterministic_algorithms_enabled()))
               for k in range(2)]
    results = run_pack(members)
    assert [r.status for r in results] == ["FINISHED", "FINISHED"]
    assert seen == [True, True]  # on while the pack trains
    assert not torch.are_deterministic_algorithms_enabled()  # and off again after
    tags = mlflow.MlflowClient(store["uri"]).get_run(results[0].run_id).data.tags
    assert "deterministic" in tags["kernels"]


# ---------------------------------------------------------------------------------------------- no host sync per step
def test_check_due_marks_only_the_steps_that_record_something():
    t = build_config({}, overrides={"train.log_every": 10, "train.grad_every": 5, "train.val_every": 20,
                                     "train.diag_every": 0}).train
    due = [s for s in range(30) if check_due(s, t, total_steps=30)]
    assert due == [0, 5, 9, 10, 15, 19, 20, 25, 29]


def test_the_finite_watch_keeps_each_models_first_bad_step_and_value():
    w = FiniteWatch(3)
    w.watch(torch.tensor([1.0, 2.0, 3.0]), 0, [0, 1, 2])
    w.watch(torch.tensor([math.nan, 2.0]), 1, [0, 2])
    w.watch(torch.tensor([math.inf, math.inf]), 2, [0, 2])  # model 0's first bad step stays 1
    bad, values = w.read(torch.tensor([7.0, 8.0]))
    assert bad[1] is None and bad[2] == (2, math.inf)
    assert bad[0][0] == 1 and math.isnan(bad[0][1])
    assert values == [7.0, 8.0]


def test_a_nan_loss_between_checks_still_stops_the_run_at_its_first_step(store, monkeypatch):
    """The check runs only when a step records something; the run still ends FAILED with the step and value of
    its first NaN loss, and no NaN reaches MLflow."""
    build_task = train_module.build_task

    def poisoned(cfg):
        task = build_task(cfg)
        batches = task.train_batches

        def nan_from_step_4(seed, device):
            for step, batch in enumerate(batches(seed, device)):
                if step >= 4:
                    batch.x = batch.x * math.nan
                yield batch

        task.train_batches = nan_from_step_4
        return task

    monkeypatch.setattr(train_module, "build_task", poisoned)
    over = {"train.log_every": 3, "train.grad_every": 50, "train.val_every": 50, "train.diag_every": 0}
    result = run(config(store, "gru", 12, **over))
    assert result.outcome == "diverged" and result.reason == "diverged: loss is nan at step 4"
    client = mlflow.MlflowClient(store["uri"])
    r = client.get_run(result.run_id)
    assert r.info.status == "FAILED" and r.data.tags["failure.step"] == "4"
    history = client.get_metric_history(result.run_id, "train/loss")
    assert [m.step for m in history] == [2] and all(math.isfinite(m.value) for m in history)


def test_a_pack_reads_its_losses_back_only_on_steps_that_record(store, monkeypatch):
    from suite import finite

    reads = []
    original = finite.FiniteWatch.read

    def counted(self, extra=None):
        reads.append(1)
        return original(self, extra)

    monkeypatch.setattr(finite.FiniteWatch, "read", counted)
    over = {"train.log_every": 10, "train.grad_every": 10, "train.val_every": 10, "train.diag_every": 0}
    results = run_pack([Member(config(store, "sgru", 20, **{**over, "train.seed": k})) for k in range(2)])
    assert [r.status for r in results] == ["FINISHED", "FINISHED"]
    assert len(reads) == 4  # steps 0 (gradient norms), 9, 10, 19, not 20
