"""The contract every registered cell keeps, parametrised over the registry (tiny sizes, CPU).

Every test here follows ``cells.names()``, so a new cell, or a plugin cell (``RNNSUITE_PLUGINS=tests.plugins.indrnn
pytest tests/test_cells_contract.py``), is checked without an edit here (docs/extending.md).
"""
from __future__ import annotations

import math
import os

import pytest
import torch

from suite import cells
from suite.registry import Registry, SuiteError
from tests.regression import cases

NAMES = cells.names()


def make(name, i=5, h=7, **kw):
    return cases.build(name, i, h, **kw)


def as_tuple(state):
    return (state,) if isinstance(state, torch.Tensor) else tuple(state)


@pytest.mark.parametrize("name", NAMES)
def test_registered_with_a_summary_and_a_paper(name):
    entry = cells.CELLS.get(name)
    assert entry.summary and entry.source, name
    assert issubclass(entry.builder, cells.RecurrentCell) and entry.builder.name() == name


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("b,t", [(1, 1), (3, 5)])
def test_shapes_and_given_state(name, b, t):
    cell = make(name)
    x = torch.randn(b, t, 5)
    out, state = cell(x)
    assert out.shape == (b, t, 7)
    parts = as_tuple(state)
    assert len(parts) == len(cell.state_names) and all(s.shape == (b, 7) for s in parts)
    assert torch.equal(out[:, -1], parts[0])  # the output at the last step is the returned h
    # a given state continues the sequence: two halves equal one whole
    x2 = torch.randn(b, t, 5)
    cell.eval()
    with torch.no_grad():
        whole, _ = cell(torch.cat([x, x2], 1))
        first, mid = cell(x)
        second, _ = cell(x2, mid)
    torch.testing.assert_close(torch.cat([first, second], 1), whole, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_gets_a_finite_nonzero_gradient(name):
    torch.manual_seed(0)
    cell = make(name)
    with torch.no_grad():  # zero biases and the like would give exactly-zero gradients elsewhere
        for p in cell.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(4, 6, 5)
    state = tuple(torch.randn(4, 7) for _ in cell.state_names)
    out, _ = cell(x, state[0] if len(state) == 1 else state)
    out.square().sum().backward()
    for pname, p in cell.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", NAMES)
def test_float64(name):
    cell = make(name).double()
    out, state = cell(torch.randn(2, 4, 5, dtype=torch.float64))
    assert out.dtype == torch.float64 and all(s.dtype == torch.float64 for s in as_tuple(state))


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, CUDA])]  # cuda: run by make gpu-check


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", NAMES)
def test_bf16_autocast_works_and_stays_near_float32(name, device):
    """Under bf16 autocast (train.precision=bf16-mixed) every cell runs forward and backward with finite
    gradients, and its outputs stay within bf16's rounding of the float32 ones (measured worst: 9.4e-3, ligru)."""
    torch.manual_seed(0)
    cell = make(name).to(device)
    x = torch.randn(3, 20, 5, device=device)
    with torch.no_grad():
        ref, _ = cell(x)
    with torch.autocast(device, dtype=torch.bfloat16):
        out, _ = cell(x)
    # one precision for every recurrence (suite.gpu): autocast lowers the input GEMMs only; on CUDA torch would
    # otherwise run lstm/gru's cuDNN kernels in float16 while the other cells keep float32
    assert out.dtype == torch.float32
    out.float().square().sum().backward()
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)
    for pname, p in cell.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


