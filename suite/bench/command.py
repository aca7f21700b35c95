"""``rnnsuite bench``: run the sections, collect one JSON-ready result, print it as JSON or a table."""
from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import sys
import time
from typing import Callable

import torch

from ..cells.graphs import describe as graphs_describe
from ..cells.kernels import kernel_choice
from ..gpu import apply_precision_policy, precision_record
from ..registry import SuiteError
from .cells import bench_cells, bench_diagnostics_off, bench_kernels, bench_scaling, bench_scan
from .pipeline import bench_data, bench_packed, bench_tracking, scratch_home
from .profiles import LINEAR_EXPONENT, PROFILE_ENV, PROFILES, SCAN_TARGET, SECTIONS, THREADS_ENV, Profile
from .table import format_table
from .timing import Clock, SectionTimeout, time_limit


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
