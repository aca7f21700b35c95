"""LSTM and GRU families: fused vs reference paths, published equations, parameter counts, initialisation."""
from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from suite import cells
from suite.cells import gru, lstm, mut
from suite.cells.base import RecurrentCell
from suite.registry import SuiteError

LSTMS = ("lstm", "lstm_peephole", "cifg")
GRUS = ("gru", "gru_reset_before", "gru1", "gru2", "gru3")
ALL = LSTMS + GRUS
FUSED = ("lstm", "gru")


def sig(v: Tensor) -> Tensor:
    return torch.sigmoid(v)


def lin(x: Tensor, w: Tensor) -> Tensor:
    return x @ w.t()


def random_state(name: str, batch: int, hidden: int, dtype=torch.float64):
    h = torch.randn(batch, hidden, dtype=dtype)
    return (h, torch.randn(batch, hidden, dtype=dtype)) if name in LSTMS else h


def build(name: str, m: int, n: int, dtype=torch.float64, **opts) -> RecurrentCell:
    # A wide uniform init makes every bias and peephole non-zero, so the tests see each term of the equations.
    opts = {"init": "uniform", "init_range": 0.5, **opts}
    return cells.build(name, m, n, **opts).to(dtype)


# ---------------------------------------------------------------- fused path == reference time-step path
@pytest.mark.parametrize("name", FUSED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("B,T,I,H", [(1, 1, 1, 1), (3, 7, 5, 4), (4, 13, 2, 9), (2, 20, 8, 16)])
def test_reference_path_matches_fused(name, dtype, B, T, I, H):
    torch.manual_seed(B * 1000 + T * 10 + H)
    cell = build(name, I, H, dtype)
    x = torch.randn(B, T, I, dtype=dtype, requires_grad=True)
    state = random_state(name, B, H, dtype)
    parts = (state,) if isinstance(state, Tensor) else state
    for s in parts:
        s.requires_grad_(True)
    weights = [torch.randn(B, T, H, dtype=dtype)] + [torch.randn(B, H, dtype=dtype) for _ in parts]
    inputs = [x, *parts, *cell.parameters()]

    def grads(out, final):
        final = (final,) if isinstance(final, Tensor) else final
        loss = (out * weights[0]).sum() + sum((s * w).sum() for s, w in zip(final, weights[1:]))
        return torch.autograd.grad(loss, inputs)

    out_f, state_f = cell(x, state)  # the fused nn.LSTM / nn.GRU kernel
    out_r, state_r, _ = cell.trace(x, state)  # project + step, from the equations
    tol = {"atol": 1e-5, "rtol": 1e-5}
    torch.testing.assert_close(out_r, out_f, **tol)
    torch.testing.assert_close(state_r, state_f, **tol)
    names = ["x"] + [f"state{i}" for i in range(len(parts))] + [n for n, _ in cell.named_parameters()]
    for label, g_r, g_f in zip(names, grads(out_r, state_r), grads(out_f, state_f), strict=True):
        torch.testing.assert_close(g_r, g_f, **tol, msg=lambda m, label=label: f"grad of {label}: {m}")
    # The base time loop (no trace) gives the same outputs, with and without autograd.
    out_b, _ = RecurrentCell.recurrence(cell, x, cell.prepare(x, state))
    torch.testing.assert_close(out_b, out_f, **tol)
    with torch.no_grad():
        out_n, _ = RecurrentCell.recurrence(cell, x, cell.prepare(x, state))
    torch.testing.assert_close(out_n, out_f, **tol)


# ---------------------------------------------------------------- one step straight from the papers
def hand_lstm(cell, x, h, c):
    """nn.LSTM (Hochreiter & Schmidhuber; Gers et al.): gate order i, f, g, o, two biases."""
    Wi, Wf, Wg, Wo = cell.rnn.weight_ih_l0.chunk(4)
    Ui, Uf, Ug, Uo = cell.rnn.weight_hh_l0.chunk(4)
    bii, bif, big, bio = cell.rnn.bias_ih_l0.chunk(4)
    bhi, bhf, bhg, bho = cell.rnn.bias_hh_l0.chunk(4)
    i = sig(lin(x, Wi) + bii + lin(h, Ui) + bhi)
    f = sig(lin(x, Wf) + bif + lin(h, Uf) + bhf)
    g = torch.tanh(lin(x, Wg) + big + lin(h, Ug) + bhg)
    o = sig(lin(x, Wo) + bio + lin(h, Uo) + bho)
    c = f * c + i * g
    return o * torch.tanh(c), c, {"i": i, "f": f, "o": o}


def hand_lstm_peephole(cell, x, h, c):
    """Greff et al. 2017, vanilla LSTM: z (here g) block input, peepholes p_i, p_f on c_{t-1}, p_o on c_t."""
    Wi, Wf, Wz, Wo = cell.weight_ih.chunk(4)
    Ri, Rf, Rz, Ro = cell.weight_hh.chunk(4)
    bi, bf, bz, bo = cell.bias_ih.chunk(4)
    pi, pf, po = cell.peephole.chunk(3)
    z = torch.tanh(lin(x, Wz) + lin(h, Rz) + bz)
    i = sig(lin(x, Wi) + lin(h, Ri) + pi * c + bi)
    f = sig(lin(x, Wf) + lin(h, Rf) + pf * c + bf)
    c = z * i + f * c
    o = sig(lin(x, Wo) + lin(h, Ro) + po * c + bo)
    return o * torch.tanh(c), c, {"i": i, "f": f, "o": o}


def hand_cifg(cell, x, h, c):
    """Greff et al. 2017, CIFG: f = 1 - i (no peepholes here); blocks i, g, o."""
    Wi, Wz, Wo = cell.weight_ih.chunk(3)
    Ri, Rz, Ro = cell.weight_hh.chunk(3)
    bi, bz, bo = cell.bias_ih.chunk(3)
    z = torch.tanh(lin(x, Wz) + lin(h, Rz) + bz)
    i = sig(lin(x, Wi) + lin(h, Ri) + bi)
    f = 1 - i
    c = z * i + f * c
    o = sig(lin(x, Wo) + lin(h, Ro) + bo)
    return o * torch.tanh(c), c, {"i": i, "f": f, "o": o}


def hand_gru(cell, x, h, c=None):
    """nn.GRU, reset after: n = tanh(W_n x + b_in + r ⊙ (U_n h + b_hn)); h' = (1 - z) ⊙ n + z ⊙ h."""
    Wr, Wz, Wn = cell.rnn.weight_ih_l0.chunk(3)
    Ur, Uz, Un = cell.rnn.weight_hh_l0.chunk(3)
    bir, biz, bin_ = cell.rnn.bias_ih_l0.chunk(3)
    bhr, bhz, bhn = cell.rnn.bias_hh_l0.chunk(3)
    r = sig(lin(x, Wr) + bir + lin(h, Ur) + bhr)
    z = sig(lin(x, Wz) + biz + lin(h, Uz) + bhz)
    n = torch.tanh(lin(x, Wn) + bin_ + r * (lin(h, Un) + bhn))
    return (1 - z) * n + z * h, None, {"r": r, "z": z}


def reset_before_update(x, h, r, z, Wh, Uh, bh):
    """Cho et al. 2014 v3: h~ = tanh(W_h x + U_h (r ⊙ h) + b_h); h' = z ⊙ h + (1 - z) ⊙ h~."""
    cand = torch.tanh(lin(x, Wh) + lin(r * h, Uh) + bh)
    return z * h + (1 - z) * cand


def hand_gru_reset_before(cell, x, h, c=None):
    Wr, Wz, Wh = cell.weight_ih.chunk(3)
    Ur, Uz, Uh = cell.weight_hh.chunk(3)
    br, bz, bh = cell.bias_ih.chunk(3)
    r = sig(lin(x, Wr) + lin(h, Ur) + br)
    z = sig(lin(x, Wz) + lin(h, Uz) + bz)
    return reset_before_update(x, h, r, z, Wh, Uh, bh), None, {"r": r, "z": z}


def hand_gru1(cell, x, h, c=None):
    """Dey & Salem GRU1: r, z = σ(U h + b)."""
    Ur, Uz, Uh = cell.weight_hh.chunk(3)
    br, bz, bh = cell.bias_ih.chunk(3)
    r, z = sig(lin(h, Ur) + br), sig(lin(h, Uz) + bz)
    return reset_before_update(x, h, r, z, cell.weight_ih, Uh, bh), None, {"r": r, "z": z}


def hand_gru2(cell, x, h, c=None):
    """Dey & Salem GRU2: r, z = σ(U h)."""
    Ur, Uz, Uh = cell.weight_hh.chunk(3)
    r, z = sig(lin(h, Ur)), sig(lin(h, Uz))
    return reset_before_update(x, h, r, z, cell.weight_ih, Uh, cell.bias_ih), None, {"r": r, "z": z}


def hand_gru3(cell, x, h, c=None):
    """Dey & Salem GRU3: r, z = σ(b)."""
    br, bz, bh = cell.bias_ih.chunk(3)
    r, z = sig(br).expand_as(h), sig(bz).expand_as(h)
    return reset_before_update(x, h, r, z, cell.weight_ih, cell.weight_hh, bh), None, {"r": r, "z": z}


HAND = {name: globals()[f"hand_{name}"] for name in ALL}


@pytest.mark.parametrize("name", ALL)
def test_one_step_matches_published_equations(name):
    torch.manual_seed(7)
    B, m, n = 3, 5, 6
    cell = build(name, m, n)
    x = torch.randn(B, 1, m, dtype=torch.float64)
    state = random_state(name, B, n)
    h0, c0 = (state, None) if isinstance(state, Tensor) else state
    with torch.no_grad():
        h1, c1, gates = HAND[name](cell, x[:, 0], h0, c0)
        out, final = cell(x, state)
        out_t, final_t, trace = cell.trace(x, state)
    torch.testing.assert_close(out[:, 0], h1)
    torch.testing.assert_close(out_t[:, 0], h1)
    if c1 is None:
        torch.testing.assert_close(final, h1)
    else:
        torch.testing.assert_close(final[0], h1)
        torch.testing.assert_close(final[1], c1)
        torch.testing.assert_close(final_t[1], c1)
        torch.testing.assert_close(trace.states["c"][0], c1)
    assert tuple(trace.gates) == cell.gate_names
    for g, value in gates.items():
        assert trace.gates[g].shape == (B, 1, n)
        torch.testing.assert_close(trace.gates[g][:, 0], value, msg=lambda msg, g=g: f"gate {g}: {msg}")


@pytest.mark.parametrize("name", ALL)
def test_trace_shapes_and_plain_forward_agree(name):
    torch.manual_seed(3)
    B, T, m, n = 2, 5, 3, 4
    cell = build(name, m, n)
    x = torch.randn(B, T, m, dtype=torch.float64)
    out, final = cell(x)
    out_t, final_t, trace = cell.trace(x)
    torch.testing.assert_close(out_t, out)
    torch.testing.assert_close(final_t, final)
    assert out.shape == (B, T, n)
    assert set(trace.states) == set(cell.state_names)
    assert all(len(v) == T for v in trace.states.values())
    for g in cell.gate_names:
        assert trace.gates[g].shape == (B, T, n)  # gru3's constant gates too, broadcast


def test_gru3_gates_are_constant_over_time():
    cell = build("gru3", 3, 4)
    _, _, trace = cell.trace(torch.randn(2, 6, 3, dtype=torch.float64))
    br, bz, _ = cell.bias_ih.chunk(3)
    torch.testing.assert_close(trace.gates["r"], sig(br).expand(2, 6, 4))
    torch.testing.assert_close(trace.gates["z"], sig(bz).expand(2, 6, 4))


# ---------------------------------------------------------------- parameter counts
def one_bias_count(name: str, m: int, n: int) -> int:
    base = 3 * n * (m + n + 1)
    return {
        "lstm": 4 * n * (m + n + 1), "lstm_peephole": 4 * n * (m + n + 1) + 3 * n, "cifg": base,
        "gru": base, "gru_reset_before": base, "gru1": base - 2 * n * m, "gru2": base - 2 * n * m - 2 * n,
        "gru3": base - 2 * n * m - 2 * n * n,
    }[name]


def count(cell) -> int:
    return sum(p.numel() for p in cell.parameters())


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("m,n", [(10, 128), (3, 7), (1, 1)])
def test_parameter_counts(name, m, n):
    extra = {"lstm": 4 * n, "gru": 3 * n}.get(name, 0)  # nn.LSTM / nn.GRU keep a second bias per gate
    assert count(cells.build(name, m, n)) == one_bias_count(name, m, n) + extra


def test_reference_counts_at_n128_m10():
    listed = {"lstm_peephole": 71_168 + 3 * 128, "cifg": 53_376, "gru_reset_before": 53_376, "gru1": 50_816,
              "gru2": 50_560, "gru3": 18_048, "lstm": 71_168 + 4 * 128, "gru": 53_376 + 3 * 128}
    assert {name: count(cells.build(name, 10, 128)) for name in listed} == listed


@pytest.mark.parametrize("name", ALL)
def test_param_gates_name_real_parameters(name):
    cell = cells.build(name, 3, 5)
    params = dict(cell.named_parameters())
    assert set(cell.param_gates) == set(params)
    for pname, gates in cell.param_gates.items():
        assert params[pname].shape[0] == len(gates) * 5, pname
    missing = set(cell.gate_names) - set().union(*cell.param_gates.values())
    assert missing == ({"f"} if name == "cifg" else set())  # cifg reports f = 1 - i, which has no weights


@pytest.mark.parametrize("name", [c for c in ALL if c != "gru3"])
def test_without_bias(name):
    cell = cells.build(name, 3, 4, bias=False)
    assert not any("bias" in p for p, _ in cell.named_parameters())
    out, _ = cell(torch.randn(2, 5, 3))
    assert out.shape == (2, 5, 4)


def test_gru3_refuses_no_bias():
    with pytest.raises(SuiteError, match="gru3 needs bias=True"):
        cells.build("gru3", 3, 4, bias=False)


# ---------------------------------------------------------------- initialisation
def blocks(cell, kind: str) -> list[Tensor]:
    """The n x n recurrent blocks (kind "hh") or the n x m input blocks (kind "ih") of a cell."""
    n = cell.hidden_size
    return [b for p_name, p in cell.named_parameters() if f"weight_{kind}" in p_name for b in p.detach().split(n)]


@pytest.mark.parametrize("name", ALL)
def test_default_init(name):
    torch.manual_seed(0)
    m, n = 6, 8
    cell = cells.build(name, m, n)
    for w in blocks(cell, "hh"):
        torch.testing.assert_close(w @ w.t(), torch.eye(n), atol=1e-5, rtol=0)
    bound = math.sqrt(6 / (m + n))  # Xavier uniform per gate block
    for w in blocks(cell, "ih"):
        assert w.abs().max() <= bound and w.std() > bound / 4
    bias = (cell.rnn.bias_ih_l0 + cell.rnn.bias_hh_l0 if name in FUSED else cell.bias_ih).detach()
    expected = torch.zeros_like(bias)
    if name in ("lstm", "lstm_peephole"):
        expected[n:2 * n] = 1.0  # forget bias 1
    if name == "lstm":
        assert torch.equal(cell.rnn.bias_hh_l0.detach(), torch.zeros(4 * n))  # set in ONE of the two biases
    if name == "cifg":
        expected[:n] = -1.0  # f = 1 - i starts at σ(1), as forget bias 1
    assert torch.equal(bias, expected)
    if name == "lstm_peephole":
        assert torch.equal(cell.peephole.detach(), torch.zeros(3 * n))


@pytest.mark.parametrize("name", ALL)
def test_uniform_init(name):
    cell = cells.build(name, 4, 5, init="uniform", init_range=0.05)
    for p in cell.parameters():
        assert p.abs().max() <= 0.05 and p.abs().max() > 0.02


def keep_bias(cell, name):
    """(effective bias of the keep gate, slice of the second bias that must be zero or None, input-gate bias)."""
    n = cell.hidden_size
    if name == "lstm":
        ih, hh = cell.rnn.bias_ih_l0.detach(), cell.rnn.bias_hh_l0.detach()
        return ih[n:2 * n], hh[:2 * n], ih[:n]
    if name == "gru":
        ih, hh = cell.rnn.bias_ih_l0.detach(), cell.rnn.bias_hh_l0.detach()
        return ih[n:2 * n], hh[n:2 * n], None
    b = cell.bias_ih.detach()
    if name == "lstm_peephole":
        return b[n:2 * n], None, b[:n]
    if name == "cifg":
        return b[:n], None, None
    return b[n:2 * n], None, None  # r|z|n: z's slice


@pytest.mark.parametrize("init", ["orthogonal", "uniform"])
@pytest.mark.parametrize("name", [c for c in ALL if c != "gru2"])
def test_chrono_init(name, init):
    torch.manual_seed(1)
    t_max, n = 50, 64
    cell = cells.build(name, 3, n, chrono_init=t_max, init=init)
    gate, sign = cell.keep_gate
    assert (gate, sign) == {"cifg": ("i", -1)}.get(name, ("f", 1) if name in LSTMS else ("z", 1))
    b, other, b_i = keep_bias(cell, name)
    value = sign * b  # the keep gate starts at σ(value) in [1/2, 1 - 1/(T_max - 1)]
    assert value.min() >= 0 and value.max() <= math.log(t_max - 1) + 1e-6
    assert value.std() > 0.3  # sampled per unit, not one constant
    if other is not None:
        assert torch.equal(other, torch.zeros_like(other))  # the second bias adds nothing to these gates
    if b_i is not None:
        torch.testing.assert_close(b_i, -b)  # Tallec & Ollivier: b_i = -b_f


def test_gru2_has_no_chrono_option():
    assert "chrono_init" not in cells.options("gru2")
    with pytest.raises(SuiteError, match="chrono_init"):
        cells.build("gru2", 3, 4, chrono_init=10)


def test_fused_forward_uses_torch_module():
    for name, module in (("lstm", torch.nn.LSTM), ("gru", torch.nn.GRU)):
        cell = cells.build(name, 3, 4)
        assert isinstance(cell.rnn, module) and cell.rnn.batch_first and cell.rnn.num_layers == 1


# -------------------------------------------------------------------------------------------- docstrings
def test_lstm_and_gru_docstrings_cite_their_papers():
    assert "Hochreiter & Schmidhuber (1997)" in lstm.LSTM.__doc__ and "Long Short-Term Memory" in lstm.LSTM.__doc__
    assert "Gers, Schmidhuber & Cummins (2000)" in lstm.LSTM.__doc__ and "forget gate" in lstm.LSTM.__doc__
    assert "Cho" in gru.GRU.__doc__ and "2014" in gru.GRU.__doc__ and "1406.1078" in gru.GRU.__doc__
    assert "Cho et al. (2014" in gru.GRUResetBefore.__doc__


def test_unchecked_reference_details_have_a_recorded_check_and_decision():
    for cls in (gru.GRU1, gru.GRU2, gru.GRU3):
        doc = cls.__doc__
        assert "checked against the paper" in doc and "1701.05923" in doc and "Decision:" in doc
    assert "checked against the paper" in mut.__doc__ and "Decisions:" in mut.__doc__
    assert "W_hz tanh(h_t)" in mut.__doc__  # the detail docs/cells.md records as checked, as the paper has it
    assert "unchecked against the paper" not in mut.MUT3.__doc__
