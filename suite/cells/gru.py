"""The GRU family: torch's fused (reset-after) GRU, Cho et al.'s reset-before GRU and Dey & Salem's GRU1-3.

Gate blocks are stacked along dim 0 in nn.GRU's order r, z, n (n is the candidate h~). In every cell here z is
the gate that KEEPS the state, h_t = z ⊙ h_{t-1} + (1 - z) ⊙ h~ (nn.GRU's convention and the suite reference's),
so chrono init and gate diagnostics mean the same thing for all of them.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..registry import SuiteError
from .contract import RecurrentCell
from .fused import bptt_reset_gate, mm_bt, reversed_chunks, sum_bt, transposed
from .kernels import linear, tanh
from .lstm import FusedCell, record_gates
from .registry import register

GRU_GATES = ("r", "z", "n")


@register("gru", "GRU as torch computes it (fused nn.GRU, cuDNN/oneDNN): reset gate applied after U_n h, two "
          "biases per gate", "Cho et al. 2014, Learning Phrase Representations using RNN Encoder-Decoder for "
          "Statistical Machine Translation")
class GRU(FusedCell):
    """GRU as torch computes it (nn.GRU, one layer, reset-after), with a reference time-step path for diagnostics.

    Source: Cho, van Merriënboer, Gulcehre, Bahdanau, Bougares, Schwenk & Bengio (2014), "Learning Phrase
    Representations using RNN Encoder-Decoder for Statistical Machine Translation", EMNLP 2014 (arXiv:1406.1078),
    which introduced the gated recurrent unit (update gate z, reset gate r). Torch and cuDNN apply r AFTER the
    recurrent product, r ⊙ (U_n h + b_hn), as in the arXiv v1 of the paper; the form of the later versions, r
    inside the product (U_h (r ⊙ h)), is ``gru_reset_before``. The two are different models with the same
    parameter shapes.

    Equations (nn.GRU, gate order r, z, n):
      r = σ(W_r x_t + b_ir + U_r h_{t-1} + b_hr);  z = σ(W_z x_t + b_iz + U_z h_{t-1} + b_hz)
      n = tanh(W_n x_t + b_in + r ⊙ (U_n h_{t-1} + b_hn));  h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}
    Parameters: 3n(m + n + 2): like nn.GRU it keeps TWO biases per gate (``rnn.bias_ih_l0``, ``rnn.bias_hh_l0``;
    b_hn cannot fold into b_in because r multiplies it); 3n(m + n) with bias=False.
    Chrono init: z keeps the state, so b_iz = log U[1, T_max - 1] (slice [n:2n] of bias_ih) and b_hz = 0.
    Shapes: x (B, T, m) -> outputs (B, T, n); state h (B, n).
    """

    gate_names = ("r", "z")
    fused_gates = GRU_GATES
    param_gates = {f"rnn.{p}_l0": GRU_GATES for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
    keep_gate = ("z", 1)
    chrono_gates = (("z", 1),)
    fused_module = nn.GRU

    def project(self, x: Tensor) -> Tensor:
        return F.linear(x, self.rnn.weight_ih_l0, self.rnn.bias_ih_l0 if self.bias else None)  # (B, T, 3n)

    def step(self, xp: Tensor, state, trace=None):
        state, (r, z, _, _) = self.forward_step(xp, state, self.fused_weights())
        record_gates(trace, self.gate_names, (r, z))
        return state

    # forward runs nn.GRU; forward_step and bptt are the time loop a pack of GRUs runs (suite.packed)
    packs = True

    def fused_weights(self):
        return (self.rnn.weight_hh_l0, self.rnn.bias_hh_l0) if self.bias else (self.rnn.weight_hh_l0,)

    def forward_step(self, xp: Tensor, state, w):
        (h,) = state
        n2 = 2 * self.hidden_size
        hp = linear(h, w[0], w[1] if self.bias else None)  # (B, 3n): U h + b_h, all gates
        r, z = (xp[:, :n2] + hp[:, :n2]).sigmoid().chunk(2, 1)
        hn = hp[:, n2:]
        cand = tanh(torch.addcmul(xp[:, n2:], r, hn))  # reset after U_n h
        return (torch.lerp(cand, h, z),), (r, z, cand, hn)  # z ⊙ h + (1 - z) ⊙ n

    def bptt(self, g):
        r_all, z_all, cand_all, hn_all = g.saved  # (T, B, n)
        d_out = g.d_out
        B, T, n = d_out.shape
        n2 = 2 * n
        dxp = torch.empty_like(g.xp)  # (B, T, 3n): r | z | n pre-activations
        dhp = torch.empty_like(g.xp)  # gradient of hp = U h + b_h: r and z as dxp, n's times r
        w_t = transposed(g.w[0])
        dh = d_out[:, T - 1] + g.d_final[0]
        for t0, t1 in reversed_chunks(T):
            r, z, cand, hn, h = r_all[t0:t1], z_all[t0:t1], cand_all[t0:t1], hn_all[t0:t1], g.h(t0, t1)
            j_n = (1 - z) * (1 - cand * cand)  # dh_t / d pre_n
            j_z = (h - cand) * z * (1 - z)  # dh_t / d pre_z
            j_r = hn * r * (1 - r)  # d pre_n / d pre_r
            for t in range(t1 - 1, t0 - 1, -1):
                k = t - t0
                dp = dhp[:, t]
                dpn = torch.mul(dh, j_n[k], out=dxp[:, t, n2:])
                torch.mul(dpn, j_r[k], out=dp[:, :n])
                torch.mul(dh, j_z[k], out=dp[:, n:n2])
                torch.mul(dpn, r[k], out=dp[:, n2:])
                nxt = torch.addcmul(d_out[:, t - 1], dh, z[k]) if t else dh * z[k]
                dh = linear(dp, w_t, nxt)
        dxp[..., :n2] = dhp[..., :n2]
        dw = mm_bt(dhp, g.h_prev())
        return dxp, (dh,), ((dw, sum_bt(dhp)) if self.bias else (dw,))


class _ResetBeforeGRU(RecurrentCell):
    """Shared maths of the reset-before GRUs; subclasses differ only in what their gates r, z see.

    Layout: weight_hh stacks the recurrent blocks r, z, n that exist (the candidate's U_h always last);
    ``project`` puts the candidate's W_h x + b_h last in its output, so ``step`` reads it as xp[:, -n:].
    """

    gate_names = ("r", "z")
    keep_gate = ("z", 1)

    def _make_parameters(self, ih_gates: tuple[str, ...], hh_gates: tuple[str, ...],
                         bias_gates: tuple[str, ...]) -> None:
        n = self.hidden_size
        self.weight_ih = nn.Parameter(torch.empty(len(ih_gates) * n, self.input_size))
        self.weight_hh = nn.Parameter(torch.empty(len(hh_gates) * n, n))
        self.bias_ih = nn.Parameter(torch.empty(len(bias_gates) * n)) if self.bias else None
        self.reset_parameters()

    fast_path = True
    packs = True
    gate_gemm = True  # r, z read U h (False: gru3, whose gates are constants)
    input_blocks = 1  # blocks of project's output: 3 (r, z, h~) or 1 (h~ only)

    def gates(self, xp: Tensor, h: Tensor, w: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        """r, z: each (B, n), or (n,) where they do not depend on the step."""
        raise NotImplementedError

    def forward_step(self, xp: Tensor, state, w):
        (h,) = state
        n = self.hidden_size
        r, z = self.gates(xp, h, w)
        rh = r * h
        cand = tanh(linear(rh, w[0][..., -n:, :], xp[:, -n:]))  # reset before U_h
        return (torch.lerp(cand, h, z),), (r, z, rh, cand)  # z ⊙ h + (1 - z) ⊙ h~

    def step(self, xp: Tensor, state, trace=None):
        state, (r, z, _, _) = self.forward_step(xp, state, self.fused_weights())
        if trace is not None:
            h = state[0]
            record_gates(trace, self.gate_names, (r.expand_as(h), z.expand_as(h)))
        return state

    def bptt(self, g):
        r_all, z_all, rh_all, cand_all = g.saved  # (T, B, n); r, z (T, n) for gru3
        if r_all.dim() == 2:
            r_all, z_all = r_all.unsqueeze(1), z_all.unsqueeze(1)
        n = self.hidden_size
        d = torch.empty_like(g.xp)  # dxp, in project's layout: r | z | h~, or h~ alone
        B, T = d.shape[:2]
        dgates = d[..., :2 * n].unflatten(2, (2, n)) if self.input_blocks == 3 else d.new_empty(B, T, 2, n)
        dcand = d[..., -n:]

        def factors(t0, t1):
            r, z, cand, h = r_all[t0:t1], z_all[t0:t1], cand_all[t0:t1], g.h(t0, t1)
            zero = torch.zeros_like(h)
            a = torch.stack([zero, (h - cand) * z * (1 - z)], 2)  # dh_t reaches z directly
            rr = torch.stack([h * r * (1 - r), zero], 2)  # d(r h) reaches r
            return (1 - z) * (1 - cand * cand), z, r, a, rr, (None,)

        w_hh = g.w[0]
        gemms = [(slice(0, 2), w_hh[..., :2 * n, :])] if self.gate_gemm else []
        dh0 = bptt_reset_gate(g, w_hh[..., -n:, :], dgates, dcand, factors, gemms)
        dgates = dgates.flatten(2)
        dw_c = mm_bt(dcand, rh_all.transpose(0, 1))
        dw_hh = torch.cat([mm_bt(dgates, g.h_prev()), dw_c], -2) if self.gate_gemm else dw_c
        return d, (dh0,), self.gate_grads(dgates, dw_hh)

    def gate_grads(self, dgates: Tensor, dw_hh: Tensor) -> tuple[Tensor | None, ...]:
        """Gradients of fused_weights() from dW_hh and the gates' pre-activation gradients (T, B, 2n)."""
        return (dw_hh,)

    def chrono_targets(self):
        return [(self.bias_ih[self.hidden_size:2 * self.hidden_size], 1)]  # z's slice of the r|z|n bias


@register("gru_reset_before", "GRU of Cho et al.: reset gate applied to h before U_h (r ⊙ h); one bias per gate",
          "Cho et al. 2014, Learning Phrase Representations using RNN Encoder-Decoder for Statistical Machine "
          "Translation")
class GRUResetBefore(_ResetBeforeGRU):
    """GRU as in Cho et al. (2014, arXiv v3) and Chung et al. (2014): the reset gate acts before U_h.

    Equations:
      r = σ(W_r x_t + U_r h_{t-1} + b_r);  z = σ(W_z x_t + U_z h_{t-1} + b_z)
      h~ = tanh(W_h x_t + U_h (r ⊙ h_{t-1}) + b_h);  h_t = z ⊙ h_{t-1} + (1 - z) ⊙ h~
    Cho's paper writes h_t = z ⊙ h_{t-1} + (1 - z) ⊙ h~ (Chung et al. swap z and 1 - z); we keep Cho's, as
    nn.GRU does, so z is the keep gate in every GRU of the suite.
    Parameters: 3n(m + n + 1). Layout: weight_ih (3n, m), weight_hh (3n, n), bias_ih (3n), gate order r, z, n.
    Chrono init: b_z = log U[1, T_max - 1]. Shapes: x (B, T, m) -> outputs (B, T, n); state h (B, n).
    """

    param_gates = {"weight_ih": GRU_GATES, "weight_hh": GRU_GATES, "bias_ih": GRU_GATES}
    input_blocks = 3

    def __init__(self, input_size: int, hidden_size: int, *, bias: bool = True, init: str = "orthogonal",
                 init_range: float = 0.1, chrono_init: int | None = None):
        super().__init__(input_size, hidden_size, bias=bias, init=init, init_range=init_range,
                         chrono_init=chrono_init)
        self._make_parameters(GRU_GATES, GRU_GATES, GRU_GATES)

    def project(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight_ih, self.bias_ih)  # (B, T, 3n): W x + b for r, z, h~

    def gates(self, xp, h, w):
        n2 = 2 * self.hidden_size
        return linear(h, w[0][..., :n2, :], xp[:, :n2]).sigmoid().chunk(2, 1)


_DEY_SALEM = "Dey & Salem 2017, Gate-Variants of Gated Recurrent Unit (GRU) Neural Networks"
_DEY_SALEM_DOC = """
    Dey & Salem reduce only the gates of the GRU they start from (Chung et al.'s, reset before U_h); the candidate
    and the update are the suite's reset-before GRU, h~ = tanh(W_h x_t + U_h (r ⊙ h_{t-1}) + b_h) and
    h_t = z ⊙ h_{t-1} + (1 - z) ⊙ h~. The paper writes h_t = (1 - z) ⊙ h_{t-1} + z ⊙ h~ (Chung's convention);
    we use the suite reference's form for gru_reset_before and GRU1-3 alike, so z is the keep gate everywhere and
    chrono init puts +log U[1, T_max - 1] on b_z. The two forms are the same model with z renamed 1 - z.

    Equations checked against the paper (a secondary source left the gate forms unchecked; docs/cells.md):
    Dey & Salem, "Gate-Variants of Gated Recurrent Unit (GRU) Neural Networks", MWSCAS 2017 (arXiv:1701.05923).
    The paper's three variants change the two gates only, identically for z and r:
      GRU1: each gate is computed from the previous hidden state and the bias only, σ(U h_{t-1} + b);
      GRU2: from the previous hidden state only, σ(U h_{t-1}), no bias;
      GRU3: from the bias only, σ(b).
    It counts the savings in the gating signals as 2nm (GRU1), 2(nm + n) (GRU2) and 2(nm + n²) (GRU3),
    n = hidden size, m = input size, which is what the parameter counts below give against the one-bias
    reset-before GRU. Its candidate keeps the reset gate inside the recurrent product, U_h (r ⊙ h_{t-1}), with an
    input term and a bias, unchanged in all three variants. Decision: implemented as the paper states, gate
    forms unchanged; the only departure is the z / 1 - z naming above (the same function, reparameterised).
    Where the check came from: the paper as published and as summarised by secondary sources (its
    "Type 1-3" variants); the PDF itself could not be opened in the environment this note was written in.
    Shapes: x (B, T, m) -> outputs (B, T, n); state h (B, n).
"""


@register("gru1", "Dey & Salem GRU1: gates see only the state, r, z = σ(U h + b); candidate as reset-before GRU",
          _DEY_SALEM)
class GRU1(_ResetBeforeGRU):
    __doc__ = """GRU1 of Dey & Salem (2017): the gates drop their input term.

    Equations: r = σ(U_r h_{t-1} + b_r);  z = σ(U_z h_{t-1} + b_z).
    Parameters: 3n(m + n + 1) - 2nm. Layout: weight_ih (n, m) for h~ only, weight_hh (3n, n) and bias_ih (3n)
    in gate order r, z, n.""" + _DEY_SALEM_DOC

    param_gates = {"weight_ih": ("n",), "weight_hh": GRU_GATES, "bias_ih": GRU_GATES}

    def __init__(self, input_size: int, hidden_size: int, *, bias: bool = True, init: str = "orthogonal",
                 init_range: float = 0.1, chrono_init: int | None = None):
        super().__init__(input_size, hidden_size, bias=bias, init=init, init_range=init_range,
                         chrono_init=chrono_init)
        self._make_parameters(("n",), GRU_GATES, GRU_GATES)

    def project(self, x: Tensor) -> Tensor:
        b = self.bias_ih[2 * self.hidden_size:] if self.bias else None
        return F.linear(x, self.weight_ih, b)  # (B, T, n): W_h x + b_h

    def fused_weights(self):
        return (self.weight_hh, self.bias_ih[..., :2 * self.hidden_size]) if self.bias else (self.weight_hh,)

    def gates(self, xp, h, w):
        pre = linear(h, w[0][..., :2 * self.hidden_size, :], w[1] if self.bias else None)  # (B, 2n)
        return pre.sigmoid().chunk(2, 1)

    def gate_grads(self, dgates, dw_hh):
        return (dw_hh, sum_bt(dgates)) if self.bias else (dw_hh,)


@register("gru2", "Dey & Salem GRU2: gates see only the state, no bias, r, z = σ(U h); candidate as reset-before "
          "GRU", _DEY_SALEM)
class GRU2(_ResetBeforeGRU):
    __doc__ = """GRU2 of Dey & Salem (2017): the gates drop their input term and their bias.

    Equations: r = σ(U_r h_{t-1});  z = σ(U_z h_{t-1}).
    Parameters: 3n(m + n + 1) - 2nm - 2n. Layout: weight_ih (n, m), weight_hh (3n, n) in gate order r, z, n,
    bias_ih (n) for h~ only. With no gate bias there is nothing for chrono init to set: not an option here.""" \
        + _DEY_SALEM_DOC

    param_gates = {"weight_ih": ("n",), "weight_hh": GRU_GATES, "bias_ih": ("n",)}

    def __init__(self, input_size: int, hidden_size: int, *, bias: bool = True, init: str = "orthogonal",
                 init_range: float = 0.1):
        super().__init__(input_size, hidden_size, bias=bias, init=init, init_range=init_range)
        self._make_parameters(("n",), GRU_GATES, ("n",))

    def project(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight_ih, self.bias_ih)  # (B, T, n): W_h x + b_h

    def gates(self, xp, h, w):
        return linear(h, w[0][..., :2 * self.hidden_size, :]).sigmoid().chunk(2, 1)

    def chrono_targets(self):
        raise SuiteError("gru2 has no gate bias, so chrono init does not apply")


@register("gru3", "Dey & Salem GRU3: gates are biases only, r, z = σ(b), constant over time; candidate as "
          "reset-before GRU", _DEY_SALEM)
class GRU3(_ResetBeforeGRU):
    __doc__ = """GRU3 of Dey & Salem (2017): the gates are learned constants.

    Equations: r = σ(b_r);  z = σ(b_z)  (the same at every step; ``trace`` reports them broadcast to (B, T, n)).
    Parameters: 3n(m + n + 1) - 2nm - 2n². Layout: weight_ih (n, m), weight_hh (n, n) for h~ only, bias_ih (3n)
    in gate order r, z, n. bias=False is refused: the biases are the gates' only parameters.""" + _DEY_SALEM_DOC

    param_gates = {"weight_ih": ("n",), "weight_hh": ("n",), "bias_ih": GRU_GATES}

    def __init__(self, input_size: int, hidden_size: int, *, bias: bool = True, init: str = "orthogonal",
                 init_range: float = 0.1, chrono_init: int | None = None):
        if not bias:
            raise SuiteError("gru3 needs bias=True: its gates r, z = σ(b) have no other parameters")
        super().__init__(input_size, hidden_size, bias=bias, init=init, init_range=init_range,
                         chrono_init=chrono_init)
        self._make_parameters(("n",), ("n",), GRU_GATES)

    def project(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight_ih, self.bias_ih[2 * self.hidden_size:])  # (B, T, n): W_h x + b_h

    gate_gemm = False
    packs = False  # its gates (n,) broadcast over one model's batch, not over a pack's folded rows

    def fused_weights(self):
        return (self.weight_hh, self.bias_ih[:2 * self.hidden_size])

    def gates(self, xp, h, w):
        return w[1].sigmoid().chunk(2)  # each (n,), broadcast over the batch

    def gate_grads(self, dgates, dw_hh):
        return (dw_hh, sum_bt(dgates))
