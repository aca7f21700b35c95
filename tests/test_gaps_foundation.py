"""Foundation gaps an audit found: rnn_tanh against its equations, the default initialisation of the custom
cells, weight tying and inter-layer dropout in SequenceModel, `rnnsuite list` / `--help`, papers cited in the
LSTM/GRU docstrings and the recorded checks of the cells cells.md marks unchecked."""
from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from suite import cells, tasks
from suite.cells.base import reference_paths
from suite.cells.rnn import TanhRNN
from suite.model import SequenceModel
from suite.registry import SuiteError

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------- rnn_tanh
def test_rnn_tanh_step_is_elman_equation_with_the_cells_own_weights():
    torch.manual_seed(0)
    cell = TanhRNN(5, 4).double()
    with torch.no_grad():
        cell.bias_ih.normal_()  # default bias is zero: make the b term show
    W, U, b = cell.weight_ih.detach(), cell.weight_hh.detach(), cell.bias_ih.detach()
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    h0 = torch.randn(3, 4, dtype=torch.float64)

    out1, h1 = cell(x[:, :1], h0)  # one step
    by_hand = torch.tanh(x[:, 0] @ W.T + h0 @ U.T + b)  # h_t = tanh(W x_t + U h_{t-1} + b)
    torch.testing.assert_close(out1[:, 0], by_hand, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h1, by_hand, rtol=1e-12, atol=1e-12)

    h, hs = h0, []  # every step, on the fast path, the reference path and in diagnostics mode
    for t in range(4):
        h = torch.tanh(x[:, t] @ W.T + h @ U.T + b)
        hs.append(h)
    expected = torch.stack(hs, 1)
    torch.testing.assert_close(cell(x, h0)[0], expected, rtol=1e-12, atol=1e-12)
    with reference_paths():  # the per-step reference loop, autograd through step()
        torch.testing.assert_close(cell(x, h0)[0], expected, rtol=1e-12, atol=1e-12)
    out, h_last, trace = cell.trace(x, h0)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h_last, hs[-1], rtol=1e-12, atol=1e-12)
    assert trace.gates == {} and len(trace.states["h"]) == 4  # no gates to report


@pytest.mark.parametrize("m,n", [(10, 128), (7, 5), (3, 16)])
def test_rnn_tanh_parameter_count_is_n_m_plus_n_plus_1(m, n):
    cell = cells.build("rnn_tanh", m, n, init="uniform")  # uniform: no QR, counts do not depend on init
    assert sum(p.numel() for p in cell.parameters()) == n * (m + n + 1)
    assert sum(p.numel() for p in cells.build("rnn_tanh", m, n, bias=False, init="uniform").parameters()) \
        == n * (m + n)


def test_rnn_tanh_reference_count():
    assert sum(p.numel() for p in cells.build("rnn_tanh", 10, 128, init="uniform").parameters()) == 17_792


# ---------------------------------------------------------------------------------- default initialisation
M, N = 24, 32  # blocks big enough for a meaningful spread check, small enough for a fast QR

# every parameter each custom cell has at its defaults, by role (a missing or extra name fails the test)
PARAMS = {
    "sgru": {"weight_ih": 2, "weight_hh": 2, "bias_ih": None},
    "ugrnn": {"weight_ih": 2, "weight_hh": 2, "bias_ih": None},
    "mgu": {"weight_ih": 2, "weight_hh_f": 1, "weight_hh_c": 1, "bias_ih": None},
    "janet": {"weight_ih": 2, "weight_hh": 2, "bias_ih": None},
    "ligru": {"weight_ih": 2, "weight_hh": 2, "norm.weight": None, "norm.bias": None},
    "mut1": {"weight_ih": 2, "weight_hh_r": 1, "weight_hh_c": 1, "bias_ih": None},
    "mut2": {"weight_ih": 2, "weight_hh": 2, "weight_hh_c": 1, "bias_ih": None},
    "mut3": {"weight_ih": 3, "weight_hh_z": 1, "weight_hh_r": 1, "weight_hh_c": 1, "bias_ih": None},
    "rnn_tanh": {"weight_ih": 1, "weight_hh": 1, "bias_ih": None},
}


