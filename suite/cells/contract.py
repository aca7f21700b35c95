"""The contract every recurrent cell keeps (haste's BaseRNN, s4's CellBase).

``forward(x, state=None) -> (outputs, state)`` with ``x`` of shape (B, T, input_size), outputs of shape
(B, T, hidden_size), batch first, and ``state`` the cell's own: ``h`` (B, H), or the tuple ``(h, c)`` for the
cells that keep a separate memory (LSTMs). A missing state is a zero state.

A subclass describes its gates and writes two small pieces of maths:

* ``project(x)``: every input projection for all time steps in one matrix multiply, (B, T, K);
* ``step(xp_t, state, trace)``: the recurrent part of one time step from the projected input of that step.

The base class owns shape checks, the time loop, initialisation (by rules, suite/cells/init.py) and chrono
initialisation, and the diagnostics path :meth:`RecurrentCell.trace`, which also reports gate activations and
keeps every h_t (and c_t) as a separate node of the autograd graph so that
``torch.autograd.grad(loss, trace.states["h"])`` gives dL/dh_t for every t. The normal ``forward`` never pays
for diagnostics: it is a different code path.

A cell with a fast path adds ``forward_step`` and ``bptt``; the fused loop that runs them is
suite/cells/fused.py, the CPU kernels of its steps suite/cells/kernels.py. docs/extending.md walks through a new
cell; register it with ``suite.cells.register``.
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn

from ..registry import SuiteError
from . import graphs
from .fused import BPTTInputs, FusedLoop, State, models_packed
from .init import InitRule, initialise
from .kernels import loop_kernels

INIT_SCHEMES = ("orthogonal", "uniform")
_paths = threading.local()  # per thread: whether forward may take a cell's fast path


def fast_paths_enabled() -> bool:
    return getattr(_paths, "fast", True)


@contextlib.contextmanager
def reference_paths():
    """Inside this block every cell's ``forward`` runs its reference time loop (``step`` after ``step``,
    differentiated by autograd) instead of its fast path: what the tests and ``rnnsuite bench`` compare against."""
    old = fast_paths_enabled()
    _paths.fast = False
    try:
        yield
    finally:
        _paths.fast = old


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
      init_rules: InitRule objects (suite/cells/init.py) for parameters the default rules do not cover (tried
        first); a parameter no rule covers refuses the build.
    """

    gate_names: ClassVar[tuple[str, ...]] = ()
    state_names: ClassVar[tuple[str, ...]] = ("h",)
    param_gates: ClassVar[dict[str, tuple[str, ...]]] = {}
    keep_gate: ClassVar[tuple[str, int] | None] = None
    init_rules: ClassVar[tuple[InitRule, ...]] = ()

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

    # A cell with a fast path (``fast_path = True``) writes its step as ``forward_step`` (``step`` calls it, so
    # both paths run the same forward maths) and the matching backward through time, ``bptt``.
    fast_path: ClassVar[bool] = False
    # ``packs = True``: forward_step and bptt also run M models at once (suite.packed): every fused weight
    # stacked to (M, ...), the M batches folded into dim 0 of xp and the state (M*B rows, model-major), so that
    # one op serves all M models. They then touch the weights only through linear, mm_bt, sum_bt, transposed
    # and slices along the last two dims (tests/test_packed.py checks every cell that says so).
    packs: ClassVar[bool] = False

    def fused_weights(self) -> tuple[Tensor, ...]:
        """The tensors ``forward_step`` reads besides xp and the state (recurrent weights, peepholes, gate
        biases): inputs of the fused loop, so that ``bptt`` returns their gradients. Default: the one recurrent
        matrix ``weight_hh`` that most cells have."""
        return (self.weight_hh,)

    def forward_step(self, xp: Tensor, state: State, w: tuple[Tensor, ...]) -> tuple[State, tuple[Tensor, ...]]:
        """One step, as ``step``: returns the new state and the activations ``bptt`` needs."""
        raise NotImplementedError

    def bptt(self, g: BPTTInputs) -> tuple[Tensor, State, tuple[Tensor, ...]]:
        """Backward through time by hand: gradients of (xp, initial state, fused weights)."""
        raise NotImplementedError

    # ----------------------------------------------------------------- the contract
    def forward(self, x: Tensor, state=None):
        state = self.prepare(x, state)
        out, state = self.recurrence(x, state)
        return out, self._export(state)

    def trace(self, x: Tensor, state=None) -> tuple[Tensor, object, Trace]:
        """Diagnostics mode: outputs and state as ``forward``, plus gate activations and per-step states."""
        state = self.prepare(x, state)
        out, state, trace = self._trace(x, state)
        return out, self._export(state), trace

    def recurrence(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """The time loop on a checked input and internal state (:meth:`prepare`): the fast path where the cell has
        one and :func:`reference_paths` is not in force, else the reference loop. Cells whose forward is a
        different computation (torch's fused modules, the scan cells) override this."""
        if self.fast_path and fast_paths_enabled():
            return self.fast_forward(x, state)
        return self.reference_forward(x, state)

    def reference_forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """The reference time loop: ``step`` after ``step``, differentiated by autograd."""
        xp, state = self.recurrence_inputs(self.project(x), state)
        xp = xp.transpose(0, 1)  # (T, B, K): step t reads xp[t]
        with autocast_off(xp):
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

    def fast_forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """The fast path: the same steps without autograd, then :meth:`bptt` as one backward node."""
        xp, state = self.recurrence_inputs(self.project(x), state)
        return self.fused_loop(xp, state, self.fused_weights())

    def fused_loop(self, xp: Tensor, state: State, w: tuple[Tensor, ...]) -> tuple[Tensor, State]:
        """The fast path's time loop on projected inputs: one FusedLoop node under autograd, else no graph."""
        with autocast_off(xp):
            if torch.is_grad_enabled() and any(t.requires_grad for t in (xp, *state, *w)):
                out, *final = FusedLoop.apply(self, len(state), xp, *state, *w)
                return out, tuple(final)
            out, final, _ = graphs.run_loop(self, xp, state, w, save=False, context=(models_packed(),))
            return out, final

    def run_steps(self, xp: Tensor, state: State, w: tuple[Tensor, ...], save: bool):
        """Run forward_step over time (no graph): outputs (B, T, H), final state and, when ``save``, the per-step
        activations stacked time-major (T, ...)."""
        hs, saved = [], []
        with loop_kernels():
            for xp_t in xp.transpose(0, 1):
                state, parts = self.forward_step(xp_t, state, w)
                hs.append(state[0])
                if save:
                    saved.append(parts)
        return torch.stack(hs, 1), state, tuple(torch.stack(p) for p in zip(*saved))

    def _trace(self, x: Tensor, state: State) -> tuple[Tensor, State, Trace]:
        xp, state = self.recurrence_inputs(self.project(x), state)
        gates: dict[str, list[Tensor]] = {g: [] for g in self.gate_names}
        states: dict[str, list[Tensor]] = {s: [] for s in self.state_names}
        with autocast_off(xp):
            for xp_t in xp.transpose(0, 1):
                state = self.step(xp_t, state, gates)
                for name, s in zip(self.state_names, state):
                    states[name].append(s)
        out = torch.stack(states["h"], 1)
        return out, state, Trace({g: torch.stack(v, 1) for g, v in gates.items()}, states)

    def recurrence_inputs(self, xp: Tensor, state: State) -> tuple[Tensor, State]:
        """Under autocast the hoisted input GEMM may run in bf16/fp16; the recurrence runs in the parameters'
        dtype (no autocast inside the loop), so that a state carried over T steps keeps its precision."""
        dtype = self.recurrence_dtype()
        if xp.dtype != dtype:
            xp = xp.to(dtype)
        if any(s.dtype != dtype for s in state):
            state = tuple(s.to(dtype) for s in state)
        return xp, state

    def recurrence_dtype(self) -> torch.dtype:
        for p in self.parameters():
            if p.is_floating_point():
                return p.dtype
        return torch.get_default_dtype()

    # ----------------------------------------------------------------- shapes and state
    def prepare(self, x: Tensor, state) -> State:
        """Check x (B, T, input_size) and the state against the contract; the state as a tuple, zeros if None."""
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
        """Every parameter by its rule (suite/cells/init.py: orthogonal recurrent matrices per gate block, U[0, 1]
        recurrent vectors, Xavier input weights, zero biases, the cell's ``init_rules``), or U(-r, r) for all
        under ``init="uniform"``; then the cell's own bias choices (:meth:`init_gate_biases`) and, when asked,
        chrono initialisation. A parameter no rule covers is refused in one line."""
        with torch.no_grad():
            initialise(self)
            if self.init != "uniform":
                self.init_gate_biases()
            if self.chrono_init is not None:
                self.apply_chrono(self.chrono_init)

    def init_targets(self):
        """(name, parameter) pairs the rules initialise, in order: the cell's own parameters. Submodules'
        parameters keep their module's ``reset_parameters`` unless a cell returns them here too."""
        return self.named_parameters(recurse=False)

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


def autocast_off(t: Tensor):
    """A context without autocast on t's device (a no-op context where autocast is not on)."""
    dev = t.device.type
    if torch.is_autocast_enabled(dev):
        return torch.autocast(dev, enabled=False)
    return contextlib.nullcontext()

