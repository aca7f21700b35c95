"""CUDA graphs for the custom cells' fused time loops (issue 18, item 2).

On a GPU the fused loop is launch-bound: ~8-12 small kernels a forward step and ~5 a backward step, so at T=100
the CPU spends more time launching than the GPU computing. Captured once as a ``torch.cuda.CUDAGraph`` per cell,
shape and mode, a loop is replayed with one launch: the inputs are copied into the graph's static buffers, the
graph replays, and its outputs are cloned out (a later replay overwrites the buffers, and autograd keeps what the
forward saved until the backward). Both halves are captured: the forward loop (``RecurrentCell.run_steps``, with
or without the activations the backward needs) and the hand-written backward through time (``bptt``).

When: only on CUDA and only when asked (``RNNSUITE_CUDA_GRAPHS=1``; off by default until ``make gpu-check`` has
shown them equal to the eager loop and faster on a GPU). Everywhere else, and for any loop whose capture fails
(an op that syncs with the host, a shape the cell cannot capture), the eager loop runs: a failed capture is
noted once on stderr and not tried again for that cell and shape. :func:`graph_choice` is the decision, pure
so that the CPU tests check it.
"""
from __future__ import annotations

import os
import sys
import weakref
from typing import Callable

import torch
from torch import Tensor

from ..registry import SuiteError

ENV = "RNNSUITE_CUDA_GRAPHS"  # 1/on/true: capture and replay on CUDA; 0/off/false or unset: the eager loop
ON, OFF = ("1", "on", "true", "yes"), ("", "0", "off", "false", "no")
MAX_PER_CELL = 16  # graphs kept per cell (each holds its own memory pool): one per shape and mode in use


def graphs_requested(value: str | None = None) -> bool:
    """$RNNSUITE_CUDA_GRAPHS as a bool; anything else than the accepted words is one line."""
    text = (os.environ.get(ENV, "") if value is None else value).strip().lower()
    if text in ON:
        return True
    if text in OFF:
        return False
    raise SuiteError(f"${ENV}={text!r} is not one of 1, on, true, 0, off, false")


def graph_choice(device_type: str, requested: bool, capturing: bool) -> str | None:
    """None: capture (or replay) this loop as a CUDA graph; else why the eager loop runs."""
    if not requested:
        return f"off (${ENV} not set)"
    if device_type != "cuda":
        return f"not on CUDA ({device_type})"
    if capturing:
        return "already inside a capture"
    return None


def describe() -> str:
    """For the run's tags: whether this process captures the fused loops."""
    return "on" if graphs_requested() else "off"


# ---------------------------------------------------------------------------------------------- nested outputs
def flatten(tree) -> tuple[list[Tensor], object]:
    """Tensors of a nest of tuples/lists (None leaves kept) and a spec to rebuild it."""
    if isinstance(tree, (tuple, list)):
        leaves, specs = [], []
        for item in tree:
            sub, spec = flatten(item)
            leaves += sub
            specs.append(spec)
        return leaves, (type(tree), specs)
    return ([tree], "tensor") if isinstance(tree, Tensor) else ([], tree)


def unflatten(leaves: list[Tensor], spec):
    it = iter(leaves)

    def build(s):
        if s == "tensor":
            return next(it)
        if isinstance(s, tuple) and len(s) == 2 and s[0] in (tuple, list):
            return s[0](build(x) for x in s[1])
        return s

    return build(spec)


# ---------------------------------------------------------------------------------------------- capture and replay
class Graphed:
    """One captured call of ``fn(*inputs)`` on CUDA: static inputs, one graph, static outputs."""

    def __init__(self, fn: Callable, inputs: list[Tensor], warmup: int = 2):
        self.static = [t.detach().clone() for t in inputs]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # lazy initialisations (cuBLAS handles, workspaces) happen outside capture
            for _ in range(warmup):
                fn(*self.static)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            result = fn(*self.static)
        self.outputs, self.spec = flatten(result)

    def __call__(self, inputs: list[Tensor]):
        for s, t in zip(self.static, inputs):
            s.copy_(t)
        self.graph.replay()
        return unflatten([o.clone() for o in self.outputs], self.spec)


class GraphCache:
    """Per cell (weakly: a finished trial's cell takes its graphs with it) and key: a :class:`Graphed`, or the
    reason its capture failed (then the eager loop runs for that key from then on)."""

    def __init__(self, capture: Callable = Graphed):
        self.capture = capture
        self._cells: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def run(self, cell, key: tuple, fn: Callable, inputs: list[Tensor]):
        """fn(*inputs) through the cell's graph for key (captured on first use); eagerly if capture failed."""
        graphs = self._cells.setdefault(cell, {})
        entry = graphs.get(key)
        if entry is None:
            if len(graphs) >= MAX_PER_CELL:
                graphs.pop(next(iter(graphs)))  # the oldest shape: its memory pool goes with it
            try:
                entry = graphs[key] = self.capture(fn, inputs)
            except Exception as exc:  # e.g. an op that syncs with the host, which a capture cannot hold
                entry = graphs[key] = f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                print(f"rnnsuite: note: CUDA graph capture of {type(cell).__name__}'s loop failed ({entry}); "
                      "running it eagerly", file=sys.stderr, flush=True)
        if isinstance(entry, str):
            return fn(*inputs)
        return entry(inputs)

    def __len__(self) -> int:
        """Cells holding graphs (or failed captures) now."""
        return len(self._cells)

    def failures(self, cell) -> dict[tuple, str]:
        return {k: v for k, v in self._cells.get(cell, {}).items() if isinstance(v, str)}

    def captured(self, cell) -> int:
        return sum(not isinstance(v, str) for v in self._cells.get(cell, {}).values())


CACHE = GraphCache()


def _signature(tensors) -> tuple:
    return tuple((tuple(t.shape), t.dtype, t.stride(), str(t.device)) for t in tensors)


def wanted(t: Tensor) -> bool:
    return graph_choice(t.device.type, graphs_requested(), t.is_cuda and torch.cuda.is_current_stream_capturing()) \
        is None


def run_loop(cell, xp: Tensor, state: tuple, w: tuple, save: bool, context: tuple = ()):
    """``cell.run_steps(xp, state, w, save)``, replayed from a CUDA graph where :func:`graph_choice` allows.
    ``context``: whatever else the loop's kernels depend on (models packed, kernel choice), part of the key."""
    if not wanted(xp):
        return cell.run_steps(xp, state, w, save=save)
    n = len(state)
    inputs = [xp, *state, *w]

    def fn(xp_, *rest):
        return cell.run_steps(xp_, tuple(rest[:n]), tuple(rest[n:]), save=save)

    return CACHE.run(cell, ("loop", save, n, context, _signature(inputs)), fn, inputs)


def run_bptt(cell, tensors: list[Tensor], build: Callable, context: tuple = ()):
    """``cell.bptt(build(*tensors))`` (the hand-written backward), replayed from a CUDA graph where allowed."""
    if not wanted(tensors[0]):
        return cell.bptt(build(*tensors))
    return CACHE.run(cell, ("bptt", context, _signature(tensors)), lambda *ts: cell.bptt(build(*ts)), tensors)