def _build(name: str, **opts):
    m = N if name in ("mut1", "mut2") else M  # mut1/mut2 add x unweighted: m = n
    return cells.build(name, m, N, **opts)


def _check_default_init(cell, expected_names: dict):
    n = cell.hidden_size
    names = dict(cell.named_parameters())
    assert set(names) == set(expected_names), sorted(names)
    for name, p in names.items():
        p = p.detach()
        if ".weight_hh" in f".{name}":  # recurrent: orthogonal per gate block, W W^T = I
            blocks = p.split(n, 0)
            assert len(blocks) == expected_names[name]
            for w in blocks:
                assert w.shape == (n, n)
                torch.testing.assert_close(w @ w.T, torch.eye(n), atol=1e-5, rtol=0)
        elif ".weight_ih" in f".{name}":  # input: Xavier uniform per gate block, U(-a, a), a = sqrt(6/(in+out))
            blocks = p.split(n, 0)
            assert len(blocks) == expected_names[name]
            for w in blocks:
                fan_out, fan_in = w.shape
                bound = math.sqrt(6 / (fan_in + fan_out))
                assert w.abs().max() <= bound
                assert w.abs().max() > 0.9 * bound  # fills the range: not a narrower init
                assert abs(w.std().item() - bound / math.sqrt(3)) < 0.15 * bound  # uniform's spread
                assert abs(w.mean().item()) < 0.1 * bound
        elif name == "norm.weight":  # batch norm scale: its module's own init
            assert torch.equal(p, torch.ones_like(p))
        else:  # every bias (and the BN shift) is zero: no chrono, no forget-bias rule for these cells
            assert name.startswith("bias") or name == "norm.bias"
            assert torch.equal(p, torch.zeros_like(p)), name


@pytest.mark.parametrize("name", list(PARAMS))
def test_default_init_orthogonal_recurrent_xavier_input_zero_bias(name):
    torch.manual_seed(0)
    _check_default_init(_build(name), PARAMS[name])


@pytest.mark.parametrize("name,opts,expected", [
    ("ligru", {"batch_norm": False}, {"weight_ih": 2, "weight_hh": 2, "bias_ih": None}),
    ("mut1", {"project_input": True}, {"weight_ih_proj": 1, "weight_ih": 2, "weight_hh_r": 1, "weight_hh_c": 1,
                                       "bias_ih": None}),
    ("mut3", {"project_input": True}, {"weight_ih_proj": 1, "weight_ih": 3, "weight_hh_z": 1, "weight_hh_r": 1,
                                       "weight_hh_c": 1, "bias_ih": None}),
])
def test_default_init_of_option_variants(name, opts, expected):
    torch.manual_seed(0)
    cell = cells.build(name, M, N, **opts)
    _check_default_init(cell, expected)


def test_default_init_bias_rules_differ_only_where_documented():
    # chrono init is the only thing that moves a custom cell's gate bias off zero (when asked)
    torch.manual_seed(0)
    cell = cells.build("sgru", M, N, chrono_init=50)
    b_u = cell.bias_ih.detach()[:N]
    assert (b_u < 0).all() and (b_u >= -math.log(49) - 1e-6).all()  # keep gate 1 - u: -log U[1, 49]
    assert torch.equal(cell.bias_ih.detach()[N:], torch.zeros(N))  # the candidate's bias stays zero


