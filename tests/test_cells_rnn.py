"""rnn_tanh, the Elman RNN: its equation with the cell's own weights on every path, and its parameter count."""
from __future__ import annotations

import pytest
import torch

from suite import cells
from suite.cells.base import reference_paths
from suite.cells.rnn import TanhRNN


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
