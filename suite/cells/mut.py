"""MUT1, MUT2, MUT3: the three best architectures of Jozefowicz, Zaremba & Sutskever (2015).

Found by an evolutionary search over about ten thousand GRU-like cells ("An Empirical Exploration of Recurrent
Network Architectures", ICML 2015). All three are GRU-shaped: an update gate z, a reset gate r inside the
candidate, h_t = z⊙h~ + (1 − z)⊙h_{t−1}; the keep gate is 1 − z (chrono sign −1 on b_z). Trace gates "z" and
"r" (B, T, n); the candidate block is named "c" in ``param_gates``.

MUT1 and MUT2 add x to an n-wide pre-activation without a weight, so they need m = n. Option ``project_input``
(default False) first maps x to n with a learned n×m matrix ``weight_ih_proj`` (no bias, n·m parameters); "x" in
the equations is then the projected input. The projection is folded into the input weights (W·P, a small n-sized
product per call) so that ``project`` stays one GEMM over the sequence. MUT3 needs no projection but accepts the
option too, so that one sweep can set it for all three.

Equations checked against the paper (a secondary source left MUT3's tanh(h) unchecked; docs/cells.md). Jozefowicz,
Zaremba & Sutskever list the three best architectures of their search as follows, in their notation (sigm = σ, state
h_t -> h_{t+1}):
  MUT1: z = sigm(W_xz x_t + b_z);  r = sigm(W_xr x_t + W_hr h_t + b_r);
        h_{t+1} = tanh(W_hh (r ⊙ h_t) + tanh(x_t) + b_h) ⊙ z + h_t ⊙ (1 − z)
  MUT2: z = sigm(W_xz x_t + W_hz h_t + b_z);  r = sigm(x_t + W_hr h_t + b_r);
        h_{t+1} = tanh(W_hh (r ⊙ h_t) + W_xh x_t + b_h) ⊙ z + h_t ⊙ (1 − z)
  MUT3: z = sigm(W_xz x_t + W_hz tanh(h_t) + b_z);  r = sigm(W_xr x_t + W_hr h_t + b_r);
        h_{t+1} = tanh(W_hh (r ⊙ h_t) + W_xh x_t + b_h) ⊙ z + h_t ⊙ (1 − z)
What the paper says that matters here: (1) MUT3's update gate does read tanh(h_t), not h_t (the detail
docs/cells.md records); (2) MUT1's candidate adds tanh(x_t) and MUT2's reset gate adds x_t WITHOUT a weight,
which only type-checks when x_t and h_t have the same width (in the paper's experiments the input is an
embedding of the hidden width); (3) z multiplies the candidate, so 1 − z keeps the state; (4) one bias per gate.
Decisions: the equations are implemented exactly as listed, including the unweighted terms; the learned input
projection (``project_input``) for m ≠ n is the suite's own addition, off by default and documented above, never
a change to the equations; chrono init goes on b_z with sign −1 because 1 − z is the keep gate. Where the check
came from: the paper's listing as published (ICML 2015, PMLR 37) and as reproduced by independent implementations
(e.g. RecurrentLayers.jl's MUT1-3 cells, which agree term by term); the PDF could not be opened in the
environment this docstring was written in.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..registry import SuiteError
from .contract import RecurrentCell, gate_views
from .fused import bptt_reset_gate, mm_bt
from .kernels import linear, tanh
from .registry import register

SOURCE = "Jozefowicz, Zaremba & Sutskever 2015, An Empirical Exploration of Recurrent Network Architectures"


class _MUT(RecurrentCell):
    """Shared plumbing: optional input projection, fused input weights and biases in z|r|c order, chrono on b_z."""

    gate_names = ("z", "r")
    keep_gate = ("z", -1)
    needs_square = True  # MUT1/MUT2 add x unweighted
    input_blocks: tuple[str, ...] = ()  # blocks of weight_ih (the weighted input terms)
    recurrent: dict[str, int] = {}  # recurrent weights: name -> gate blocks of n rows, in the order made

    def __init__(self, input_size: int, hidden_size: int, *, bias: bool = True, init: str = "orthogonal",
                 init_range: float = 0.1, chrono_init: int | None = None, project_input: bool = False):
        super().__init__(input_size, hidden_size, bias=bias, init=init, init_range=init_range,
                         chrono_init=chrono_init)
        if not isinstance(project_input, bool):
            raise SuiteError(f"option project_input={project_input!r} must be true or false")
        if self.needs_square and input_size != hidden_size and not project_input:
            raise SuiteError(
                f"{self.name()} adds the input to the state without a weight, so it needs input_size == "
                f"hidden_size (got input_size={input_size}, hidden_size={hidden_size}); set option "
                f"project_input=True to learn a projection of the input to hidden_size")
        self.project_input = project_input
        n = hidden_size
        width = n if project_input else input_size  # width of "x" in the equations
        self.weight_ih_proj = nn.Parameter(torch.empty(n, input_size)) if project_input else None
        self.weight_ih = nn.Parameter(torch.empty(len(self.input_blocks) * n, width))
        self.bias_ih = nn.Parameter(torch.empty(3 * n)) if bias else None
        for name, blocks in self.recurrent.items():
            setattr(self, name, nn.Parameter(torch.empty(blocks * n, n)))
        self.reset_parameters()

    def _input_weight(self) -> Tensor:
        """Weight of the one projection GEMM: rows = weighted input terms, then x itself if the cell needs it."""
        if self.weight_ih_proj is None:
            return self.weight_ih
        proj = self.weight_ih_proj  # (n, m)
        rows = [self.weight_ih @ proj]  # W (P x) = (W P) x
        if self.needs_square:
            rows.append(proj)  # the projected x itself, for the unweighted term
        return torch.cat(rows, 0)

    def _projected(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """(weighted input terms (B, T, G*n), the equations' x (B, T, n) or None if unused)."""
        out = nn.functional.linear(x, self._input_weight())
        if not self.needs_square:
            return out, None
        if self.weight_ih_proj is None:
            return out, x
        g = self.weight_ih.shape[0]
        return out[..., :g], out[..., g:]

    def _with_bias(self, xp: Tensor) -> Tensor:
        return xp if self.bias_ih is None else xp + self.bias_ih

    def chrono_targets(self) -> list[tuple[Tensor, int]]:
        return [(gate_views(self.bias_ih, ("z", "r", "c"))["z"], -1)]

    # Every MUT ends with cand = tanh(xp_c + (r ⊙ h) W_hh_c^T) and h_t = lerp(h, cand, z); forward_step returns
    # (z, r, r ⊙ h, cand) first, and the shared backward below needs only where z and r read h.
    fast_path = True
    packs = True

    def step(self, xp: Tensor, state, trace=None):
        state, (z, r, *_) = self.forward_step(xp, state, self.fused_weights())
        if trace is not None:
            trace["z"].append(z)
            trace["r"].append(r)
        return state

    def _bptt(self, g, gemms, th_all=None):
        """dxp (B, T, 3n), z|r|c, and dh_0, of h_t = h + z (cand - h); gemms: (gate slice, W) of the
        gates' recurrent GEMMs; th_all: tanh(h_{t-1}) if z's GEMM reads it (mut3)."""
        z_all, r_all, rh_all, cand_all = g.saved[:4]  # (T, B, n)
        n = self.hidden_size
        d = torch.empty_like(g.xp)  # dxp: z | r | c

        def factors(t0, t1):
            z, r, cand, h = z_all[t0:t1], r_all[t0:t1], cand_all[t0:t1], g.h(t0, t1)
            zero = torch.zeros_like(h)
            a = torch.stack([(cand - h) * z * (1 - z), zero], 2)  # dh_t reaches z directly
            rr = torch.stack([zero, h * r * (1 - r)], 2)  # d(r h) reaches r
            j_in = (None,) if th_all is None else (1 - th_all[t0:t1] ** 2, None)
            return z * (1 - cand * cand), 1 - z, r, a, rr, j_in

        dh0 = bptt_reset_gate(g, g.w[-1], d[..., :2 * n].unflatten(2, (2, n)), d[..., 2 * n:], factors, gemms)
        return d, dh0

    def _dw_c(self, g, d):
        return mm_bt(d[..., 2 * self.hidden_size:], g.saved[2].transpose(0, 1))


@register("mut1", "evolved GRU-like cell: z sees x only, unweighted tanh(x) in the candidate (m = n or project_input)",
          SOURCE + " (MUT1)")
class MUT1(_MUT):
    """MUT1 (Jozefowicz, Zaremba & Sutskever 2015).

    Equations: z = σ(W_xz x + b_z); r = σ(W_xr x + W_hr h + b_r); h' = tanh(W_hh(r⊙h) + tanh(x) + b_h)⊙z + h⊙(1−z).
    Parameters: W_xz, W_xr (n×n each, m = n), W_hr, W_hh (n×n), b_z, b_r, b_h: 4n² + 3n, plus n·m with
    project_input (= 67,200 at n=128, m=10). Shapes: x (B, T, m) -> outputs (B, T, n); state h (B, n).
    """

    input_blocks = ("z", "r")
    param_gates = {"weight_ih": ("z", "r"), "bias_ih": ("z", "r", "c"), "weight_hh_r": ("r",),
                   "weight_hh_c": ("c",)}

    recurrent = {"weight_hh_r": 1, "weight_hh_c": 1}

    def project(self, x: Tensor) -> Tensor:
        zr, xx = self._projected(x)
        return self._with_bias(torch.cat([zr, torch.tanh(xx)], -1))  # (B, T, 3n): z | r | c pre-activations

    def fused_weights(self):
        return (self.weight_hh_r, self.weight_hh_c)

    def forward_step(self, xp: Tensor, state, w):
        (h,) = state
        xz, xr, xc = xp.chunk(3, 1)
        z = torch.sigmoid(xz)  # (B, n): no recurrent term
        r = torch.sigmoid(linear(h, w[0], xr))
        rh = r * h
        cand = tanh(linear(rh, w[1], xc))
        return (torch.lerp(h, cand, z),), (z, r, rh, cand)  # z*h~ + (1-z)*h

    def bptt(self, g):
        n = self.hidden_size
        d, dh0 = self._bptt(g, [(slice(1, 2), g.w[0])])
        return d, (dh0,), (mm_bt(d[..., n:2 * n], g.h_prev()), self._dw_c(g, d))


@register("mut2", "evolved GRU-like cell: reset gate sees x unweighted, r = σ(x + W_hr h + b) (m = n or project_input)",
          SOURCE + " (MUT2)")
class MUT2(_MUT):
    """MUT2 (Jozefowicz, Zaremba & Sutskever 2015).

    Equations: z = σ(W_xz x + W_hz h + b_z); r = σ(x + W_hr h + b_r);
    h' = tanh(W_hh(r⊙h) + W_xh x + b_h)⊙z + h⊙(1−z).
    Parameters: W_xz, W_xh (n×n each, m = n), W_hz, W_hr, W_hh (n×n), three biases: 5n² + 3n, plus n·m with
    project_input (= 83,584 at n=128, m=10). W_hz and W_hr share one GEMM (``weight_hh``, blocks z|r).
    Shapes: x (B, T, m) -> outputs (B, T, n); state h (B, n).
    """

    input_blocks = ("z", "c")
    param_gates = {"weight_ih": ("z", "c"), "bias_ih": ("z", "r", "c"), "weight_hh": ("z", "r"),
                   "weight_hh_c": ("c",)}

    recurrent = {"weight_hh": 2, "weight_hh_c": 1}  # W_hz | W_hr share one GEMM

    def project(self, x: Tensor) -> Tensor:
        zc, xx = self._projected(x)
        xz, xc = zc.chunk(2, -1)
        return self._with_bias(torch.cat([xz, xx, xc], -1))  # (B, T, 3n): z | r | c pre-activations

    def fused_weights(self):
        return (self.weight_hh, self.weight_hh_c)

    def forward_step(self, xp: Tensor, state, w):
        (h,) = state
        n = self.hidden_size
        zr = linear(h, w[0], xp[:, :2 * n])
        z, r = torch.sigmoid(zr).chunk(2, 1)  # (B, n) each
        rh = r * h
        cand = tanh(linear(rh, w[1], xp[:, 2 * n:]))
        return (torch.lerp(h, cand, z),), (z, r, rh, cand)

    def bptt(self, g):
        d, dh0 = self._bptt(g, [(slice(0, 2), g.w[0])])
        return d, (dh0,), (mm_bt(d[..., :2 * self.hidden_size], g.h_prev()), self._dw_c(g, d))


@register("mut3", "evolved GRU-like cell, update gate reads tanh(h): z = σ(W x + U tanh(h) + b)",
          SOURCE + " (MUT3)")
class MUT3(_MUT):
    """MUT3 (Jozefowicz, Zaremba & Sutskever 2015).

    Equations: z = σ(W_xz x + W_hz tanh(h) + b_z); r = σ(W_xr x + W_hr h + b_r);
    h' = tanh(W_hh(r⊙h) + W_xh x + b_h)⊙z + h⊙(1−z).
    The tanh(h) in z is the paper's (checked; see the module docstring): z reads the squashed state, r and the
    candidate the raw one.
    Parameters: 3n(m + n + 1) (53,376 at n=128, m=10); with project_input 3n(2n + 1) + n·m.
    Shapes: x (B, T, m) -> outputs (B, T, n); state h (B, n).
    """

    needs_square = False
    input_blocks = ("z", "r", "c")
    param_gates = {"weight_ih": ("z", "r", "c"), "bias_ih": ("z", "r", "c"), "weight_hh_z": ("z",),
                   "weight_hh_r": ("r",), "weight_hh_c": ("c",)}

    # Three separate recurrent weights: z reads tanh(h), r reads h, the candidate reads r*h.
    recurrent = {"weight_hh_z": 1, "weight_hh_r": 1, "weight_hh_c": 1}

    def project(self, x: Tensor) -> Tensor:
        return self._with_bias(self._projected(x)[0])  # (B, T, 3n)

    def fused_weights(self):
        return (self.weight_hh_z, self.weight_hh_r, self.weight_hh_c)

    def forward_step(self, xp: Tensor, state, w):
        (h,) = state
        xz, xr, xc = xp.chunk(3, 1)
        th = tanh(h)
        z = torch.sigmoid(linear(th, w[0], xz))  # (B, n)
        r = torch.sigmoid(linear(h, w[1], xr))
        rh = r * h
        cand = tanh(linear(rh, w[2], xc))
        return (torch.lerp(h, cand, z),), (z, r, rh, cand, th)

    def bptt(self, g):
        n = self.hidden_size
        th = g.saved[4]  # tanh(h_{t-1}), (T, B, n)
        d, dh0 = self._bptt(g, [(slice(0, 1), g.w[0]), (slice(1, 2), g.w[1])], th_all=th)
        return d, (dh0,), (mm_bt(d[..., :n], th.transpose(0, 1)), mm_bt(d[..., n:2 * n], g.h_prev()),
                           self._dw_c(g, d))
