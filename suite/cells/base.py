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

import contextlib
import threading
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from ..registry import SuiteError
from . import graphs

State = tuple[Tensor, ...]  # internal form: (h,) or (h, c)
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
        biases): inputs of the fused loop, so that ``bptt`` returns their gradients."""
        raise NotImplementedError

    def forward_step(self, xp: Tensor, state: State, w: tuple[Tensor, ...]) -> tuple[State, tuple[Tensor, ...]]:
        """One step, as ``step``: returns the new state and the activations ``bptt`` needs."""
        raise NotImplementedError

    def bptt(self, g: "BPTTInputs") -> tuple[Tensor, State, tuple[Tensor, ...]]:
        """Backward through time by hand: gradients of (xp, initial state, fused weights)."""
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
        if self.fast_path and fast_paths_enabled():
            return self._fast_forward(x, state)
        return self._reference_forward(x, state)

    def _reference_forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """The reference time loop: ``step`` after ``step``, differentiated by autograd."""
        xp, state = self._recurrence_inputs(self.project(x), state)
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

    def _fast_forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """The fast path: the same steps without autograd, then :meth:`bptt` as one backward node."""
        xp, state = self._recurrence_inputs(self.project(x), state)
        return self.fused_loop(xp, state, self.fused_weights())

    def fused_loop(self, xp: Tensor, state: State, w: tuple[Tensor, ...]) -> tuple[Tensor, State]:
        """The fast path's time loop on projected inputs: one FusedLoop node under autograd, else no graph."""
        with autocast_off(xp):
            if torch.is_grad_enabled() and any(t.requires_grad for t in (xp, *state, *w)):
                out, *final = FusedLoop.apply(self, len(state), xp, *state, *w)
                return out, tuple(final)
            out, final, _ = graphs.run_loop(self, xp, state, w, save=False, context=(models_packed(),))
            return out, final

    def _fused_loop(self, xp: Tensor, state: State, w: tuple[Tensor, ...], save: bool):
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
        xp, state = self._recurrence_inputs(self.project(x), state)
        gates: dict[str, list[Tensor]] = {g: [] for g in self.gate_names}
        states: dict[str, list[Tensor]] = {s: [] for s in self.state_names}
        with autocast_off(xp):
            for xp_t in xp.transpose(0, 1):
                state = self.step(xp_t, state, gates)
                for name, s in zip(self.state_names, state):
                    states[name].append(s)
        out = torch.stack(states["h"], 1)
        return out, state, Trace({g: torch.stack(v, 1) for g, v in gates.items()}, states)

    def _recurrence_inputs(self, xp: Tensor, state: State) -> tuple[Tensor, State]:
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



_models = threading.local()  # .m: how many models' batches are folded into dim 0, inside packed_models()


@contextlib.contextmanager
def packed_models(m: int | None):
    """Inside this block :func:`mm_bt` and :func:`sum_bt` return one gradient per model, (m, ...), from rows that
    hold m models' batches one after the other (a pack's fused loop; :class:`FusedLoop` re-enters it in backward)."""
    old = getattr(_models, "m", None)
    _models.m = m
    try:
        yield
    finally:
        _models.m = old


def models_packed() -> int | None:
    return getattr(_models, "m", None)


def transposed(w: Tensor) -> Tensor:
    """W^T of a weight (out, in), or of each of a pack's stacked weights (M, out, in), contiguous."""
    return w.transpose(-1, -2).contiguous()


_ONEDNN: list = []  # [(linear, pack)] once probed; [None] where this torch has no oneDNN linear
_packs = threading.local()  # .cache: weight key -> packed weight, inside packed_weights()
KERNELS_ENV = "RNNSUITE_KERNELS"  # plain (default) | tuned
KERNEL_MODES = ("plain", "tuned")


def _onednn():
    if not _ONEDNN:
        try:
            op, pack = torch.ops.mkldnn._linear_pointwise.default, torch.ops.mkldnn._reorder_linear_weight
            x, w, b = torch.arange(6.0).view(2, 3), torch.ones(4, 3), torch.arange(4.0)
            ok = torch.equal(op(x, pack(w), b, "none", [], ""), torch.addmm(b, x, w.t()))
            _ONEDNN.append((op, pack) if ok else None)
        except Exception:  # a torch built without oneDNN, or one where these private ops changed
            _ONEDNN.append(None)
    return _ONEDNN[0]


