"""The CPU kernels of the fused time loops: which GEMM and which tanh a step uses, and the switch between them.

Two kernels of a step have an alternative on CPU in float32 (:class:`KernelChoice`): the recurrent GEMM as torch's
oneDNN linear on a weight packed once per loop, and tanh as 2 sigmoid(2v) - 1. ``$RNNSUITE_KERNELS`` chooses
(``plain``, the default, or ``tuned``); deterministic algorithms force the plain ops. Every fused loop runs inside
:func:`loop_kernels` and calls :func:`linear` and :func:`tanh`; docs/benchmarks.md has the measurements behind
the default.
"""
from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass

import torch
from torch import Tensor

from ..registry import SuiteError

_ONEDNN: list = []  # [(linear, pack)] once probed; [None] where this torch has no oneDNN linear
_packs = threading.local()  # .cache: weight key -> packed weight, inside packed_weights()
KERNELS_ENV = "RNNSUITE_KERNELS"  # plain (default) | tuned
KERNEL_MODES = ("plain", "tuned")


def onednn_ops():
    """(oneDNN linear, weight packing) of this torch, probed once; None where it has no usable oneDNN linear."""
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
PLAIN_DETERMINISTIC = KernelChoice(False, False, "plain: deterministic algorithms on")


def kernel_choice() -> KernelChoice:
    """The kernels the fused loops use: ``$RNNSUITE_KERNELS`` ``plain`` (default: torch.addmm and torch.tanh) or
    ``tuned`` (the oneDNN-packed GEMM where this torch has it, and the sigmoid form of tanh). With deterministic
    algorithms on (``train.deterministic``) the plain ops are used whatever the variable says."""
    if torch.are_deterministic_algorithms_enabled():
        return PLAIN_DETERMINISTIC
    if not _CHOICE:
        mode = os.environ.get(KERNELS_ENV, "plain").strip().lower() or "plain"
        if mode not in KERNEL_MODES:
            raise SuiteError(f"${KERNELS_ENV}={mode!r}; accepted: {', '.join(KERNEL_MODES)}")
        if mode == "tuned":
            _CHOICE.append(KernelChoice(onednn_ops() is not None, True, "tuned"))
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


def weights_packed() -> bool:
    """Whether :func:`linear` packs weights for oneDNN here (inside :func:`packed_weights`, with the oneDNN choice)."""
    return getattr(_packs, "cache", None) is not None


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
        ops = onednn_ops()
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
    return tanh_via_sigmoid(v)


def tanh_via_sigmoid(v: Tensor) -> Tensor:
    """tanh(v) as 2 sigmoid(2v) - 1: the alternative form :func:`tanh` takes with ``RNNSUITE_KERNELS=tuned``."""
    return torch.add(_MINUS_ONE, torch.sigmoid(v + v), alpha=2)


