"""Gradient-flow and gate diagnostics: what the seed article claims, made measurable.

* per-gate gradient norms of the recurrent weights (the fused matrices split by gate), one fused
  ``torch._foreach_norm`` call for all blocks of the model;
* gate use on a fixed diagnostic batch: mean activation, saturation (fraction < 0.1 or > 0.9) and its two ends
  apart (near0: < 0.1, near1: > 0.9) per gate, and a histogram of the activations in HIST_BINS fixed bins on
  [0, 1] (artifact diagnostics/gate_hist.csv), so "mostly zeros and ones" can be told from "almost always keep";
* the vanishing-gradient profile G_t = ||dL/dh_t|| (batch mean of per-sequence L2 norms) for every time step
  of the first recurrent layer (and c_t for LSTMs), with the summary diag/grad_decay =
  log10(mean G over the first 10 steps / mean G over the last 10 steps) (Arjovsky et al. 2016 plot this).
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

SAT_LOW, SAT_HIGH = 0.1, 0.9  # the saturation band (docs/configuration.md: gates/.../saturation)
EDGE = 10  # time steps averaged at each end for diag/grad_decay
HIST_BINS = 10  # equal bins on [0, 1]: the first is near0 (< 0.1), the last near1 (> 0.9)


def gate_blocks(model: nn.Module) -> list[tuple[str, str, Tensor]]:
    """(metric name, parameter name, parameter) for every recurrent parameter, with its gate split."""
    out = []
    for i, layer in enumerate(model.layers):
        for pname, p in layer.named_parameters():
            out.append((f"l{i}", pname, p))
    return out


def gate_grad_norms(model: nn.Module) -> dict[str, float]:
    """grad/<layer>/<gate>: L2 norm of the gradient of every weight block of that gate, and of other params.

    All blocks go through one ``torch._foreach_norm`` call; one host transfer at the end.
    """
    names: list[str] = []
    views: list[Tensor] = []
    for i, layer in enumerate(model.layers):
        split = getattr(layer, "param_gates", {})
        for pname, p in layer.named_parameters():
            if p.grad is None:
                continue
            gates = split.get(pname)
            if gates:
                names.extend(f"grad/l{i}/{g}" for g in gates)
                views.extend(p.grad.chunk(len(gates), 0))
            else:
                names.append(f"grad/l{i}/{pname.replace('.', '_')}")
                views.append(p.grad)
    for mname, module in (("grad/embedding", getattr(model, "embedding", None)), ("grad/head", model.head)):
        if module is not None:
            grads = [p.grad for p in module.parameters() if p.grad is not None]
            names.extend(mname for _ in grads)
            views.extend(grads)
    if not views:
        return {}
    norms = torch.stack(torch._foreach_norm(views)).float()  # one fused kernel over every block
    keys, select = _grouping(names, norms.device)
    squares = torch.where(select, norms.square(), 0.0)  # (keys, blocks); where, not a matmul: 0 * inf is NaN
    totals = squares.sum(1).sqrt().tolist()  # the one host transfer
    return dict(zip(keys, totals))


_GROUPINGS: dict[tuple, tuple[list[str], Tensor]] = {}


def _grouping(names: list[str], device) -> tuple[list[str], Tensor]:
    """The metric names in order and a (keys, blocks) mask of each metric's blocks: built once per model shape
    and device, so no index list crosses to the device at each call (a Python-list index per gate was one
    host-to-device copy per gate and step). A masked sum, not index_add_: deterministic on CUDA too."""
    key = (tuple(names), str(device))
    hit = _GROUPINGS.get(key)
    if hit is None:
        keys = list(dict.fromkeys(names))
        pos = {k: i for i, k in enumerate(keys)}
        select = torch.zeros(len(keys), len(names), dtype=torch.bool)
        for j, name in enumerate(names):
            select[pos[name], j] = True
        if len(_GROUPINGS) > 64:  # many shapes in one process (tests): keep the cache small
            _GROUPINGS.clear()
        hit = _GROUPINGS[key] = (keys, select.to(device))
    return hit


def gate_stats(traces) -> dict[str, float]:
    """gates/<layer>/<gate>/mean, .../saturation (< 0.1 or > 0.9), .../near0 (< 0.1) and .../near1 (> 0.9)."""
    keys, values = [], []
    for i, tr in enumerate(traces):
        for g, a in tr.gates.items():
            a = a.detach().float()
            low, high = (a < SAT_LOW).float().mean(), (a > SAT_HIGH).float().mean()
            keys += [f"gates/l{i}/{g}/mean", f"gates/l{i}/{g}/saturation", f"gates/l{i}/{g}/near0",
                     f"gates/l{i}/{g}/near1"]
            values += [a.mean(), low + high, low, high]
    return dict(zip(keys, torch.stack(values).tolist())) if values else {}


def gate_histogram(traces) -> dict[tuple[str, str], list[float]]:
    """(layer, gate) -> fraction of the activations in each of HIST_BINS equal bins on [0, 1] (sums to 1)."""
    out = {}
    for i, tr in enumerate(traces):
        for g, a in tr.gates.items():
            a = a.detach().float().flatten().clamp(0, 1)
            counts = torch.histc(a, bins=HIST_BINS, min=0.0, max=1.0)
            out[(f"l{i}", g)] = (counts / max(1, a.numel())).tolist()
    return out


def gradient_profile(model: nn.Module, task, batch) -> tuple[dict[str, list[float]], dict[str, float]]:
    """G_t for layer 0 (h, and c where the cell has one) and the gate statistics, on one batch."""
    profile, stats, _ = diagnose(model, task, batch)
    return profile, stats


def diagnose(model: nn.Module, task, batch):
    """(profile, gate statistics, gate histograms) on one batch: see gradient_profile and gate_histogram.

    Runs in eval mode (no dropout, batch-norm statistics frozen) and uses torch.autograd.grad, so the
    parameters' .grad fields, which training owns, are not touched.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            out, _, traces = model.trace(batch.x)
            loss = task.diag_loss(out, batch)
            names = list(traces[0].states)
            flat = [s for n in names for s in traces[0].states[n]]
            grads = torch.autograd.grad(loss, flat, allow_unused=True)
        T = len(traces[0].states[names[0]])
        profile: dict[str, list[float]] = {}
        for k, name in enumerate(names):
            gs = [g if g is not None else torch.zeros_like(flat[0]) for g in grads[k * T:(k + 1) * T]]
            per_step = torch.stack(gs, 1).float().norm(dim=2).mean(0)  # (T,)
            profile[name] = per_step.tolist()
        return profile, gate_stats(traces), gate_histogram(traces)
    finally:
        model.train(was_training)


