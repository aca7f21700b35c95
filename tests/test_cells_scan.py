"""minGRU and minLSTM: the log-space scan against the sequential loop, equations by hand, counts, chrono init."""
from __future__ import annotations

import math

import pytest
import torch

from suite import cells
from suite.cells.scan import MinGRU, MinLSTM, log_space_scan
from suite.registry import SuiteError

sig = torch.sigmoid
B, M, N = 2, 3, 4
CELLS = [MinGRU, MinLSTM]


def g(v):
    return torch.where(v >= 0, v + 0.5, sig(v))


def randomize(cell, scale=0.8):
    """Non-zero biases and spread-out gates, so that every term of the equations shows in the output."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in cell.parameters():
            p.normal_(0.0, scale)
    return cell


def initial_state(kind, dtype=torch.float32):
    torch.manual_seed(2)
    if kind is None:
        return None
    h = torch.randn(B, N, dtype=dtype)
    return -(h.abs() + 0.5) if kind == "negative" else h


# ----------------------------------------------------------------- hand steps, straight from the paper
def mingru_step(cell, h, x):
    w_z, w_h = cell.weight_ih.detach().chunk(2, 0)
    b_z, b_h = cell.bias_ih.detach().chunk(2, 0)
    z = sig(x @ w_z.T + b_z)
    h_tilde = g(x @ w_h.T + b_h)
    return (1 - z) * h + z * h_tilde, {"z": z}


def minlstm_step(cell, h, x):
    w_f, w_i, w_h = cell.weight_ih.detach().chunk(3, 0)
    b_f, b_i, b_h = cell.bias_ih.detach().chunk(3, 0)
    f, i = sig(x @ w_f.T + b_f), sig(x @ w_i.T + b_i)
    h_tilde = g(x @ w_h.T + b_h)
    f_n, i_n = f / (f + i), i / (f + i)
    return f_n * h + i_n * h_tilde, {"f": f_n, "i": i_n}


HAND = {MinGRU: mingru_step, MinLSTM: minlstm_step}


@pytest.mark.parametrize("cls", CELLS)
@pytest.mark.parametrize("t", [1, 3])
@pytest.mark.parametrize("mode", ["scan", "logscan", "sequential"])
def test_matches_hand_equations(cls, t, mode):
    cell = randomize(cls(M, N, mode=mode))
    x = torch.randn(B, t, M)
    h0 = torch.randn(B, N) * 2  # both signs: the state is used as given, not passed through g
    h, outs, gates = h0, [], []
    for k in range(t):
        h, gate = HAND[cls](cell, h, x[:, k])
        outs.append(h)
        gates.append(gate)
    with torch.no_grad():
        out, state = cell(x, h0)
        t_out, t_state, trace = cell.trace(x, h0)
    torch.testing.assert_close(out, torch.stack(outs, 1))
    torch.testing.assert_close(state, h)
    torch.testing.assert_close(t_out, out)
    torch.testing.assert_close(t_state, state)
    assert list(trace.gates) == list(cls.gate_names)
    for name in cls.gate_names:
        torch.testing.assert_close(trace.gates[name], torch.stack([gt[name] for gt in gates], 1))
    torch.testing.assert_close(torch.stack(trace.states["h"], 1), out)


# ----------------------------------------------------------------- scan == sequential
def run(cell, x, h0, weights):
    """Outputs, final state and gradients (parameters, input, given state) of a fixed random loss."""
    out, h = cell(x, h0)
    loss = (out * weights).sum() + h.square().sum()
    wrt = [*cell.parameters(), x] + ([h0] if h0 is not None else [])
    return out.detach(), h.detach(), torch.autograd.grad(loss, wrt)


@pytest.mark.parametrize("cls", CELLS)
@pytest.mark.parametrize("t", [1, 7, 1000])
@pytest.mark.parametrize("state", [None, "mixed", "negative"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", ["scan", "logscan"])
def test_scan_matches_sequential(cls, t, state, dtype, mode):
    cell = randomize(cls(M, N, mode=mode)).to(dtype)
    torch.manual_seed(3)
    x = torch.randn(B, t, M, dtype=dtype, requires_grad=True)
    h0 = initial_state(state, dtype)
    if h0 is not None:
        h0.requires_grad_(True)
    weights = torch.randn(B, t, N, dtype=dtype)
    scan = run(cell, x, h0, weights)
    cell.mode = "sequential"
    seq = run(cell, x, h0, weights)
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-10, "rtol": 1e-10}
    torch.testing.assert_close(scan[0], seq[0], **tol)
    torch.testing.assert_close(scan[1], seq[1], **tol)
    gtol = {"atol": 1e-5, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 1e-10, "rtol": 1e-8}
    for a, b in zip(scan[2], seq[2]):
        assert a.dtype == dtype
        torch.testing.assert_close(a, b, **gtol)


@pytest.mark.parametrize("cls", CELLS)
@pytest.mark.parametrize("mode", ["scan", "logscan"])
def test_scan_stays_exact_at_t4096_in_float32(cls, mode):
    """The cumulative logs reach ~1e3 here (logscan: the float64 chunks keep the float32 cell at float32
    rounding); the blocked linear scan never forms a product of more than ~sqrt(T) coefficients."""
    cell = randomize(cls(M, N, mode=mode), scale=0.5)
    x, h0 = torch.randn(B, 4096, M), initial_state("negative")
    with torch.no_grad():
        out, _ = cell(x, h0)
        cell.double().mode = "sequential"
        ref, _ = cell(x.double(), h0.double())
    assert out.dtype == torch.float32
    assert (out.double() - ref).abs().max() < 1e-5


# ----------------------------------------------------------------- counts, init, options
@pytest.mark.parametrize("m,n", [(10, 128), (3, 5)])
def test_parameter_counts(m, n):
    def count(cell):
        return sum(p.numel() for p in cell.parameters())

    assert count(MinGRU(m, n)) == 2 * n * (m + 1)
    assert count(MinLSTM(m, n)) == 3 * n * (m + 1)
    assert count(MinGRU(m, n, bias=False)) == 2 * n * m
    assert count(MinLSTM(m, n, bias=False)) == 3 * n * m
    assert count(MinGRU(10, 128, bias=False)) == 2560  # the reference table's ~2,560 (+biases)


@pytest.mark.parametrize("cls", CELLS)
def test_default_init_is_xavier_per_block_and_zero_bias(cls):
    cell = cls(M, 16)
    bound = math.sqrt(6 / (16 + M))
    for block in cell.weight_ih.detach().split(16, 0):
        assert block.abs().max() <= bound and block.std() > bound / 4
    assert torch.equal(cell.bias_ih, torch.zeros_like(cell.bias_ih))


def test_chrono_init_mingru():
    t_max = 50
    cell = MinGRU(M, 64, chrono_init=t_max)
    b_z, b_h = cell.bias_ih.detach().chunk(2)
    assert (b_z <= 0).all() and (b_z >= -math.log(t_max - 1) - 1e-6).all() and b_z.std() > 0
    assert torch.equal(b_h, torch.zeros_like(b_h))
    keep = 1 - sig(b_z)  # the keep gate 1 - z at zero input
    assert (keep >= 0.5 - 1e-6).all() and (keep <= 1 - 1 / t_max + 1e-6).all()


def test_chrono_init_minlstm():
    t_max = 50
    cell = MinLSTM(M, 64, chrono_init=t_max)
    b_f, b_i, b_h = cell.bias_ih.detach().chunk(3)
    assert (b_f >= 0).all() and (b_f <= math.log(t_max - 1) + 1e-6).all() and b_f.std() > 0
    assert torch.equal(b_i, -b_f) and torch.equal(b_h, torch.zeros_like(b_h))
    _, _, trace = cell.trace(torch.zeros(1, 1, M))
    f = trace.gates["f"][0, 0].detach()  # the normalised f' at zero input is exactly sigma(b_f)
    torch.testing.assert_close(f, sig(b_f))
    assert (f >= 0.5 - 1e-6).all() and (f <= 1 - 1 / t_max + 1e-6).all()


@pytest.mark.parametrize("name", ["mingru", "minlstm"])
def test_options(name):
    assert cells.options(name)["mode"] == "scan"
    assert cells.build(name, M, N, mode="sequential").mode == "sequential"
    assert cells.build(name, M, N, mode="logscan").mode == "logscan"
    with pytest.raises(SuiteError, match="mode"):
        cells.build(name, M, N, mode="parallel")
    with pytest.raises(SuiteError, match="bias"):
        cells.build(name, M, N, bias=False, chrono_init=10)


@pytest.mark.parametrize("cls", CELLS)
@pytest.mark.parametrize("mode", ["scan", "logscan", "sequential"])
def test_every_parameter_gets_a_finite_nonzero_gradient(cls, mode):
    for bias in (True, False):
        cell = randomize(cls(M, N, bias=bias, mode=mode))
        out, h = cell(torch.randn(B, 5, M), initial_state("negative"))
        (out.square().sum() + h.sum()).backward()
        for pname, p in cell.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("cls", CELLS)
@pytest.mark.parametrize("mode", ["scan", "logscan", "sequential"])
def test_b1_t1_shapes(cls, mode):
    cell = cls(M, N, mode=mode)
    out, h = cell(torch.randn(1, 1, M))
    assert out.shape == (1, 1, N) and h.shape == (1, N)
    assert torch.equal(out[:, -1], h)


@pytest.mark.parametrize("cls", CELLS)
def test_extreme_gates_stay_finite(cls):
    """Saturated gates (|pre-activation| ~ 100) must not give log(0) or 0/0 in either path."""
    cell = randomize(cls(M, N), scale=40.0)
    x = torch.randn(B, 50, M, requires_grad=True)
    for mode in ("scan", "logscan", "sequential"):
        cell.mode = mode
        out, h = cell(x, initial_state("mixed"))
        (grad,) = torch.autograd.grad(out.sum(), x)
        assert torch.isfinite(out).all() and torch.isfinite(grad).all(), mode


def test_chunked_scan_is_exact_across_chunk_borders():
    torch.manual_seed(4)
    log_a, log_b = -torch.rand(B, 11, N) * 3, torch.randn(B, 11, N)
    h0 = initial_state("negative")
    whole = log_space_scan(log_a, log_b, h0, chunk=1000)
    for chunk in (1, 3, 10):
        torch.testing.assert_close(log_space_scan(log_a, log_b, h0, chunk=chunk), whole)
    h, ref = h0, []
    for t in range(11):  # the recurrence itself, in linear space
        h = log_a[:, t].exp() * h + log_b[:, t].exp()
        ref.append(h)
    torch.testing.assert_close(whole, torch.stack(ref, 1))
