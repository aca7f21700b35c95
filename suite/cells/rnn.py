"""The Elman tanh RNN: the vanishing-gradient baseline every gated cell is measured against."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .contract import RecurrentCell
from .fused import bptt_one_gemm, mm_bt
from .kernels import linear, tanh
from .registry import register


@register("rnn_tanh", "Elman RNN, h_t = tanh(W x_t + U h_{t-1} + b); no gates, the vanishing-gradient baseline",
          "Elman 1990, Finding Structure in Time")
class TanhRNN(RecurrentCell):
    """Elman (1990) tanh RNN.

    Equations: h_t = tanh(W x_t + U h_{t-1} + b).
    Parameters: n(m + n + 1) (one bias). No gate keeps the state, so ``chrono_init`` is not an option.
    Shapes: x (B, T, m) -> outputs (B, T, n); state h (B, n).
    """

    def __init__(self, input_size: int, hidden_size: int, *, bias: bool = True, init: str = "orthogonal",
                 init_range: float = 0.1):
        super().__init__(input_size, hidden_size, bias=bias, init=init, init_range=init_range)
        self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(hidden_size)) if bias else None
        self.reset_parameters()

    def project(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, self.weight_ih, self.bias_ih)  # (B, T, n)

    fast_path = True
    packs = True

    def forward_step(self, xp: Tensor, state, w):
        (h,) = state
        return (tanh(linear(h, w[0], xp)),), ()

    def step(self, xp: Tensor, state, trace=None):
        return self.forward_step(xp, state, self.fused_weights())[0]

    def bptt(self, grads):
        def factors(t0, t1):
            h = grads.out.transpose(0, 1)[t0:t1]  # h_t
            return (1 - h * h).unsqueeze(2), None  # tanh'

        dpre, dh0 = bptt_one_gemm(grads, grads.w[0], factors)
        return dpre, (dh0,), (mm_bt(dpre, grads.h_prev()),)
