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

Modules: :mod:`~suite.bench.profiles` (sizes and targets), :mod:`~suite.bench.timing` (the method),
:mod:`~suite.bench.cells` (cells, scaling, scan, diagnostics off, kernels), :mod:`~suite.bench.pipeline`
(tracking, data, packed), :mod:`~suite.bench.command` (``rnnsuite bench``), :mod:`~suite.bench.table` (the
readable output).
"""
from __future__ import annotations

from .cells import (Anchor, bench_cells, bench_diagnostics_off, bench_kernels, bench_scaling, bench_scan,
                    build_cell, cell_target)
from .command import bench, cpu_name, finite, parse_sections, resolve_bench_device, run_bench, summarize_targets
from .pipeline import (bare_step, bare_steps_per_second, bench_data, bench_packed, bench_tracking, packed_configs,
                       scratch_home, synthetic_tasks, tracked_steps_per_second, tracking_config, tracking_overhead)
from .profiles import (CPU_CELL_TARGETS, DIAG_OFF_LIMIT, FUSED, GPU_CELL_LIMIT, LINEAR_EXPONENT, PACKED_TARGET,
                       PROFILE_ENV, PROFILES, SCAN_TARGET, SECTIONS, THREADS_ENV, TRACKING_TARGET, Profile)
from .table import format_table
from .timing import (Clock, SectionTimeout, interleaved, make_runners, median, paired_ratio, peak_memory_mb,
                     time_limit)

__all__ = ["Anchor", "bench_cells", "bench_diagnostics_off", "bench_kernels", "bench_scaling", "bench_scan",
           "build_cell", "cell_target", "bench", "cpu_name", "finite", "parse_sections", "resolve_bench_device",
           "run_bench", "summarize_targets", "bare_step", "bare_steps_per_second", "bench_data", "bench_packed",
           "bench_tracking", "packed_configs", "scratch_home", "synthetic_tasks", "tracked_steps_per_second",
           "tracking_config", "tracking_overhead", "CPU_CELL_TARGETS", "DIAG_OFF_LIMIT", "FUSED", "GPU_CELL_LIMIT",
           "LINEAR_EXPONENT", "PACKED_TARGET", "PROFILE_ENV", "PROFILES", "SCAN_TARGET", "SECTIONS", "THREADS_ENV",
           "TRACKING_TARGET", "Profile", "format_table", "Clock", "SectionTimeout", "interleaved", "make_runners",
           "median", "paired_ratio", "peak_memory_mb", "time_limit"]
