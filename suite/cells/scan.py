"""minGRU and minLSTM (Feng et al. 2024, "Were RNNs All We Needed?"): gates that see x only, trained by a scan.

Neither gate reads h_{t-1}, so each cell is a linear recurrence h_t = a_t ⊙ h_{t-1} + b_t whose a_t and b_t
come from one matrix multiply over all steps. Three code paths give the same outputs (tests/test_cells_scan.py):

* ``mode="scan"`` (default, the training path): a two-level blocked parallel scan in linear space
  (:func:`chunked_scan`) with a hand-written backward (:func:`chunked_scan_reverse`), one autograd node;
* ``mode="logscan"``: the paper's log-space parallel scan (:func:`log_space_scan`: cumsum of log a_t and a
  logcumsumexp), differentiated by autograd;
* ``mode="sequential"``: the base class's time loop over :meth:`step` (the diagnostics path, ``trace``, always
  uses it).

Why the default is not the paper's log-space form. The paper works in log space because one scan over T steps
multiplies T coefficients a_t < 1 together, and A_t = a_1 ⋯ a_t underflows in float32 long before T = 4096;
in log space the cumulative logs instead grow to ~T in size and cancel, losing ~1e-4 relative accuracy in
float32 at T = 4096, so :func:`log_space_scan` runs in float64 and in chunks of :data:`SCAN_CHUNK` steps. The
blocked scan never forms a long product: inside blocks of C ≈ √T steps it runs the recurrence itself (every
block at once, C small ops), takes products only within a block (at most √T factors, no underflow for any
gate not saturated to 0 over a whole block, and then the exact answer is 0 anyway), and carries the state
across blocks sequentially (T/C small ops). Every h_t is then a short chain of multiply-adds of the same
numbers the sequential loop uses: it agrees with the loop to float32 rounding at any T with no logs, no
float64 and no exp, and it is the faster of the two on CPU (``rnnsuite bench`` reports both against the
sequential loop; docs/benchmarks.md). Both are exact parallel scans of the same recurrence; the paper's form
stays available as ``mode="logscan"`` and is tested against the others.

The initial state. The paper passes h_0 through the candidate map g as well; here h is the state itself, so
that a carried state (e.g. across language-model windows) is not transformed twice, and it may have any sign.
With A_t = a_1 ⋯ a_t and b_k > 0 the recurrence unrolls to

    h_t = A_t ⊙ h_0 + A_t ⊙ Σ_{k≤t} b_k / A_k,

so in log space log A_t = cumsum(log a_t), the sum is exp(log A_t + logcumsumexp(log b_k − log A_k)) (every
b_k is positive, its log exists) and the h_0 term is exp(log A_t) ⊙ h_0 in linear space. Exact, not an
approximation.

Precision of the log-space form, measured here: max abs diff against the float64 sequential loop (random
weights, B=4, H=32, mixed-sign h_0, |h| ≤ 3): one float32 log-space scan 1.0e-4 at T=1000 and 5.0e-4 at
T=4096; chunked float32 3e-5 at both; chunked float64 (what ``logscan`` runs) 4e-7 at both.

Speed. The paper reports 175x (T=512) and 1324x (T=4096) over its own sequential loop on a GPU, where the loop
is bound by kernel launches. On a CPU a step of these cells is a few elementwise ops with no matmul, so the
sequential loop is cheap and the scan's gain is smaller; the current figures are in docs/benchmarks.md.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import SuiteError
from torch.autograd.function import once_differentiable

from ..gpu import deterministic_refusal
from .contract import RecurrentCell, State, autocast_off, gate_views
from .registry import register

MODES = ("scan", "logscan", "sequential")
SCAN_DTYPE = torch.float64  # cancellation of cumulative logs ~T in size: see the module docstring
SCAN_CHUNK = 256  # steps per scan call; measured 2x faster than one call at T=4096 on CPU (cache)


def g(v: Tensor) -> Tensor:
    """The paper's positive candidate map: v + 1/2 for v >= 0, sigmoid(v) below (continuous at 0, always > 0)."""
    return torch.where(v >= 0, v + 0.5, torch.sigmoid(v))


