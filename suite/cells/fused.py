"""The fused time loop: a cell's whole recurrence as ONE autograd node with a hand-written backward through time.

A cell with a fast path writes its step as ``forward_step`` and the matching backward as ``bptt``
(:class:`suite.cells.contract.RecurrentCell`); :class:`FusedLoop` runs the steps without building a graph and
calls ``bptt`` in backward. The ``bptt_*`` helpers are the backward loops the cell families share, and
:func:`mm_bt` / :func:`sum_bt` turn per-step gradients into weight gradients, one per model inside a pack
(:func:`packed_models`, suite/packed.py).
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import graphs
from .kernels import linear, loop_kernels

State = tuple[Tensor, ...]  # (h,) or (h, c)

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
