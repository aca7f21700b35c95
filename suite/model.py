"""SequenceModel: the task's input encoder -> N stacked recurrent layers of any cell -> readout -> the task's head."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from . import cells
from .registry import SuiteError  # a ValueError: one clear line through the CLI

# How the head reads the last layer's outputs (B, T, H): "step" = at every step (copy, adding, LM: the task
# picks the steps it scores); "last" = the last step only; "mean" = the mean over time; "flatten" = all T steps
# concatenated into one (B, T*H) vector (the MNIST-1D GRU's readout, Greydanus 2020). The pooled readouts give
# (B, 1, output_size): one prediction per sequence, still in the per-step layout the tasks read.
READOUTS = ("step", "last", "mean", "flatten")


def pool(h: Tensor, readout: str) -> Tensor:
    """(..., T, H) -> (..., T, H) for "step", else (..., 1, H) or (..., 1, T*H): any leading dims (packs)."""
    if readout == "step":
        return h
    if readout == "last":
        return h[..., -1:, :]
    if readout == "mean":
        return h.mean(-2, keepdim=True)
    return h.flatten(-2).unsqueeze(-2)  # flatten


class Bidirectional(nn.Module):
    """Two cells of one kind, the second reading the sequence reversed in time; outputs concatenated (B, T, 2H).

    Output t holds the forward cell's h_t (x_1..x_t) and the backward cell's state after x_T..x_t, as
    nn.GRU(bidirectional=True) does. The state is the pair (forward, backward). For diagnostics, ``trace``
    returns the forward cell's per-step states (the gradient profile reads layer 0's forward direction) and
    both directions' gate activations, concatenated along the unit dimension.
    """

    def __init__(self, forward_cell: nn.Module, backward_cell: nn.Module):
        super().__init__()
        self.fwd, self.bwd = forward_cell, backward_cell
        self.hidden_size = 2 * forward_cell.hidden_size
        self.state_names = forward_cell.state_names
        self.param_gates = {f"{d}.{k}": v for d in ("fwd", "bwd")
                            for k, v in getattr(forward_cell, "param_gates", {}).items()}

    def forward(self, x: Tensor, state=None):
        sf, sb = (None, None) if state is None else state
        of, sf = self.fwd(x, sf)
        ob, sb = self.bwd(x.flip(1), sb)
        return torch.cat([of, ob.flip(1)], -1), (sf, sb)  # (B, T, 2H)

    def trace(self, x: Tensor, state=None):
        sf, sb = (None, None) if state is None else state
        of, sf, tf = self.fwd.trace(x, sf)
        ob, sb, tb = self.bwd.trace(x.flip(1), sb)
        tf.gates = {g: torch.cat([a, tb.gates[g].flip(1)], -1) for g, a in tf.gates.items()}
        return torch.cat([of, ob.flip(1)], -1), (sf, sb), tf


class SequenceModel(nn.Module):
    """Encoder, stacked cells, per-step head.

    encoding: "onehot" (x holds token ids, one-hot of width input_size), "embedding" (token ids, a learned
    embedding of vocabulary input_size) or "real" (x holds (B, T, input_size) floats).
    Dropout (Zaremba et al. 2014) acts on the non-recurrent connections only: after the encoder, between
    layers and before the head. With ``tie_weights`` the head shares the embedding matrix (Press & Wolf 2017).
    ``readout`` (see READOUTS) decides where the head reads; "flatten" needs ``seq_len``, the fixed length T of
    every sequence. ``bidirectional`` runs each layer as a :class:`Bidirectional` pair (2 x hidden_size outputs).
    ``forward`` returns head outputs (B, T, output_size), or (B, 1, output_size) for a pooled readout, and the
    list of per-layer states.
    """

    def __init__(self, cell: str, encoding: str, input_size: int, output_size: int, hidden_size: int,
                 layers: int = 1, dropout: float = 0.0, embedding_size: int = 0, tie_weights: bool = False,
                 readout: str = "step", seq_len: int = 0, bidirectional: bool = False, **cell_options):
        super().__init__()
        if readout not in READOUTS:
            raise SuiteError(f"unknown readout {readout!r}; choose one of {', '.join(READOUTS)}")
        if readout == "flatten" and seq_len < 1:
            raise SuiteError("readout 'flatten' needs the task's fixed sequence length (seq_len >= 1)")
        self.encoding = encoding
        self.readout = readout
        self.bidirectional = bidirectional
        self.input_size = input_size
        width = input_size
        self.embedding = None
        if encoding == "embedding":
            width = embedding_size or hidden_size
            self.embedding = nn.Embedding(input_size, width)
        elif encoding not in ("onehot", "real"):
            raise SuiteError(f"unknown encoding {encoding!r}")
        self.layers = nn.ModuleList()
        out_width = 2 * hidden_size if bidirectional else hidden_size
        for i in range(layers):
            in_width = width if i == 0 else out_width
            opts = dict(cell_options)
            if in_width != hidden_size and "project_input" in cells.options(cell):
                # mut1/mut2 add x to the state without a weight: learn the projection they need unless the
                # user decided otherwise (project_input=false then fails with the cell's own message)
                opts.setdefault("project_input", True)
            layer = cells.build(cell, in_width, hidden_size, **opts)
            if bidirectional:
                layer = Bidirectional(layer, cells.build(cell, in_width, hidden_size, **opts))
            self.layers.append(layer)
        self.drop = nn.Dropout(dropout)
        head_in = out_width * (seq_len if readout == "flatten" else 1)
        if tie_weights:
            if bidirectional or readout != "step":
                raise SuiteError("tie_weights needs a one-directional model read at every step (language modelling)")
            if self.embedding is None:
                raise SuiteError("tie_weights needs an embedding encoder (a language-modelling task)")
            if width != hidden_size:
                raise SuiteError(f"tie_weights needs embedding_size == hidden_size ({width} != {hidden_size})")
            if output_size != input_size:  # the head's (output_size, hidden) weight IS the (vocab, E) embedding
                raise SuiteError(f"tie_weights needs output_size == the embedding's vocabulary size "
                                 f"({output_size} != {input_size})")
        self.head = nn.Linear(head_in, output_size)
        if tie_weights:
            self.head.weight = self.embedding.weight

    def reset_uniform(self, init_range: float) -> None:
        """U(-r, r) for every parameter, cells included (Zaremba et al. 2014)."""
        with torch.no_grad():
            for p in self.parameters():
                p.uniform_(-init_range, init_range)

    def encode(self, x: Tensor) -> Tensor:
        if self.encoding == "onehot":
            return nn.functional.one_hot(x, self.input_size).to(self.head.weight.dtype)  # (B, T, V)
        if self.encoding == "embedding":
            return self.embedding(x)  # (B, T, E)
        return x  # (B, T, C)

    def forward(self, x: Tensor, state: list | None = None):
        h = self.drop(self.encode(x))
        states = []
        for i, layer in enumerate(self.layers):
            h, s = layer(h, None if state is None else state[i])
            states.append(s)
            h = self.drop(h)
        return self.head(pool(h, self.readout)), states  # (B, T or 1, output_size)

    def trace(self, x: Tensor, state: list | None = None):
        """Diagnostics mode: as forward, plus each layer's Trace (gate activations, per-step states)."""
        h = self.drop(self.encode(x))
        states, traces = [], []
        for i, layer in enumerate(self.layers):
            h, s, tr = layer.trace(h, None if state is None else state[i])
            states.append(s)
            traces.append(tr)
            h = self.drop(h)
        return self.head(pool(h, self.readout)), states, traces


def detach_state(state):
    """Cut the graph at a window boundary (truncated BPTT) while keeping the values."""
    if state is None:
        return None
    if isinstance(state, Tensor):
        return state.detach()
    if isinstance(state, (list, tuple)):
        return type(state)(detach_state(s) for s in state)
    return state
