"""``rnnsuite bench``: speed, memory, scaling and overhead benchmarks, in one process -> a table or JSON.

Method (fastrnns-style: creator -> runner -> timed loop). Every section builds what it times first, warms each
runner up, then runs R rounds; in each round every runner of the section is timed once, in a fresh random order,
so that a change of load on a shared machine hits all of them alike ("interleaved repeats"). Times are medians
over the rounds, and a ratio between two runners is the median of their per-round ratios (pairs measured
seconds apart), which is what stays meaningful when absolute times drift. On CUDA every timed call ends with
``torch.cuda.synchronize()``.

Sections (see docs/benchmarks.md for the results and how to read them):

* cells: forward (with autograd recording, as in training) and forward+backward of every registered cell at the
  standard shape (CPU B=32, T=200, I=32, H=128; CUDA the fastrnns shape B=64, T=100, I=H=512), raw
  ``torch.nn.GRU``/``torch.nn.LSTM`` as anchors, ratios to both, and the peak memory of one forward+backward;
* scaling: forward+backward against T and H for nn.GRU, sgru and mingru, with the growth exponent in T;
* scan: mingru/minlstm ``mode="scan"`` (and the paper's ``mode="logscan"``) against ``mode="sequential"``
  (same weights) at several T;
* kernels: the two per-step kernel choices of the fused loops (oneDNN-packed linear vs torch.addmm, tanh via
  sigmoid vs torch.tanh) checked on this machine;
* tracking: steps/s of the full ``rnnsuite train`` pipeline at its default logging intervals against a bare
  PyTorch loop, and the cost of diagnostics support when diagnostics are not requested;
* data: generating a batch of each synthetic task as a share of a training step on it;
* packed: trials per hour of packed training (:mod:`suite.packed`) against one model per process.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` above what was allocated before the call. On the CPU,
torch keeps no such counter, so one extra (untimed) forward+backward runs under ``torch.profiler`` with
``profile_memory=True`` and the peak of the running sum of its allocation records (every tensor allocation and
free through torch's CPU allocator, in time order) is taken, again above the starting point. Both count tensor
memory only: memory a library allocates outside torch's allocator and the Python heap are not included
(oneDNN's RNN workspace for nn.LSTM is a torch tensor, and counted).

Everything a tracked run writes (MLflow database, checkpoints, artifacts, Lightning's folder, the temporary
diagnostics folders) goes under one temporary directory that is removed at the end.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from .registry import SuiteError

# Lightning, MLflow and the training code are imported where they are used: `--device cuda` on a machine without
# a GPU answers in the time torch takes to import, and the per-cell sections do not need them.

# ---------------------------------------------------------------------------------------------- targets (issue 7, 8)
CPU_CELL_TARGETS = {  # cell -> (anchor, at most this ratio of the anchor's forward+backward)
    **{c: ("gru", 0.85) for c in ("sgru", "mgu", "ugrnn", "janet")},  # two gates: 2/3 of nn.GRU's matrix work
    **{c: ("gru", 1.05) for c in ("gru_reset_before", "gru1", "gru2", "gru3", "mut1", "mut2", "mut3")},
    "cifg": ("lstm", 1.0),
    "lstm_peephole": ("lstm", 1.2),
}
GPU_CELL_LIMIT = 1.5  # custom cells <= 1.5x cuDNN nn.GRU at the fastrnns shape
FUSED = ("gru", "lstm")  # registered cells that ARE torch's fused modules: no target against themselves
SCAN_TARGET = (1024, 5.0)  # scan >= 5x the sequential path at T=1024
TRACKING_TARGET = 0.9  # tracked / bare steps per second
DIAG_OFF_LIMIT = 1.05  # "none": within the noise of interleaved medians
PACKED_TARGET = {"cpu": 4.0, "cuda": 10.0}  # trials/hour at the best M, against one model per process
LINEAR_EXPONENT = 1.1  # time ~ T^k with k above this is not linear in T


@dataclass(frozen=True)
class Profile:
    """Sizes and repeat counts of one benchmark run. ``full`` is the issue's; ``quick`` keeps every cell and every
    section but shorter sequences and fewer rounds; ``tiny`` exists for the tests (seconds, numbers meaningless)."""

    name: str
    note: str
    cpu_shape: tuple[int, int, int, int] = (32, 200, 32, 128)  # B, T, I, H
    cuda_shape: tuple[int, int, int, int] = (64, 100, 512, 512)  # fastrnns
    warmup: int = 2
    repeats: int = 11
    memory: bool = True
    scaling_T: tuple[int, ...] = (100, 400, 1600)
    scaling_H: tuple[int, ...] = (64, 256)
    scaling_repeats: int = 5
    scan_T: tuple[int, ...] = (256, 1024, 4096)
    scan_repeats: int = 5
    tracking_task: dict = field(default_factory=lambda: {"name": "adding"})  # `rnnsuite train`'s default task
    tracking_model: dict = field(default_factory=lambda: {"cell": "gru"})  # ... and default model (H=128)
    tracking_train: dict = field(default_factory=dict)  # extra train.* keys (only the tiny profile shrinks them)
    tracking_steps: int = 500  # two diagnostics intervals, ten logging intervals at the defaults
    tracking_repeats: int = 3
    diag_cell: str = "sgru"
    diag_repeats: int = 15
    data_length: int = 100  # the synthetic tasks' default length and batch
    data_batch: int = 64
    data_hidden: int = 128
    data_repeats: int = 9
    data_inner: int = 5  # batches generated per timed sample (one is ~0.1 ms)
    packed_cell: str = "sgru"
    packed_hidden: int = 64
    packed_task: dict = field(default_factory=lambda: {"name": "adding", "length": 50, "batch_size": 32,
                                                       "val_size": 256})
    packed_steps: int = 200
    packed_M: tuple[int, ...] = (1, 4, 8, 16)
    packed_M_cuda: tuple[int, ...] = (1, 4, 8, 16, 32, 64)
    packed_single: int = 3  # single trials timed for the per-process baseline (median)
    kernel_inner: int = 200  # kernel calls per timed sample


PROFILES = {
    "full": Profile("full", "the issue's sizes"),
    "quick": Profile(
        "quick", "reduced: T=100 at the standard shape, scaling T in {25, 100, 400}, scan T in {256, 1024}, "
        "fewer rounds, 100-step tracking runs, 40-step packed trials; every cell and section kept",
        cpu_shape=(32, 100, 32, 128), cuda_shape=(64, 50, 512, 512), warmup=1, repeats=3,
        scaling_T=(25, 100, 400), scaling_repeats=2, scan_T=(256, 1024), scan_repeats=2,
        tracking_steps=100, tracking_repeats=1, diag_repeats=5, data_repeats=3, data_inner=2,
        packed_steps=40, packed_task={"name": "adding", "length": 50, "batch_size": 32, "val_size": 64},
        packed_M_cuda=(1, 4, 8, 16), packed_single=1),
    "tiny": Profile(
        "tiny", "test sizes: every section at toy shapes; the numbers mean nothing",
        cpu_shape=(4, 12, 6, 8), cuda_shape=(4, 12, 6, 8), warmup=1, repeats=2, memory=True,
        scaling_T=(8, 16, 32), scaling_H=(8, 16), scaling_repeats=1, scan_T=(16, 64), scan_repeats=1,
        tracking_task={"name": "adding", "length": 10, "batch_size": 4, "val_size": 8},
        tracking_model={"cell": "gru", "hidden_size": 8},
        tracking_train={"diag_batch": 4, "log_every": 2, "val_every": 4, "diag_every": 4, "grad_every": 2},
        tracking_steps=4, tracking_repeats=1, diag_repeats=2, data_length=10, data_batch=4, data_hidden=8,
        data_repeats=2, data_inner=1, packed_hidden=8, kernel_inner=2,
        packed_task={"name": "adding", "length": 10, "batch_size": 4, "val_size": 8},
        packed_steps=3, packed_M=(1, 2), packed_M_cuda=(1, 2), packed_single=1),
}
PROFILES["gpu-check"] = Profile(  # scripts/gpu-check: the fastrnns shape at full length, fewer rounds, packs to 64
    "gpu-check", "make gpu-check: the fastrnns shape (B=64, T=100, I=H=512), 5 rounds; packed trials of 100 steps "
    "at M in {1, 8, 32, 64}, H=64",
    warmup=2, repeats=5, scaling_T=(25, 100, 400), scaling_repeats=2, scan_T=(256, 1024), scan_repeats=2,
    tracking_steps=100, tracking_repeats=1, diag_repeats=5, data_repeats=3, data_inner=2,
    packed_steps=100, packed_M_cuda=(1, 8, 32, 64), packed_M=(1, 8), packed_single=1)
SECTIONS = ("cells", "scaling", "scan", "diagnostics_off", "kernels", "data", "tracking", "packed")
PROFILE_ENV = "RNNSUITE_BENCH_PROFILE"  # internal: the tests run the CLI with the tiny profile
THREADS_ENV = "RNNSUITE_BENCH_THREADS"  # default 1: the training default (train.threads)


# ---------------------------------------------------------------------------------------------- timing machinery
class Clock:
    """Wall time of a call on one device: synchronizes CUDA before and after."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def __call__(self, fn: Callable[[], object]) -> float:
        self.sync()
        start = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - start


