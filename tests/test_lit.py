"""SuiteModule and its optimizer: learning-rate schedules (and train/lr as logged), the LM state carried across
BPTT windows and reset where it must be."""
from __future__ import annotations

import math
from pathlib import Path

import mlflow
import pytest
import torch

from suite import tasks
from suite.config import OptimConfig, TrainConfig, build_config
from suite.lit import SuiteModule, build_optimizer, schedule_factor
from suite.model import SequenceModel
from suite.train import run

SMALL = {"task.length": 10, "task.val_size": 64, "model.hidden_size": 8, "train.progress": False}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("lit")
    return {"uri": f"sqlite:///{root / 'mlflow.db'}", "root": root}


# ----------------------------------------------------------------------------------------- 4. schedules
def _factors(schedule, n, total=100, spe=None, **kw):
    o = OptimConfig(schedule=schedule, **kw)
    f = schedule_factor(o, total, spe)
    return [f(s) for s in range(n)]


def test_constant_schedule():
    assert _factors("constant", 5, warmup_steps=3) == [1.0] * 5


def test_step_schedule_halves_each_epoch_after_decay_start_zaremba():
    # Zaremba et al. 2014 (small): 13 epochs, lr 1 for the first 4, then halved every epoch
    per_epoch = _factors("step", 13 * 2, spe=2, decay_start=4, decay_factor=0.5, decay_unit="epoch")
    assert per_epoch[::2] == per_epoch[1::2]  # constant within an epoch
    assert per_epoch[::2] == [1.0] * 4 + [0.5 ** k for k in range(1, 10)]


def test_step_schedule_in_step_units_and_without_epochs():
    assert _factors("step", 5, decay_start=2, decay_factor=0.5, decay_unit="step") == [1, 1, 0.5, 0.25, 0.125]
    # a synthetic task has no epochs: epoch units fall back to steps (documented in OptimConfig)
    assert _factors("step", 4, spe=None, decay_start=1, decay_factor=0.1, decay_unit="epoch") == \
        pytest.approx([1, 0.1, 0.01, 0.001])


def test_cosine_schedule_with_and_without_warmup():
    assert _factors("cosine", 5, total=4) == pytest.approx([1, 0.5 * (1 + math.cos(math.pi / 4)), 0.5,
                                                            0.5 * (1 - math.cos(math.pi / 4)), 0.0])
    assert _factors("cosine", 6, total=6, warmup_steps=2) == pytest.approx(
        [0.5, 1.0, 1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 - math.cos(math.pi / 4))])


def test_warmup_schedule():
    assert _factors("warmup", 5, warmup_steps=3) == pytest.approx([1 / 3, 2 / 3, 1, 1, 1])


@pytest.mark.parametrize("schedule,kw,spe,expected", [
    ("constant", {}, None, [1, 1, 1, 1]),
    ("step", {"decay_start": 1, "decay_unit": "epoch"}, 2, [1, 1, 0.5, 0.5, 0.25, 0.25]),
    ("warmup", {"warmup_steps": 2}, None, [0.5, 1, 1]),
    ("cosine", {}, None, [1, 0.5, 0]),  # total_steps 2
])
def test_build_optimizer_applies_the_schedule_step_by_step(schedule, kw, spe, expected):
    w = torch.nn.Parameter(torch.zeros(2))
    opt, sched = build_optimizer([w], OptimConfig(name="sgd", lr=0.1, schedule=schedule, **kw), 2, spe)
    seen = []
    for _ in expected:
        seen.append(opt.param_groups[0]["lr"])  # the rate the step uses
        w.grad = torch.ones(2)
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.1 * f for f in expected])