def g_max(v: Tensor) -> Tensor:
    """g(v) as max(v + 1/2, σ(v)): the same function (v + 1/2 >= σ(v) exactly where v >= 0), in fewer passes."""
    return torch.maximum(v + 0.5, torch.sigmoid(v))


def g_prime(v: Tensor, g_v: Tensor) -> Tensor:
    """g'(v) from v and g(v): 1 for v >= 0, σ'(v) = g (1 - g) below."""
    return torch.where(v >= 0, 1.0, g_v * (1 - g_v))


def log_g(v: Tensor) -> Tensor:
    """log g(v) without overflow; both branches are finite everywhere, so torch.where gives no NaN gradient."""
    return torch.where(v >= 0, torch.log(torch.relu(v) + 0.5), -F.softplus(-v))


def log_space_scan(log_a: Tensor, log_b: Tensor, h0: Tensor, chunk: int = SCAN_CHUNK) -> Tensor:
    """h_t = a_t ⊙ h_{t-1} + b_t for all t: log_a, log_b (B, T, H) with b_t > 0, any-sign h0 (B, H) -> (B, T, H).

    Runs chunk steps at a time, each chunk starting from the last h of the one before (exact: the h_0 term
    takes any state); the float64 temporaries then stay in cache, and the logs stay small.
    """
    outs = []
    for la, lb in zip(log_a.split(chunk, 1), log_b.split(chunk, 1)):
        outs.append(_scan_chunk(la, lb, h0))
        h0 = outs[-1][:, -1]
    return outs[0] if len(outs) == 1 else torch.cat(outs, 1)


def _scan_chunk(log_a: Tensor, log_b: Tensor, h0: Tensor) -> Tensor:
    dtype = log_a.dtype
    log_a, log_b, h0 = log_a.to(SCAN_DTYPE), log_b.to(SCAN_DTYPE), h0.to(SCAN_DTYPE)
    log_A = torch.cumsum(log_a, 1)  # (B, T, H)
    h = torch.exp(log_A + torch.logcumsumexp(log_b - log_A, 1)) + torch.exp(log_A) * h0.unsqueeze(1)
    return h.to(dtype)


def _chunk_len(T: int) -> int:
    return max(1, math.isqrt(T))  # ~sqrt(T) steps per chunk: ~2 sqrt(T) small ops plus a few full passes


def chunked_scan(a: Tensor, b: Tensor, h0: Tensor) -> Tensor:
    """h_t = a_t ⊙ h_{t-1} + b_t for t = 0..T-1 from h_{-1} = h0, in linear space: a, b (B, T, H) contiguous,
    h0 (B, H) of any sign -> h (B, T, H). Builds no graph (see :class:`ParallelScan`).

    Two levels, C ~ sqrt(T) steps per chunk: a local scan from a zero state runs inside all chunks at once (C
    ops, each over every chunk), the products A of a within each chunk come from one cumprod, the state entering
    each chunk follows from the chunk ends (T/C small ops), and one fused multiply-add adds A times it
    everywhere. Every h_t is then a short chain of multiply-adds of the same numbers the sequential loop uses
    (no logs, no division), so the result agrees with the loop to float rounding at any T.
    """
    B, T, H = b.shape
    C = _chunk_len(T)
    N = T // C
    M = N * C  # steps in whole chunks; the last T - M run one by one
    h = torch.empty_like(b)
    av, bv, hv = (t[:, :M].view(B, N, C, H) for t in (a, b, h))
    hv[:, :, 0] = bv[:, :, 0]
    for c in range(1, C):
        torch.addcmul(bv[:, :, c], av[:, :, c], hv[:, :, c - 1], out=hv[:, :, c])
    prods = torch.cumprod(av, 2)  # a_first ⊙ ... ⊙ a_c within each chunk
    carry = h0.new_empty(B, N, H)  # the state entering each chunk
    carry[:, 0] = h0
    for n in range(1, N):
        torch.addcmul(hv[:, n - 1, C - 1], prods[:, n - 1, C - 1], carry[:, n - 1], out=carry[:, n])
    hv.addcmul_(prods, carry.unsqueeze(2))
    prev = hv[:, N - 1, C - 1]
    for t in range(M, T):
        prev = torch.addcmul(b[:, t], a[:, t], prev, out=h[:, t])
    return h


