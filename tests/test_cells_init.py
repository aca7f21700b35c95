"""Parameter initialisation (suite/cells/init.py): every parameter of every registered cell is set by a rule, a
cell whose parameter no rule covers is refused at build in one line, and a 1-D recurrent weight gets a vector
rule instead of a crash."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from suite import cells
from suite.cells.contract import RecurrentCell
from suite.cells.init import RECURRENT_VECTOR_RANGE, InitRule, orthogonal_blocks, rule_for, xavier_blocks, zeros
from suite.cells.minimal import UGRNN, SimplifiedGRU
from suite.registry import SuiteError

class Diagonal(RecurrentCell):
    """h_t = tanh(W x_t + u ⊙ h_{t-1} + b): a 1-D recurrent weight (IndRNN-style, Li et al. 2018)."""

    def __init__(self, input_size: int, hidden_size: int, *, extra: str | None = None, **kw):
        super().__init__(input_size, hidden_size, **kw)
        self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(hidden_size))
        if extra:
            setattr(self, extra, nn.Parameter(torch.empty(hidden_size)))
        self.reset_parameters()

    def project(self, x):
        return nn.functional.linear(x, self.weight_ih, self.bias_ih)

    def step(self, xp, state, trace=None):
        return (torch.tanh(xp + self.weight_hh * state[0]),)


def test_a_1d_recurrent_weight_gets_the_vector_rule():
    torch.manual_seed(0)
    cell = Diagonal(3, 50)
    lo, hi = RECURRENT_VECTOR_RANGE
    assert cell.weight_hh.min() >= lo and cell.weight_hh.max() <= hi and cell.weight_hh.std() > 0.1
    assert torch.count_nonzero(cell.bias_ih) == 0
    out, h = cell(torch.randn(2, 4, 3))
    assert out.shape == (2, 4, 50) and torch.isfinite(out).all()


def test_a_parameter_no_rule_covers_is_refused_in_one_line_naming_it():
    with pytest.raises(SuiteError) as err:
        Diagonal(3, 5, extra="scale")
    text = str(err.value)
    assert "\n" not in text and "'scale'" in text and "(5,)" in text and "init_rules" in text
    with pytest.raises(SuiteError, match="'scale'"):  # refused whatever the init scheme
        Diagonal(3, 5, extra="scale", init="uniform")


def test_a_cell_gives_its_own_parameter_a_rule():
    class Scaled(Diagonal):
        init_rules = (InitRule("scale", 1, zeros, "starts switched off"),)

    torch.manual_seed(0)
    cell = Scaled(3, 5, extra="scale")
    assert torch.count_nonzero(cell.scale) == 0 and torch.count_nonzero(cell.weight_ih) > 0


def test_a_submodule_that_cannot_initialise_itself_is_refused():
    class Listed(Diagonal):
        def __init__(self, input_size, hidden_size):
            RecurrentCell.__init__(self, input_size, hidden_size)
            self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size))
            self.weight_hh = nn.Parameter(torch.empty(hidden_size))
            self.bias_ih = None
            self.extra = nn.ParameterList([nn.Parameter(torch.empty(hidden_size))])
            self.reset_parameters()

    with pytest.raises(SuiteError, match=r"'extra\.0'.*without reset_parameters"):
        Listed(3, 5)


def opts_for(name: str, i: int, h: int) -> dict:
    return {"project_input": True} if i != h and "project_input" in cells.options(name) else {}


@pytest.mark.parametrize("name", cells.names())
def test_every_parameter_of_every_cell_follows_its_rule(name):
    """Registry-driven: a new cell is checked here with no edit. Gate biases and chrono are written after the
    bias rule, so bias values are not checked; the weights are."""
    torch.manual_seed(0)
    i, h = 5, 7
    cell = cells.build(name, i, h, **opts_for(name, i, h))
    targets = dict(cell.init_targets())
    for pname, p in cell.named_parameters():
        if not any(p is t for t in targets.values()):
            owner = cell.get_submodule(pname.rpartition(".")[0])
            assert callable(getattr(owner, "reset_parameters", None)), pname
    for pname, p in targets.items():
        rule = rule_for(cell, pname, p)
        if rule.init is orthogonal_blocks:
            for block in p.detach().split(h, 0):
                rows, cols = block.shape
                gram = block @ block.T if rows <= cols else block.T @ block
                torch.testing.assert_close(gram, torch.eye(min(rows, cols)), atol=1e-5, rtol=0, msg=pname)
        elif rule.init is xavier_blocks:
            for block in p.detach().split(h, 0):
                bound = (6.0 / sum(block.shape)) ** 0.5
                assert block.abs().max() <= bound and block.std() > 0, pname


@pytest.mark.parametrize("name", cells.names())
def test_init_uniform_draws_every_target_in_range(name):
    torch.manual_seed(0)
    opts = opts_for(name, 5, 7)
    if "init" not in cells.options(name):
        pytest.skip(f"{name} has no init option")
    cell = cells.build(name, 5, 7, init="uniform", init_range=0.05, **opts)
    for pname, p in cell.init_targets():
        assert p.abs().max() <= 0.05 and torch.count_nonzero(p) == p.numel(), pname


def test_sgru_and_ugrnn_are_one_model_with_the_gate_mirrored():
    """ugrnn's g is sgru's 1 - u: with the gate block of every parameter negated, the two compute the same."""
    torch.manual_seed(0)
    s, u = SimplifiedGRU(4, 6), UGRNN(4, 6)
    with torch.no_grad():
        for name, p in s.named_parameters():
            q = p.detach().clone()
            q[:6] = -q[:6]  # the gate block comes first in weight_ih, weight_hh and bias_ih
            getattr(u, name).copy_(q)
    x = torch.randn(3, 9, 4)
    out_s, h_s = s(x)
    out_u, h_u = u(x)
    torch.testing.assert_close(out_u, out_s, atol=1e-6, rtol=1e-5)
    _, _, tr_s = s.trace(x)
    _, _, tr_u = u.trace(x)
    torch.testing.assert_close(tr_u.gates["g"], 1 - tr_s.gates["u"], atol=1e-6, rtol=1e-5)
    assert type(s).keep_gate == ("u", -1) and type(u).keep_gate == ("g", 1)
