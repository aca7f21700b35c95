"""IndRNN, an example cell plugin (docs/extending.md): Li, Li, Cook, Zhu & Gao 2018, Independently Recurrent
Neural Network (IndRNN): Building A Longer and Deeper RNN, arXiv:1803.04831.

    h_t = act(W x_t + u ⊙ h_{t-1} + b)

The recurrent weight u is a vector, one weight per unit: the units do not see each other through time, so the
gradient of unit i over k steps is a product of u_i act'(.) that each unit can keep near 1 on its own.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from suite.cells import RecurrentCell, register
from suite.registry import SuiteError

ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh}  # relu: the paper's choice


@register("indrnn", "IndRNN, h_t = act(W x_t + u * h_{t-1} + b) with a recurrent vector u: independent units",
          "Li et al. 2018, Independently Recurrent Neural Network (IndRNN), arXiv:1803.04831")
class IndRNN(RecurrentCell):
    """Parameters: n(m + 2) with a bias: W (n, m), u (n,), b (n,). Shapes: x (B, T, m) -> (B, T, n); h (B, n)."""

    def __init__(self, input_size: int, hidden_size: int, *, activation: str = "relu", bias: bool = True,
                 init: str = "orthogonal", init_range: float = 0.1):
        super().__init__(input_size, hidden_size, bias=bias, init=init, init_range=init_range)
        if activation not in ACTIVATIONS:
            raise SuiteError(f"option activation={activation!r} is not one of {', '.join(ACTIVATIONS)}")
        self.activation = activation
        self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(hidden_size))  # u: one recurrent weight per unit
        self.bias_ih = nn.Parameter(torch.empty(hidden_size)) if bias else None
        self.reset_parameters()

    def project(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, self.weight_ih, self.bias_ih)  # (B, T, n): W x_t + b for every t

    def step(self, xp: Tensor, state, trace=None):
        (h,) = state
        return (ACTIVATIONS[self.activation](xp + self.weight_hh * h),)  # (B, n)