def interleaved(runners: dict[str, Callable[[], object]], clock: Clock, repeats: int, warmup: int,
                seed: int = 0) -> dict[str, list[float]]:
    """Seconds per call of every runner: ``warmup`` untimed calls each, then ``repeats`` rounds in which every
    runner is timed once, in a fresh random order per round. Returns name -> list of samples (round order)."""
    for fn in runners.values():
        for _ in range(warmup):
            fn()
    rng = random.Random(seed)
    samples: dict[str, list[float]] = {k: [] for k in runners}
    names = list(runners)
    for _ in range(repeats):
        rng.shuffle(names)
        for k in names:
            samples[k].append(clock(runners[k]))
    return samples


def median(values) -> float:
    return float(statistics.median(values))


def paired_ratio(num: list[float], den: list[float]) -> float:
    """Median over rounds of num/den: both were timed in the same round, so load changes cancel."""
    return median([a / b for a, b in zip(num, den)])


@contextlib.contextmanager
def _native_stderr_silenced():
    """File descriptor 2 to /dev/null: torch's profiler (kineto) writes "profiler_start/stop" lines and allocator
    warnings from C++ on every use, which would bury the benchmark's own progress lines on stderr."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def peak_memory_mb(fn: Callable[[], object], device: torch.device) -> float | None:
    """Peak tensor memory (MiB) that one call of ``fn`` allocates above what was allocated before it; see the
    module docstring for the two methods. None where this torch's profiler gives no allocation records."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    try:
        from torch.profiler import ProfilerActivity, profile

        with _native_stderr_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
        records = [e for e in prof.profiler.kineto_results.events()
                   if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    except Exception:  # a torch whose profiler internals differ: report no figure rather than a wrong one
        return None
    if not records:
        return None
    records.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for e in records:
        live += e.nbytes()
        peak = max(peak, live)
    return peak / 2**20


# ---------------------------------------------------------------------------------------------- the modules timed
def build_cell(name: str, input_size: int, hidden_size: int, device, **opts) -> torch.nn.Module:
    """A registered cell as a training model builds it (SequenceModel: project_input where the cell takes it and
    the widths differ, which mut1/mut2 need)."""
    from . import cells

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


def _runners(module: torch.nn.Module, x: torch.Tensor, grad: torch.Tensor):
    """(forward, forward+backward) closures: forward records the graph as training does; backward sends a fixed
    random gradient into the outputs (no loss op in the timed region). Parameter gradients are cleared first, so
    no call pays for accumulating into the previous one's."""
    params = list(module.parameters())

    def clear():
        for p in params:
            p.grad = None

    def fwd():
        out, _ = module(x)
        return out

    def fwd_bwd():
        clear()
        out, _ = module(x)
        out.backward(grad)

    return fwd, fwd_bwd


# ---------------------------------------------------------------------------------------------- sections
def bench_cells(p: Profile, device: torch.device, clock: Clock, log) -> tuple[dict, dict]:
    from . import cells

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
        fwd[name], fb[name] = _runners(m, x, grad)
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
                runners[(name, H, T)] = _runners(m, x, grad)[1]
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
    from .cells import scan as scan_cells

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
                runners[f"{name}|{mode}|{T}"] = _runners(cell, x, grad)[1]
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


@contextlib.contextmanager
def scratch_home():
    """A temporary RNNSUITE_HOME (and temp folder) for everything a tracked run writes; removed afterwards."""
    root = tempfile.mkdtemp(prefix="rnnsuite-bench-")
    saved = {k: os.environ.get(k) for k in ("RNNSUITE_HOME", "RNNSUITE_QUIET")}
    old_tmp = tempfile.tempdir
    os.environ["RNNSUITE_HOME"] = root
    os.environ["RNNSUITE_QUIET"] = "1"  # no progress bars
    tempfile.tempdir = os.path.join(root, "tmp")  # Lightning's folder and the diagnostics' temp folders
    os.makedirs(tempfile.tempdir)
    try:
        yield root
    finally:
        tempfile.tempdir = old_tmp
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(root, ignore_errors=True)


def tracking_config(p: Profile, device: str, home: str, threads: int):
    from .config import build_config

    train = {"steps": p.tracking_steps, "device": device, "progress": False, "threads": threads,
             **p.tracking_train}
    return build_config({"task": dict(p.tracking_task), "model": dict(p.tracking_model), "train": train,
                         "tracking": {"uri": f"sqlite:///{home}/mlflow.db", "experiment": "bench"}})


def _train_clock():
    """A Lightning callback: wall time of the training loop, validation excluded (validation is work, not
    tracking); diagnostics, logging and the end-of-run artifacts are inside it."""
    import lightning.pytorch as pl

    class TrainClock(pl.Callback):
        def __init__(self):
            self.start = self.end = 0.0
            self.val = 0.0
            self._v = 0.0

        def on_train_start(self, trainer, module):
            self.start = time.perf_counter()

        def on_train_end(self, trainer, module):
            self.end = time.perf_counter()

        def on_validation_start(self, trainer, module):
            self._v = time.perf_counter()

        def on_validation_end(self, trainer, module):
            self.val += time.perf_counter() - self._v

        @property
        def seconds(self) -> float:
            return self.end - self.start - self.val

    return TrainClock()


def _device_of(cfg) -> torch.device:
    from .train import resolve_device

    return torch.device(resolve_device(cfg.train.device))


def bare_steps_per_second(cfg, steps: int) -> float:
    """The same model and task in a plain PyTorch loop: no Lightning, no logging, no diagnostics."""
    import lightning.pytorch as pl

    from .train import build_model, build_task

    device = _device_of(cfg)
    clock = Clock(device)
    task = build_task(cfg)
    pl.seed_everything(cfg.train.seed, verbose=False)
    model = build_model(cfg, task).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr)
    batches = task.train_batches(cfg.train.seed, device)

    def loop():
        for _ in range(steps):
            batch = next(batches)
            out, _ = model(batch.x)
            loss = task.loss(out, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip)
            opt.step()

    return steps / clock(loop)