# ---------------------------------------------------------------------------------------- weight tying
def test_tied_head_weight_is_the_embedding_weight():
    torch.manual_seed(0)
    model = SequenceModel("lstm", "embedding", 50, 50, 16, layers=2, tie_weights=True)
    assert model.head.weight is model.embedding.weight  # one tensor, not a copy
    assert model.head.weight.data_ptr() == model.embedding.weight.data_ptr()
    from suite.assemble import count_params

    untied = SequenceModel("lstm", "embedding", 50, 50, 16, layers=2)
    assert count_params(untied) - count_params(model) == 50 * 16  # counted once
    with torch.no_grad():
        model.embedding.weight[3, 0] = 123.0
    assert model.head.weight[3, 0].item() == 123.0
    out, _ = model(torch.randint(0, 50, (2, 5)))
    out.sum().backward()
    assert model.embedding.weight.grad is model.head.weight.grad  # both uses accumulate into one gradient


def test_tie_weights_refuses_size_mismatches_clearly():
    with pytest.raises(ValueError, match=r"tie_weights needs embedding_size == hidden_size \(8 != 16\)"):
        SequenceModel("gru", "embedding", 50, 50, 16, embedding_size=8, tie_weights=True)
    with pytest.raises(ValueError, match=r"tie_weights needs output_size == the embedding's vocabulary size "
                                         r"\(40 != 50\)"):
        SequenceModel("gru", "embedding", 50, 40, 16, tie_weights=True)
    with pytest.raises(ValueError, match="tie_weights needs an embedding encoder"):
        SequenceModel("gru", "real", 2, 1, 16, tie_weights=True)


def test_tie_weights_mismatch_through_the_config_is_one_suite_error():
    from suite.config import build_config
    from suite.assemble import build_model

    lm = SimpleNamespace(encoding="embedding", input_size=50, output_size=50, seq_len=20)
    cfg = build_config(overrides={"model.tie_weights": True, "model.embedding_size": 8, "model.hidden_size": 16})
    with pytest.raises(SuiteError, match=r"^model: tie_weights needs embedding_size == hidden_size \(8 != 16\)$"):
        build_model(cfg, lm)
    adding = SimpleNamespace(encoding="real", input_size=2, output_size=1, seq_len=20)
    with pytest.raises(SuiteError, match="^model: tie_weights needs an embedding encoder"):
        build_model(build_config(overrides={"model.tie_weights": True}), adding)
    tied = build_model(build_config(overrides={"model.tie_weights": True, "model.hidden_size": 16}), lm)
    assert tied.head.weight is tied.embedding.weight


# ------------------------------------------------------------------------------------ dropout between layers
def _layer_io(model, x):
    """(output of layer 0, input of layer 1) of one forward pass."""
    seen = {}
    h0 = model.layers[0].register_forward_hook(lambda mod, args, out: seen.__setitem__("out0", out[0]))
    h1 = model.layers[1].register_forward_pre_hook(lambda mod, args: seen.__setitem__("in1", args[0]))
    try:
        model(x)
    finally:
        h0.remove()
        h1.remove()
    return seen["out0"], seen["in1"]


def test_dropout_between_layers_in_train_mode_only():
    torch.manual_seed(0)
    model = SequenceModel("gru", "real", 3, 2, 64, layers=2, dropout=0.5)
    x = torch.randn(8, 10, 3)
    model.train()
    out0, in1 = _layer_io(model, x)
    dropped = in1 == 0
    assert 0.4 < dropped.float().mean().item() < 0.6  # p = 0.5 of the units between the layers
    torch.testing.assert_close(in1[~dropped], 2 * out0[~dropped])  # inverted dropout: kept units scaled 1/(1-p)
    _, again = _layer_io(model, x)
    assert not torch.equal(again == 0, dropped)  # a fresh mask each pass

    model.eval()
    out0, in1 = _layer_io(model, x)
    assert torch.equal(in1, out0)  # nothing dropped, nothing scaled
    torch.testing.assert_close(model(x)[0], model(x)[0], rtol=0, atol=0)  # deterministic