def test_logged_train_lr_is_the_rate_each_step_used(store):
    cfg = build_config({"task": {"name": "adding"}}, overrides={
        **SMALL, "tracking.uri": store["uri"], "train.steps": 6, "train.log_every": 1, "optim.lr": 0.01,
        "optim.schedule": "cosine", "optim.warmup_steps": 2, "train.checkpoint_dir": str(store["root"] / "ck")})
    result = run(cfg)
    history = mlflow.MlflowClient(store["uri"]).get_metric_history(result.run_id, "train/lr")
    factor = schedule_factor(cfg.optim, 6, None)
    assert [h.step for h in history] == list(range(6))
    assert [h.value for h in history] == pytest.approx([0.01 * factor(s) for s in range(6)])
    assert history[0].value == pytest.approx(0.005)  # warm-up's first step: half the rate, not the second step's

# --------------------------------------------------------------------- LM state across BPTT windows
def _corpus(tmp_path) -> Path:
    folder = tmp_path / "corpus"
    if not folder.exists():
        folder.mkdir()
        g = torch.Generator().manual_seed(0)
        words = [f"w{i}" for i in range(12)]
        for name, lines in (("train.txt", 40), ("valid.txt", 5), ("test.txt", 5)):
            text = "\n".join(" ".join(words[int(i)] for i in torch.randint(0, 12, (6,), generator=g))
                             for _ in range(lines))
            (folder / name).write_text(text + "\n")
    return folder


def _flat(state):
    return [t for layer in state for t in (layer if isinstance(layer, tuple) else (layer,))]


def test_lm_module_carries_the_state_across_windows_detached_and_resets_at_epoch_start(tmp_path):
    torch.manual_seed(0)
    task = tasks.build("lm", path=str(_corpus(tmp_path)), batch_size=2, bptt=5)
    assert task.steps_per_epoch >= 3
    model = SequenceModel("lstm", task.encoding, task.input_size, task.output_size, 8, layers=2)
    module = SuiteModule(model, task, OptimConfig(), TrainConfig(), task.steps_per_epoch)
    passed = []
    real_forward = model.forward
    model.forward = lambda x, state=None: passed.append(state) or real_forward(x, state)

    windows = list(task.train_batches(0, "cpu"))
    assert [w.reset for w in windows] == [True] + [False] * (len(windows) - 1)  # one epoch: reset at its start
    module.on_train_epoch_start()
    _, loss1 = module.model_step(windows[0], "train")
    final1 = _flat(module._state["train"])
    assert passed[0] is None and all(t.requires_grad for t in final1)  # window 1 starts from zeros, in a graph
    loss1.backward()  # frees window 1's graph

    _, loss2 = module.model_step(windows[1], "train")
    into2 = _flat(passed[1])
    assert len(into2) == len(final1) == 4  # (h, c) of both layers
    for carried, final in zip(into2, final1):
        assert torch.equal(carried, final)  # the values carry over
        assert not carried.requires_grad and carried.grad_fn is None  # cut from window 1's graph
    loss2.backward()  # would fail ("backward through the graph a second time") if window 1's graph were reached
    assert all(p.grad is not None for p in model.parameters())

    module.on_train_epoch_start()  # a new epoch
    module.model_step(windows[2], "train")
    assert passed[2] is None  # reset, even though windows[2].reset is False
    module.model_step(windows[0], "train")
    module.model_step(windows[0], "train")  # a batch that says reset restarts from zeros as well
    assert passed[4] is None


def test_lm_evaluation_starts_each_pass_from_zero(tmp_path):
    task = tasks.build("lm", path=str(_corpus(tmp_path)), batch_size=2, bptt=5, eval_batch_size=2)
    model = SequenceModel("gru", task.encoding, task.input_size, task.output_size, 8)
    module = SuiteModule(model, task, OptimConfig(), TrainConfig(), task.steps_per_epoch)
    passed = []
    real_forward = model.forward
    model.forward = lambda x, state=None: passed.append(state) or real_forward(x, state)
    module.model_step(next(task.train_batches(0, "cpu")), "train")  # a training state exists
    module._eval_start("val")
    with torch.no_grad():
        for batch in task.val_batches("cpu"):
            module._eval_step(batch, "val")
    assert len(passed) >= 4  # a training window, then several validation windows
    assert passed[1] is None and all(s is not None for s in passed[2:])  # val never reads the train state
    assert module._state["train"] is not None