@dataclass(frozen=True)
class KernelChoice:
    """The two CPU float32 kernels of the fused time loops that have an alternative.

    ``onednn_linear``: the recurrent GEMM as torch's oneDNN linear on a weight packed once per loop, instead of
    torch.addmm. ``tanh_via_sigmoid``: tanh(v) as 2 sigmoid(2v) - 1 (the same function to 2e-7), instead of
    torch.tanh. Both were introduced as gains on earlier machines (oneDNN 20-27% faster per step, the sigmoid
    form 5x faster than torch's tanh there). Measured since (docs/benchmarks.md, one thread, B=32, T=200, H=128,
    forward+backward against nn.GRU in the same rounds): on an Intel Xeon both were slower than the plain ops
    (the cells 1.3-1.4x slower with them); on an AMD EPYC oneDNN made the two-GEMM cells (mgu, gru_reset_before,
    mut1-3) 10-15% slower and the LSTM variants 2-8% faster, and the tanh form changed no cell by 5%. An
    isolated-kernel probe picked oneDNN on the EPYC (24 vs 33 us a GEMM) although it slowed those cells down, so
    the choice is not made by timing: the plain ops are the default (deterministic, never slower by more than
    the LSTM variants' 2-8% on the machines measured), and ``RNNSUITE_KERNELS=tuned`` opts into both
    alternatives where ``rnnsuite bench`` shows they pay.
    """

    onednn_linear: bool
    tanh_via_sigmoid: bool
    how: str  # "plain", "tuned", or why the plain ops were kept

    def describe(self) -> str:
        return (f"linear={'onednn' if self.onednn_linear else 'addmm'},"
                f"tanh={'sigmoid' if self.tanh_via_sigmoid else 'torch'} ({self.how})")


_CHOICE: list[KernelChoice] = []
_PLAIN_DETERMINISTIC = KernelChoice(False, False, "plain: deterministic algorithms on")


def kernel_choice() -> KernelChoice:
    """The kernels the fused loops use: ``$RNNSUITE_KERNELS`` ``plain`` (default: torch.addmm and torch.tanh) or
    ``tuned`` (the oneDNN-packed GEMM where this torch has it, and the sigmoid form of tanh). With deterministic
    algorithms on (``train.deterministic``) the plain ops are used whatever the variable says."""
    if torch.are_deterministic_algorithms_enabled():
        return _PLAIN_DETERMINISTIC
    if not _CHOICE:
        import os

        mode = os.environ.get(KERNELS_ENV, "plain").strip().lower() or "plain"
        if mode not in KERNEL_MODES:
            raise SuiteError(f"${KERNELS_ENV}={mode!r}; accepted: {', '.join(KERNEL_MODES)}")
        if mode == "tuned":
            _CHOICE.append(KernelChoice(_onednn() is not None, True, "tuned"))
        else:
            _CHOICE.append(KernelChoice(False, False, "plain"))
    return _CHOICE[0]


def reset_kernel_choice() -> None:
    """Forget the choice (the next fused loop reads $RNNSUITE_KERNELS again): for tests and benchmarks."""
    _CHOICE.clear()


@contextlib.contextmanager
def packed_weights():
    """Where :func:`kernel_choice` takes the oneDNN GEMM, inside this block :func:`linear` reorders each weight into
    oneDNN's blocked layout once, on first use, and reuses it at every later step (the weights of a time loop do
    not change while it runs); otherwise :func:`linear` stays torch.addmm."""
    old = getattr(_packs, "cache", None)
    _packs.cache = {} if kernel_choice().onednn_linear else None
    try:
        yield
    finally:
        _packs.cache = old


def linear(x: Tensor, w: Tensor, add: Tensor | None = None) -> Tensor:
    """add + x w^T (w: (out, in); add: None, a bias (out,) or a matrix (B, out)): the GEMM of every time step.

    Where no graph is being built (the fast path's forward and backward), on CPU in float32, inside
    :func:`packed_weights`, and where :func:`kernel_choice` says so (``RNNSUITE_KERNELS=tuned``), this calls torch's
    oneDNN linear kernel (the library of nn.LSTM's CPU kernel) on a weight packed once per loop. Everywhere
    else torch.addmm (autograd-friendly).

    A pack's stacked weights w (M, out, in) take x as M batches of rows one after the other (M*B, in) and add
    as rows (M*B, out) or one bias per model (M, out): one batched GEMM (torch.baddbmm) for the M models.
    """
    if w.dim() == 3:
        m = w.shape[0]
        xs = x.unflatten(0, (m, -1))  # (M, B, in), a view
        if add is None:
            return torch.bmm(xs, w.transpose(1, 2)).flatten(0, 1)
        adds = add.unsqueeze(1) if add.shape[0] != x.shape[0] else add.unflatten(0, (m, -1))
        return torch.baddbmm(adds, xs, w.transpose(1, 2)).flatten(0, 1)
    cache = getattr(_packs, "cache", None)
    if (cache is not None and x.dtype == torch.float32 and x.device.type == "cpu"
            and not torch.is_grad_enabled()):
        ops = _onednn()
        if ops is not None:
            key = (w.data_ptr(), w.shape, w.stride())
            packed = cache.get(key)
            if packed is None:
                packed = cache[key] = ops[1](w.contiguous())
            if add is None or add.dim() == 1:
                return ops[0](x, packed, add, "none", [], "")
            # not the fused "binary add": it clones `add` first, which costs more than this add
            return ops[0](x, packed, None, "none", [], "").add_(add)
    if add is None:
        return x.mm(w.t())
    return torch.addmm(add, x, w.t())