def hist_rows(step: int, hist: dict[tuple[str, str], list[float]]) -> list[tuple[int, str, str, int, float]]:
    """gate_hist.csv rows (step, layer, gate, bin, fraction) of one diagnosed step."""
    return [(step, layer, gate, b, f) for (layer, gate), fracs in hist.items() for b, f in enumerate(fracs)]


def write_gate_hist(rows: list[tuple[int, str, str, int, float]], folder: Path) -> list[Path]:
    """diagnostics/gate_hist.csv: step, layer, gate, bin, lo, hi, fraction (HIST_BINS equal bins on [0, 1])."""
    if not rows:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "gate_hist.csv"
    with path.open("w") as f:
        f.write("step,layer,gate,bin,lo,hi,fraction\n")
        for step, layer, gate, b, frac in rows:
            f.write(f"{step},{layer},{gate},{b},{b / HIST_BINS:g},{(b + 1) / HIST_BINS:g},{frac:.6g}\n")
    return [path]


def batch_to(batch, device):
    """A copy of a task Batch with its tensors on `device`."""
    return dataclasses.replace(batch, **{f.name: getattr(batch, f.name).to(device)
                                         for f in dataclasses.fields(batch)
                                         if isinstance(getattr(batch, f.name), Tensor)})


def grad_decay(norms: list[float]) -> float:
    """log10(mean of the first EDGE norms / mean of the last EDGE norms); 0 = no decay, < 0 = vanishing."""
    k = min(EDGE, len(norms))
    first = sum(norms[:k]) / k
    last = sum(norms[-k:]) / k
    if last <= 0 or first <= 0:
        return -math.inf if first <= 0 < last else 0.0
    return math.log10(first / last)