def tracked_steps_per_second(cfg) -> float:
    from .train import run

    clock = _train_clock()
    result = run(cfg, callbacks=[clock])
    if result.status != "FINISHED":
        raise RuntimeError(f"benchmark run ended {result.status}: {result.reason}")
    return cfg.train.steps / clock.seconds


def tracking_overhead(cfg, repeats: int = 3) -> dict[str, float]:
    """Steps/s of `rnnsuite train` at its default logging intervals against a bare loop, interleaved repeats,
    medians; ratio = tracked / bare (1.0 = free)."""
    bare, tracked = [], []
    bare_steps_per_second(cfg, min(20, cfg.train.steps))  # warm-up
    for _ in range(repeats):
        bare.append(bare_steps_per_second(cfg, cfg.train.steps))
        tracked.append(tracked_steps_per_second(cfg))
    return {"bare_steps_per_s": median(bare), "tracked_steps_per_s": median(tracked),
            "ratio": paired_ratio(tracked, bare)}


def bench_tracking(p: Profile, device: torch.device, home: str, threads: int, log) -> dict:
    cfg = tracking_config(p, device.type, home, threads)
    log(f"tracking: `rnnsuite train` ({cfg.task.name}, {cfg.model.cell} H={cfg.model.hidden_size}, "
        f"{cfg.train.steps} steps, log_every={cfg.train.log_every}, grad_every={cfg.train.grad_every}, "
        f"diag_every={cfg.train.diag_every}) vs a bare loop, {p.tracking_repeats} rounds")
    out = tracking_overhead(cfg, p.tracking_repeats)
    out.update({"task": cfg.task.name, "cell": cfg.model.cell, "hidden_size": cfg.model.hidden_size,
                "steps": cfg.train.steps, "log_every": cfg.train.log_every, "grad_every": cfg.train.grad_every,
                "diag_every": cfg.train.diag_every, "val_every": cfg.train.val_every,
                "target": f">= {TRACKING_TARGET}", "pass": bool(out["ratio"] >= TRACKING_TARGET)})
    return out