_MINUS_ONE = torch.tensor(-1.0)
_TANH_VIA_SIGMOID = threading.local()  # .on: the sigmoid form, set per fused loop from kernel_choice()


@contextlib.contextmanager
def loop_kernels():
    """The kernels of one time loop: oneDNN-packed weights and the tanh form, as :func:`kernel_choice` says."""
    old = getattr(_TANH_VIA_SIGMOID, "on", False)
    _TANH_VIA_SIGMOID.on = kernel_choice().tanh_via_sigmoid
    try:
        with packed_weights():
            yield
    finally:
        _TANH_VIA_SIGMOID.on = old


def tanh(v: Tensor) -> Tensor:
    """tanh inside the time loop: on CPU in float32, inside :func:`loop_kernels`, and where :func:`kernel_choice`
    says so (``RNNSUITE_KERNELS=tuned``), 2 sigmoid(2v) - 1 (the same function; they agree to 2e-7). Elsewhere
    (float64, GPU, the reference path) torch.tanh."""
    if v.device.type != "cpu" or v.dtype != torch.float32 or not getattr(_TANH_VIA_SIGMOID, "on", False):
        return torch.tanh(v)
    return torch.add(_MINUS_ONE, torch.sigmoid(v + v), alpha=2)


def autocast_off(t: Tensor):
    """A context without autocast on t's device (a no-op context where autocast is not on)."""
    dev = t.device.type
    if torch.is_autocast_enabled(dev):
        return torch.autocast(dev, enabled=False)
    return contextlib.nullcontext()


@dataclass
class BPTTInputs:
    """What a cell's hand-written ``bptt`` reads. Shapes: xp (B, T, K) as ``project`` made it; out (B, T, H);
    state: the initial state; w: ``fused_weights()``; saved: the activations ``forward_step`` returned, stacked
    time-major (T, ...); d_out (B, T, H) and d_final (each (B, H)): the incoming gradients of the outputs and
    of the final state. Gradient buffers are batch-major (B, T, ...), as xp, so that project's backward reads
    them without a copy; weight gradients are then one GEMM over the merged (B, T) rows."""

    xp: Tensor
    out: Tensor
    state: State
    w: tuple[Tensor, ...]
    saved: tuple[Tensor, ...]
    d_out: Tensor
    d_final: State

    def h_prev(self) -> Tensor:
        """h_{t-1} for every step, batch-major (B, T, H)."""
        return torch.cat([self.state[0].unsqueeze(1), self.out[:, :-1]], 1)

    def h(self, t0: int, t1: int) -> Tensor:
        """h_{t-1} for steps t0..t1-1, time-major (t1 - t0, B, H)."""
        return self.prev(self.out.transpose(0, 1), self.state[0], t0, t1)

    def prev(self, saved: Tensor, initial: Tensor, t0: int, t1: int) -> Tensor:
        """Steps t0..t1-1 of x_{t-1} for a saved per-step x_t (T, B, H) whose value before step 0 is ``initial``."""
        if t0:
            return saved[t0 - 1:t1 - 1]
        return torch.cat([initial.unsqueeze(0), saved[:t1 - 1]])


