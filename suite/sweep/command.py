"""``rnnsuite sweep``: run (or resume) a sweep in this process or in ``--workers N`` worker processes, with a
progress line per finished trial and a summary at the end. Re-running the same command resumes."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import torch

from ..gpu import worker_devices
from ..logger import interrupts_outside_database_code
from ..tracking import command_line
from .core import Sweep
from .spec import check_pack, load_sweep

def run_sweep(path: str, storage: str | None, tracking_uri: str | None, workers: int = 1,
              worker_only: bool = False, pack: int | None = None) -> int:
    spec = load_sweep(path)
    if pack is not None:  # --pack overrides the file's pack:
        spec.pack = check_pack(pack, "--pack")
    sweep = Sweep(spec, storage, tracking_uri)
    if worker_only:
        sweep.work()
        return 0
    sweep.command = sweep_command(path, storage, tracking_uri, workers, pack)
    sweep.prepare()
    for note in spec.refusal_notes() + spec.design_notes():
        print(f"rnnsuite: note: {note}", file=sys.stderr, flush=True)
    if sweep.done():
        sweep.finish()
        print(f"sweep {spec.name}: nothing to do ({spec.trials} trials and up to {spec.confirm_runs} "
              "confirmation runs per cell are finished)")
        _print_summary(sweep)
        return 0
    clock = _Clock(sweep)
    started = clock.started
    if workers <= 1:
        print(sweep.studies.progress_line(), flush=True)
        sweep.work(progress=lambda: print(sweep.studies.progress_line() + clock.suffix(), flush=True))
    else:
        run_workers(sweep, path, storage, tracking_uri, workers, clock)
    if not sweep.done():
        print(f"rnnsuite: sweep {spec.name} stopped before its budget was spent; run the same command to resume",
              file=sys.stderr)
        return 1
    sweep.finish()
    print(f"sweep {spec.name} finished in {_elapsed(started)}")
    _print_summary(sweep)
    return 0


def sweep_command(path: str, storage: str | None, tracking_uri: str | None, workers: int = 1,
                  pack: int | None = None) -> str:
    """The command line that ran the sweep, as typed (stores masked), for its report's reproduction section."""
    return command_line(["rnnsuite", "sweep", str(path)],
                        [("--storage", storage), ("--tracking-uri", tracking_uri),
                         ("--workers", workers if workers and workers > 1 else None), ("--pack", pack)])


class _Clock:
    """Elapsed time and an ETA from the runs finished since this command started (resumed sweeps included)."""

    def __init__(self, sweep: Sweep):
        self.sweep = sweep
        self.started = time.time()
        self.done0 = sweep.studies.runs_done()[0]

    def suffix(self) -> str:
        done, total = self.sweep.studies.runs_done()
        text = f"  [{done}/{total} runs, {_elapsed(self.started)}"
        if done > self.done0 and done < total:
            rate = (time.time() - self.started) / (done - self.done0)
            text += f", ETA {_duration(rate * (total - done))}"
        return text + "]"


WORKER_STOP_S = 60.0  # how long a worker told to stop (SIGTERM) may take to end its trial


def run_workers(sweep: Sweep, path, storage, tracking_uri, workers, clock: _Clock) -> None:
    # one GPU per worker, round-robin over this process's own CUDA_VISIBLE_DEVICES (indices, UUIDs, MIG ids)
    devices = worker_devices(os.environ.get("CUDA_VISIBLE_DEVICES"), torch.cuda.device_count(), workers)
    procs = []
    for i in range(workers):
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        if devices[i] is not None:
            env["CUDA_VISIBLE_DEVICES"] = devices[i]
        # the stores go by environment, not argv: a password on a command line is visible to every user (ps)
        env.update(RNNSUITE_STORAGE=sweep.storage_url, MLFLOW_TRACKING_URI=sweep.tracking_uri)
        cmd = [sys.executable, "-m", "suite", "sweep", path, "--worker-only", "--quiet", "--pack",
               str(sweep.spec.pack)]
        procs.append(subprocess.Popen(cmd, env=env))
    last = ""
    try:
        with interrupts_outside_database_code():  # SIGTERM (kill, a scheduler's pre-emption) stops the workers too
            while any(p.poll() is None for p in procs):
                line = sweep.studies.progress_line()
                if line != last:
                    print(line + clock.suffix(), flush=True)
                    last = line
                time.sleep(3.0)
    except BaseException:  # Ctrl-C, SIGTERM, an error here: no worker is left training on its own
        for p in procs:
            if p.poll() is None:
                p.terminate()  # each ends its trial KILLED and hands it back to be retried
        deadline = time.monotonic() + WORKER_STOP_S
        for p in procs:
            try:
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:  # stuck: never leave it training on its own
                p.kill()
                p.wait()
                print(f"rnnsuite: worker {p.pid} did not stop within {WORKER_STOP_S:.0f} s of SIGTERM and was killed; "
                      "its trial is retried when the sweep resumes", file=sys.stderr, flush=True)
        raise
    print(sweep.studies.progress_line() + clock.suffix(), flush=True)


def _elapsed(start: float) -> str:
    return _duration(time.time() - start)


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4g}"


def _print_summary(sweep: Sweep) -> None:
    rows = sweep.studies.summary_rows()
    print(f"{'cell':<17}{'complete':>9}{'pruned':>8}{'failed':>8}{'best search':>13}   confirm "
          f"({sweep.metric}, mean ± sd, n)")
    for r in rows:
        conf = f"{_fmt(r['confirm_mean'])} ± {_fmt(r['confirm_sd'])} (n={r['confirm_n']})"
        print(f"{r['cell']:<17}{r['complete']:>9}{r['pruned']:>8}{r['failed']:>8}{_fmt(r['best']):>13}   {conf}")
