"""The per-cell sections of ``rnnsuite bench``: every cell against torch's fused GRU/LSTM, scaling in T and H, the
scan against the sequential loop, what diagnostics support costs when off, and the fused loops' CPU kernels."""
from __future__ import annotations

import math

import torch

from .. import cells
from ..cells import kernels
from ..cells import scan as scan_cells
from .profiles import CPU_CELL_TARGETS, DIAG_OFF_LIMIT, FUSED, GPU_CELL_LIMIT, LINEAR_EXPONENT, Profile
from .timing import Clock, interleaved, make_runners, median, paired_ratio, peak_memory_mb

def build_cell(name: str, input_size: int, hidden_size: int, device, **opts) -> torch.nn.Module:
    """A registered cell as a training model builds it (SequenceModel: project_input where the cell takes it and
    the widths differ, which mut1/mut2 need)."""
    if input_size != hidden_size and "project_input" in cells.options(name):
        opts.setdefault("project_input", True)
    return cells.build(name, input_size, hidden_size, **opts).to(device)


class Anchor(torch.nn.Module):
    """Raw torch.nn.GRU / torch.nn.LSTM (batch first, one layer): the fused built-ins every ratio refers to."""

    def __init__(self, kind: str, input_size: int, hidden_size: int):
        super().__init__()
        module = {"gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[kind]
        self.rnn = module(input_size, hidden_size, batch_first=True)

    def forward(self, x):
        return self.rnn(x)


def bench_cells(p: Profile, device: torch.device, clock: Clock, log) -> tuple[dict, dict]:
    B, T, I, H = p.cuda_shape if device.type == "cuda" else p.cpu_shape
    torch.manual_seed(0)
    x = torch.randn(B, T, I, device=device)
    grad = torch.randn(B, T, H, device=device)
    modules: dict[str, torch.nn.Module] = {"nn.GRU": Anchor("gru", I, H).to(device),
                                           "nn.LSTM": Anchor("lstm", I, H).to(device)}
    for name in cells.names():
        modules[name] = build_cell(name, I, H, device)
    fwd, fb = {}, {}
    for name, m in modules.items():
        fwd[name], fb[name] = make_runners(m, x, grad)
    runners = {**{f"fwd:{k}": v for k, v in fwd.items()}, **{f"fb:{k}": v for k, v in fb.items()}}
    log(f"cells: {len(modules) - 2} cells + nn.GRU, nn.LSTM at B={B} T={T} I={I} H={H}, "
        f"{p.repeats} interleaved rounds")
    s = interleaved(runners, clock, p.repeats, p.warmup)
    out = {}
    for name, m in modules.items():
        row = {"fwd_ms": 1000 * median(s[f"fwd:{name}"]), "fwd_bwd_ms": 1000 * median(s[f"fb:{name}"]),
               "ratio_vs_gru": paired_ratio(s[f"fb:{name}"], s["fb:nn.GRU"]),
               "ratio_vs_lstm": paired_ratio(s[f"fb:{name}"], s["fb:nn.LSTM"]),
               "fwd_ratio_vs_gru": paired_ratio(s[f"fwd:{name}"], s["fwd:nn.GRU"]),
               "params": sum(q.numel() for q in m.parameters())}
        if p.memory:
            fb[name]()  # gradients exist afterwards in training too: measure from the same state every time
            row["peak_mem_mb"] = peak_memory_mb(fb[name], device)
        else:
            row["peak_mem_mb"] = None
        out[name] = row
    anchors = {k: out.pop(k) for k in ("nn.GRU", "nn.LSTM")}
    shape = {"B": B, "T": T, "I": I, "H": H}
    for name, row in out.items():
        row.update(cell_target(name, row, device.type))
    return out, {"shape": shape, "anchors": anchors}


def cell_target(name: str, row: dict, device: str) -> dict:
    """The issue's target for one cell: {"target": text, "pass": bool} or {"target": None, "pass": None}."""
    if device == "cuda":
        if name in FUSED:
            return {"target": None, "pass": None}
        return {"target": f"<= {GPU_CELL_LIMIT}x nn.GRU (cuDNN) fwd+bwd",
                "pass": bool(row["ratio_vs_gru"] <= GPU_CELL_LIMIT)}
    if name not in CPU_CELL_TARGETS:
        return {"target": None, "pass": None}
    anchor, limit = CPU_CELL_TARGETS[name]
    value = row[f"ratio_vs_{anchor}"]
    return {"target": f"<= {limit}x nn.{anchor.upper()} fwd+bwd", "pass": bool(value <= limit)}


def bench_scaling(p: Profile, device: torch.device, clock: Clock, log) -> dict:
    B, _, I, _ = p.cuda_shape if device.type == "cuda" else p.cpu_shape
    log(f"scaling: nn.GRU, sgru, mingru forward+backward at T in {list(p.scaling_T)} x H in {list(p.scaling_H)}, "
        f"B={B} I={I}, {p.scaling_repeats} rounds")
    torch.manual_seed(0)
    runners = {}
    for H in p.scaling_H:
        mods = {"nn.GRU": Anchor("gru", I, H).to(device), "sgru": build_cell("sgru", I, H, device),
                "mingru": build_cell("mingru", I, H, device)}
        for T in p.scaling_T:
            x = torch.randn(B, T, I, device=device)
            grad = torch.randn(B, T, H, device=device)
            for name, m in mods.items():
                runners[(name, H, T)] = make_runners(m, x, grad)[1]
    s = interleaved({f"{k[0]}|{k[1]}|{k[2]}": v for k, v in runners.items()}, clock, p.scaling_repeats,
                    min(p.warmup, 1))
    out: dict = {"B": B, "I": I, "T": list(p.scaling_T), "H": list(p.scaling_H), "cells": {}}
    for name in ("nn.GRU", "sgru", "mingru"):
        per_h = {}
        for H in p.scaling_H:
            ms = {T: 1000 * median(s[f"{name}|{H}|{T}"]) for T in p.scaling_T}
            t0, t1 = min(p.scaling_T), max(p.scaling_T)
            exponent = math.log(ms[t1] / ms[t0]) / math.log(t1 / t0)
            per_h[str(H)] = {"fwd_bwd_ms": {str(T): v for T, v in ms.items()},
                             "us_per_step": {str(T): 1000 * v / T for T, v in ms.items()},
                             "per_step_ratio": (ms[t1] / t1) / (ms[t0] / t0),  # cost per step, longest/shortest
                             "exponent": exponent, "linear": bool(exponent <= LINEAR_EXPONENT)}
        out["cells"][name] = per_h
    return out


def bench_scan(p: Profile, device: torch.device, clock: Clock, log) -> dict:
    """mingru/minlstm: the default parallel scan (``mode="scan"``) and, where the cells have it, the paper's
    log-space scan (``mode="logscan"``) against the sequential loop (``mode="sequential"``), same weights."""
    modes = [m for m in ("scan", "logscan") if m in scan_cells.MODES]
    B, _, I, H = p.cuda_shape if device.type == "cuda" else p.cpu_shape
    log(f"scan: mingru, minlstm mode={'/'.join(modes)} vs mode=sequential, forward+backward at T in "
        f"{list(p.scan_T)}, B={B} I={I} H={H}, {p.scan_repeats} rounds")
    runners = {}
    for name in ("mingru", "minlstm"):
        torch.manual_seed(0)
        built = {m: build_cell(name, I, H, device, mode=m) for m in (*modes, "sequential")}
        for m in built.values():  # the same weights: the same function, different code paths
            m.load_state_dict(built["scan"].state_dict())
        for T in p.scan_T:
            x = torch.randn(B, T, I, device=device)
            grad = torch.randn(B, T, H, device=device)
            for mode, cell in built.items():
                runners[f"{name}|{mode}|{T}"] = make_runners(cell, x, grad)[1]
    s = interleaved(runners, clock, p.scan_repeats, min(p.warmup, 1))
    speedup = {m: {} for m in modes}
    detail = {}
    for name in ("mingru", "minlstm"):
        for m in modes:
            speedup[m][name] = {str(T): paired_ratio(s[f"{name}|sequential|{T}"], s[f"{name}|{m}|{T}"])
                                for T in p.scan_T}
        detail[name] = {str(T): {f"{m}_ms": 1000 * median(s[f"{name}|{m}|{T}"]) for m in (*modes, "sequential")}
                        for T in p.scan_T}
    return {"speedup": speedup["scan"], "logscan": speedup.get("logscan"), "detail": detail,
            "shape": {"B": B, "I": I, "H": H}}


def bench_diagnostics_off(p: Profile, device: torch.device, clock: Clock, log) -> dict:
    """What diagnostics support costs when diagnostics are not asked for.

    Three copies of one cell with the same weights, forward+backward on the same input:
    ``never``: ``forward`` of a cell whose ``trace`` was never called;
    ``after_trace``: ``forward`` of a cell that ran ``trace`` (with backward) first, as a training run's model does
    every diag_every steps, i.e. diagnostics on, then off again;
    ``bare``: the cell's fast path called directly (``fast_forward`` after the input check), the code a cell
    without any diagnostics support would run. Ratios against ``bare``; 1.0 = free.
    """
    B, T, I, H = p.cuda_shape if device.type == "cuda" else p.cpu_shape
    name = p.diag_cell
    log(f"diagnostics off: {name} forward+backward, never traced / after trace / bare fast path, "
        f"{p.diag_repeats} rounds")
    torch.manual_seed(0)
    x = torch.randn(B, T, I, device=device)
    grad = torch.randn(B, T, H, device=device)
    cells_ = [build_cell(name, I, H, device) for _ in range(3)]
    for c in cells_[1:]:
        c.load_state_dict(cells_[0].state_dict())
    never, traced, bare = cells_
    out, _, _ = traced.trace(x)  # diagnostics mode once, with its backward: then back to the normal path
    out.backward(grad)

    def bare_call():
        for q in bare.parameters():
            q.grad = None
        state = bare.prepare(x, None)
        out, _ = bare.fast_forward(x, state) if bare.fast_path else bare.reference_forward(x, state)
        out.backward(grad)

    runners = {"never": make_runners(never, x, grad)[1], "after_trace": make_runners(traced, x, grad)[1],
               "bare": bare_call}
    s = interleaved(runners, clock, p.diag_repeats, p.warmup)
    r_never = paired_ratio(s["never"], s["bare"])
    r_after = paired_ratio(s["after_trace"], s["bare"])
    worst = max(r_never, r_after)
    return {"cell": name, "never_ms": 1000 * median(s["never"]), "after_trace_ms": 1000 * median(s["after_trace"]),
            "bare_ms": 1000 * median(s["bare"]), "ratio_never": r_never, "ratio_after_trace": r_after,
            "target": f"<= {DIAG_OFF_LIMIT} (none, within noise)", "pass": bool(worst <= DIAG_OFF_LIMIT)}


def bench_kernels(p: Profile, device: torch.device, clock: Clock, log) -> dict | None:
    """Two per-step kernel choices of the fused loops (suite/cells/kernels.py), checked on this machine at the step
    shape: the oneDNN linear on a packed weight against torch.addmm for the recurrent GEMM (B, H) x (H, 3H), and
    tanh as 2 sigmoid(2v) - 1 against torch.tanh on (B, H), in isolation. Which one wins depends on the CPU, and
    in isolation is not in a cell's loop (kernels.KernelChoice), so the cells use the plain ops unless
    RNNSUITE_KERNELS=tuned; "chosen" says which this process used. CPU float32 only (elsewhere the loops use
    torch.addmm and torch.tanh): None."""
    if device.type != "cpu":
        return None
    B, _, _, H = p.cpu_shape
    log(f"kernels: step GEMM ({B}x{H} by {H}x{3 * H}) oneDNN-packed vs addmm, tanh via sigmoid vs torch.tanh, "
        f"{p.repeats} rounds")
    torch.manual_seed(0)
    h, w, add = torch.randn(B, H), torch.randn(3 * H, H), torch.randn(B, 3 * H)
    v = torch.randn(B, H)
    n = p.kernel_inner

    ops = kernels.onednn_ops()
    packed = ops[1](w.contiguous()) if ops is not None else None

    def onednn():  # what linear() runs inside a loop where the choice is oneDNN (addmm where this torch has none)
        with torch.no_grad():
            for _ in range(n):
                if ops is None:
                    torch.addmm(add, h, w.t())
                else:
                    ops[0](h, packed, None, "none", [], "").add_(add)

    def addmm():
        wt = w.t()
        with torch.no_grad():
            for _ in range(n):
                torch.addmm(add, h, wt)

    def tanh_sigmoid():  # what tanh() runs inside a loop where the choice is the sigmoid form
        for _ in range(n):
            kernels.tanh_via_sigmoid(v)

    def tanh_torch():
        for _ in range(n):
            torch.tanh(v)

    s = interleaved({"onednn": onednn, "addmm": addmm, "tanh_sigmoid": tanh_sigmoid, "tanh": tanh_torch}, clock,
                    p.repeats, p.warmup)
    us = {k: 1e6 * median(v) / n for k, v in s.items()}
    return {"gemm_shape": [B, H, 3 * H], "onednn_linear_us": us["onednn"], "addmm_us": us["addmm"],
            "onednn_vs_addmm": paired_ratio(s["onednn"], s["addmm"]), "onednn_available": ops is not None,
            "tanh_via_sigmoid_us": us["tanh_sigmoid"], "torch_tanh_us": us["tanh"],
            "tanh_via_sigmoid_vs_tanh": paired_ratio(s["tanh_sigmoid"], s["tanh"]),
            "chosen": kernels.kernel_choice().describe()}  # what the cells' fused loops use in this process