class FusedLoop(torch.autograd.Function):
    """A cell's whole time loop as ONE autograd node: the forward runs ``forward_step`` without building a
    graph (saving the activations it returns); the backward is the cell's hand-written ``bptt``. Replaces
    ~10-20 autograd nodes per step, each a kernel dispatched from Python in backward, by a few fused ops per
    step plus one GEMM per weight over all steps."""

    @staticmethod
    def forward(ctx, cell, n_state, xp, *tensors):
        state, w = tensors[:n_state], tensors[n_state:]
        # a CUDA graph replay where RNNSUITE_CUDA_GRAPHS asks for one (suite.cells.graphs), else the eager loop
        out, final, saved = graphs.run_loop(cell, xp, state, w, save=True, context=(models_packed(),))
        ctx.cell, ctx.n_state, ctx.n_w, ctx.models = cell, n_state, len(w), models_packed()
        ctx.save_for_backward(xp, out, *state, *w, *saved)
        return (out, *final)

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out, *d_final):
        xp, out, *rest = ctx.saved_tensors
        n, k = ctx.n_state, ctx.n_w
        # dense incoming gradients: out.sum() sends an expanded (stride-0) one, slow to slice step by step
        d_out, d_final = d_out.contiguous(), tuple(d.contiguous() for d in d_final)
        n_saved = len(rest) - n - k

        def build(xp, out, *ts):
            return BPTTInputs(xp, out, tuple(ts[:n]), tuple(ts[n:n + k]), tuple(ts[n + k:n + k + n_saved]),
                              ts[n + k + n_saved], tuple(ts[n + k + n_saved + 1:]))

        with loop_kernels(), packed_models(ctx.models):
            dxp, dstate, dw = graphs.run_bptt(ctx.cell, [xp, out, *rest, d_out, *d_final], build,
                                              context=(ctx.models,))
        return (None, None, dxp, *dstate, *dw)


CHUNK = 16  # steps whose elementwise backward factors are computed together: vectorised, yet small enough
# (16 x B x H floats) to stay in cache and to come from the heap rather than fresh, page-faulting memory


def reversed_chunks(T: int):
    """(t0, t1) spans of at most CHUNK steps covering 0..T-1, last span first."""
    for t1 in range(T, 0, -CHUNK):
        yield max(0, t1 - CHUNK), t1


def bptt_one_gemm(g: BPTTInputs, w_hh: Tensor, factors) -> tuple[Tensor, Tensor]:
    """Backward through time of a step pre = xp_t + h_{t-1} W^T (one GEMM, K = G*H), h_t = phi(pre, h_{t-1})
    elementwise per unit: sgru, ugrnn, janet, ligru, rnn_tanh.

    factors(t0, t1) -> (j_pre (L, B, G, H): dh_t / d pre_t per gate block; j_h (L, B, H): the direct
    dh_t / dh_{t-1}, or None) for steps t0..t1-1 (L = t1 - t0), from saved activations. Each step is then
    three ops: dpre_t = dh_t * j_pre;  dh_{t-1} = d_out[t-1] + dh_t * j_h + dpre_t W.
    Returns (dpre (B, T, K) = the gradient of xp, dh_0); dW is then mm_bt(dpre, g.h_prev()).
    """
    d_out = g.d_out
    B, T, H = d_out.shape
    K = w_hh.shape[-2]
    dpre = d_out.new_empty(B, T, K)
    w_t = transposed(w_hh)  # dh_{t-1} = dpre_t W = linear(dpre_t, W^T)
    dh = d_out[:, T - 1] + g.d_final[0]
    for t0, t1 in reversed_chunks(T):
        j_pre, j_h = factors(t0, t1)
        for t in range(t1 - 1, t0 - 1, -1):
            k = t - t0
            dp = dpre[:, t]
            torch.mul(dh.unsqueeze(1), j_pre[k], out=dp.view(B, -1, H))
            if j_h is None:
                dh = linear(dp, w_t, d_out[:, t - 1] if t else None)
            else:
                base = torch.addcmul(d_out[:, t - 1], dh, j_h[k]) if t else dh * j_h[k]
                dh = linear(dp, w_t, base)
    return dpre, dh


