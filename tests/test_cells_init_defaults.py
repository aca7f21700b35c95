"""The default initialisation of the custom cells (the rules themselves: test_cells_init.py): orthogonal
recurrent and Xavier input blocks, zero biases, and chrono init as the only rule that moves a gate bias."""
from __future__ import annotations

import math

import pytest
import torch

from suite import cells

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
