"""A trial's values -> the run config it trains (the only place a trial's values go), with the hidden size solved
for a parameter budget where the sweep matches parameters, and the build check that load_sweep runs on them."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..assemble import build_model, build_task
from ..config import RunConfig, build_config
from ..model import SequenceModel
from ..registry import SuiteError

if TYPE_CHECKING:  # annotations only: the spec module imports this one
    from .spec import SweepSpec


def trial_config(spec: SweepSpec, cell: str, params: dict[str, Any], seed: int) -> RunConfig:
    """Plain sampled values -> the run config of one trial (the trial object never reaches model or task code)."""
    overrides = dict(params)
    overrides["model.cell"] = cell
    overrides["train.seed"] = seed
    if spec.steps:  # the budget decides, whatever the task setting says (ptb-word counts epochs)
        overrides["train.steps"] = spec.steps
        overrides["train.epochs"] = 0
    else:
        overrides["train.epochs"] = spec.epochs
    base = spec.base_for(cell)
    cfg = build_config(spec.task, base, overrides=overrides)
    if spec.param_match:
        cfg = build_config(spec.task, base, overrides={**overrides, "model.hidden_size":
                                                            match_hidden_size(cfg, spec.param_match)})
    return cfg


def recurrent_params(cfg: RunConfig, hidden: int) -> int:
    """Parameters of the recurrent layers at this hidden size (built on the meta device: no memory)."""
    task = build_task(cfg)
    with torch.device("meta"):
        model = SequenceModel(cfg.model.cell, task.encoding, task.input_size, task.output_size, hidden,
                              layers=cfg.model.layers, embedding_size=cfg.model.embedding_size,
                              bidirectional=cfg.model.bidirectional, **cfg.model.cell_options)
    return sum(p.numel() for p in model.layers.parameters())


def match_hidden_size(cfg: RunConfig, target: int) -> int:
    """The hidden size whose recurrent-layer parameter count is closest to `target`, within ±10%.

    Only the cells' own parameters are matched: the encoder and head are the same function of the hidden
    size for every cell (Long Range Arena allows ±10%).
    """
    lo, hi = 1, 8192
    while lo < hi:  # smallest h with count >= target (counts grow with h)
        mid = (lo + hi) // 2
        if recurrent_params(cfg, mid) >= target:
            hi = mid
        else:
            lo = mid + 1
    best = min({max(1, lo - 1), lo}, key=lambda h: abs(recurrent_params(cfg, h) - target))
    got = recurrent_params(cfg, best)
    if abs(got - target) > 0.1 * target:
        raise SuiteError(f"param_match={target}: cell {cfg.model.cell!r} has no hidden size within ±10% "
                         f"(closest: hidden_size={best} with {got} parameters)")
    return best


def build_task_and_model(cfg: RunConfig):
    """Build the task and, on the meta device (shapes only, no memory), the model: a check of the config."""
    task = build_task(cfg)
    with torch.device("meta"):  # a hidden_size of 10**6 is refused or accepted, never allocated here
        return task, build_model(cfg, task)


def base_config(spec: SweepSpec) -> RunConfig:
    """The run config every trial starts from: the task and the file's base sections."""
    return build_config(spec.task, spec.base)
