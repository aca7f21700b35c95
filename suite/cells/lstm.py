"""The LSTM family: torch's fused LSTM, Greff et al.'s vanilla LSTM with peepholes, and CIFG.

Gate blocks are stacked along dim 0 in nn.LSTM's order i, f, g, o (g is the candidate, Greff's z) in every
cell here, so gradients and initialisation read the same way across the family.
"""
from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .contract import RecurrentCell, autocast_off, gate_views
from .fused import bptt_lstm, mm_bt, sum_bt
from .init import InitRule, zeros
from .kernels import linear, tanh
from .registry import register

LSTM_GATES = ("i", "f", "g", "o")  # nn.LSTM's order of the gate blocks along dim 0


class FusedCell(RecurrentCell):
    """A cell whose ``forward`` is a one-layer torch module ``self.rnn`` (nn.LSTM / nn.GRU, batch first).

    ``forward`` calls the fused kernel (cuDNN on GPU, oneDNN or torch's own on CPU); ``project``/``step`` restate
    its maths on the same weights for :meth:`trace` and as the reference the fused path is tested against.
    """

    fused_module: type[nn.RNNBase]  # nn.LSTM or nn.GRU
    fused_gates: tuple[str, ...] = ()  # the gate blocks of the fused module's weights, in its order
    chrono_gates: tuple[tuple[str, int], ...] = ()  # (gate, sign): where chrono init writes, in bias_ih

    def __init__(self, input_size: int, hidden_size: int, *, bias: bool = True, init: str = "orthogonal",
                 init_range: float = 0.1, chrono_init: int | None = None):
        super().__init__(input_size, hidden_size, bias=bias, init=init, init_range=init_range,
                         chrono_init=chrono_init)
        self.rnn = self.fused_module(input_size, hidden_size, batch_first=True, bias=bias)
        self.reset_parameters()

    def recurrence(self, x: Tensor, state) -> tuple[Tensor, tuple[Tensor, ...]]:
        autocast = torch.is_autocast_enabled(x.device.type)
        if autocast:
            # Under autocast torch hands nn.LSTM/nn.GRU to a low-precision kernel: on CPU oneDNN's bf16 primitive
            # (which CPUs without bf16 instructions, AVX2-only, refuse: "could not create a primitive
            # descriptor"), on CUDA cuDNN in float16 whatever the autocast dtype. The recurrence runs in the
            # parameters' dtype instead, as every custom cell's does: one precision for every cell's recurrence
            # (suite.gpu's policy), so that comparisons between cells are fair.
            x, state = self.recurrence_inputs(x, state)
        hx = tuple(s.unsqueeze(0).contiguous() for s in state)  # nn wants (layers, B, H)
        with autocast_off(x) if autocast else contextlib.nullcontext():
            out, hn = self.rnn(x, hx if len(hx) > 1 else hx[0])
        hn = hn if isinstance(hn, tuple) else (hn,)
        return out, tuple(s.squeeze(0) for s in hn)

    def init_targets(self):
        """Every weight lives in ``rnn`` (weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0): the rules of
        suite/cells/init.py set them, instead of nn.LSTM's / nn.GRU's own uniform initialisation."""
        return self.rnn.named_parameters()

    def biases(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Per-gate views of (bias_ih, bias_hh); writes reach the parameters."""
        return (gate_views(self.rnn.bias_ih_l0, self.fused_gates), gate_views(self.rnn.bias_hh_l0, self.fused_gates))

    def chrono_targets(self):
        ih, _ = self.biases()
        return [(ih[gate], sign) for gate, sign in self.chrono_gates]

    def apply_chrono(self, t_max: int) -> None:
        # torch adds both biases to every gate: chrono writes into bias_ih only, so the same gates' slices of
        # bias_hh must be zero, or the effective bias would be doubled (or shifted by a uniform init).
        _, hh = self.biases()
        with torch.no_grad():
            for gate, _ in self.chrono_gates:
                hh[gate].zero_()
        super().apply_chrono(t_max)


def record_gates(trace: dict[str, list[Tensor]] | None, names: tuple[str, ...], values: tuple[Tensor, ...]):
    """Append each gate activation to the diagnostics lists when ``step`` is asked to trace."""
    if trace is not None:
        for name, value in zip(names, values):
            trace[name].append(value)


@register("lstm", "LSTM with forget gate on torch's fused nn.LSTM (cuDNN/oneDNN); two biases per gate, "
          "forget bias 1", "Hochreiter & Schmidhuber 1997, Long Short-Term Memory; Gers et al. 2000, Learning to "
          "Forget")
class LSTM(FusedCell):
    """LSTM as torch computes it (nn.LSTM, one layer), with a reference time-step path for diagnostics.

    Sources: Hochreiter & Schmidhuber (1997), "Long Short-Term Memory", Neural Computation 9(8): the memory cell
    with its constant error carousel and the input and output gates; Gers, Schmidhuber & Cummins (2000),
    "Learning to Forget: Continual Prediction with LSTM", Neural Computation 12(10): the forget gate f that
    multiplies c_{t-1} (the 1997 cell has none, i.e. f = 1). This is the forget-gate LSTM without peepholes,
    the form torch/cuDNN compute; peepholes (Gers & Schmidhuber 2000) are ``lstm_peephole``.

    Equations (nn.LSTM, gate order i, f, g, o):
      i = σ(W_i x_t + b_ii + U_i h_{t-1} + b_hi)    f = σ(W_f x_t + b_if + U_f h_{t-1} + b_hf)
      g = tanh(W_g x_t + b_ig + U_g h_{t-1} + b_hg)  o = σ(W_o x_t + b_io + U_o h_{t-1} + b_ho)
      c_t = f ⊙ c_{t-1} + i ⊙ g;   h_t = o ⊙ tanh(c_t)
    Parameters: 4n(m + n + 2): like nn.LSTM it keeps TWO biases per gate (``rnn.bias_ih_l0`` and
    ``rnn.bias_hh_l0``), n per gate more than the one-bias count 4n(m + n + 1); 4n(m + n) with bias=False.
    Init: forget bias 1 (Jozefowicz et al. 2015), written into bias_ih only, so b_ih + b_hh = 1 for f.
    Chrono init (Tallec & Ollivier 2018): b_f = log U[1, T_max - 1], b_i = -b_f in bias_ih, bias_hh zero there.
    Shapes: x (B, T, m) -> outputs (B, T, n); state (h, c), each (B, n).
    """

    gate_names = ("i", "f", "o")
    state_names = ("h", "c")
    fused_gates = LSTM_GATES
    param_gates = {f"rnn.{p}_l0": LSTM_GATES for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
    keep_gate = ("f", 1)
    chrono_gates = (("f", 1), ("i", -1))  # Tallec & Ollivier: b_i = -b_f
    fused_module = nn.LSTM

    def project(self, x: Tensor) -> Tensor:
        # Both biases only ever appear summed, so they fold into the hoisted GEMM: step is one addmm.
        b = self.rnn.bias_ih_l0 + self.rnn.bias_hh_l0 if self.bias else None
        return F.linear(x, self.rnn.weight_ih_l0, b)  # (B, T, 4n)

    def step(self, xp: Tensor, state, trace=None):
        state, (i, f, _, o, _, _) = self.forward_step(xp, state, self.fused_weights())
        record_gates(trace, self.gate_names, (i, f, o))
        return state

    # forward runs nn.LSTM; forward_step and bptt are the time loop a pack of LSTMs runs (suite.packed)
    packs = True

    def fused_weights(self):
        return (self.rnn.weight_hh_l0,)

    def forward_step(self, xp: Tensor, state, w):
        h, c = state
        i, f, g, o = linear(h, w[0], xp).chunk(4, 1)  # each (B, n)
        i, f, o = i.sigmoid(), f.sigmoid(), o.sigmoid()
        g = tanh(g)
        c = torch.addcmul(f * c, i, g)
        tc = tanh(c)
        return (o * tc, c), (i, f, g, o, c, tc)

    def bptt(self, grads):
        i_all, f_all, g_all, o_all, c_all, tc_all = grads.saved  # (T, B, n) each
        c0 = grads.state[1]

        def factors(t0, t1):
            i, f, g, o, tc = (x[t0:t1] for x in (i_all, f_all, g_all, o_all, tc_all))
            c_prev = grads.prev(c_all, c0, t0, t1)
            j_c = torch.stack([g * i * (1 - i), c_prev * f * (1 - f), i * (1 - g * g)], 2)  # dc_t/d pre_(i,f,g)
            return j_c, tc * o * (1 - o), o * (1 - tc * tc), f

        dpre, dh0, dc0 = bptt_lstm(grads, grads.w[0], factors)
        return dpre, (dh0, dc0), (mm_bt(dpre, grads.h_prev()),)

    def init_gate_biases(self) -> None:
        if self.bias:
            self.biases()[0]["f"].fill_(1.0)



class _OneBiasLSTM(RecurrentCell):
    """Shared parameters of the hand-written LSTMs: stacked gate blocks, one bias per gate."""

    state_names = ("h", "c")
    gates: tuple[str, ...] = ()  # gate blocks of weight_ih / weight_hh / bias_ih, in order

    def _make_parameters(self) -> None:
        k, n = len(self.gates), self.hidden_size
        self.weight_ih = nn.Parameter(torch.empty(k * n, self.input_size))
        self.weight_hh = nn.Parameter(torch.empty(k * n, n))
        self.bias_ih = nn.Parameter(torch.empty(k * n)) if self.bias else None

    def project(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight_ih, self.bias_ih)  # (B, T, kn)

    def gate_bias(self, gate: str) -> Tensor:
        return gate_views(self.bias_ih, self.gates)[gate]


@register("lstm_peephole", "vanilla LSTM of Greff et al.: i and f peep at c_{t-1}, o at c_t; one bias per gate",
          "Greff et al. 2017, LSTM: A Search Space Odyssey; Gers & Schmidhuber 2000, Recurrent Nets that Time "
          "and Count")
class PeepholeLSTM(_OneBiasLSTM):
    """Greff et al. (2017) vanilla LSTM with peephole connections.

    Equations (Greff's z is g here):
      g = tanh(W_g x_t + R_g h_{t-1} + b_g)
      i = σ(W_i x_t + R_i h_{t-1} + p_i ⊙ c_{t-1} + b_i);   f = σ(W_f x_t + R_f h_{t-1} + p_f ⊙ c_{t-1} + b_f)
      c_t = g ⊙ i + f ⊙ c_{t-1}
      o = σ(W_o x_t + R_o h_{t-1} + p_o ⊙ c_t + b_o);        h_t = o ⊙ tanh(c_t)
    Parameters: 4n(m + n + 1) + 3n (one bias per gate; peepholes are diagonal, n each). Layout: weight_ih (4n, m),
    weight_hh (4n, n), bias_ih (4n) in gate order i, f, g, o; peephole (3n) as p_i, p_f, p_o.
    Init: peepholes start at zero (the cell starts as the no-peephole LSTM; their gradient c ⊙ dL/dgate is not
    zero, so they still learn), forget bias 1; chrono init as LSTM (b_f = log U[1, T_max - 1], b_i = -b_f).
    Shapes: x (B, T, m) -> outputs (B, T, n); state (h, c), each (B, n).
    """

    gate_names = ("i", "f", "o")
    gates = LSTM_GATES
    param_gates = {"weight_ih": gates, "weight_hh": gates, "bias_ih": gates, "peephole": ("i", "f", "o")}
    keep_gate = ("f", 1)
    init_rules = (InitRule("peephole", 1, zeros, "start as the no-peephole LSTM; c ⊙ dL/dgate still trains them"),)

    def __init__(self, input_size: int, hidden_size: int, *, bias: bool = True, init: str = "orthogonal",
                 init_range: float = 0.1, chrono_init: int | None = None):
        super().__init__(input_size, hidden_size, bias=bias, init=init, init_range=init_range,
                         chrono_init=chrono_init)
        self._make_parameters()
        self.peephole = nn.Parameter(torch.empty(3 * hidden_size))
        self.reset_parameters()

    fast_path = True

    def fused_weights(self):
        return (self.weight_hh, self.peephole)

    def forward_step(self, xp: Tensor, state, w):
        h, c = state
        i, f, g, o = linear(h, w[0], xp).chunk(4, 1)  # each (B, n)
        p_i, p_f, p_o = w[1].chunk(3)  # each (n,)
        i = torch.addcmul(i, p_i, c).sigmoid()
        f = torch.addcmul(f, p_f, c).sigmoid()
        g = tanh(g)
        c = torch.addcmul(f * c, i, g)
        o = torch.addcmul(o, p_o, c).sigmoid()  # the output gate peeps at the new cell state
        tc = tanh(c)
        return (o * tc, c), (i, f, g, o, c, tc)

    def step(self, xp: Tensor, state, trace=None):
        state, (i, f, _, o, _, _) = self.forward_step(xp, state, self.fused_weights())
        record_gates(trace, self.gate_names, (i, f, o))
        return state

    def bptt(self, grads):
        i_all, f_all, g_all, o_all, c_all, tc_all = grads.saved  # (T, B, n) each
        w_hh, peep = grads.w
        p_i, p_f, p_o = peep.chunk(3)
        c0 = grads.state[1]

        def factors(t0, t1):
            i, f, g, o, tc = (x[t0:t1] for x in (i_all, f_all, g_all, o_all, tc_all))
            c_prev = grads.prev(c_all, c0, t0, t1)
            j_o = tc * o * (1 - o)  # dh_t/d pre_o
            j_i, j_f = g * i * (1 - i), c_prev * f * (1 - f)  # dc_t/d pre_i, d pre_f
            j_hc = o * (1 - tc * tc) + j_o * p_o  # dc_t from dh_t, through tanh(c_t) and o's peephole at c_t
            j_cc = f + j_i * p_i + j_f * p_f  # dc_t/dc_{t-1}, peepholes included
            return torch.stack([j_i, j_f, i * (1 - g * g)], 2), j_o, j_hc, j_cc

        dpre, dh0, dc0 = bptt_lstm(grads, w_hh, factors)
        n = self.hidden_size
        c_prev = grads.prev(c_all, c0, 0, len(c_all)).transpose(0, 1)  # (B, T, n), as dpre
        dpeep = torch.cat([sum_bt(dpre[..., :n] * c_prev), sum_bt(dpre[..., n:2 * n] * c_prev),
                           sum_bt(dpre[..., 3 * n:] * c_all.transpose(0, 1))])
        return dpre, (dh0, dc0), (mm_bt(dpre, grads.h_prev()), dpeep)

    def init_gate_biases(self) -> None:
        if self.bias:
            self.gate_bias("f").fill_(1.0)

    def chrono_targets(self):
        return [(self.gate_bias("f"), 1), (self.gate_bias("i"), -1)]


@register("cifg", "coupled input-forget gate LSTM, f = 1 - i (Greff's CIFG, here without peepholes); one bias "
          "per gate", "Greff et al. 2017, LSTM: A Search Space Odyssey")
class CIFG(_OneBiasLSTM):
    """Coupled input and forget gate LSTM (Greff et al. 2017, variant CIFG), without peepholes.

    Equations:
      i = σ(W_i x_t + R_i h_{t-1} + b_i);  f = 1 - i
      g = tanh(W_g x_t + R_g h_{t-1} + b_g);  o = σ(W_o x_t + R_o h_{t-1} + b_o)
      c_t = f ⊙ c_{t-1} + i ⊙ g;  h_t = o ⊙ tanh(c_t)
    Greff's CIFG changes one thing in the vanilla (peephole) LSTM; this one also drops the peepholes, the GRU-like
    form whose count, 3n(m + n + 1), the suite's reference lists. Layout: weight_ih (3n, m), weight_hh (3n, n),
    bias_ih (3n) in gate order i, g, o. ``trace`` reports i, f (= 1 - i) and o.
    Init: b_i = -1, the coupled form of forget bias 1 (f = 1 - σ(-1) = σ(1)). Chrono init: f = 1 - i keeps the
    state, so b_i = -log U[1, T_max - 1] (f starts near 1 - 1/T).
    Shapes: x (B, T, m) -> outputs (B, T, n); state (h, c), each (B, n).
    """

    gate_names = ("i", "f", "o")
    gates = ("i", "g", "o")
    param_gates = {"weight_ih": gates, "weight_hh": gates, "bias_ih": gates}
    keep_gate = ("i", -1)
    packs = True

    def __init__(self, input_size: int, hidden_size: int, *, bias: bool = True, init: str = "orthogonal",
                 init_range: float = 0.1, chrono_init: int | None = None):
        super().__init__(input_size, hidden_size, bias=bias, init=init, init_range=init_range,
                         chrono_init=chrono_init)
        self._make_parameters()
        self.reset_parameters()

    fast_path = True

    def forward_step(self, xp: Tensor, state, w):
        h, c = state
        i, g, o = linear(h, w[0], xp).chunk(3, 1)  # each (B, n)
        i, o = i.sigmoid(), o.sigmoid()
        g = tanh(g)
        c = torch.lerp(c, g, i)  # (1 - i) ⊙ c + i ⊙ g
        tc = tanh(c)
        return (o * tc, c), (i, g, o, c, tc)

    def step(self, xp: Tensor, state, trace=None):
        state, (i, _, o, _, _) = self.forward_step(xp, state, self.fused_weights())
        record_gates(trace, self.gate_names, (i, 1 - i, o))
        return state

    def bptt(self, grads):
        i_all, g_all, o_all, c_all, tc_all = grads.saved  # (T, B, n) each
        c0 = grads.state[1]

        def factors(t0, t1):
            i, g, o, tc = (x[t0:t1] for x in (i_all, g_all, o_all, tc_all))
            c_prev = grads.prev(c_all, c0, t0, t1)
            j_ig = torch.stack([(g - c_prev) * i * (1 - i), i * (1 - g * g)], 2)  # dc_t/d pre_(i,g)
            return j_ig, tc * o * (1 - o), o * (1 - tc * tc), 1 - i

        dpre, dh0, dc0 = bptt_lstm(grads, grads.w[0], factors)
        return dpre, (dh0, dc0), (mm_bt(dpre, grads.h_prev()),)

    def init_gate_biases(self) -> None:
        if self.bias:
            self.gate_bias("i").fill_(-1.0)

    def chrono_targets(self):
        return [(self.gate_bias("i"), -1)]