@pytest.mark.cuda
@CUDA
@pytest.mark.parametrize("name", NAMES)
def test_cuda_matches_cpu(name):
    torch.manual_seed(0)
    cell = make(name).eval()
    x = torch.randn(2, 9, 5)
    with torch.no_grad():
        ref, _ = cell(x)
        got, _ = cell.cuda()(x.cuda())
    torch.testing.assert_close(got.cpu(), ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_trace_matches_forward_and_exposes_every_step(name):
    torch.manual_seed(0)
    cell = make(name).eval()
    x = torch.randn(3, 6, 5)
    with torch.no_grad():
        out, state = cell(x)
    tout, tstate, trace = cell.trace(x)
    torch.testing.assert_close(tout, out, atol=1e-5, rtol=1e-5)
    for a, b in zip(as_tuple(tstate), as_tuple(state)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert set(trace.gates) == set(cell.gate_names)
    for g, a in trace.gates.items():
        assert a.shape == (3, 6, 7), g
        assert ((a >= 0) & (a <= 1)).all(), g  # reported gates are sigmoid gates
    assert set(trace.states) == set(cell.state_names)
    hs = trace.states["h"]
    assert len(hs) == 6
    grads = torch.autograd.grad(tout[:, -1].sum(), hs)  # dL/dh_t exists for every t
    assert all(g.shape == (3, 7) for g in grads)


@pytest.mark.parametrize("name", NAMES)
def test_gate_split_covers_real_parameters(name):
    cell = make(name)
    params = dict(cell.named_parameters())
    for pname, gates in cell.param_gates.items():
        assert pname in params, f"{name}: param_gates names {pname!r}, not a parameter"
        assert params[pname].shape[0] % len(gates) == 0


CHRONO = [n for n in NAMES if "chrono_init" in cells.options(n)]


@pytest.mark.parametrize("name", NAMES)
def test_chrono_is_offered_exactly_by_the_cells_with_a_biased_keep_gate(name):
    cell = make(name)
    try:  # rnn_tanh has no keep gate; gru2's gates have no bias to put the chrono value in
        biased_keep_gate = cell.keep_gate is not None and bool(cell.chrono_targets())
    except SuiteError:
        biased_keep_gate = False
    assert ("chrono_init" in cells.options(name)) == biased_keep_gate


@pytest.mark.parametrize("name", CHRONO)
def test_chrono_init_sets_the_keep_gate_in_range(name):
    t_max = 50
    torch.manual_seed(0)
    cell = make(name, chrono_init=t_max)
    gate, sign = cell.keep_gate
    targets = cell.chrono_targets()
    view, s = targets[0]
    assert s in (1, -1)
    b = s * view  # the sampled log U[1, T_max - 1]
    assert (b >= -1e-6).all() and (b <= math.log(t_max - 1) + 1e-6).all()
    assert b.std() > 0  # sampled, not constant


def test_rnn_tanh_refuses_chrono_init():
    with pytest.raises(SuiteError, match="does not take option 'chrono_init'"):
        cells.build("rnn_tanh", 4, 4, chrono_init=10)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_hidden_size(bad):
    with pytest.raises(SuiteError, match="hidden_size must be a positive integer"):
        cells.build("gru", 4, bad)


def test_unknown_cell_lists_valid_names():
    with pytest.raises(SuiteError) as err:
        cells.build("gruu", 4, 4)
    msg = str(err.value)
    assert "unknown cell 'gruu'" in msg and "did you mean 'gru'" in msg and "minlstm" in msg


def test_unknown_option_is_named():
    with pytest.raises(SuiteError, match="'sgru' does not take option 'peepholes'"):
        cells.build("sgru", 4, 4, peepholes=True)


@pytest.mark.parametrize("name", NAMES)
def test_wrong_input_width(name):
    cell = make(name, 5, 7)
    with pytest.raises(SuiteError, match="input width 4 does not match input_size=5"):
        cell(torch.randn(2, 3, 4))


def test_wrong_state_shape():
    cell = make("lstm")
    with pytest.raises(SuiteError, match="state"):
        cell(torch.randn(2, 3, 5), torch.zeros(2, 7))


def test_registry_rejects_duplicates():
    reg = Registry("thing")
    reg.register("a", "x", "y")(object)
    with pytest.raises(SuiteError, match="duplicate thing name 'a': already registered by builtins.object"):
        reg.register("a", "x", "y")(object)
    assert reg.names() == ["a"]


@pytest.mark.parametrize("name", NAMES)
def test_regression_outputs_unchanged(name):
    """A silent change to a cell's maths fails here; write an entry with ``python -m tests.regression update NAME``
    (tests/regression/cases.py), which rewrites that cell's file only."""
    saved = cases.load(name)
    if saved is None:
        message = (f"cell {name!r} has no regression entry: write it with `python -m tests.regression update "
                   f"{name}` and commit {cases.entry_path(name).relative_to(cases.HERE.parents[1])}")
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    cell = make(name)
    cell.load_state_dict({k[2:]: v for k, v in saved.items() if k.startswith("p.")})
    cell.eval()
    with torch.no_grad():
        out, state = cell(saved["x"])
    torch.testing.assert_close(out, saved["out"], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(torch.stack(as_tuple(state)), saved["state"], atol=1e-6, rtol=1e-5)


def test_regression_update_writes_the_named_cell_only(tmp_path, monkeypatch):
    monkeypatch.setattr(cases, "HERE", tmp_path)
    (tmp_path / "gru1.pt").write_bytes(b"another cell's entry")
    cases.update("gru")
    with pytest.raises(SuiteError, match="unknown cell 'gruu'"):
        cases.update("gruu")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gru.pt", "gru1.pt"]
    assert (tmp_path / "gru1.pt").read_bytes() == b"another cell's entry"
    fresh = torch.load(tmp_path / "gru.pt")
    monkeypatch.undo()
    stored = cases.load("gru")
    assert fresh.keys() == stored.keys() and all(torch.equal(fresh[k], stored[k]) for k in stored)
