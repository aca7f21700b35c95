"""The names cells, training and tests have imported from ``suite.cells.base``, kept importable here.

Their homes: the cell contract in :mod:`suite.cells.contract` (what a cell author subclasses; ``suite.cells``
exports it), parameter initialisation in :mod:`suite.cells.init`, the fused time loop and its backward helpers in
:mod:`suite.cells.fused`, the CPU kernel choice in :mod:`suite.cells.kernels`.
"""
from __future__ import annotations

from .contract import (INIT_SCHEMES, RecurrentCell, Trace, autocast_off, check_size, fast_paths_enabled,
                       gate_views, reference_paths)
from .fused import (CHUNK, BPTTInputs, FusedLoop, State, bptt_lstm, bptt_one_gemm, bptt_reset_gate, mm_bt,
                    models_packed, packed_models, reversed_chunks, sum_bt, transposed)
from .init import DEFAULT_RULES, InitRule
from .kernels import (KERNEL_MODES, KERNELS_ENV, PLAIN_DETERMINISTIC, KernelChoice, kernel_choice, linear,
                      loop_kernels, onednn_ops, packed_weights, reset_kernel_choice, tanh, tanh_via_sigmoid,
                      weights_packed)


__all__ = ["INIT_SCHEMES", "RecurrentCell", "Trace", "autocast_off", "check_size", "fast_paths_enabled",
           "gate_views", "reference_paths", "CHUNK", "BPTTInputs", "FusedLoop", "State", "bptt_lstm",
           "bptt_one_gemm", "bptt_reset_gate", "mm_bt", "models_packed", "packed_models", "reversed_chunks",
           "sum_bt", "transposed", "DEFAULT_RULES", "InitRule", "KERNEL_MODES", "KERNELS_ENV",
           "PLAIN_DETERMINISTIC", "KernelChoice", "kernel_choice", "linear", "loop_kernels", "onednn_ops",
           "packed_weights", "reset_kernel_choice", "tanh", "tanh_via_sigmoid", "weights_packed"]