def chunked_scan_reverse(a: Tensor, g: Tensor) -> Tensor:
    """The adjoint of :func:`chunked_scan`: gh_t = g_t + a_{t+1} ⊙ gh_{t+1} (gh_T = 0), the same two-level scheme
    run from the end. g (B, T, H) is dL/dh_t from outside; gh is dL/dh_t through the recurrence as well."""
    B, T, H = g.shape
    C = _chunk_len(T)
    N = T // C
    M = N * C
    a_next = torch.cat([a[:, 1:], a.new_zeros(B, 1, H)], 1)  # a_{t+1}
    gh = torch.empty_like(g)
    nxt = None
    for t in range(T - 1, M - 1, -1):  # the steps after the whole chunks, one by one
        nxt = gh[:, t].copy_(g[:, t]) if nxt is None else torch.addcmul(g[:, t], a_next[:, t], nxt, out=gh[:, t])
    av, gv, ghv = (t[:, :M].view(B, N, C, H) for t in (a_next, g, gh))
    ghv[:, :, C - 1] = gv[:, :, C - 1]
    prods = torch.empty_like(av)  # a_{t+1} ⊙ ... to the chunk's end
    prods[:, :, C - 1] = av[:, :, C - 1]
    for c in range(C - 2, -1, -1):
        torch.addcmul(gv[:, :, c], av[:, :, c], ghv[:, :, c + 1], out=ghv[:, :, c])
        torch.mul(av[:, :, c], prods[:, :, c + 1], out=prods[:, :, c])
    carry = g.new_zeros(B, N, H)  # dL/dh at the first step after each chunk
    if nxt is not None:
        carry[:, N - 1] = nxt
    for n in range(N - 2, -1, -1):
        torch.addcmul(ghv[:, n + 1, 0], prods[:, n + 1, 0], carry[:, n + 1], out=carry[:, n])
    ghv.addcmul_(prods, carry.unsqueeze(2))
    return gh


class ParallelScan(torch.autograd.Function):
    """A scan cell's recurrence as one autograd node: coefficients a_t, b_t from xp, :func:`chunked_scan`, and a
    hand-written backward (:func:`chunked_scan_reverse`, then the cell's coefficient derivatives), so that no
    graph of ~2 sqrt(T) small ops is built and walked."""

    @staticmethod
    def forward(ctx, cell, xp, h0):
        a, b, saved = cell.scan_coefficients(xp)
        h = chunked_scan(a, b, h0)
        ctx.cell = cell
        ctx.save_for_backward(xp, h0, h, a, *saved)
        return h

    @staticmethod
    @once_differentiable
    def backward(ctx, d_h):
        xp, h0, h, a, *saved = ctx.saved_tensors
        gh = chunked_scan_reverse(a, d_h.contiguous())
        h_prev = torch.cat([h0.unsqueeze(1), h[:, :-1]], 1)
        return None, ctx.cell.scan_coefficient_grads(xp, h_prev, gh, a, saved), a[:, 0] * gh[:, 0]


