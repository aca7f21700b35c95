"""What ``rnnsuite bench`` measures at which sizes (:class:`Profile`), and the targets its verdicts use."""
from __future__ import annotations

from dataclasses import dataclass, field

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
