"""M SequenceModels of one shape behind one forward, from their parameters stacked along a new dim 0: the batched
model a pack (:mod:`suite.packed`) trains.

Cells with ``packs`` run ONE fused time loop for all M models (the cell's own ``forward_step``/``bptt`` on the
stacked weights); other cells run their reference steps under ``torch.func.vmap``, differentiated by autograd.
"""
from __future__ import annotations

import copy
from types import MethodType

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from .cells.base import fast_paths_enabled, packed_models
from .model import pool

def _reference_forward(self, x: Tensor, state):
    """The cell's maths from its own ``project``/``step``: what vmap maps over for cells without ``packs``."""
    xp = self.project(x).transpose(0, 1)  # (T, B, K)
    hs = []
    for xp_t in xp:
        state = self.step(xp_t, state)
        hs.append(state[0])
    return torch.stack(hs, 1), state


class _PackDropout(nn.Module):
    """Dropout whose rate is a per-model buffer (stacked like a parameter, so each model keeps its own)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("p", torch.zeros(()))

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x
        return _drop(x, 1.0 - self.p)


def _drop(x: Tensor, keep: Tensor) -> Tensor:
    return x * (torch.rand_like(x) < keep).to(x.dtype) / keep


class _LayerCall(nn.Module):
    """What :func:`torch.func.functional_call` swaps a pack's stacked parameters into: a layer's ``project``
    (under vmap, one model at a time) or its ``fused_weights`` (once, stacked (M, ...))."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x: Tensor | None = None):
        return self.layer.fused_weights() if x is None else self.layer.project(x)


def packs_fast(model: nn.Module) -> bool:
    """Whether every layer's cell runs M models in one fused loop (``packs``); otherwise the pack vmaps the
    reference steps, differentiated by autograd (correct, slower)."""
    return fast_paths_enabled() and all(getattr(layer, "packs", False) for layer in model.layers)


class BatchedModel:
    """M SequenceModels of one shape behind one forward, from parameters stacked along a new dim 0.

    Cells with ``packs`` (lstm, gru, sgru and most others) run ONE fused loop for all M models: the input
    projections and the head are vmapped (one batched GEMM each), the recurrence runs the cell's own
    ``forward_step``/``bptt`` on the stacked weights with the M batches folded into the rows (suite.cells.base:
    linear, mm_bt), so every op of a time step, forward and backward, serves the M models at once. Other cells
    run their reference steps under ``torch.func.vmap``, differentiated by autograd.
    """

    def __init__(self, models: list[nn.Module], dropouts: list[float]):
        self.skeleton = copy.deepcopy(models[0]).to("meta")
        self.fast = packs_fast(models[0])
        if not self.fast:
            for layer in self.skeleton.layers:
                layer.recurrence = MethodType(_reference_forward, layer)
        self.dropout = any(p > 0 for p in dropouts)
        self.skeleton.drop = _PackDropout() if self.dropout else nn.Identity()
        self.names = [n for n, _ in models[0].named_parameters()]
        self.buffer_names = [n for n, _ in self.skeleton.named_buffers()]
        self._rates = torch.tensor(dropouts)
        self._calls = [_LayerCall(layer) for layer in self.skeleton.layers]

        def call(params, buffers, x, state):
            return functional_call(self.skeleton, (params, buffers), (x, state))

        self._fresh = vmap(lambda p, b, x: call(p, b, x, None), in_dims=(0, 0, 0), randomness="different")
        self._carry = vmap(call, in_dims=(0, 0, 0, 0), randomness="different")
        self._shared = vmap(lambda p, b, x: call(p, b, x, None), in_dims=(0, 0, None), randomness="different")
        self._project = [vmap(lambda p, x, c=c: functional_call(c, p, (x,))) for c in self._calls]
        self._head = vmap(lambda p, x: functional_call(self.skeleton.head, p, (x,)))

    def stacked(self, models: list[nn.Module], keep: list[int]):
        """Parameters of the models in ``keep``, stacked along dim 0 (gradients flow back to each model)."""
        own = [dict(models[i].named_parameters()) for i in keep]
        params = {n: torch.stack([p[n] for p in own]) for n in self.names}
        device = params[self.names[0]].device
        buffers = {"drop.p": self._rates[keep].to(device)} if self.dropout else {}
        return params, buffers

    def __call__(self, params, buffers, x: Tensor, state=None, shared_input: bool = False):
        if self.fast and state is None:
            return self._fused(params, buffers, x, shared_input)
        if shared_input:
            return self._shared(params, buffers, x)
        if state is None:
            return self._fresh(params, buffers, x)
        return self._carry(params, buffers, x, state)

    def _fused(self, params, buffers, x: Tensor, shared_input: bool):
        """SequenceModel.forward for M models at once, from a zero state: (M, B, T, output_size), states."""
        sk = self.skeleton
        m = params[self.names[0]].shape[0]
        h = sk.encode(x)  # onehot or real inputs: no parameters (packs hold synthetic tasks only)
        if shared_input:
            h = h.expand(m, *h.shape)
        rates = buffers.get("drop.p")
        keep = None if rates is None or not sk.training else (1.0 - rates).view(m, 1, 1, 1)
        if keep is not None:
            h = _drop(h, keep)
        states = []
        for i, (layer, project) in enumerate(zip(sk.layers, self._project)):
            own = {"layer." + n.split(".", 2)[2]: v for n, v in params.items() if n.startswith(f"layers.{i}.")}
            xp = project(own, h).flatten(0, 1)  # (M*B, T, K)
            w = functional_call(self._calls[i], own, (None,))  # fused_weights(), stacked (M, ...)
            state = tuple(xp.new_zeros(xp.shape[0], layer.hidden_size) for _ in layer.state_names)
            with packed_models(m):
                out, final = layer.fused_loop(xp, state, w)
            h = out.unflatten(0, (m, -1))  # (M, B, T, H)
            if keep is not None:
                h = _drop(h, keep)
            states.append(tuple(s.unflatten(0, (m, -1)) for s in final))
        head = {n.split(".", 1)[1]: v for n, v in params.items() if n.startswith("head.")}
        return self._head(head, pool(h, sk.readout)), states

    def train(self, mode: bool = True) -> None:
        self.skeleton.train(mode)
