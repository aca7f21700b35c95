"""The contract every recurrent cell keeps (haste's BaseRNN, s4's CellBase).

``forward(x, state=None) -> (outputs, state)`` with ``x`` of shape (B, T, input_size), outputs of shape
(B, T, hidden_size), batch first, and ``state`` the cell's own: ``h`` (B, H), or the tuple ``(h, c)`` for the
cells that keep a separate memory (LSTMs). A missing state is a zero state.

A subclass describes its gates and writes two small pieces of maths:

* ``project(x)``: every input projection for all time steps in one matrix multiply, (B, T, K);
* ``step(xp_t, state, trace)``: the recurrent part of one time step from the projected input of that step.

The base class owns shape checks, the time loop, initialisation and chrono initialisation, and the
diagnostics path :meth:`RecurrentCell.trace`, which also reports gate activations and keeps every h_t (and c_t)
as a separate node of the autograd graph so that ``torch.autograd.grad(loss, trace.states["h"])`` gives
dL/dh_t for every t. The normal ``forward`` never pays for diagnostics: it is a different code path.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn

from ..registry import SuiteError

State = tuple[Tensor, ...]  # internal form: (h,) or (h, c)
INIT_SCHEMES = ("orthogonal", "uniform")


@dataclass
class Trace:
    """What diagnostics mode returns beside the outputs."""

    gates: dict[str, Tensor] = field(default_factory=dict)  # gate name -> activations (B, T, H)
    states: dict[str, list[Tensor]] = field(default_factory=dict)  # "h" / "c" -> T tensors (B, H), graph nodes


class RecurrentCell(nn.Module):
    """Base class: shape checks, time loop, initialisation, diagnostics.

    Class attributes a subclass sets:
      gate_names: the gates reported by :meth:`trace`, in order.
      state_names: ("h",) or ("h", "c").
      param_gates: parameter name -> gate names its dim 0 is split into, equal blocks in that order (for the
        per-gate gradient norms); parameters not listed are reported whole.
      keep_gate: (gate, sign) of the gate that keeps the state, for chrono init: sign +1 if the gate's own
        value multiplies the old state, -1 if one minus it does. None for cells without such a gate.
    """

    gate_names: ClassVar[tuple[str, ...]] = ()
    state_names: ClassVar[tuple[str, ...]] = ("h",)
    param_gates: ClassVar[dict[str, tuple[str, ...]]] = {}
    keep_gate: ClassVar[tuple[str, int] | None] = None

    def __init__(self, input_size: int, hidden_size: int, *, bias: bool = True, init: str = "orthogonal",
                 init_range: float = 0.1, chrono_init: int | None = None):
        super().__init__()
        check_size("input_size", input_size)
        check_size("hidden_size", hidden_size)
        if init not in INIT_SCHEMES:
            raise SuiteError(f"option init={init!r} is not one of {', '.join(INIT_SCHEMES)}")
        if not (isinstance(init_range, (int, float)) and init_range > 0):
            raise SuiteError(f"option init_range={init_range!r} must be a positive number")
        if chrono_init is not None:
            if isinstance(chrono_init, bool) or not isinstance(chrono_init, int) or chrono_init < 3:
                raise SuiteError(f"option chrono_init={chrono_init!r} must be an integer T_max >= 3 "
                                 "(the longest dependency to remember)")
            if not bias:
                raise SuiteError("option chrono_init needs bias=True (it sets the keep gate's bias)")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        self.init = init
        self.init_range = init_range
        self.chrono_init = chrono_init

    # ----------------------------------------------------------------- maths a subclass provides
    def project(self, x: Tensor) -> Tensor:
        """All input projections for all steps at once: (B, T, input_size) -> (B, T, K)."""
        raise NotImplementedError

    def step(self, xp: Tensor, state: State, trace: dict[str, list[Tensor]] | None = None) -> State:
        """One time step from the projected input xp (B, K); appends gate activations to trace if given."""
        raise NotImplementedError

    # ----------------------------------------------------------------- the contract
    def forward(self, x: Tensor, state=None):
        state = self._prepare(x, state)
        out, state = self._forward(x, state)
        return out, self._export(state)

    def trace(self, x: Tensor, state=None) -> tuple[Tensor, object, Trace]:
        """Diagnostics mode: outputs and state as ``forward``, plus gate activations and per-step states."""
        state = self._prepare(x, state)
        out, state, trace = self._trace(x, state)
        return out, self._export(state), trace

    def _forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        xp = self.project(x).transpose(0, 1)  # (T, B, K): step t reads xp[t]
        if not (torch.is_grad_enabled() and (xp.requires_grad or state[0].requires_grad)):
            # No graph: write each h_t into a preallocated output, no per-step list.
            out = xp.new_empty(x.shape[0], x.shape[1], self.hidden_size)
            for t, xp_t in enumerate(xp):
                state = self.step(xp_t, state)
                out[:, t] = state[0]
            return out, state
        # Under autograd an in-place write per step costs O(T^2): every CopySlices node copies the whole
        # output gradient in backward (measured here: 6x slower than stack at T=1600, B=32, H=128).
        hs = []
        for xp_t in xp:
            state = self.step(xp_t, state)
            hs.append(state[0])
        return torch.stack(hs, 1), state

    def _trace(self, x: Tensor, state: State) -> tuple[Tensor, State, Trace]:
        xp = self.project(x).transpose(0, 1)
        gates: dict[str, list[Tensor]] = {g: [] for g in self.gate_names}
        states: dict[str, list[Tensor]] = {s: [] for s in self.state_names}
        for xp_t in xp:
            state = self.step(xp_t, state, gates)
            for name, s in zip(self.state_names, state):
                states[name].append(s)
        out = torch.stack(states["h"], 1)
        return out, state, Trace({g: torch.stack(v, 1) for g, v in gates.items()}, states)

    # ----------------------------------------------------------------- shapes and state
    def _prepare(self, x: Tensor, state) -> State:
        if not isinstance(x, Tensor) or x.dim() != 3:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise SuiteError(f"{self.name()}: input must have shape (B, T, {self.input_size}), got {shape}")
        if x.shape[-1] != self.input_size:
            raise SuiteError(f"{self.name()}: input width {x.shape[-1]} does not match input_size="
                             f"{self.input_size}; expected shape (B, T, {self.input_size})")
        batch = x.shape[0]
        if state is None:
            zero = x.new_zeros(batch, self.hidden_size)
            return tuple(zero for _ in self.state_names)
        parts = (state,) if isinstance(state, Tensor) else tuple(state)
        if len(parts) != len(self.state_names):
            raise SuiteError(f"{self.name()}: state must be {self._state_doc()}, got {len(parts)} tensor(s)")
        for name, s in zip(self.state_names, parts):
            if tuple(s.shape) != (batch, self.hidden_size):
                raise SuiteError(f"{self.name()}: state {name} must have shape ({batch}, {self.hidden_size}), "
                                 f"got {tuple(s.shape)}")
        return parts

    def _export(self, state: State):
        return state[0] if len(self.state_names) == 1 else state

    def _state_doc(self) -> str:
        return "a tensor h (B, H)" if len(self.state_names) == 1 else "a tuple (h, c) of (B, H) tensors"

    @classmethod
    def name(cls) -> str:
        return getattr(cls, "registered_name", cls.__name__)

    # ----------------------------------------------------------------- initialisation
    def reset_parameters(self) -> None:
        """Orthogonal recurrent weights (per gate block), Xavier input weights, zero biases; or U(-r, r) for all.

        Parameters are recognised by name: ``weight_hh*`` recurrent, ``weight_ih*`` input, ``bias*`` biases;
        anything else (e.g. batch-norm scales) keeps its module's own initialisation. Then the cell's own bias
        choices (:meth:`init_gate_biases`) and, when asked, chrono initialisation.
        """
        with torch.no_grad():
            for name, p in self.named_parameters(recurse=False):
                if self.init == "uniform":
                    p.uniform_(-self.init_range, self.init_range)
                elif name.startswith("weight_hh"):
                    for block in p.split(self.hidden_size, 0):
                        nn.init.orthogonal_(block)
                elif name.startswith("weight_ih"):
                    for block in p.split(self.hidden_size, 0):
                        nn.init.xavier_uniform_(block)
                elif name.startswith("bias"):
                    p.zero_()
            if self.init != "uniform":
                self.init_gate_biases()
            if self.chrono_init is not None:
                self.apply_chrono(self.chrono_init)

    def init_gate_biases(self) -> None:
        """Cell-specific bias defaults (e.g. LSTM forget bias 1). Default: none."""

    def chrono_targets(self) -> list[tuple[Tensor, int]]:
        """(bias slice, sign) pairs chrono init writes sign * log U[1, T_max - 1] into; others it zeroes."""
        raise NotImplementedError

    def apply_chrono(self, t_max: int) -> None:
        """Chrono initialisation (Tallec & Ollivier 2018): the keep gate starts near 1 - 1/T for T in [2, T_max].

        b = log U[1, T_max - 1] goes, with the cell's sign, into the bias of the gate that keeps the state, so
        that the keep gate's value sigma(b) = 1 - 1/(1 + e^b) lies in [1/2, 1 - 1/T_max].
        """
        targets = self.chrono_targets()
        with torch.no_grad():
            first = targets[0][0]
            b = torch.empty_like(first).uniform_(1.0, t_max - 1.0).log_()
            for view, sign in targets:
                view.copy_(sign * b)


def check_size(option: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SuiteError(f"{option} must be a positive integer, got {value!r}")


def gate_views(param: Tensor, names: tuple[str, ...]) -> dict[str, Tensor]:
    """Split a fused parameter along dim 0 into named equal blocks (views, so writes reach the parameter)."""
    return dict(zip(names, param.chunk(len(names), 0)))

