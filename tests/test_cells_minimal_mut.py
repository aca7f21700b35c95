"""sgru, ugrnn, mgu, janet, ligru, mut1-3: equations by hand, parameter counts, chrono init, options, and the
seed's long-memory claim for the simplified GRU."""
from __future__ import annotations

import math

import pytest
import torch

from suite.cells.minimal import JANET, MGU, UGRNN, LiGRU, SimplifiedGRU
from suite.cells.mut import MUT1, MUT2, MUT3
from suite.cells.rnn import TanhRNN
from suite.registry import SuiteError

sig, tanh = torch.sigmoid, torch.tanh
B, M, N = 3, 5, 4


def blocks(p, k):
    return p.detach().chunk(k, 0)


def randomize(cell):
    """Non-zero biases and BN statistics, so that every term of the equations shows in the output."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in cell.parameters():
            p.normal_(0.0, 0.6)
        for name, buf in cell.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_()
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
    return cell


# ----------------------------------------------------------------- hand steps, straight from the papers
def sgru_step(cell, c, x):
    wu_c, wc_c = blocks(cell.weight_hh, 2)
    wu_x, wc_x = blocks(cell.weight_ih, 2)
    b_u, b_c = blocks(cell.bias_ih, 2)
    cx = torch.cat([c, x], 1)  # [c_{t-1}, x_t]
    w_u, w_c = torch.cat([wu_c, wu_x], 1), torch.cat([wc_c, wc_x], 1)
    c_tilde = tanh(cx @ w_c.T + b_c)
    gu = sig(cx @ w_u.T + b_u)
    return gu * c_tilde + (1 - gu) * c, {"u": gu}


def ugrnn_step(cell, h, x):
    w_gx, w_cx = blocks(cell.weight_ih, 2)
    w_gh, w_ch = blocks(cell.weight_hh, 2)
    b_g, b_c = blocks(cell.bias_ih, 2)
    c = tanh(x @ w_cx.T + h @ w_ch.T + b_c)
    g = sig(x @ w_gx.T + h @ w_gh.T + b_g)
    return g * h + (1 - g) * c, {"g": g}


def mgu_step(cell, h, x):
    w_f, w_h = blocks(cell.weight_ih, 2)
    b_f, b_h = blocks(cell.bias_ih, 2)
    u_f, u_h = cell.weight_hh_f.detach(), cell.weight_hh_c.detach()
    f = sig(x @ w_f.T + h @ u_f.T + b_f)
    h_tilde = tanh(x @ w_h.T + (f * h) @ u_h.T + b_h)
    return (1 - f) * h + f * h_tilde, {"f": f}


def janet_step(cell, c, x):
    w_f, w_c = blocks(cell.weight_ih, 2)
    u_f, u_c = blocks(cell.weight_hh, 2)
    b_f, b_c = blocks(cell.bias_ih, 2)
    s = c @ u_f.T + x @ w_f.T + b_f
    c_tilde = tanh(c @ u_c.T + x @ w_c.T + b_c)
    write = 1 - sig(s - cell.beta)
    return sig(s) * c + write * c_tilde, {"f": sig(s), "i": write}


def ligru_step(cell, h, x, mask=None, bn=None):
    w_z, w_h = blocks(cell.weight_ih, 2)
    u_z, u_h = blocks(cell.weight_hh, 2)
    a_z, a_h = x @ w_z.T, x @ w_h.T
    if cell.norm is not None:
        bn = bn or eval_bn(cell)
        a_z, a_h = bn(torch.cat([a_z, a_h], 1)).chunk(2, 1)
    else:
        b_z, b_h = blocks(cell.bias_ih, 2)
        a_z, a_h = a_z + b_z, a_h + b_h
    z = sig(a_z + h @ u_z.T)
    h_tilde = torch.relu(a_h + h @ u_h.T)
    if mask is not None:
        h_tilde = h_tilde * mask
    return z * h + (1 - z) * h_tilde, {"z": z}


def eval_bn(cell):
    bn = cell.norm
    return lambda a: ((a - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight.detach()
                      + bn.bias.detach())


def mut_input(cell, x):
    return x if cell.weight_ih_proj is None else x @ cell.weight_ih_proj.detach().T


def mut1_step(cell, h, x):
    x = mut_input(cell, x)
    w_xz, w_xr = blocks(cell.weight_ih, 2)
    b_z, b_r, b_h = blocks(cell.bias_ih, 3)
    w_hr, w_hh = cell.weight_hh_r.detach(), cell.weight_hh_c.detach()
    z = sig(x @ w_xz.T + b_z)
    r = sig(x @ w_xr.T + h @ w_hr.T + b_r)
    return tanh((r * h) @ w_hh.T + tanh(x) + b_h) * z + h * (1 - z), {"z": z, "r": r}


def mut2_step(cell, h, x):
    x = mut_input(cell, x)
    w_xz, w_xh = blocks(cell.weight_ih, 2)
    w_hz, w_hr = blocks(cell.weight_hh, 2)
    b_z, b_r, b_h = blocks(cell.bias_ih, 3)
    w_hh = cell.weight_hh_c.detach()
    z = sig(x @ w_xz.T + h @ w_hz.T + b_z)
    r = sig(x + h @ w_hr.T + b_r)
    return tanh((r * h) @ w_hh.T + x @ w_xh.T + b_h) * z + h * (1 - z), {"z": z, "r": r}


def mut3_step(cell, h, x):
    x = mut_input(cell, x)
    w_xz, w_xr, w_xh = blocks(cell.weight_ih, 3)
    b_z, b_r, b_h = blocks(cell.bias_ih, 3)
    w_hz, w_hr, w_hh = (p.detach() for p in (cell.weight_hh_z, cell.weight_hh_r, cell.weight_hh_c))
    z = sig(x @ w_xz.T + tanh(h) @ w_hz.T + b_z)
    r = sig(x @ w_xr.T + h @ w_hr.T + b_r)
    return tanh((r * h) @ w_hh.T + x @ w_xh.T + b_h) * z + h * (1 - z), {"z": z, "r": r}


CASES = {
    "sgru": (lambda: SimplifiedGRU(M, N), sgru_step),
    "ugrnn": (lambda: UGRNN(M, N), ugrnn_step),
    "mgu": (lambda: MGU(M, N), mgu_step),
    "janet": (lambda: JANET(M, N, beta=0.7), janet_step),
    "ligru_bn_eval": (lambda: LiGRU(M, N).eval(), ligru_step),
    "ligru_no_bn": (lambda: LiGRU(M, N, batch_norm=False), ligru_step),
    "mut1": (lambda: MUT1(N, N), mut1_step),
    "mut1_proj": (lambda: MUT1(M, N, project_input=True), mut1_step),
    "mut2": (lambda: MUT2(N, N), mut2_step),
    "mut2_proj": (lambda: MUT2(M, N, project_input=True), mut2_step),
    "mut3": (lambda: MUT3(M, N), mut3_step),
    "mut3_proj": (lambda: MUT3(M, N, project_input=True), mut3_step),
}


@pytest.mark.parametrize("case", CASES)
def test_equations_match_hand_steps(case):
    make, hand = CASES[case]
    cell = randomize(make()).double()
    x = torch.randn(B, 3, cell.input_size, dtype=torch.float64)
    h0 = torch.randn(B, N, dtype=torch.float64)
    out1, h1 = cell(x[:, :1], h0)
    ref1, _ = hand(cell, h0, x[:, 0])
    torch.testing.assert_close(out1[:, 0], ref1, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h1, ref1, rtol=1e-10, atol=1e-10)

    out, h_last, trace = cell.trace(x, h0)
    h, refs, gates = h0, [], {g: [] for g in cell.gate_names}
    for t in range(3):
        h, g = hand(cell, h, x[:, t])
        refs.append(h)
        for name in cell.gate_names:
            gates[name].append(g[name])
    torch.testing.assert_close(out, torch.stack(refs, 1), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(cell(x, h0)[0], out, rtol=1e-10, atol=1e-10)
    with torch.no_grad():  # the graph-free path writes into a preallocated output
        torch.testing.assert_close(cell(x, h0)[0], out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h_last, h, rtol=1e-10, atol=1e-10)
    assert set(trace.gates) == set(cell.gate_names)
    for name in cell.gate_names:
        assert trace.gates[name].shape == (B, 3, N)
        torch.testing.assert_close(trace.gates[name], torch.stack(gates[name], 1), rtol=1e-10, atol=1e-10)


def test_ligru_training_batch_norm_uses_all_steps_and_one_dropout_mask():
    cell = randomize(LiGRU(M, N, recurrent_dropout=0.5)).double().train()
    x = torch.randn(B, 6, M, dtype=torch.float64)
    h0 = torch.randn(B, N, dtype=torch.float64)
    a = (x @ cell.weight_ih.detach().T).reshape(-1, 2 * N)  # statistics over all B*T rows
    bn = cell.norm
    mean, var = a.mean(0), a.var(0, unbiased=False)
    batch_bn = lambda v: (v - mean) / torch.sqrt(var + bn.eps) * bn.weight.detach() + bn.bias.detach()  # noqa: E731
    out, _ = cell(x, h0)
    mask = cell.drop_mask
    assert mask.shape == (B, N)
    assert set(mask.unique().tolist()) <= {0.0, 2.0}  # inverted dropout: kept units scaled by 1/(1-p)
    h = h0
    for t in range(6):
        h, _ = ligru_step(cell, h, x[:, t], mask=mask, bn=batch_bn)
        torch.testing.assert_close(out[:, t], h, rtol=1e-10, atol=1e-10)
    cell.eval()
    torch.testing.assert_close(cell(x, h0)[0], cell(x, h0)[0])
    assert cell.drop_mask is None


# ----------------------------------------------------------------- parameter counts
def count(cell):
    return sum(p.numel() for p in cell.parameters())


COUNTS = [
    (SimplifiedGRU, {}, lambda m, n: 2 * n * (m + n + 1)),
    (UGRNN, {}, lambda m, n: 2 * n * (m + n + 1)),
    (MGU, {}, lambda m, n: 2 * n * (m + n + 1)),
    (JANET, {}, lambda m, n: 2 * n * (m + n + 1)),
    (LiGRU, {}, lambda m, n: 2 * n * (m + n + 2)),
    (LiGRU, {"batch_norm": False}, lambda m, n: 2 * n * (m + n + 1)),
    (MUT1, {"project_input": True}, lambda m, n: 4 * n * n + 3 * n + n * m),
    (MUT2, {"project_input": True}, lambda m, n: 5 * n * n + 3 * n + n * m),
    (MUT3, {}, lambda m, n: 3 * n * (m + n + 1)),
    (MUT3, {"project_input": True}, lambda m, n: 3 * n * (2 * n + 1) + n * m),
]


@pytest.mark.parametrize("cls,opts,formula", COUNTS)
@pytest.mark.parametrize("m,n", [(10, 128), (7, 5), (3, 16)])
def test_parameter_counts(cls, opts, formula, m, n):
    assert count(cls(m, n, init="uniform", **opts)) == formula(m, n)  # uniform: skip the QRs


def test_parameter_counts_reference_values():
    u = {"init": "uniform"}  # counts do not depend on init; uniform skips the QRs of orthogonal init
    for cls in (SimplifiedGRU, UGRNN, MGU, JANET):
        assert count(cls(10, 128, **u)) == 35_584
    assert count(MUT3(10, 128, **u)) == 53_376
    assert count(MUT1(10, 128, project_input=True, **u)) == 67_200
    assert count(MUT2(10, 128, project_input=True, **u)) == 83_584
    assert count(LiGRU(10, 128, **u)) == 35_840
    assert count(MUT1(16, 16, **u)) == 4 * 256 + 48
    assert count(MUT2(16, 16, **u)) == 5 * 256 + 48


@pytest.mark.parametrize("cls,opts", [(c, o) for c, o, _ in COUNTS])
def test_param_gates_match_parameter_shapes(cls, opts):
    cell = cls(M, N, **opts)
    params = dict(cell.named_parameters())
    listed = [name for name in cell.param_gates if name in params]
    assert listed
    for name in listed:
        assert params[name].shape[0] == len(cell.param_gates[name]) * N, name


# ----------------------------------------------------------------- chrono init
def keep(gate, sign):
    return lambda tr: tr.gates[gate] if sign > 0 else 1 - tr.gates[gate]


CHRONO = {  # cell -> (its keep-gate bias, sign, keep gate from a trace)
    "sgru": (lambda: SimplifiedGRU(M, 64, chrono_init=50), lambda c: c.bias_ih[:64], -1, keep("u", -1)),
    "ugrnn": (lambda: UGRNN(M, 64, chrono_init=50), lambda c: c.bias_ih[:64], 1, keep("g", 1)),
    "mgu": (lambda: MGU(M, 64, chrono_init=50), lambda c: c.bias_ih[:64], -1, keep("f", -1)),
    "janet": (lambda: JANET(M, 64, chrono_init=50), lambda c: c.bias_ih[:64], 1, keep("f", 1)),
    "ligru": (lambda: LiGRU(M, 64, chrono_init=50), lambda c: c.norm.bias[:64], 1, keep("z", 1)),
    "ligru_no_bn": (lambda: LiGRU(M, 64, chrono_init=50, batch_norm=False), lambda c: c.bias_ih[:64], 1,
                    keep("z", 1)),
    "mut1": (lambda: MUT1(64, 64, chrono_init=50), lambda c: c.bias_ih[:64], -1, keep("z", -1)),
    "mut2": (lambda: MUT2(M, 64, chrono_init=50, project_input=True), lambda c: c.bias_ih[:64], -1, keep("z", -1)),
    "mut3": (lambda: MUT3(M, 64, chrono_init=50), lambda c: c.bias_ih[:64], -1, keep("z", -1)),
}


@pytest.mark.parametrize("case", CHRONO)
def test_chrono_init_sets_keep_gate_bias(case):
    make, bias_of, sign, keep_of = CHRONO[case]
    t_max = 50
    cell = make()
    b = bias_of(cell).detach()
    assert cell.keep_gate[1] == sign
    assert (sign * b >= 0).all() and (sign * b <= math.log(t_max - 1) + 1e-6).all()
    assert (sign * b).max() > 1.0  # drawn from log U[1, 49], not left at zero
    # The rest of the bias stays zero: chrono touches the keep gate only.
    others = [p for name, p in cell.named_parameters() if "bias" in name]
    assert sum(int((p != 0).sum()) for p in others) == 64
    # At zero input and state the keep gate is sigma(log u), u in [1, T_max - 1]: in [1/2, 1 - 1/T_max].
    _, _, trace = cell.eval().trace(torch.zeros(2, 1, cell.input_size))
    k = keep_of(trace)
    assert (k >= 0.5 - 1e-6).all() and (k <= 1 - 1 / t_max + 1e-6).all()


def test_no_chrono_unless_asked():
    assert (JANET(M, N).bias_ih == 0).all()  # JANET's authors chrono-initialise by default; the suite does not
    assert (LiGRU(M, N).norm.bias == 0).all()


def test_ligru_reset_parameters_resets_batch_norm():
    cell = LiGRU(M, N)
    with torch.no_grad():
        cell.norm.weight.fill_(3.0)
        cell.norm.bias.fill_(3.0)
    cell.reset_parameters()
    assert (cell.norm.weight == 1).all() and (cell.norm.bias == 0).all()


def test_chrono_after_construction_outside_no_grad():
    cell = SimplifiedGRU(M, N)
    cell.apply_chrono(10)
    assert (cell.bias_ih[:N] <= 0).all() and (cell.bias_ih[:N] < 0).any()


# ----------------------------------------------------------------- options
@pytest.mark.parametrize("cls", [MUT1, MUT2])
def test_mut1_mut2_need_square_input_or_projection(cls):
    with pytest.raises(SuiteError, match="project_input") as err:
        cls(5, 4)
    assert "input_size=5" in str(err.value) and "hidden_size=4" in str(err.value)
    out, h = cls(5, 4, project_input=True)(torch.randn(2, 3, 5))
    assert out.shape == (2, 3, 4) and h.shape == (2, 4)


def test_mut3_takes_any_input_width():
    out, h = MUT3(5, 4)(torch.randn(2, 3, 5))
    assert out.shape == (2, 3, 4)


@pytest.mark.parametrize("make", [
    lambda: JANET(M, N, beta="1"),
    lambda: JANET(M, N, beta=float("nan")),
    lambda: LiGRU(M, N, recurrent_dropout=1.0),
    lambda: LiGRU(M, N, recurrent_dropout=-0.1),
    lambda: LiGRU(M, N, batch_norm=1),
    lambda: MUT3(M, N, project_input="yes"),
    lambda: SimplifiedGRU(M, N, bias=False, chrono_init=10),
])
def test_bad_options_raise_suite_error(make):
    with pytest.raises(SuiteError):
        make()


def test_no_bias_variants_run():
    for cell in (SimplifiedGRU(M, N, bias=False), MGU(M, N, bias=False), JANET(M, N, bias=False),
                 LiGRU(M, N, bias=False), LiGRU(M, N, bias=False, batch_norm=False), MUT3(M, N, bias=False),
                 MUT1(M, N, bias=False, project_input=True), MUT2(N, N, bias=False)):
        assert not any("bias" in name for name, _ in cell.named_parameters())
        out, _ = cell(torch.randn(2, 3, cell.input_size))
        assert out.shape == (2, 3, N) and torch.isfinite(out).all()


def test_registered_names():
    from suite.cells.registry import CELLS

    for name, cls in [("sgru", SimplifiedGRU), ("ugrnn", UGRNN), ("mgu", MGU), ("janet", JANET),
                      ("ligru", LiGRU), ("mut1", MUT1), ("mut2", MUT2), ("mut3", MUT3)]:
        entry = CELLS.get(name)
        assert entry.builder is cls and entry.summary and entry.source


# ----------------------------------------------------------------- the seed article's claim
def test_sgru_with_closed_update_gate_keeps_memory_and_gradient_over_1000_steps():
    torch.manual_seed(0)
    n, T = 8, 1000
    cell = SimplifiedGRU(3, n)
    with torch.no_grad():
        cell.bias_ih[:n].fill_(-20.0)  # Γu ≈ 0: c_t = c_{t-1}
    c0 = torch.randn(2, n, requires_grad=True)
    out, c_T = cell(torch.randn(2, T, 3), c0)
    assert (c_T - c0).abs().max() < 1e-4
    v = torch.randn(2, n)
    (grad,) = torch.autograd.grad((c_T * v).sum(), c0)  # v^T dc_T/dc_0
    assert grad.norm() / v.norm() > 0.99
    torch.testing.assert_close(grad, v, rtol=0, atol=1e-3)  # dc_T/dc_0 ≈ identity


def test_tanh_rnn_with_small_weights_forgets_and_its_gradient_vanishes():
    torch.manual_seed(0)
    n, T = 8, 1000
    cell = TanhRNN(3, n)
    with torch.no_grad():
        for p in cell.parameters():
            p.mul_(0.1 / math.sqrt(n))
    h0 = torch.randn(2, n, requires_grad=True)
    _, h_T = cell(torch.randn(2, T, 3), h0)
    assert (h_T - h0).abs().max() > 0.1
    v = torch.randn(2, n)
    (grad,) = torch.autograd.grad((h_T * v).sum(), h0)
    assert grad.norm() / v.norm() < 1e-6