def write_profile(rows: list[tuple[int, str, int, float]], folder: Path) -> list[Path]:
    """CSV (step, state, t, norm) and a PNG: log-scale norm against t, one line per logged step."""
    import matplotlib  # heavy: loaded at the end of a run, when its profile is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    csv = folder / "grad_profile.csv"
    with csv.open("w") as f:
        f.write("step,state,t,norm\n")
        for step, state, t, norm in rows:
            f.write(f"{step},{state},{t},{norm:.6e}\n")
    steps = sorted({r[0] for r in rows})
    states = sorted({r[1] for r in rows})
    # fixed margins, not tight_layout: that draws the figure once more to measure it (~0.1 s a run here)
    fig, axes = plt.subplots(1, len(states), figsize=(6 * len(states), 4), squeeze=False)
    fig.subplots_adjust(left=0.13 / len(states), right=1 - 0.03 / len(states), bottom=0.13, top=0.92, wspace=0.3)
    cmap = plt.get_cmap("viridis")
    for ax, state in zip(axes[0], states):
        for j, step in enumerate(steps):
            pts = [(t, n) for s, st, t, n in rows if s == step and st == state and n > 0]
            if pts:
                ts, ns = zip(*pts)
                ax.plot(ts, ns, color=cmap(j / max(1, len(steps) - 1)), label=f"step {step}")
        ax.set_yscale("log")
        ax.set_xlabel("time step t")
        ax.set_ylabel(f"||dL/d{state}_t||")
        ax.set_title(f"gradient reaching {state}_t (layer 0)", y=1.01)  # a fixed y: no search for overlaps
        ax.legend(fontsize=7, loc="lower right")  # not "best" (a search of the data); norms grow towards t = T
    png = folder / "grad_profile.png"
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return [csv, png]


class Recorder:
    """One model's diagnostics over a run, for a single run (:class:`DiagnosticsCallback`) and for each model of a
    pack alike: each step measured once on the fixed batch, its metrics returned for the caller's logger and its
    rows kept for the artifacts written at the end."""

    def __init__(self, task, batch):
        self.task, self.batch = task, batch
        self.rows: list[tuple[int, str, int, float]] = []  # grad_profile.csv rows (step, state, t, norm)
        self.hist: list[tuple[int, str, str, int, float]] = []  # gate_hist.csv rows
        self._done: set[int] = set()

    def measure(self, model: nn.Module, step: int) -> dict[str, float] | None:
        """Gate statistics and diag/grad_decay (diag/grad_decay_c for an LSTM's c) at `step`; None if measured."""
        if step in self._done:
            return None
        self._done.add(step)
        profile, stats, hist = diagnose(model, self.task, self.batch)
        for state, norms in profile.items():
            self.rows.extend((step, state, t, n) for t, n in enumerate(norms))
        self.hist.extend(hist_rows(step, hist))
        stats["diag/grad_decay"] = grad_decay(profile["h"])
        if "c" in profile:
            stats["diag/grad_decay_c"] = grad_decay(profile["c"])
        return stats

    def write(self, folder: Path) -> list[Path]:
        """The artifacts of what was measured (none if nothing was): grad_profile.csv/.png and gate_hist.csv."""
        if not self.rows:
            return []
        return write_profile(self.rows, folder) + write_gate_hist(self.hist, folder)


class DiagnosticsCallback(pl.Callback):
    """Every ``every`` optimizer steps (and at the start and the end) on one fixed batch: gate statistics,
    the gradient profile and diag/grad_decay go to the run's logger; the profile's CSV and PNG become run
    artifacts (under diagnostics/) at the end, also when the run fails or is stopped."""

    def __init__(self, task, batch, every: int, folder: Path):
        self.recorder, self.every, self.folder = Recorder(task, batch), every, folder

    def measure(self, trainer, module) -> None:
        if trainer.logger is None:
            return
        rec = self.recorder
        if rec.batch.x.device != module.device:
            rec.batch = batch_to(rec.batch, module.device)
        stats = rec.measure(module.model, trainer.global_step)
        if stats is not None:
            trainer.logger.log_metrics(stats, step=trainer.global_step)

    def on_train_start(self, trainer, module):
        self.measure(trainer, module)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if self.every and trainer.global_step % self.every == 0:
            self.measure(trainer, module)

    def on_train_end(self, trainer, module):
        self.measure(trainer, module)
        self.upload(trainer)

    def on_exception(self, trainer, module, exception):
        self.upload(trainer)

    def upload(self, trainer) -> None:
        if trainer.logger is None:
            return
        for path in self.recorder.write(self.folder):
            trainer.logger.experiment.log_artifact(trainer.logger.run_id, str(path), "diagnostics")
