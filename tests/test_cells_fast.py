"""Speed never changes results: every cell's fast path (one fused forward loop plus a hand-written backward through
time, see suite/cells/base.py) against its reference path (``step`` after ``step``, differentiated by autograd).

Outputs, final state and the gradients of the input, the initial state and every parameter agree to 1e-5 in
float32 and to 1e-10 in float64, with and without a given state, for lengths that cross the backward pass's
chunk boundary (CHUNK steps). "To 1e-5" is relative to each tensor's scale (its largest magnitude, at least 1):
a weight gradient sums B x T terms, so one element where they cancel carries the rounding of the large terms
(measured: an sgru weight_hh of scale 31 with one element 7.6e-5 apart on an AMD EPYC, 2.5e-6 of its scale;
the worst cell here is at 2.5e-6 of scale, so 1e-5 still fails any real difference)."""
from __future__ import annotations

import pytest
import torch

from suite import cells
from suite.cells.base import CHUNK, fast_paths_enabled, reference_paths

FAST = [n for n in cells.names() if type(cells.build(n, 4, 4, **({"project_input": False} if n in ("mut1", "mut2")
                                                                   else {}))).fast_path]


def make(name, i, h, dtype):
    kw = {"project_input": True} if name in ("mut1", "mut2") and i != h else {}
    torch.manual_seed(0)
    cell = cells.build(name, i, h, **kw).to(dtype)
    with torch.no_grad():  # non-zero biases and larger weights, so every term of the backward matters
        for p in cell.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return cell


def run(cell, x, state, reference: bool):
    for p in cell.parameters():
        p.grad = None
    x = x.clone().requires_grad_(True)
    state = tuple(s.clone().requires_grad_(True) for s in state) if state is not None else None
    given = None if state is None else (state[0] if len(state) == 1 else state)
    ctx = reference_paths() if reference else torch.enable_grad()
    with ctx:
        out, final = cell(x, given)
    final = (final,) if isinstance(final, torch.Tensor) else tuple(final)
    # a loss that weighs every output step and the final state differently
    w = torch.linspace(0.5, 1.5, out.shape[1], dtype=out.dtype).view(1, -1, 1)
    loss = (out.sin() * w).sum() + sum((f * f).sum() * (k + 2) for k, f in enumerate(final))
    loss.backward()
    grads = {"x": x.grad}
    if state is not None:
        grads.update({f"state{k}": s.grad for k, s in enumerate(state)})
    grads.update({n: p.grad for n, p in cell.named_parameters()})
    return out.detach(), tuple(f.detach() for f in final), grads


def assert_close_to_scale(a, r, tol, msg=None):
    scale = max(1.0, r.abs().max().item())
    torch.testing.assert_close(a, r, atol=tol * scale, rtol=tol, msg=msg)


def test_there_are_fast_paths_and_the_switch_restores_itself():
    assert {"sgru", "mgu", "janet", "ugrnn", "gru_reset_before", "gru1", "mut1", "lstm_peephole", "cifg",
            "rnn_tanh"} <= set(FAST)
    assert fast_paths_enabled()
    with reference_paths():
        assert not fast_paths_enabled()
    assert fast_paths_enabled()


@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("b,t,given", [(3, 1, False), (2, CHUNK + 3, True), (4, 2 * CHUNK, False)])
def test_fast_path_equals_reference_path(name, dtype, tol, b, t, given):
    i, h = 5, 6
    cell = make(name, i, h, dtype)
    x = torch.randn(b, t, i, dtype=dtype)
    state = tuple(0.5 * torch.randn(b, h, dtype=dtype) for _ in cell.state_names) if given else None
    out_f, fin_f, g_f = run(cell, x, state, reference=False)
    out_r, fin_r, g_r = run(cell, x, state, reference=True)
    assert_close_to_scale(out_f, out_r, tol)
    for a, r in zip(fin_f, fin_r):
        assert_close_to_scale(a, r, tol)
    assert g_f.keys() == g_r.keys()
    for k in g_r:
        assert g_f[k] is not None and g_r[k] is not None, k
        assert_close_to_scale(g_f[k], g_r[k], tol, msg=lambda m, k=k: f"{name} grad {k}: {m}")


@pytest.mark.parametrize("name", ["sgru", "gru_reset_before", "lstm_peephole", "mut2"])
def test_fast_path_without_autograd_matches(name):
    cell = make(name, 6, 6, torch.float32)
    x = torch.randn(3, 9, 6)
    with torch.no_grad():
        out_f, _ = cell(x)
        with reference_paths():
            out_r, _ = cell(x)
    torch.testing.assert_close(out_f, out_r, atol=1e-6, rtol=1e-6)


def test_a_cell_trained_on_the_fast_path_takes_the_reference_paths_steps():
    """Two optimiser steps through each path from the same weights land on the same weights."""
    finals = []
    for reference in (False, True):
        cell = make("mgu", 4, 5, torch.float64)
        opt = torch.optim.SGD(cell.parameters(), lr=0.1)
        x = torch.randn(2, 7, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        for _ in range(2):
            opt.zero_grad()
            with reference_paths() if reference else torch.enable_grad():
                out, _ = cell(x)
            out.pow(2).mean().backward()
            opt.step()
        finals.append(torch.cat([p.detach().flatten() for p in cell.parameters()]))
    torch.testing.assert_close(finals[0], finals[1], atol=1e-12, rtol=1e-12)
