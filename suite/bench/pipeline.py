"""The pipeline sections of ``rnnsuite bench``: what tracking costs a training run, data generation as a share
of a step, and packed training (suite/packed.py) against one model per process.

Lightning, MLflow and the training code (suite.train) are imported where they are used, for start-up time:
``--device cuda`` on a machine without a GPU answers in the time torch takes to import, and the per-cell
sections do not need them.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time

import torch

from .. import tasks
from ..assemble import build_model, build_task, resolve_device
from ..config import build_config
from ..packed import Member, run_pack
from ..tasks.base import SyntheticTask
from .profiles import PACKED_TARGET, TRACKING_TARGET, Profile
from .timing import Clock, interleaved, median, paired_ratio

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
    train = {"steps": p.tracking_steps, "device": device, "progress": False, "threads": threads,
             **p.tracking_train}
    return build_config({"task": dict(p.tracking_task), "model": dict(p.tracking_model), "train": train,
                         "tracking": {"uri": f"sqlite:///{home}/mlflow.db", "experiment": "bench"}})


def device_of(cfg) -> torch.device:

    return torch.device(resolve_device(cfg.train.device))


def bare_step(model, task, opt, batch, clip: float) -> None:
    """One training step with nothing around it: forward, loss, backward, clipping, optimizer step."""
    out, _ = model(batch.x)
    loss = task.loss(out, batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()


def bare_steps_per_second(cfg, steps: int) -> float:
    """The same model and task in a plain PyTorch loop: no Lightning, no logging, no diagnostics."""
    import lightning.pytorch as pl  # heavy: see the module docstring


    device = device_of(cfg)
    clock = Clock(device)
    task = build_task(cfg)
    pl.seed_everything(cfg.train.seed, verbose=False)
    model = build_model(cfg, task).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr)
    batches = task.train_batches(cfg.train.seed, device)

    def loop():
        for _ in range(steps):
            bare_step(model, task, opt, next(batches), cfg.optim.clip)

    return steps / clock(loop)


def tracked_steps_per_second(cfg) -> float:
    """Steps/s of ``train.run``: its training loop timed by a :class:`suite.logger.StepTimer` that logs nothing
    (validation excluded; diagnostics, logging and the end-of-run artifacts included)."""
    from ..logger import StepTimer  # Lightning: see the module docstring
    from ..train import run  # Lightning: see the module docstring

    timer = StepTimer()
    result = run(cfg, callbacks=[timer])
    if result.status != "FINISHED":
        raise RuntimeError(f"benchmark run ended {result.status}: {result.reason}")
    return cfg.train.steps / timer.seconds


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


def synthetic_tasks() -> list[str]:
    return [n for n in tasks.names() if issubclass(tasks.TASKS.get(n).builder, SyntheticTask)]


def bench_data(p: Profile, device: torch.device, clock: Clock, threads: int, log) -> dict:
    """Generating a batch as a share of a training step (generation + forward + loss + backward + clipping +
    Adam) for every synthetic task at its default length and batch, with `rnnsuite train`'s default model."""

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
            bare_step(model, task, opt, batch, clip)

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
    from ..train import run  # Lightning: see the module docstring

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


