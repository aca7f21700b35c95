"""CUDA graphs for the fused loops (suite/cells/graphs.py), on the CPU: when a loop is captured and when the eager
loop runs, the cache's capture-once and fallback rules, and that asking for graphs changes nothing off CUDA. The
capture itself, and its equality with the eager loop, is checked on a GPU (tests/test_cuda.py)."""
from __future__ import annotations

import gc

import pytest
import torch

from suite import cells
from suite.cells import graphs
from suite.registry import SuiteError


@pytest.mark.parametrize("value, expected", [("1", True), ("on", True), (" TRUE ", True), ("", False), ("0", False),
                                             ("off", False)])
def test_the_environment_switch(value, expected):
    assert graphs.graphs_requested(value) is expected


def test_a_bad_switch_value_is_one_line():
    with pytest.raises(SuiteError) as err:
        graphs.graphs_requested("maybe")
    assert "RNNSUITE_CUDA_GRAPHS='maybe'" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("device, requested, capturing, captured", [
    ("cuda", True, False, True),
    ("cuda", False, False, False),  # off by default
    ("cpu", True, False, False),  # nothing to capture on a CPU
    ("cuda", True, True, False),  # no capture inside another one
])
def test_graph_choice(device, requested, capturing, captured):
    reason = graphs.graph_choice(device, requested, capturing)
    assert (reason is None) is captured
    if not captured:
        assert isinstance(reason, str) and reason


def test_nested_outputs_flatten_and_rebuild():
    a, b, c = torch.zeros(1), torch.ones(2), torch.full((3,), 2.0)
    tree = (a, (b, None, ()), [c])
    leaves, spec = graphs.flatten(tree)
    assert [t.numel() for t in leaves] == [1, 2, 3]
    rebuilt = graphs.unflatten(leaves, spec)
    assert rebuilt[0] is a and rebuilt[1][0] is b and rebuilt[1][1] is None and rebuilt[1][2] == ()
    assert isinstance(rebuilt[2], list) and rebuilt[2][0] is c


class FakeGraph:
    """Stands in for a capture: counts captures and replays, computes eagerly."""

    captures = 0

    def __init__(self, fn, inputs):
        FakeGraph.captures += 1
        self.fn, self.replays = fn, 0

    def __call__(self, inputs):
        self.replays += 1
        return self.fn(*inputs)


class Owner:  # a stand-in for a cell: weakly referenced by the cache
    pass


def test_the_cache_captures_once_per_key_and_replays_after():
    FakeGraph.captures = 0
    cache, cell = graphs.GraphCache(capture=FakeGraph), Owner()
    x = torch.arange(3.0)
    for _ in range(3):
        assert torch.equal(cache.run(cell, ("k", 1), lambda t: t * 2, [x]), x * 2)
    cache.run(cell, ("k", 2), lambda t: t + 1, [x])
    assert FakeGraph.captures == 2 and cache.captured(cell) == 2
    del cell
    gc.collect()
    assert len(cache) == 0  # a finished trial's cell takes its graphs with it


def test_a_failed_capture_falls_back_to_the_eager_loop_once_and_for_all(capsys):
    calls = []

    def refuse(fn, inputs):
        calls.append(1)
        raise RuntimeError("operation not permitted when stream is capturing\nmore")

    cache, cell = graphs.GraphCache(capture=refuse), Owner()
    x = torch.arange(3.0)
    for _ in range(3):
        assert torch.equal(cache.run(cell, ("k",), lambda t: t - 1, [x]), x - 1)
    assert calls == [1]  # not tried again for that key
    assert cache.failures(cell) == {("k",): "RuntimeError: operation not permitted when stream is capturing"}
    note = capsys.readouterr().err.strip().splitlines()
    assert len(note) == 1 and "CUDA graph capture of Owner's loop failed" in note[0] and "eagerly" in note[0]


@pytest.mark.parametrize("name", ["sgru", "gru_reset_before", "lstm_peephole"])
def test_asking_for_graphs_changes_nothing_off_cuda(name, monkeypatch):
    torch.manual_seed(0)
    cell = cells.build(name, 4, 6)
    x = torch.randn(3, 20, 4, requires_grad=True)

    def grads():
        for p in cell.parameters():
            p.grad = None
        x.grad = None
        out, _ = cell(x)
        out.sin().sum().backward()
        return [out.detach(), x.grad.clone()] + [p.grad.clone() for p in cell.parameters()]

    eager = grads()
    monkeypatch.setenv(graphs.ENV, "1")
    monkeypatch.setattr(graphs.CACHE, "capture", lambda fn, inputs: pytest.fail("captured on the CPU"))
    asked = grads()
    assert all(torch.equal(a, b) for a, b in zip(eager, asked))
    assert graphs.CACHE.captured(cell) == 0 and graphs.CACHE.failures(cell) == {}
