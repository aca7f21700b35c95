"""SequenceModel: the task's input encoder -> N stacked recurrent layers of any cell -> the task's head."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from . import cells
from .registry import SuiteError  # a ValueError: one clear line through the CLI


class SequenceModel(nn.Module):
    """Encoder, stacked cells, per-step head.

    encoding: "onehot" (x holds token ids, one-hot of width input_size), "embedding" (token ids, a learned
    embedding of vocabulary input_size) or "real" (x holds (B, T, input_size) floats).
    Dropout (Zaremba et al. 2014) acts on the non-recurrent connections only: after the encoder, between
    layers and before the head. With ``tie_weights`` the head shares the embedding matrix (Press & Wolf 2017).
    ``forward`` returns per-step head outputs (B, T, output_size) and the list of per-layer states.
    """

    def __init__(self, cell: str, encoding: str, input_size: int, output_size: int, hidden_size: int,
                 layers: int = 1, dropout: float = 0.0, embedding_size: int = 0, tie_weights: bool = False,
                 **cell_options):
        super().__init__()
        self.encoding = encoding
        self.input_size = input_size
        width = input_size
        self.embedding = None
        if encoding == "embedding":
            width = embedding_size or hidden_size
            self.embedding = nn.Embedding(input_size, width)
        elif encoding not in ("onehot", "real"):
            raise SuiteError(f"unknown encoding {encoding!r}")
        self.layers = nn.ModuleList()
        for i in range(layers):
            in_width = width if i == 0 else hidden_size
            opts = dict(cell_options)
            if in_width != hidden_size and "project_input" in cells.options(cell):
                # mut1/mut2 add x to the state without a weight: learn the projection they need unless the
                # user decided otherwise (project_input=false then fails with the cell's own message)
                opts.setdefault("project_input", True)
            self.layers.append(cells.build(cell, in_width, hidden_size, **opts))
        self.drop = nn.Dropout(dropout)
        head_in = hidden_size
        if tie_weights:
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
        return self.head(h), states  # (B, T, output_size)

    def trace(self, x: Tensor, state: list | None = None):
        """Diagnostics mode: as forward, plus each layer's Trace (gate activations, per-step states)."""
        h = self.drop(self.encode(x))
        states, traces = [], []
        for i, layer in enumerate(self.layers):
            h, s, tr = layer.trace(h, None if state is None else state[i])
            states.append(s)
            traces.append(tr)
            h = self.drop(h)
        return self.head(h), states, traces


def detach_state(state):
    """Cut the graph at a window boundary (truncated BPTT) while keeping the values."""
    if state is None:
        return None
    if isinstance(state, Tensor):
        return state.detach()
    if isinstance(state, (list, tuple)):
        return type(state)(detach_state(s) for s in state)
    return state
