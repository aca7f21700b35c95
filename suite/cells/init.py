"""Parameter initialisation: every parameter of a cell is set by a rule, or the cell is refused at build.

A rule matches a parameter by name pattern (``fnmatch``, e.g. ``weight_hh*``) and number of dimensions. The
defaults follow the naming convention every cell of the suite uses:

* ``weight_hh*``, 2-D: a recurrent matrix, orthogonal per gate block of ``hidden_size`` rows (Saxe et al. 2014;
  the usual choice for gated RNNs, e.g. Jozefowicz et al. 2015);
* ``weight_hh*``, 1-D: a recurrent vector (one weight per unit, h_{t-1} multiplied elementwise, as in IndRNN,
  Li et al. 2018), uniform in [0, 1] (:data:`RECURRENT_VECTOR_RANGE`): positive and at most 1, so that at the
  start no unit's state grows or flips sign from step to step. IndRNN initialises its recurrent vector
  uniformly over a positive range; its bound on |u| for long sequences is left to the cell;
* ``weight_ih*``, 2-D: an input matrix, Xavier-uniform per gate block (Glorot & Bengio 2010);
* ``bias*``: zero; the cell's own gate biases (:meth:`RecurrentCell.init_gate_biases`, e.g. LSTM forget bias 1)
  and chrono initialisation (Tallec & Ollivier 2018) are written afterwards.

A cell adds its own rules in ``init_rules`` (tried before the defaults), e.g. the peephole LSTM's
``InitRule("peephole", 1, zeros, ...)``. A parameter no rule matches stops the build with one line naming it and
saying how to give it a rule. With ``init="uniform"`` every parameter is instead drawn from U(-r, r), in the same
order; the rules still have to cover every parameter, so that a cell is accepted or refused whatever the option.
Parameters of a submodule (a batch norm, torch's nn.LSTM) keep that module's own ``reset_parameters`` unless the
cell hands them to the rules (:meth:`RecurrentCell.init_targets`).
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from torch import Tensor, nn

from ..registry import SuiteError

if TYPE_CHECKING:  # annotations only: contract.py imports this module
    from .contract import RecurrentCell

RECURRENT_VECTOR_RANGE = (0.0, 1.0)  # U[0, 1] for a 1-D recurrent weight: see the module docstring


def orthogonal_blocks(p: Tensor, cell: RecurrentCell) -> None:
    """Each gate block of ``hidden_size`` rows an orthogonal matrix."""
    for block in p.split(cell.hidden_size, 0):
        nn.init.orthogonal_(block)


def xavier_blocks(p: Tensor, cell: RecurrentCell) -> None:
    """Each gate block of ``hidden_size`` rows Xavier-uniform."""
    for block in p.split(cell.hidden_size, 0):
        nn.init.xavier_uniform_(block)


def recurrent_vector(p: Tensor, cell: RecurrentCell) -> None:
    p.uniform_(*RECURRENT_VECTOR_RANGE)


def zeros(p: Tensor, cell: RecurrentCell) -> None:
    p.zero_()


@dataclass(frozen=True)
class InitRule:
    """Initialise the parameters whose name matches ``pattern`` and that have ``ndim`` dimensions (None: any)
    with ``init(parameter, cell)``, under ``torch.no_grad``. ``why``: one clause for the reader."""

    pattern: str
    ndim: int | None
    init: Callable[[Tensor, "RecurrentCell"], None]
    why: str

    def matches(self, name: str, p: Tensor) -> bool:
        return fnmatch.fnmatchcase(name, self.pattern) and (self.ndim is None or p.dim() == self.ndim)


DEFAULT_RULES = (
    InitRule("weight_hh*", 2, orthogonal_blocks, "recurrent matrix: orthogonal per gate block"),
    InitRule("weight_hh*", 1, recurrent_vector, "recurrent vector: U[0, 1]"),
    InitRule("weight_ih*", 2, xavier_blocks, "input matrix: Xavier-uniform per gate block"),
    InitRule("bias*", None, zeros, "bias: zero, then the cell's gate biases and chrono init"),
)


def rule_for(cell: RecurrentCell, name: str, p: Tensor) -> InitRule:
    """The first of the cell's ``init_rules`` and then :data:`DEFAULT_RULES` that matches; else one line."""
    for rule in (*cell.init_rules, *DEFAULT_RULES):
        if rule.matches(name, p):
            return rule
    raise SuiteError(
        f"{cell.name()}: no initialisation rule for parameter {name!r} of shape {tuple(p.shape)}; name it by the "
        "convention (weight_hh* recurrent, weight_ih* input, bias*), add an InitRule for it to the cell's "
        "init_rules (suite.cells.init), or override reset_parameters")


def initialise(cell: RecurrentCell) -> None:
    """Every parameter :meth:`RecurrentCell.init_targets` yields by its rule (or U(-r, r) under
    ``init="uniform"``), in the order the cell registered them; the other parameters must belong to a submodule
    that initialises itself. Call under ``torch.no_grad``."""
    targets = list(cell.init_targets())
    rules = [rule_for(cell, name, p) for name, p in targets]  # refuse before touching anything
    covered = {id(p) for _, p in targets}
    for name, p in cell.named_parameters():
        if id(p) not in covered and not _owner_initialises(cell, name):
            raise SuiteError(f"{cell.name()}: parameter {name!r} belongs to a submodule without reset_parameters, "
                             "so nothing would initialise it; return it from init_targets() (then a rule sets "
                             "it) or initialise it in the cell's reset_parameters")
    for (_, p), rule in zip(targets, rules):
        if cell.init == "uniform":
            p.uniform_(-cell.init_range, cell.init_range)
        else:
            rule.init(p, cell)


def _owner_initialises(cell: nn.Module, name: str) -> bool:
    """Whether the submodule that holds parameter ``name`` has its own ``reset_parameters``."""
    owner, _, _ = name.rpartition(".")
    return bool(owner) and callable(getattr(cell.get_submodule(owner), "reset_parameters", None))
