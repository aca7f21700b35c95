"""The timing method of ``rnnsuite bench``: interleaved rounds, paired ratios, peak memory, section time limits.

See :mod:`suite.bench` for the method as a whole and docs/benchmarks.md for its results.
"""
from __future__ import annotations

import contextlib
import os
import random
import signal
import statistics
import sys
import threading
import time
from typing import Callable

import torch


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
def native_stderr_silenced():
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

        with native_stderr_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
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



def make_runners(module: torch.nn.Module, x: torch.Tensor, grad: torch.Tensor):
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

class SectionTimeout(Exception):
    """A benchmark section ran past --section-timeout."""


@contextlib.contextmanager
def time_limit(seconds: float | None):
    """Raise SectionTimeout in this (main) thread after ``seconds`` (None or 0: no limit; SIGALRM, so POSIX)."""
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
