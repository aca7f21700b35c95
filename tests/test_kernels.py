"""The CPU kernels of the fused loops (suite.cells.base.kernel_choice): plain ops by default, the oneDNN GEMM and
the sigmoid form of tanh with $RNNSUITE_KERNELS=tuned, plain under deterministic algorithms, recorded on every
run; every choice computes what the reference path computes, and a bad value is one line."""
from __future__ import annotations

import subprocess
import sys

import mlflow
import pytest
import torch

from suite.cells import base
from suite.config import build_config
from suite.registry import SuiteError
from suite.train import run
from test_cells_fast import assert_close_to_scale, make
from test_cells_fast import run as run_cell


@pytest.fixture
def fresh_choice(monkeypatch):
    """Each test decides again, and leaves no decision behind for the rest of the session."""
    base.reset_kernel_choice()
    yield monkeypatch
    base.reset_kernel_choice()


@pytest.mark.parametrize("mode,onednn,sigmoid", [("plain", False, False), ("tuned", None, True)])
def test_the_environment_forces_a_choice(fresh_choice, mode, onednn, sigmoid):
    fresh_choice.setenv(base.KERNELS_ENV, mode)
    choice = base.kernel_choice()
    assert choice.how == mode
    assert choice.onednn_linear == (base.onednn_ops() is not None if onednn is None else onednn)
    assert choice.tanh_via_sigmoid is sigmoid


def test_a_bad_value_is_one_clear_error(fresh_choice):
    fresh_choice.setenv(base.KERNELS_ENV, "fastest")
    with pytest.raises(SuiteError, match=r"RNNSUITE_KERNELS='fastest'; accepted: plain, tuned"):
        base.kernel_choice()


def test_a_bad_value_through_the_cli_is_one_line_and_exit_2(tmp_path):
    env = {"RNNSUITE_KERNELS": "fastest", "RNNSUITE_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    p = subprocess.run([sys.executable, "-m", "suite", "train", "--task", "adding", "--cell", "sgru", "--steps", "1"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == ["rnnsuite: error: $RNNSUITE_KERNELS='fastest'; accepted: plain, tuned"]
    assert not (tmp_path / "home").exists()  # refused before anything was written


def test_deterministic_algorithms_keep_the_plain_kernels(fresh_choice):
    fresh_choice.setenv(base.KERNELS_ENV, "tuned")
    assert base.kernel_choice().tanh_via_sigmoid
    torch.use_deterministic_algorithms(True)
    try:
        choice = base.kernel_choice()
        assert not choice.onednn_linear and not choice.tanh_via_sigmoid and "deterministic" in choice.how
    finally:
        torch.use_deterministic_algorithms(False)
    assert base.kernel_choice().tanh_via_sigmoid


def test_the_default_is_plain(fresh_choice):
    fresh_choice.delenv(base.KERNELS_ENV, raising=False)
    assert base.kernel_choice().describe() == "linear=addmm,tanh=torch (plain)"


def test_the_plain_kernels_are_what_a_loop_runs_by_default(fresh_choice):
    """Inside a fused loop the default choice leaves tanh and the GEMM as torch's own ops (no oneDNN packing)."""
    fresh_choice.delenv(base.KERNELS_ENV, raising=False)
    v = torch.linspace(-3, 3, 64)
    with base.loop_kernels():
        assert not base.weights_packed()  # linear() takes torch.addmm
        assert torch.equal(base.tanh(v), torch.tanh(v))
    base.reset_kernel_choice()
    fresh_choice.setenv(base.KERNELS_ENV, "tuned")
    with base.loop_kernels():
        assert base.weights_packed() == (base.onednn_ops() is not None)
        got = base.tanh(v)
    assert not torch.equal(got, torch.tanh(v))  # the sigmoid form: the same function to rounding
    torch.testing.assert_close(got, torch.tanh(v), atol=5e-7, rtol=0)


@pytest.mark.parametrize("mode", ["plain", "tuned"])
@pytest.mark.parametrize("name", ["sgru", "gru_reset_before", "lstm_peephole", "mut3", "rnn_tanh"])
def test_every_choice_computes_what_the_reference_path_computes(fresh_choice, mode, name):
    fresh_choice.setenv(base.KERNELS_ENV, mode)
    cell = make(name, 5, 6, torch.float32)
    x = torch.randn(2, base.CHUNK + 3, 5)
    out_f, fin_f, g_f = run_cell(cell, x, None, reference=False)
    out_r, fin_r, g_r = run_cell(cell, x, None, reference=True)
    assert_close_to_scale(out_f, out_r, 1e-5)
    for k in g_r:
        assert_close_to_scale(g_f[k], g_r[k], 1e-5, msg=lambda m, k=k: f"{name} ({mode}) grad {k}: {m}")


@pytest.mark.parametrize("deterministic", [False, True])
def test_a_run_records_the_kernels_it_used(fresh_choice, tmp_path, deterministic):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = build_config({"task": {"name": "adding", "length": 6, "val_size": 32}, "model": {"cell": "sgru",
                        "hidden_size": 4}, "train": {"steps": 2, "progress": False, "deterministic": deterministic,
                                                     "checkpoint_dir": str(tmp_path / "ck")},
                        "tracking": {"uri": uri}})
    result = run(cfg)
    assert not torch.are_deterministic_algorithms_enabled()  # Lightning's process-wide switch is put back
    tag = mlflow.MlflowClient(uri).get_run(result.run_id).data.tags["kernels"]
    if deterministic:
        assert tag == "linear=addmm,tanh=torch (plain: deterministic algorithms on)"
    else:
        assert tag == base.kernel_choice().describe()