class _ScanCell(RecurrentCell):
    """Shared parts: one fused input projection, the mode option, and the scan in place of the time loop."""

    n_blocks: int  # gate blocks plus the candidate in weight_ih

    def __init__(self, input_size: int, hidden_size: int, *, bias: bool = True, init: str = "orthogonal",
                 init_range: float = 0.1, chrono_init: int | None = None, mode: str = "scan"):
        super().__init__(input_size, hidden_size, bias=bias, init=init, init_range=init_range,
                         chrono_init=chrono_init)
        if mode not in MODES:
            raise SuiteError(f"option mode={mode!r} is not one of {', '.join(MODES)}")
        self.mode = mode
        k = self.n_blocks * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(k, input_size))
        self.bias_ih = nn.Parameter(torch.empty(k)) if bias else None
        self.reset_parameters()

    def project(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight_ih, self.bias_ih)  # (B, T, n_blocks * H)

    def log_coefficients(self, xp: Tensor) -> tuple[Tensor, Tensor]:
        """log a_t and log b_t (each (..., H)) of h_t = a_t ⊙ h_{t-1} + b_t from projected inputs (..., K)."""
        raise NotImplementedError

    def scan_coefficients(self, xp: Tensor) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
        """a_t, b_t (each (B, T, H), contiguous) of h_t = a_t ⊙ h_{t-1} + b_t, and what their backward needs."""
        raise NotImplementedError

    def scan_coefficient_grads(self, xp, h_prev, gh, a, saved) -> Tensor:
        """dL/dxp from gh = dL/dh_t and h_prev = h_{t-1} (B, T, H): da_t = gh ⊙ h_{t-1}, db_t = gh."""
        raise NotImplementedError

    def recurrence(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        if self.mode == "sequential":
            return super().recurrence(x, state)
        xp, state = self.recurrence_inputs(self.project(x), state)
        if self.mode == "logscan":  # the paper's form, differentiated by autograd
            with autocast_off(xp):
                try:
                    out = log_space_scan(*self.log_coefficients(xp), state[0])
                except RuntimeError as exc:  # float cumsum has no deterministic CUDA kernel in some torch builds
                    line = deterministic_refusal(exc, f"{self.name()} mode=logscan", "mode=scan (the default)")
                    if line is None:
                        raise
                    raise SuiteError(line) from None
            return out, (out[:, -1],)
        with autocast_off(xp):
            if torch.is_grad_enabled() and (xp.requires_grad or state[0].requires_grad):
                out = ParallelScan.apply(self, xp, state[0])  # (B, T, H)
            else:
                a, b, _ = self.scan_coefficients(xp)
                out = chunked_scan(a, b, state[0])
        return out, (out[:, -1],)

    def _bias_views(self) -> dict[str, Tensor]:
        return gate_views(self.bias_ih, self.param_gates["bias_ih"])


@register("mingru", "minGRU: GRU whose gate and candidate see x only, h = (1-z)h + z g(Wx); parallel scan",
          "Feng et al. 2024, Were RNNs All We Needed?")
class MinGRU(_ScanCell):
    """minGRU (Feng et al. 2024); trained by a parallel scan (blocked linear-space by default, the paper's
    log-space form as ``mode="logscan"``; see the module docstring).

    Equations: z_t = σ(W_z x_t + b_z);  h~_t = g(W_h x_t + b_h);  h_t = (1 − z_t) ⊙ h_{t-1} + z_t ⊙ h~_t,
    with g(v) = v + 1/2 (v ≥ 0), σ(v) (v < 0). The state h_0 is used as given (not passed through g).
    Parameters: 2n(m + 1) with bias (fused ``weight_ih`` (2n, m) in z|h order, ``bias_ih`` (2n)), 2nm without.
    Keep gate 1 − z: chrono init writes −log U[1, T_max − 1] into b_z.
    Options: ``mode`` "scan" (default), "logscan" or "sequential"; all give the same outputs.
    Shapes: x (B, T, m) -> outputs (B, T, n); state h (B, n).
    """

    n_blocks = 2
    gate_names = ("z",)
    param_gates = {"weight_ih": ("z", "h"), "bias_ih": ("z", "h")}
    keep_gate = ("z", -1)

    def log_coefficients(self, xp):
        k_z, k_h = xp.chunk(2, -1)
        # log(1 - σ(k)) = -softplus(k), log σ(k) = -softplus(-k): no log of a rounded-off 0
        return -F.softplus(k_z), -F.softplus(-k_z) + log_g(k_h)

    def scan_coefficients(self, xp):
        k_z, k_h = xp.chunk(2, -1)
        z = torch.sigmoid(k_z)
        g_h = g_max(k_h)
        return 1 - z, z * g_h, (z, g_h)  # h_t = (1 - z) h_{t-1} + z g(k_h)

    def scan_coefficient_grads(self, xp, h_prev, gh, a, saved):
        z, g_h = saved
        k_h = xp[..., self.hidden_size:]
        dxp = torch.empty_like(xp)
        # a = 1 - z, b = z g: dk_z = z (1 - z) (db g - da) = z a gh (g - h_prev);  dk_h = db z g'(k_h)
        torch.mul((g_h - h_prev).mul_(gh).mul_(z), a, out=dxp[..., :self.hidden_size])
        torch.mul(g_prime(k_h, g_h).mul_(gh), z, out=dxp[..., self.hidden_size:])
        return dxp

    def step(self, xp, state, trace=None):
        (h,) = state
        k_z, k_h = xp.chunk(2, -1)
        z = torch.sigmoid(k_z)  # (B, H)
        if trace is not None:
            trace["z"].append(z)
        return (torch.lerp(h, g(k_h), z),)  # (1 - z) h + z h~

    def chrono_targets(self):
        return [(self._bias_views()["z"], -1)]


@register("minlstm", "minLSTM: LSTM with gates on x only and normalised f, i; h = f'h + i' g(Wx); parallel scan",
          "Feng et al. 2024, Were RNNs All We Needed?")
class MinLSTM(_ScanCell):
    """minLSTM (Feng et al. 2024); trained by a parallel scan (blocked linear-space by default, the paper's
    log-space form as ``mode="logscan"``; see the module docstring).

    Equations: f_t = σ(W_f x_t + b_f);  i_t = σ(W_i x_t + b_i);  h~_t = g(W_h x_t + b_h);
    f'_t = f_t / (f_t + i_t);  i'_t = i_t / (f_t + i_t);  h_t = f'_t ⊙ h_{t-1} + i'_t ⊙ h~_t,
    with g as in :class:`MinGRU`. There is no separate memory c: the state is h alone, used as given.
    ``trace`` reports the NORMALISED gates f' and i' under the names "f" and "i" (they are what multiplies
    h_{t-1} and h~_t; f' + i' = 1), not the raw sigmoids.
    Parameters: 3n(m + 1) with bias (fused ``weight_ih`` (3n, m) in f|i|h order, ``bias_ih`` (3n)), 3nm without.
    Keep gate f: chrono init sets b_f = log U[1, T_max − 1], b_i = −b_f, so that at zero input
    f' = σ(log σ(b_f) − log σ(b_i)) = σ(b_f) = 1 − 1/T exactly.
    Options: ``mode`` "scan" (default), "logscan" or "sequential".
    Shapes: x (B, T, m) -> outputs (B, T, n); state h (B, n).
    """

    n_blocks = 3
    gate_names = ("f", "i")
    param_gates = {"weight_ih": ("f", "i", "h"), "bias_ih": ("f", "i", "h")}
    keep_gate = ("f", 1)

    def log_coefficients(self, xp):
        k_f, k_i, k_h = xp.chunk(3, -1)
        log_f, log_i = F.logsigmoid(k_f), F.logsigmoid(k_i)
        log_norm = torch.logaddexp(log_f, log_i)  # log(f + i)
        return log_f - log_norm, log_i - log_norm + log_g(k_h)

    def scan_coefficients(self, xp):
        k_f, k_i, k_h = xp.chunk(3, -1)
        d = F.logsigmoid(k_f) - F.logsigmoid(k_i)  # as in step: f' = σ(d), i' = σ(-d)
        f, i = torch.sigmoid(d), torch.sigmoid(-d)
        g_h = g_max(k_h)
        return f, i * g_h, (i, g_h)

    def scan_coefficient_grads(self, xp, h_prev, gh, a, saved):
        i, g_h = saved
        n = self.hidden_size
        k_f, k_i, k_h = xp.chunk(3, -1)
        dxp = torch.empty_like(xp)
        # a = σ(d), b = σ(-d) g: dd = a i (da - db g) = a i gh (h_prev - g); dd/dk_f = σ(-k_f), dd/dk_i = -σ(-k_i)
        dd = (h_prev - g_h).mul_(gh).mul_(a).mul_(i)
        torch.mul(dd, torch.sigmoid(-k_f), out=dxp[..., :n])
        torch.mul(dd, torch.sigmoid(-k_i), out=dxp[..., n:2 * n]).neg_()
        torch.mul(g_prime(k_h, g_h).mul_(gh), i, out=dxp[..., 2 * n:])
        return dxp

    def step(self, xp, state, trace=None):
        (h,) = state
        k_f, k_i, k_h = xp.chunk(3, -1)
        # f/(f+i) = σ(log f − log i): finite even where both sigmoids round to 0
        d = F.logsigmoid(k_f) - F.logsigmoid(k_i)
        f, i = torch.sigmoid(d), torch.sigmoid(-d)  # (B, H) each, f + i = 1
        if trace is not None:
            trace["f"].append(f)
            trace["i"].append(i)
        return (f * h + i * g(k_h),)

    def chrono_targets(self):
        views = self._bias_views()
        return [(views["f"], 1), (views["i"], -1)]