def bench_diagnostics_off(p: Profile, device: torch.device, clock: Clock, log) -> dict:
    """What diagnostics support costs when diagnostics are not asked for.

    Three copies of one cell with the same weights, forward+backward on the same input:
    ``never``: ``forward`` of a cell whose ``trace`` was never called;
    ``after_trace``: ``forward`` of a cell that ran ``trace`` (with backward) first, as a training run's model does
    every diag_every steps, i.e. diagnostics on, then off again;
    ``bare``: the cell's fast path called directly (``_fast_forward`` after the input check), the code a cell
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
        state = bare._prepare(x, None)
        out, _ = bare._fast_forward(x, state) if bare.fast_path else bare._reference_forward(x, state)
        out.backward(grad)

    runners = {"never": _runners(never, x, grad)[1], "after_trace": _runners(traced, x, grad)[1],
               "bare": bare_call}
    s = interleaved(runners, clock, p.diag_repeats, p.warmup)
    r_never = paired_ratio(s["never"], s["bare"])
    r_after = paired_ratio(s["after_trace"], s["bare"])
    worst = max(r_never, r_after)
    return {"cell": name, "never_ms": 1000 * median(s["never"]), "after_trace_ms": 1000 * median(s["after_trace"]),
            "bare_ms": 1000 * median(s["bare"]), "ratio_never": r_never, "ratio_after_trace": r_after,
            "target": f"<= {DIAG_OFF_LIMIT} (none, within noise)", "pass": bool(worst <= DIAG_OFF_LIMIT)}


def bench_kernels(p: Profile, device: torch.device, clock: Clock, log) -> dict | None:
    """Two per-step kernel choices of the fused loops (suite/cells/base.py), checked on this machine at the step
    shape: the oneDNN linear on a packed weight against torch.addmm for the recurrent GEMM (B, H) x (H, 3H), and
    tanh as 2 sigmoid(2v) - 1 against torch.tanh on (B, H), in isolation. Which one wins depends on the CPU, and
    in isolation is not in a cell's loop (base.KernelChoice), so the cells use the plain ops unless
    RNNSUITE_KERNELS=tuned; "chosen" says which this process used. CPU float32 only (elsewhere the loops use
    torch.addmm and torch.tanh): None."""
    if device.type != "cpu":
        return None
    from .cells import base

    B, _, _, H = p.cpu_shape
    log(f"kernels: step GEMM ({B}x{H} by {H}x{3 * H}) oneDNN-packed vs addmm, tanh via sigmoid vs torch.tanh, "
        f"{p.repeats} rounds")
    torch.manual_seed(0)
    h, w, add = torch.randn(B, H), torch.randn(3 * H, H), torch.randn(B, 3 * H)
    v = torch.randn(B, H)
    n = p.kernel_inner

    ops = base._onednn()
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
            torch.add(base._MINUS_ONE, torch.sigmoid(v + v), alpha=2)

    def tanh_torch():
        for _ in range(n):
            torch.tanh(v)

    s = interleaved({"onednn": onednn, "addmm": addmm, "tanh_sigmoid": tanh_sigmoid, "tanh": tanh_torch}, clock,
                    p.repeats, p.warmup)
    us = {k: 1e6 * median(v) / n for k, v in s.items()}
    return {"gemm_shape": [B, H, 3 * H], "onednn_linear_us": us["onednn"], "addmm_us": us["addmm"],
            "onednn_vs_addmm": paired_ratio(s["onednn"], s["addmm"]), "onednn_available": base._onednn() is not None,
            "tanh_via_sigmoid_us": us["tanh_sigmoid"], "torch_tanh_us": us["tanh"],
            "tanh_via_sigmoid_vs_tanh": paired_ratio(s["tanh_sigmoid"], s["tanh"]),
            "chosen": base.kernel_choice().describe()}  # what the cells' fused loops use in this process


def synthetic_tasks() -> list[str]:
    from . import tasks
    from .tasks.base import SyntheticTask

    return [n for n in tasks.names() if issubclass(tasks.TASKS.get(n).builder, SyntheticTask)]


def bench_data(p: Profile, device: torch.device, clock: Clock, threads: int, log) -> dict:
    """Generating a batch as a share of a training step (generation + forward + loss + backward + clipping +
    Adam) for every synthetic task at its default length and batch, with `rnnsuite train`'s default model."""
    from .config import build_config
    from .train import build_model, build_task

    names = synthetic_tasks()
    log(f"data: batch generation vs training step for {', '.join(names)} (T={p.data_length}, "
        f"batch {p.data_batch}, gru H={p.data_hidden}), {p.data_repeats} rounds")
    runners, meta = {}, {}
    for name in names:
        cfg = build_config({"task": {"name": name, "length": p.data_length, "batch_size": p.data_batch},
                            "model": {"cell": "gru", "hidden_size": p.data_hidden},
                            "train": {"device": device.type, "threads": threads}})
        task = build_task(cfg)
        torch.manual_seed(0)
        model = build_model(cfg, task).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr)
        batches = task.train_batches(0, device)
        batch = next(batches)

        def gen(batches=batches, n=p.data_inner):
            for _ in range(n):
                next(batches)

        def step(model=model, opt=opt, task=task, batch=batch, clip=cfg.optim.clip):
            out, _ = model(batch.x)
            loss = task.loss(out, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()

        runners[f"data|{name}"], runners[f"step|{name}"] = gen, step
        meta[name] = task.seq_len
    s = interleaved(runners, clock, p.data_repeats, p.warmup)
    shares, detail = {}, {}
    for name in names:
        d = median(s[f"data|{name}"]) / p.data_inner
        st = median(s[f"step|{name}"])
        shares[name] = d / (d + st)
        detail[name] = {"data_ms": 1000 * d, "step_ms": 1000 * st, "seq_len": meta[name]}
    return {"share": shares, "detail": detail}


def packed_configs(p: Profile, device: str, home: str, threads: int, n: int, offset: int) -> list:
    """n trials of one shape with different learning rates, clipping and seeds, as a sweep would sample them."""
    from .config import build_config

    out = []
    for k in range(offset, offset + n):
        out.append(build_config({
            "task": dict(p.packed_task), "model": {"cell": p.packed_cell, "hidden_size": p.packed_hidden},
            "optim": {"lr": 1e-3 * (1 + k % 7), "clip": [1.0, 0.5, 5.0][k % 3]},
            "train": {"steps": p.packed_steps, "seed": k, "device": device, "progress": False, "threads": threads},
            "tracking": {"uri": f"sqlite:///{home}/mlflow.db", "experiment": "bench-packed"}}))
    return out


def bench_packed(p: Profile, device: torch.device, home: str, threads: int, log) -> dict:
    """Trials per hour: M trials through :func:`suite.packed.run_pack` against the same kind of trial run alone
    by ``train.run`` (what an unpacked sweep worker does, one model at a time per process). Both sides are whole
    trials: MLflow run, training, validation, test, diagnostics and their artifacts. The single-trial baseline
    runs in this already-warm process, so it pays no interpreter start-up: the comparison favours it."""
    from .packed import Member, run_pack
    from .train import run

    Ms = p.packed_M_cuda if device.type == "cuda" else p.packed_M
    task = p.packed_task
    log(f"packed: {p.packed_cell} H={p.packed_hidden} on {task['name']} T={task.get('length')} "
        f"batch {task.get('batch_size')}, {p.packed_steps}-step trials, M in {list(Ms)} vs "
        f"{p.packed_single} single trial(s)")
    run(packed_configs(p, device.type, home, threads, 1, 999)[0])  # warm-up: imports, database, kernels
    single = []
    for cfg in packed_configs(p, device.type, home, threads, p.packed_single, 0):
        start = time.perf_counter()
        result = run(cfg)
        single.append(time.perf_counter() - start)
        if result.status != "FINISHED":
            raise RuntimeError(f"benchmark trial ended {result.status}: {result.reason}")
    t1 = median(single)
    ratios, detail = {}, {}
    offset = 100
    for M in Ms:
        cfgs = packed_configs(p, device.type, home, threads, M, offset)
        offset += M
        start = time.perf_counter()
        results = run_pack([Member(c) for c in cfgs])
        tM = time.perf_counter() - start
        finished = sum(r.status == "FINISHED" for r in results)
        ratios[str(M)] = M * t1 / tM
        detail[str(M)] = {"pack_s": tM, "trials_per_hour": 3600 * M / tM, "finished": finished}
    best = max(ratios, key=ratios.get)
    target = PACKED_TARGET[device.type]
    return {"ratio": ratios, "detail": detail, "single_trial_s": t1, "single_trials_per_hour": 3600 / t1,
            "best_M": int(best), "target": f">= {target}x at the best M", "pass": bool(ratios[best] >= target),
            "cell": p.packed_cell, "hidden_size": p.packed_hidden, "task": dict(task), "steps": p.packed_steps}


# ---------------------------------------------------------------------------------------------- the command
def resolve_bench_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise SuiteError("--device cuda but no CUDA GPU is available here; use --device cpu (or auto)")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def bench(profile: Profile | str = "full", device: str = "auto", threads: int | None = None,
          log: Callable[[str], None] | None = None, sections: tuple[str, ...] | None = None,
          section_timeout: float | None = None) -> dict:
    """Run every section (or those in ``sections``); returns the JSON-ready result. A section that runs past
    ``section_timeout`` seconds is stopped and named under "skipped" with the reason; the others still run."""
    p = PROFILES[profile] if isinstance(profile, str) else profile
    dev = resolve_bench_device(device)
    if threads is None:
        threads = int(os.environ.get(THREADS_ENV) or 1)
    torch.set_num_threads(threads)
    log = log or (lambda msg: None)
    clock = Clock(dev)
    started = time.perf_counter()
    from .cells.base import kernel_choice

    from .cells.graphs import describe as graphs_describe
    from .gpu import apply_precision_policy, precision_record

    apply_precision_policy()  # the anchors (cuDNN) and the custom cells at one float32 precision, as in training
    kernels = kernel_choice().describe() if dev.type == "cpu" else None  # $RNNSUITE_KERNELS: plain or tuned
    log(f"cells' CPU kernels: {kernels}")
    result: dict = {
        "device": dev.type,
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if dev.type == "cuda" else None,
        "cudnn": torch.backends.cudnn.version() if dev.type == "cuda" else None,
        "precision": precision_record(),
        "cuda_graphs": graphs_describe() if dev.type == "cuda" else None,  # $RNNSUITE_CUDA_GRAPHS
        "sections": list(sections or SECTIONS),
        "skipped": {},
        "threads": torch.get_num_threads(),
        "kernels_chosen": kernels,
        "profile": p.name,
        "quick": p.name == "quick",
        "note": p.note,
        "memory_method": ("torch.cuda.max_memory_allocated above the start" if dev.type == "cuda" else
                          "torch.profiler allocation records (profile_memory=True): peak of live tensor bytes "
                          "above the start of one forward+backward"),
    }

    wanted = set(sections or SECTIONS)

    def section(name, fn, *args):
        if name not in wanted:
            return None
        t0 = time.perf_counter()
        try:
            with time_limit(section_timeout):
                value = fn(*args)
        except SectionTimeout:
            result["skipped"][name] = f"stopped after {section_timeout:g} s (--section-timeout)"
            log(f"  {name} stopped after {section_timeout:g} s")
            return None
        log(f"  {name.replace('_', ' ')} done in {time.perf_counter() - t0:.1f} s")
        return value

    cells_ = section("cells", bench_cells, p, dev, clock, log)
    if cells_ is not None:
        result["cells"], extra = cells_
        result.update(extra)
    result["scaling"] = section("scaling", bench_scaling, p, dev, clock, log)
    scan = section("scan", bench_scan, p, dev, clock, log)
    if scan is not None:
        result["scan"], result["scan_detail"] = scan["speedup"], {**scan["detail"], "shape": scan["shape"]}
        result["scan_logscan"] = scan["logscan"]  # the paper's log-space form against the same sequential loop
    result["diagnostics_off"] = section("diagnostics_off", bench_diagnostics_off, p, dev, clock, log)
    result["kernels"] = section("kernels", bench_kernels, p, dev, clock, log) if dev.type == "cpu" else None
    data = section("data", bench_data, p, dev, clock, threads, log)
    if data is not None:
        result["data"], result["data_detail"] = data["share"], data["detail"]
    with scratch_home() as home:
        result["tracking"] = section("tracking", bench_tracking, p, dev, home, threads, log)
        packed = section("packed", bench_packed, p, dev, home, threads, log)
    torch.set_num_threads(threads)  # train.run sets the config's count; keep ours for anything after
    if packed is not None:
        result["packed"] = packed.pop("ratio")
        result["packed_detail"] = packed
    result["targets"] = summarize_targets(result)
    result["elapsed_s"] = time.perf_counter() - started
    return result


class SectionTimeout(Exception):
    """A benchmark section ran past --section-timeout."""


@contextlib.contextmanager
def time_limit(seconds: float | None):
    """Raise SectionTimeout in this (main) thread after ``seconds`` (None or 0: no limit; SIGALRM, so POSIX)."""
    import signal
    import threading

    if not seconds or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGALRM"):
        yield
        return

    def expire(signum, frame):
        raise SectionTimeout

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def summarize_targets(r: dict) -> dict:
    """Every target of the issues with its measured figure and pass/fail (None: not measured in this profile)."""
    out: dict = {}
    for name, row in (r.get("cells") or {}).items():
        if row.get("target"):
            anchor = "gru" if "GRU" in row["target"] else "lstm"
            out[f"cell:{name}"] = {"target": row["target"], "value": row[f"ratio_vs_{anchor}"], "pass": row["pass"]}
    T, need = SCAN_TARGET
    for name, speed in (r.get("scan") or {}).items():
        value = speed.get(str(T))
        out[f"scan:{name}@T={T}"] = {"target": f">= {need}x sequential", "value": value,
                                     "pass": None if value is None else bool(value >= need)}
    for key in ("tracking", "diagnostics_off"):
        sec = r.get(key)
        if sec is None:
            continue
        value = sec["ratio"] if key == "tracking" else max(sec["ratio_never"], sec["ratio_after_trace"])
        out[key] = {"target": sec["target"], "value": value, "pass": sec["pass"]}
    pk = r.get("packed_detail")
    if pk is not None:
        out["packed"] = {"target": pk["target"], "value": r["packed"][str(pk["best_M"])], "pass": pk["pass"]}
    if not r.get("scaling"):
        return out
    lin = [v["linear"] for c in r["scaling"]["cells"].values() for v in c.values()]
    out["scaling:linear_in_T"] = {"target": f"time ~ T^k, k <= {LINEAR_EXPONENT}",
                                  "value": max(v["exponent"] for c in r["scaling"]["cells"].values()
                                               for v in c.values()),
                                  "pass": all(lin)}
    return out


# ---------------------------------------------------------------------------------------------- output
def _f(v, spec=".2f") -> str:
    return "-" if v is None else format(v, spec)


def _mark(ok) -> str:
    return "" if ok is None else ("ok" if ok else "MISSED")


def format_table(r: dict) -> str:
    lines = [f"rnnsuite bench ({r['profile']}: {r['note']})",
             f"device {r['device']} ({r['device_name']}, {r['cpu_count']} CPUs), torch {r['torch']}, "
             f"{r['threads']} thread(s); {r['elapsed_s']:.0f} s"]
    lines += [f"section {k} skipped: {v}" for k, v in r.get("skipped", {}).items()]
    if r.get("cells"):
        lines += _cell_lines(r)
    if r.get("scaling"):
        lines += _scaling_lines(r)
    if r.get("scan"):
        lines += _scan_lines(r)
    lines += _pipeline_lines(r)
    lines += ["", "targets:"]
    for k, v in r["targets"].items():
        lines.append(f"  {k:28s} {v['target']:34s} {_f(v['value'], '.3f'):>7s}  {_mark(v['pass']) or 'n/a'}")
    return "\n".join(lines)


def _cell_lines(r: dict) -> list[str]:
    s = r["shape"]
    lines = ["",
             f"cells at B={s['B']} T={s['T']} I={s['I']} H={s['H']} (medians; ratios = median of per-round ratios "
             "of fwd+bwd)",
             f"{'cell':18s} {'fwd ms':>8s} {'fwd+bwd':>8s} {'x GRU':>6s} {'x LSTM':>6s} {'peak MB':>8s}  target"]
    rows = [(k, v) for k, v in r["anchors"].items()] + list(r["cells"].items())
    for name, v in rows:
        tgt = f"{v['target']} {_mark(v['pass'])}" if v.get("target") else ""
        lines.append(f"{name:18s} {v['fwd_ms']:8.2f} {v['fwd_bwd_ms']:8.2f} {v['ratio_vs_gru']:6.2f} "
                     f"{v['ratio_vs_lstm']:6.2f} {_f(v['peak_mem_mb'], '8.1f'):>8s}  {tgt}")
    return lines


def _scaling_lines(r: dict) -> list[str]:
    sc = r["scaling"]
    lines = ["", f"scaling: fwd+bwd ms at B={sc['B']} I={sc['I']}; k = growth exponent in T"]
    lines.append(f"{'cell':8s} {'H':>4s} " + " ".join(f"{'T=' + str(T):>9s}" for T in sc["T"])
                 + f" {'us/step':>18s} {'k':>5s}")
    for name, per_h in sc["cells"].items():
        for H, v in per_h.items():
            us = "/".join(f"{v['us_per_step'][str(T)]:.0f}" for T in sc["T"])
            lines.append(f"{name:8s} {H:>4s} " + " ".join(f"{v['fwd_bwd_ms'][str(T)]:9.1f}" for T in sc["T"])
                         + f" {us:>18s} {v['exponent']:5.2f} {'linear' if v['linear'] else 'SUPERLINEAR'}")
    return lines


def _scan_lines(r: dict) -> list[str]:
    lines = ["", "scan: fwd+bwd speed-up over mode=sequential (ms scan / sequential)"]
    for mode, table in (("scan", r["scan"]), ("logscan", r.get("scan_logscan") or {})):
        for name, speed in table.items():
            d = r["scan_detail"][name]
            lines.append(f"{name:8s} {mode:8s} " + "  ".join(
                f"T={T}: {v:.2f}x ({d[T][mode + '_ms']:.1f}/{d[T]['sequential_ms']:.1f})" for T, v in speed.items()))
    return lines


def _pipeline_lines(r: dict) -> list[str]:
    lines: list[str] = []
    t = r.get("tracking")
    if t:
        lines += ["", f"tracking: bare {t['bare_steps_per_s']:.2f} steps/s, tracked {t['tracked_steps_per_s']:.2f} "
                  f"steps/s, ratio {t['ratio']:.3f} (target {t['target']}: {_mark(t['pass'])})"]
    d = r.get("diagnostics_off")
    if d:
        lines.append(f"diagnostics off ({d['cell']}): never traced {d['ratio_never']:.3f}x, after a trace "
                     f"{d['ratio_after_trace']:.3f}x of the bare fast path ({d['bare_ms']:.2f} ms) "
                     f"[{_mark(d['pass'])}]")
    k = r.get("kernels")
    if k:
        lines.append(f"kernels: step GEMM {k['gemm_shape']} oneDNN-packed {k['onednn_linear_us']:.1f} us vs addmm "
                     f"{k['addmm_us']:.1f} us ({k['onednn_vs_addmm']:.2f}x); tanh via sigmoid "
                     f"{k['tanh_via_sigmoid_us']:.1f} us vs torch.tanh {k['torch_tanh_us']:.1f} us "
                     f"({k['tanh_via_sigmoid_vs_tanh']:.2f}x); the cells chose {k['chosen']}")
    if r.get("data"):
        lines += ["", "data generation share of a training step: " + ", ".join(
            f"{k} {100 * v:.2f}% ({r['data_detail'][k]['data_ms']:.3f}/{r['data_detail'][k]['step_ms']:.1f} ms)"
            for k, v in r["data"].items())]
    pk = r.get("packed_detail")
    if pk:
        lines += ["", f"packed trials/hour vs one model per process ({pk['cell']} H={pk['hidden_size']}, "
                  f"{pk['steps']} steps; single trial {pk['single_trial_s']:.1f} s): " + ", ".join(
                      f"M={M}: {v:.2f}x" for M, v in r["packed"].items())
                  + f"  [best M={pk['best_M']}, {pk['target']}: {_mark(pk['pass'])}]"]
    return lines


def run_bench(args) -> int:
    """`rnnsuite bench [--json] [--quick] [--device D]`."""
    device = getattr(args, "device", "auto") or "auto"
    resolve_bench_device(device)  # fail fast, before anything is measured
    profile = os.environ.get(PROFILE_ENV) or ("quick" if args.quick else "full")
    if profile not in PROFILES:
        raise SuiteError(f"${PROFILE_ENV}={profile!r} is not one of {', '.join(PROFILES)}")

    def log(msg: str) -> None:
        print(f"[bench] {msg}", file=sys.stderr, flush=True)

    sections = parse_sections(getattr(args, "sections", None))
    timeout = getattr(args, "section_timeout", None)
    if timeout is not None and timeout <= 0:
        raise SuiteError(f"--section-timeout must be a positive number of seconds, got {timeout:g}")
    result = bench(profile, device, log=log, sections=sections, section_timeout=timeout)
    if args.json:
        print(json.dumps(finite(result), allow_nan=False), flush=True)
    else:
        print(format_table(result), flush=True)
    return 0


def parse_sections(text: str | None) -> tuple[str, ...] | None:
    """--sections cells,packed -> ("cells", "packed"); None: every section. An unknown name is one line."""
    if not text:
        return None
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in SECTIONS]
    if unknown or not names:
        raise SuiteError(f"--sections: unknown section {', '.join(unknown) or repr(text)}; choose from "
                         f"{', '.join(SECTIONS)}")
    return names


def finite(v):
    """The result with tuples as lists and any non-finite float as None (strict JSON has no NaN/Infinity)."""
    if isinstance(v, dict):
        return {str(k): finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [finite(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v