def test_no_dropout_means_identity_between_layers_even_in_train_mode():
    model = SequenceModel("gru", "real", 3, 2, 16, layers=2, dropout=0.0).train()
    out0, in1 = _layer_io(model, torch.randn(2, 4, 3))
    assert torch.equal(in1, out0)


# -------------------------------------------------------------------------------------------------- CLI
def _cli(*args) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("rnnsuite")  # the installed console script, as a user runs it
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "suite"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_list_shows_every_cell_with_its_paper_every_task_and_every_named_setting():
    out = _cli("list")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    sections = {}
    current = None
    for line in lines:
        if not line.startswith(" "):
            current = line.rstrip(":").split(" (")[0]
            sections[current] = []
        else:
            sections[current].append(line.strip())
    assert len(cells.names()) == 19
    cell_lines = {line.split()[0]: line for line in sections["cells"]}
    assert set(cell_lines) == set(cells.names())
    for name, line in cell_lines.items():
        citation = re.search(r"\[([^\]]+)\]$", line)
        assert citation, f"{name}: no [citation] in {line!r}"
        assert re.search(r"\b(19|20)\d\d\b", citation.group(1)), f"{name}: citation without a year: {line!r}"
        assert len(line.split(None, 1)[1]) > len(citation.group(0)) + 10  # a description besides the citation
    task_lines = {line.split()[0]: line for line in sections["tasks"]}
    assert set(task_lines) == set(tasks.names())
    for name, line in task_lines.items():
        assert re.search(r"\[[^\]]*(19|20)\d\d[^\]]*\]$", line), line
    setting_lines = {line.split()[0]: line for line in sections["task settings"]}
    assert set(setting_lines) == set(tasks.named_settings())
    assert len(setting_lines) >= 9
    for name, line in setting_lines.items():
        assert len(line.split(None, 1)) == 2, f"{name} has no description"


@pytest.mark.parametrize("args,flags", [
    (["--help"], ["list", "train", "sweep", "report", "bench", "ui", "export", "import", "--version"]),
    (["export", "--help"], ["--output", "--storage", "--tracking-uri", "--with-checkpoints"]),
    (["import", "--help"], ["--storage", "--tracking-uri"]),
    (["report", "--help"], ["--from", "--output", "--storage", "--tracking-uri", "--reference"]),
    (["train", "--help"], ["--task", "--cell", "--config", "--steps", "--epochs", "--seed", "--set",
                           "--tracking-uri", "--experiment", "--device", "--resume", "--json"]),
])
def test_help_exits_0_and_names_the_flags(args, flags):
    out = _cli(*args)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: rnnsuite") and out.stderr == ""
    for flag in flags:
        assert flag in out.stdout, flag


# -------------------------------------------------------------------------------------------- docstrings
def test_lstm_and_gru_docstrings_cite_their_papers():
    from suite.cells.gru import GRU, GRUResetBefore
    from suite.cells.lstm import LSTM

    assert "Hochreiter & Schmidhuber (1997)" in LSTM.__doc__ and "Long Short-Term Memory" in LSTM.__doc__
    assert "Gers, Schmidhuber & Cummins (2000)" in LSTM.__doc__ and "forget gate" in LSTM.__doc__
    assert "Cho" in GRU.__doc__ and "2014" in GRU.__doc__ and "1406.1078" in GRU.__doc__
    assert "Cho et al. (2014" in GRUResetBefore.__doc__


def test_unchecked_reference_details_have_a_recorded_check_and_decision():
    from suite.cells import gru, mut

    for cls in (gru.GRU1, gru.GRU2, gru.GRU3):
        doc = cls.__doc__
        assert "checked against the paper" in doc and "1701.05923" in doc and "Decision:" in doc
    assert "checked against the paper" in mut.__doc__ and "Decisions:" in mut.__doc__
    assert "W_hz tanh(h_t)" in mut.__doc__  # the detail cells.md marks unchecked, as the paper has it
    assert "unchecked against the paper" not in mut.MUT3.__doc__
