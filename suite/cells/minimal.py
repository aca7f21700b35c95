"""Single-gate GRUs: the seed's simplified GRU, UGRNN, MGU, JANET and the Light GRU.

Each keeps one gate between the old state and a candidate. All input projections of a sequence are one matrix
multiply in ``project`` (weights fused as ``weight_ih`` of shape (G*n, m), one bias per gate); ``step`` does only
the recurrent part. Candidate blocks are named "c" in ``param_gates`` whatever the paper calls the candidate.
Notation: m = input_size, n = hidden_size; shapes are batch-first, x (B, T, m) -> outputs (B, T, n).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..registry import SuiteError
from .contract import RecurrentCell, gate_views
from .fused import bptt_one_gemm, bptt_reset_gate, mm_bt
from .kernels import linear, tanh
from .registry import register


class _FusedInput(RecurrentCell):
    """Shared plumbing: ``weight_ih`` (G*n, m) and ``bias_ih`` (G*n) in ``param_gates`` order, one GEMM in project."""

    def _make_input(self, blocks: int, bias: bool) -> None:
        n, m = self.hidden_size, self.input_size
        self.weight_ih = nn.Parameter(torch.empty(blocks * n, m))
        self.bias_ih = nn.Parameter(torch.empty(blocks * n)) if bias else None

    def project(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, self.weight_ih, self.bias_ih)  # (B, T, G*n)

    def _gate_bias(self, gate: str) -> Tensor:
        return gate_views(self.bias_ih, self.param_gates["bias_ih"])[gate]

    def chrono_targets(self) -> list[tuple[Tensor, int]]:
        gate, sign = self.keep_gate
        return [(self._gate_bias(gate), sign)]


class OneGateRNN(_FusedInput):
    """One gate a between the state and a tanh candidate c, both recurrent terms in one GEMM: sgru and ugrnn.

    Equations: [a_pre, c_pre] = W x_t + U h_{t−1} + b;  a = σ(a_pre);  c = tanh(c_pre);
      keep_sign = +1 (a keeps the state):   h_t = a ⊙ h_{t−1} + (1 − a) ⊙ c   (UGRNN's g)
      keep_sign = −1 (a writes the state):  h_t = a ⊙ c + (1 − a) ⊙ h_{t−1}   (the simplified GRU's Γu)
    The same model with a renamed 1 − a; both names stay registered because their gate statistics and chrono
    sign read differently. Parameters: 2n(m + n + 1): ``weight_ih`` (2n, m), ``weight_hh`` (2n, n), ``bias_ih``
    (2n), blocks in (gate, candidate) order. Shapes: x (B, T, m) -> outputs (B, T, n); state h (B, n).

    ``keep_sign``: +1 or −1 as above; None takes the sign of the class's ``keep_gate``, which is how the
    registered cells fix it (a positional argument, so that it is not a cell option a config could set).
    """

    gate_names = ("a",)
    param_gates = {"weight_ih": ("a", "c"), "weight_hh": ("a", "c"), "bias_ih": ("a", "c")}
    keep_gate = ("a", 1)
    fast_path = True
    packs = True

    def __init__(self, input_size: int, hidden_size: int, keep_sign: int | None = None, *, bias: bool = True,
                 init: str = "orthogonal", init_range: float = 0.1, chrono_init: int | None = None):
        super().__init__(input_size, hidden_size, bias=bias, init=init, init_range=init_range,
                         chrono_init=chrono_init)
        sign = type(self).keep_gate[1] if keep_sign is None else keep_sign
        if sign not in (1, -1):
            raise SuiteError(f"keep_sign={keep_sign!r} must be +1 (the gate keeps the state) or -1 (it writes)")
        self.keep_gate = (self.gate_names[0], sign)  # chrono init reads the instance's sign
        self.keeps = sign > 0
        self._make_input(2, bias)
        self.weight_hh = nn.Parameter(torch.empty(2 * hidden_size, hidden_size))
        self.reset_parameters()

    def forward_step(self, xp: Tensor, state, w):
        (h,) = state
        a, cand = linear(h, w[0], xp).chunk(2, 1)  # both recurrent terms in one GEMM
        a = torch.sigmoid(a)  # (B, n)
        c = tanh(cand)
        new = torch.lerp(c, h, a) if self.keeps else torch.lerp(h, c, a)  # a*h + (1-a)*c, or a*c + (1-a)*h
        return (new,), (a, c)

    def step(self, xp: Tensor, state, trace=None):
        state, (a, _) = self.forward_step(xp, state, self.fused_weights())
        if trace is not None:
            trace[self.gate_names[0]].append(a)
        return state

    def bptt(self, grads):
        a_all, c_all = grads.saved  # (T, B, n)

        def factors(t0, t1):
            a, c, h = a_all[t0:t1], c_all[t0:t1], grads.h(t0, t1)  # h = h_{t-1}
            # dh_t/d a_pre = ±(h - c) a (1 - a);  dh_t/d c_pre = (share written) (1 - c²);  dh_t/dh_{t-1} = kept
            if self.keeps:
                return torch.stack([(h - c) * a * (1 - a), (1 - a) * (1 - c * c)], 2), a
            return torch.stack([(c - h) * a * (1 - a), a * (1 - c * c)], 2), 1 - a

        dpre, dh0 = bptt_one_gemm(grads, grads.w[0], factors)
        return dpre, (dh0,), (mm_bt(dpre, grads.h_prev()),)


@register("sgru", "simplified GRU of the seed: one update gate u, c_t = u*tanh(W[c,x]) + (1-u)*c_{t-1}",
          "Ng 2018, deeplearning.ai Sequence Models course (simplified GRU); the UGRNN of Collins et al. 2017")
class SimplifiedGRU(OneGateRNN):
    """The seed article's simplified GRU (deeplearning.ai "Sequence Models" notation), update gate only.

    Equations: c~_t = tanh(W_c[c_{t-1}, x_t] + b_c); Γu = σ(W_u[c_{t-1}, x_t] + b_u);
    c_t = Γu⊙c~_t + (1 − Γu)⊙c_{t-1}; h_t = c_t. Each W_* [c, x] is split here into a recurrent block (in
    ``weight_hh``) and an input block (in ``weight_ih``). Same cell as UGRNN with g = 1 − Γu (Collins et al. 2017);
    the full GRU it simplifies is Cho et al. 2014. :class:`OneGateRNN` with keep_sign = −1.
    Parameters: 2n(m + n + 1). Keep gate 1 − Γu, so chrono init writes −log U[1, T_max − 1] into b_u.
    Shapes: x (B, T, m) -> outputs (B, T, n); state h = c (B, n). Trace gate "u" = Γu (B, T, n).
    """

    gate_names = ("u",)
    param_gates = {"weight_ih": ("u", "c"), "weight_hh": ("u", "c"), "bias_ih": ("u", "c")}
    keep_gate = ("u", -1)


@register("ugrnn", "update-gate RNN: h_t = g*h_{t-1} + (1-g)*tanh(W x + U h); one gate, capacity study cell",
          "Collins, Sohl-Dickstein & Sussillo 2017, Capacity and Trainability in Recurrent Neural Networks")
class UGRNN(OneGateRNN):
    """UGRNN (Collins, Sohl-Dickstein & Sussillo 2017, "Capacity and Trainability in Recurrent Neural Networks").

    Equations: c = tanh(W_cx x + W_ch h_{t−1} + b_c); g = σ(W_gx x + W_gh h_{t−1} + b_g);
    h_t = g⊙h_{t−1} + (1 − g)⊙c. The simplified GRU (``sgru``) with g = 1 − Γu: :class:`OneGateRNN` with
    keep_sign = +1.
    Parameters: 2n(m + n + 1). Keep gate g (chrono sign +1).
    Shapes: x (B, T, m) -> outputs (B, T, n); state h (B, n). Trace gate "g" (B, T, n).
    """

    gate_names = ("g",)
    param_gates = {"weight_ih": ("g", "c"), "weight_hh": ("g", "c"), "bias_ih": ("g", "c")}
    keep_gate = ("g", 1)


@register("mgu", "minimal gated unit: one forget gate f, also used as the reset gate inside the candidate",
          "Zhou, Wu, Zhang & Zhou 2016, Minimal Gated Unit for Recurrent Neural Networks")
class MGU(_FusedInput):
    """Minimal Gated Unit (Zhou, Wu, Zhang & Zhou 2016, "Minimal Gated Unit for Recurrent Neural Networks").

    Equations: f = σ(W_f x + U_f h_{t−1} + b_f); h~ = tanh(W_h x + U_h(f⊙h_{t−1}) + b_h);
    h_t = (1 − f)⊙h_{t−1} + f⊙h~.
    Parameters: 2n(m + n + 1). Keep gate 1 − f (chrono sign −1).
    U_f and U_h are separate parameters (``weight_hh_f``, ``weight_hh_c``): U_h needs f first, so the two recurrent
    products cannot share a GEMM, and slicing one fused tensor per step would cost a full-size gradient per slice.
    Shapes: x (B, T, m) -> outputs (B, T, n); state h (B, n). Trace gate "f" (B, T, n).
    """

    gate_names = ("f",)
    param_gates = {"weight_ih": ("f", "c"), "bias_ih": ("f", "c"), "weight_hh_f": ("f",), "weight_hh_c": ("c",)}
    keep_gate = ("f", -1)

    def __init__(self, input_size: int, hidden_size: int, *, bias: bool = True, init: str = "orthogonal",
                 init_range: float = 0.1, chrono_init: int | None = None):
        super().__init__(input_size, hidden_size, bias=bias, init=init, init_range=init_range,
                         chrono_init=chrono_init)
        self._make_input(2, bias)
        self.weight_hh_f = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.weight_hh_c = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.reset_parameters()

    fast_path = True
    packs = True

    def fused_weights(self):
        return (self.weight_hh_f, self.weight_hh_c)

    def forward_step(self, xp: Tensor, state, w):
        (h,) = state
        xf, xc = xp.chunk(2, 1)
        f = torch.sigmoid(linear(h, w[0], xf))  # (B, n)
        fh = f * h
        cand = tanh(linear(fh, w[1], xc))
        return (torch.lerp(h, cand, f),), (f, fh, cand)  # (1-f)*h + f*h~

    def step(self, xp: Tensor, state, trace=None):
        state, (f, _, _) = self.forward_step(xp, state, self.fused_weights())
        if trace is not None:
            trace["f"].append(f)
        return state

    def bptt(self, grads):
        f_all, fh_all, cand_all = grads.saved  # (T, B, n)
        n = self.hidden_size
        d = torch.empty_like(grads.xp)  # dxp: f | c

        def factors(t0, t1):
            f, cand, h = f_all[t0:t1], cand_all[t0:t1], grads.h(t0, t1)
            sf = f * (1 - f)
            # f is the update gate and the reset gate: d pre_f = dh (h~ - h) f' + d(f h) h f'
            return f * (1 - cand * cand), 1 - f, f, ((cand - h) * sf).unsqueeze(2), (h * sf).unsqueeze(2), (None,)

        dh0 = bptt_reset_gate(grads, grads.w[1], d[..., :n].unsqueeze(2), d[..., n:], factors,
                              [(slice(0, 1), grads.w[0])])
        return d, (dh0,), (mm_bt(d[..., :n], grads.h_prev()), mm_bt(d[..., n:], fh_all.transpose(0, 1)))


@register("janet", "just another network: forget gate only, c_t = σ(s)*c + (1-σ(s-β))*tanh(...), β=1",
          "van der Westhuizen & Lasenby 2018, The unreasonable effectiveness of the forget gate")
class JANET(_FusedInput):
    """JANET (van der Westhuizen & Lasenby 2018, "The unreasonable effectiveness of the forget gate").

    Equations: s = U_f h_{t−1} + W_f x + b_f; c~ = tanh(U_c h_{t−1} + W_c x + b_c);
    c_t = σ(s)⊙c_{t−1} + (1 − σ(s − β))⊙c~; h_t = c_t.
    Parameters: 2n(m + n + 1). Keep gate σ(s) (chrono sign +1).

    Options: ``beta`` (default 1.0, the paper's value) shifts the input gate so that a little less is written than
    is forgotten. The authors chrono-initialise b_f by default (their code samples log U(1, T_max)); here, as for
    every cell, chrono init is used only when ``chrono_init`` is given, with the suite's log U[1, T_max − 1], so that
    cells are compared under the same initialisation.
    Trace gates: "f" = σ(s), the keep gate, and "i" = 1 − σ(s − β), the write gate; both are reported because
    with β ≠ 0 they saturate differently. Both come from the same pre-activation, so ``param_gates`` has "f".
    Shapes: x (B, T, m) -> outputs (B, T, n); state h = c (B, n).
    """

    gate_names = ("f", "i")
    param_gates = {"weight_ih": ("f", "c"), "weight_hh": ("f", "c"), "bias_ih": ("f", "c")}
    keep_gate = ("f", 1)

    def __init__(self, input_size: int, hidden_size: int, *, bias: bool = True, init: str = "orthogonal",
                 init_range: float = 0.1, chrono_init: int | None = None, beta: float = 1.0):
        super().__init__(input_size, hidden_size, bias=bias, init=init, init_range=init_range,
                         chrono_init=chrono_init)
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta):
            raise SuiteError(f"option beta={beta!r} must be a finite number")
        self.beta = float(beta)
        self._make_input(2, bias)
        self.weight_hh = nn.Parameter(torch.empty(2 * hidden_size, hidden_size))
        self.reset_parameters()

    fast_path = True
    packs = True

    def forward_step(self, xp: Tensor, state, w):
        (c,) = state
        s, cand = linear(c, w[0], xp).chunk(2, 1)
        f = torch.sigmoid(s)  # (B, n)
        i = torch.sigmoid(self.beta - s)  # 1 - σ(s - β) = σ(β - s)
        c_tilde = tanh(cand)
        return (torch.addcmul(f * c, i, c_tilde),), (f, i, c_tilde)

    def step(self, xp: Tensor, state, trace=None):
        state, (f, i, _) = self.forward_step(xp, state, self.fused_weights())
        if trace is not None:
            trace["f"].append(f)
            trace["i"].append(i)
        return state

    def bptt(self, grads):
        f_all, i_all, ct_all = grads.saved  # (T, B, n)

        def factors(t0, t1):
            f, i, c_tilde, c = f_all[t0:t1], i_all[t0:t1], ct_all[t0:t1], grads.h(t0, t1)
            # dc_t/ds = c f(1-f) - c~ i(1-i)  (i = σ(β - s));  dc_t/d cand = i (1 - c~²)
            j = torch.stack([c * f * (1 - f) - c_tilde * i * (1 - i), i * (1 - c_tilde * c_tilde)], 2)
            return j, f

        dpre, dc0 = bptt_one_gemm(grads, grads.w[0], factors)
        return dpre, (dc0,), (mm_bt(dpre, grads.h_prev()),)


@register("ligru", "light GRU: one update gate, ReLU candidate, batch norm on input projections, no reset gate",
          "Ravanelli, Brakel, Omologo & Bengio 2018, Light Gated Recurrent Units for Speech Recognition")
class LiGRU(_FusedInput):
    """Light GRU (Ravanelli, Brakel, Omologo & Bengio 2018, "Light Gated Recurrent Units for Speech Recognition").

    Equations: z = σ(BN(W_z x) + U_z h_{t−1}); h~ = ReLU(BN(W_h x) + U_h h_{t−1}); h_t = z⊙h_{t−1} + (1 − z)⊙h~.
    As in the reference code (pytorch-kaldi): U has no bias; W has none while batch norm is on (the BN shift
    plays its role); BN momentum 0.05; U orthogonal; one recurrent dropout mask on h~ per sequence, reused at
    every step.

    Options:
      batch_norm (True): one BatchNorm1d over the 2n projected features, statistics over all B*T rows (the
        reference's per-gate BNs, fused; per-feature statistics make that the same thing). With False, W has a
        bias. With batch_norm=True, ``bias=False`` drops the BN's affine transform (γ and β).
      recurrent_dropout (0.0): drop probability of the mask on h~, only in training mode. Inverted dropout (kept
        units scaled by 1/(1−p), none at eval) where the reference scales by 1−p at test time; same expectation.
    Parameters: batch_norm=True: 2n(m + n) + 4n = 2n(m + n + 2) (BN γ and β; running statistics are buffers);
    batch_norm=False: 2n(m + n + 1). Keep gate z (chrono sign +1): with batch norm on, the chrono bias goes into
    the BN shift β of the z features, the only additive term before σ.
    BN parameters are the module's own (γ = 1, β = 0) under every ``init`` scheme.
    Shapes: x (B, T, m) -> outputs (B, T, n); state h (B, n). Trace gate "z" (B, T, n).
    """

    gate_names = ("z",)
    param_gates = {"weight_ih": ("z", "c"), "weight_hh": ("z", "c"), "bias_ih": ("z", "c"),
                   "norm.weight": ("z", "c"), "norm.bias": ("z", "c")}
    keep_gate = ("z", 1)

    def __init__(self, input_size: int, hidden_size: int, *, bias: bool = True, init: str = "orthogonal",
                 init_range: float = 0.1, chrono_init: int | None = None, batch_norm: bool = True,
                 recurrent_dropout: float = 0.0):
        super().__init__(input_size, hidden_size, bias=bias, init=init, init_range=init_range,
                         chrono_init=chrono_init)
        if not isinstance(batch_norm, bool):
            raise SuiteError(f"option batch_norm={batch_norm!r} must be true or false")
        if (isinstance(recurrent_dropout, bool) or not isinstance(recurrent_dropout, (int, float))
                or not 0.0 <= recurrent_dropout < 1.0):
            raise SuiteError(f"option recurrent_dropout={recurrent_dropout!r} must be a number in [0, 1)")
        self.batch_norm = batch_norm
        self.recurrent_dropout = float(recurrent_dropout)
        self._make_input(2, bias and not batch_norm)
        self.norm = nn.BatchNorm1d(2 * hidden_size, momentum=0.05, affine=bias) if batch_norm else None
        self.weight_hh = nn.Parameter(torch.empty(2 * hidden_size, hidden_size))
        self.drop_mask: Tensor | None = None
        names = dict(self.named_parameters())  # the bias lives in W or in the BN shift, depending on options
        self.param_gates = {k: v for k, v in type(self).param_gates.items() if k in names}
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # The base initialises only this module's own parameters; reset the BN first so that a second call
        # re-initialises everything and chrono lands on a fresh shift.
        if self.norm is not None:
            self.norm.reset_parameters()
        super().reset_parameters()

    def chrono_targets(self) -> list[tuple[Tensor, int]]:
        if self.norm is None:
            return super().chrono_targets()
        return [(gate_views(self.norm.bias, ("z", "c"))["z"], 1)]

    def project(self, x: Tensor) -> Tensor:
        xp = super().project(x)  # (B, T, 2n)
        if self.norm is not None:
            flat = xp.reshape(-1, xp.shape[-1])
            if self.training and flat.shape[0] == 1:
                # one row has no batch statistics: normalise with the running ones instead of failing
                flat = nn.functional.batch_norm(flat, self.norm.running_mean, self.norm.running_var,
                                                self.norm.weight, self.norm.bias, False, 0.0, self.norm.eps)
                xp = flat.view_as(xp)
            else:
                xp = self.norm(flat).view_as(xp)
        # project runs once per sequence, right before the steps: the place to draw the per-sequence mask.
        self.drop_mask = None
        if self.training and self.recurrent_dropout > 0:
            keep = 1.0 - self.recurrent_dropout
            self.drop_mask = xp.new_empty(x.shape[0], self.hidden_size).bernoulli_(keep).div_(keep)  # (B, n)
        return xp

    fast_path = True

    def fused_weights(self):
        # the dropout mask is drawn in project: passed along so that backward uses the forward's mask
        return (self.weight_hh,) if self.drop_mask is None else (self.weight_hh, self.drop_mask)

    def forward_step(self, xp: Tensor, state, w):
        (h,) = state
        z, cand = linear(h, w[0], xp).chunk(2, 1)
        z = torch.sigmoid(z)  # (B, n)
        cand = torch.relu(cand)
        if len(w) > 1:
            cand = cand * w[1]
        return (torch.lerp(cand, h, z),), (z, cand)  # z*h + (1-z)*h~

    def step(self, xp: Tensor, state, trace=None):
        state, (z, _) = self.forward_step(xp, state, self.fused_weights())
        if trace is not None:
            trace["z"].append(z)
        return state

    def bptt(self, grads):
        z_all, cand_all = grads.saved  # (T, B, n); cand after ReLU and the mask
        mask = grads.w[1] if len(grads.w) > 1 else None

        def factors(t0, t1):
            z, cand, h = z_all[t0:t1], cand_all[t0:t1], grads.h(t0, t1)
            relu_grad = (cand > 0).to(z.dtype)  # ReLU'(0) = 0, as torch's; a dropped unit has cand = 0 too
            if mask is not None:
                relu_grad = relu_grad * mask
            return torch.stack([(h - cand) * z * (1 - z), (1 - z) * relu_grad], 2), z

        dpre, dh0 = bptt_one_gemm(grads, grads.w[0], factors)
        dw = (mm_bt(dpre, grads.h_prev()),)
        return dpre, (dh0,), dw + ((None,) if mask is not None else ())
