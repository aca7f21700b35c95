"""Diagnostics checked against cases with known answers."""
from __future__ import annotations

import math

import pytest
import torch

from suite import tasks
from suite.diagnostics import gate_grad_norms, gate_stats, gradient_profile, grad_decay
from suite.model import SequenceModel


def adding_model(cell, hidden=16, length=60, **opts):
    task = tasks.build("adding", length=length, val_size=32)
    model = SequenceModel(cell, task.encoding, task.input_size, task.output_size, hidden, **opts)
    return task, model, task.val_batches("cpu")[0]


def test_sgru_with_closed_update_gate_has_a_flat_profile():
    torch.manual_seed(0)
    task, model, batch = adding_model("sgru")
    cell = model.layers[0]
    with torch.no_grad():
        cell.bias_ih[: cell.hidden_size].fill_(-20.0)  # Γu ≈ 0: c_t = c_{t-1}, the state is carried unchanged
    profile, _ = gradient_profile(model, task, batch)
    g = torch.tensor(profile["h"])
    # dL/dh_t flows unchanged from the last step back to the first
    assert torch.allclose(g, g[-1].expand_as(g), rtol=1e-3)
    assert abs(grad_decay(profile["h"])) < 1e-3


def test_rnn_tanh_with_small_weights_decays_exponentially():
    torch.manual_seed(0)
    task, model, batch = adding_model("rnn_tanh")
    cell = model.layers[0]
    with torch.no_grad():
        cell.weight_hh.mul_(0.3)  # spectral radius 0.3: each step multiplies the gradient by < 0.3
    profile, _ = gradient_profile(model, task, batch)
    decay = grad_decay(profile["h"])
    assert decay < -10  # 50 steps between the windows at a factor <= 0.3 a step
    g = torch.tensor(profile["h"][-30:]).log10()
    slopes = g[1:] - g[:-1]  # log-linear in t: a constant positive slope towards the end
    assert (slopes > 0.3).all()


def test_lstm_profile_reports_h_and_c():
    torch.manual_seed(0)
    task, model, batch = adding_model("lstm", length=20)
    profile, stats = gradient_profile(model, task, batch)
    assert set(profile) == {"h", "c"} and len(profile["h"]) == 20 == len(profile["c"])
    assert all(math.isfinite(v) and v >= 0 for v in profile["h"] + profile["c"])
    assert {"gates/l0/i/mean", "gates/l0/f/saturation", "gates/l0/o/mean"} <= set(stats)


@pytest.mark.parametrize("bias,expected", [(20.0, 1.0), (-20.0, 1.0), (0.0, 0.0)])
def test_gate_saturation_known_answers(bias, expected):
    torch.manual_seed(0)
    task, model, batch = adding_model("sgru")
    cell = model.layers[0]
    n = cell.hidden_size
    with torch.no_grad():
        cell.weight_ih[:n].zero_()  # the update gate's input weights
        cell.weight_hh[:n].zero_()  # and recurrent weights
        cell.bias_ih[:n].fill_(bias)
        _, _, traces = model.trace(batch.x)
    stats = gate_stats(traces)
    assert stats["gates/l0/u/saturation"] == expected
    assert stats["gates/l0/u/mean"] == pytest.approx(torch.sigmoid(torch.tensor(bias)).item(), abs=1e-6)


def test_per_gate_gradient_norms_partition_the_global_norm():
    torch.manual_seed(0)
    task, model, batch = adding_model("gru", layers=2)
    out, _ = model(batch.x)
    task.loss(out, batch).backward()
    norms = gate_grad_norms(model)
    assert {"grad/l0/r", "grad/l0/z", "grad/l0/n", "grad/l1/z", "grad/head"} <= set(norms)
    total = torch.nn.utils.clip_grad_norm_(model.parameters(), math.inf)
    assert math.sqrt(sum(v * v for v in norms.values())) == pytest.approx(total.item(), rel=1e-5)
    # the z block of layer 0 is exactly the z rows of both weight matrices and both biases
    rnn = model.layers[0].rnn
    n = model.layers[0].hidden_size
    z = torch.cat([p.grad[n:2 * n].flatten() for p in rnn.parameters()])
    assert norms["grad/l0/z"] == pytest.approx(z.norm().item(), rel=1e-5)


def test_grad_decay_definition():
    assert grad_decay([1.0] * 30) == 0.0
    assert grad_decay([1e-3] * 10 + [1.0] * 10 + [1.0] * 10) == pytest.approx(-3.0)
