"""What running on a GPU asks of the rest of the suite, in small pure pieces that the CPU tests can check.

* :func:`worker_devices`: the ``CUDA_VISIBLE_DEVICES`` each ``--workers`` process gets, indexed into the parent's
  own list (GPU indices, UUIDs and MIG ids alike), so ``CUDA_VISIBLE_DEVICES=2,3 rnnsuite sweep --workers 2``
  runs on GPUs 2 and 3, not 0 and 1;
* :func:`apply_precision_policy` / :func:`precision_tags`: one float32 policy for every cell, set at start-up and
  recorded on every run. cuDNN's RNNs (nn.LSTM / nn.GRU, the lstm and gru cells and the benchmark anchors) would
  otherwise run TF32 (torch's default ``torch.backends.cudnn.rnn.fp32_precision``) while the custom cells'
  matmuls run full float32, which makes every ratio between them unfair;
* :func:`is_unrecoverable_cuda_error` / :func:`release_cuda_memory`: after a trial fails, free the cached blocks;
  after an error that leaves the CUDA context unusable (an illegal address, a device-side assert), the worker
  stops instead of failing every later trial on a dead context;
* :func:`deterministic_algorithms`: ``train.deterministic`` for code outside Lightning (packed trials), with the
  process's flag put back afterwards;
* :func:`deterministic_refusal`: the one clear line for an op torch has no deterministic CUDA kernel for.
"""
from __future__ import annotations

import contextlib
import os
import re

import torch

# ---------------------------------------------------------------------------------------------- workers and GPUs
def visible_list(value: str | None) -> list[str] | None:
    """The entries of a ``CUDA_VISIBLE_DEVICES`` value (None: the variable is not set, every GPU is visible).

    CUDA reads the list up to its first invalid entry; an empty value or ``-1`` hides every GPU."""
    if value is None:
        return None
    entries = []
    for raw in value.split(","):
        entry = raw.strip()
        if not entry or entry.startswith("-"):
            break
        entries.append(entry)
    return entries


def worker_devices(parent: str | None, count: int, workers: int) -> list[str | None]:
    """``CUDA_VISIBLE_DEVICES`` for each of ``workers`` processes: one GPU each, round-robin over what this
    process sees (``count`` = torch.cuda.device_count()). ``parent`` is this process's own value: worker i gets
    its entry i mod n, whatever form the entries take (index, GPU-UUID, MIG-UUID). None: leave it unset (no GPU).
    """
    if count <= 0:
        return [None] * workers
    entries = visible_list(parent)
    if entries is None:  # every GPU visible: the indices torch sees are the machine's
        entries = [str(k) for k in range(count)]
    entries = entries[:count] or [str(k) for k in range(count)]
    return [entries[i % len(entries)] for i in range(workers)]


# ---------------------------------------------------------------------------------------------- precision policy
FP32_PRECISION = "ieee"  # full float32 everywhere: cuDNN's RNNs as the custom cells' matmuls (torch's default)
RECURRENCE = "float32: autocast is off inside every recurrence (lstm and gru too); only input GEMMs follow it"


def _rnn_backend():
    return getattr(getattr(torch.backends, "cudnn", None), "rnn", None)


def apply_precision_policy(fp32: str = FP32_PRECISION) -> None:
    """Set one float32 precision for cuDNN's RNNs and for matmuls ("ieee": full float32, "tf32": tensor cores).

    Torch >= 2.9 has per-backend ``fp32_precision`` settings; older ones the ``allow_tf32`` flags. Idempotent;
    called at the start of every run, pack and benchmark."""
    if fp32 not in ("ieee", "tf32"):
        raise ValueError(f"fp32 precision must be 'ieee' or 'tf32', got {fp32!r}")
    rnn = _rnn_backend()
    if rnn is not None and hasattr(rnn, "fp32_precision"):
        rnn.fp32_precision = fp32
    else:  # older torch: one flag for cuDNN's convolutions and RNNs
        torch.backends.cudnn.allow_tf32 = fp32 == "tf32"
    torch.set_float32_matmul_precision("highest" if fp32 == "ieee" else "high")


def precision_record() -> dict[str, str]:
    """The float32 precision in force, read back from torch: cuDNN's RNNs and matmuls."""
    rnn = _rnn_backend()
    if rnn is not None and hasattr(rnn, "fp32_precision"):
        cudnn_rnn = str(rnn.fp32_precision)
    else:
        cudnn_rnn = "tf32" if torch.backends.cudnn.allow_tf32 else "ieee"
    return {"precision.cudnn_rnn_fp32": cudnn_rnn, "precision.matmul_fp32": torch.get_float32_matmul_precision()}


def precision_tags(train_precision: str, device: str) -> dict[str, str]:
    """The MLflow tags every run carries: the policy as read back, the autocast setting and the recurrence's
    precision, and the device's name (the same seed gives other batches on another device)."""
    tags = {**precision_record(), "precision.autocast": str(train_precision), "precision.recurrence": RECURRENCE}
    tags["device.name"] = device_name(device)
    if device == "cuda":
        from .cells.graphs import describe

        tags["cuda.graphs"] = describe()  # the fused loops replayed from CUDA graphs, or eager
    return tags


def device_name(device: str) -> str:
    if device == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return "cpu"


# ---------------------------------------------------------------------------------------------- failures
UNRECOVERABLE = re.compile(
    r"illegal memory access|illegal instruction|device-side assert|unspecified launch failure|misaligned address"
    r"|CUBLAS_STATUS_EXECUTION_FAILED|CUBLAS_STATUS_INTERNAL_ERROR|CUDNN_STATUS_EXECUTION_FAILED"
    r"|uncorrectable ECC|cudaErrorIllegalAddress|cudaErrorLaunchFailure|hardware stop|GPU has fallen off the bus"
    r"|CUDA error: unknown error|CUDA driver error", re.IGNORECASE)


def is_unrecoverable_cuda_error(exc: BaseException) -> bool:
    """Whether an error leaves this process's CUDA context unusable (every later kernel fails the same way).

    Out-of-memory is not one: the next trial may fit, after :func:`release_cuda_memory`."""
    text = f"{exc.__class__.__name__}: {exc}"
    if "out of memory" in text.lower():
        return False
    return bool(UNRECOVERABLE.search(text))


def release_cuda_memory() -> None:
    """Return the failed trial's cached blocks to the driver (a no-op without CUDA)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        with contextlib.suppress(Exception):  # the context may be what failed: the caller reports that error
            torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------- determinism
@contextlib.contextmanager
def deterministic_algorithms(on: bool):
    """torch's deterministic algorithms on inside the block when ``on`` (what Lightning's
    ``Trainer(deterministic=True)`` does, with cuBLAS's workspace setting), the process's flag put back after."""
    was, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS is deterministic only with it
        torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was, warn_only=warn_only)


def deterministic_refusal(exc: BaseException, what: str, instead: str) -> str | None:
    """One line for torch's "X does not have a deterministic implementation" error (None for other errors)."""
    text = str(exc)
    if "deterministic implementation" not in text:
        return None
    op = text.split(" does not have", 1)[0].strip().split()[-1] if " does not have" in text else "an op"
    return (f"{what}: torch has no deterministic kernel for {op} on this device, and train.deterministic=true "
            f"asks for one; use {instead}, or train.deterministic=false")