def bptt_lstm(g: BPTTInputs, w_hh: Tensor, factors) -> tuple[Tensor, Tensor, Tensor]:
    """Backward through time of an LSTM step with one GEMM, pre = xp_t + h_{t-1} W^T whose gate blocks are
    [the Gc blocks that write c_t..., o], c_t = phi(pre, c_{t-1}) and h_t = o * tanh(c_t) (lstm_peephole, cifg).

    factors(t0, t1) -> (j_c (L, B, Gc, H) = dc_t / d pre of the c-writing blocks; j_o (L, B, H) = dh_t / d pre_o;
    j_hc (L, B, H): dc_t gets dh_t * j_hc; j_cc (L, B, H) = dc_t / dc_{t-1}). Per step:
    dc_t = dc + dh_t j_hc;  dpre = [dc_t j_c, dh_t j_o];  dc_{t-1} = dc_t j_cc;  dh_{t-1} = d_out + dpre W.
    Returns (dpre (B, T, K) = the gradient of xp, dh_0, dc_0).
    """
    d_out = g.d_out
    B, T, H = d_out.shape
    K = w_hh.shape[-2]
    dpre = d_out.new_empty(B, T, K)
    w_t = transposed(w_hh)
    dh, dc = d_out[:, T - 1] + g.d_final[0], g.d_final[1]
    for t0, t1 in reversed_chunks(T):
        j_c, j_o, j_hc, j_cc = factors(t0, t1)
        gc = j_c.shape[2] * H
        for t in range(t1 - 1, t0 - 1, -1):
            k = t - t0
            dp = dpre[:, t]
            dct = torch.addcmul(dc, dh, j_hc[k])
            torch.mul(dct.unsqueeze(1), j_c[k], out=dp[:, :gc].view(B, -1, H))
            torch.mul(dh, j_o[k], out=dp[:, gc:])
            dc = dct * j_cc[k]
            dh = linear(dp, w_t, d_out[:, t - 1] if t else None)
    return dpre, dh, dc


def bptt_reset_gate(g: BPTTInputs, w_c: Tensor, dgates: Tensor, dcand: Tensor, factors,
                    gemms: list[tuple[slice, Tensor]]) -> Tensor:
    """Backward through time of the GRU-shaped cells whose candidate reads a gated state (reset-before GRU and
    GRU1-3, MGU, MUT1-3):  pre_c = xp_c + (rho * h_{t-1}) W_c^T,  gates = sigma(pre_gates),  and h_t an
    elementwise function of (gates, tanh(pre_c), h_{t-1}).

    factors(t0, t1) -> (j_c (L, B, H) = dh_t / d pre_c; j_h (L, B, H): the direct dh_t / dh_{t-1}; rho (L, B or
    1, H): the gate on h in the candidate's GEMM; a, r (L, B, G, H): the gate pre-activations get
    dh_t * a + d(rho h) * r; j_in: for each of ``gemms`` the factor on what its GEMM reads (None: h itself)).
    gemms: (gate slice, W) for each recurrent GEMM of the gates: dh_{t-1} += (dgates[:, slice] W) * j_in.
    Writes the gate and candidate pre-activation gradients into dgates (B, T, G, H) and dcand (B, T, H)
    (views into the caller's buffers) and returns dh_0.
    """
    d_out = g.d_out
    B, T, H = d_out.shape
    w_c_t = transposed(w_c)
    gemms_t = [(block, transposed(w)) for block, w in gemms]
    dh = d_out[:, T - 1] + g.d_final[0]
    for t0, t1 in reversed_chunks(T):
        j_c, j_h, rho, a, r, j_in = factors(t0, t1)
        for t in range(t1 - 1, t0 - 1, -1):
            k = t - t0
            dpc = torch.mul(dh, j_c[k], out=dcand[:, t])
            d_rh = linear(dpc, w_c_t)  # d(rho * h_{t-1})
            dgt = dgates[:, t]
            torch.mul(dh.unsqueeze(1), a[k], out=dgt)
            dgt.addcmul_(d_rh.unsqueeze(1), r[k])
            nxt = torch.addcmul(d_out[:, t - 1], dh, j_h[k]) if t else dh * j_h[k]
            nxt.addcmul_(d_rh, rho[k])
            for (block, w_t), ji in zip(gemms_t, j_in):
                dg = dgt[:, block].reshape(B, -1)
                if ji is None:
                    nxt = linear(dg, w_t, nxt)
                else:
                    nxt.addcmul_(linear(dg, w_t), ji[k])
            dh = nxt
    return dh


def sum_bt(d: Tensor) -> Tensor:
    """Sum over batch and time of (B, T, ...) -> (...): a bias gradient; in a pack, (M, ...): one per model."""
    m = models_packed()
    if m:
        return d.unflatten(0, (m, -1)).sum((1, 2))
    return d.sum((0, 1))


def mm_bt(d: Tensor, x: Tensor) -> Tensor:
    """sum_t d_t^T x_t for (B, T, K) x (B, T, H) -> (K, H): a weight gradient over all steps in ONE GEMM (no copy
    where the (B, T) dims merge, as for slices of one buffer along its last dim); in a pack (M*B rows), one
    batched GEMM -> (M, K, H)."""
    m = models_packed()
    if m:
        return d.flatten(0, 1).unflatten(0, (m, -1)).transpose(1, 2).bmm(x.flatten(0, 1).unflatten(0, (m, -1)))
    return d.flatten(0, 1).t().mm(x.flatten(0, 1))
