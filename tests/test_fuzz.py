"""Property-based tests of the config and sweep-file parsers: whatever a user writes either loads or is refused
with one SuiteError line; nothing else escapes (no traceback), and nothing is written."""
from __future__ import annotations

import string

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from suite.config import build_config, load_yaml, parse_override
from suite.registry import SuiteError

FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# values a YAML file can hold; sizes stay small enough that a value that loads builds in a moment
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 40), st.sampled_from([0, 1, 2, 10**12, -(10**12)]),
                    st.floats(allow_nan=True, allow_infinity=True, width=32), st.text(max_size=12),
                    st.sampled_from(["1e-3", "gru", "adding", "copy", "adam", "auto", "cpu", "32", "true", ""]))
KEYS = st.one_of(st.text(max_size=8), st.sampled_from(["name", "seed", "low", "high"]), st.integers(0, 3),
                 st.none(), st.booleans())  # YAML mapping keys need not be strings
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(KEYS, inner, max_size=3)),
                      max_leaves=6)

CONFIG_KEYS = {
    "task": ["name", "length", "batch_size", "val_size", "symbols", "bptt", "path", "nosuch"],
    "model": ["cell", "hidden_size", "layers", "dropout", "chrono_init", "init", "init_range", "embedding_size",
              "tie_weights", "beta", "nosuch"],
    "optim": ["name", "lr", "weight_decay", "momentum", "clip", "schedule", "warmup_steps", "decay_factor",
              "decay_unit", "nosuch"],
    "train": ["steps", "epochs", "seed", "device", "precision", "log_every", "val_every", "diag_every", "threads",
              "deterministic", "nosuch"],
    "tracking": ["uri", "experiment", "run_name", "nosuch"],
}
GOOD_VALUES = {"task.name": st.sampled_from(["adding", "copy", "selective_copy", "nosuch"]),
               "model.cell": st.sampled_from(["gru", "lstm", "mgu", "mingru", "nosuch"])}


@st.composite
def config_layers(draw):
    layer = {}
    for section in draw(st.lists(st.sampled_from([*CONFIG_KEYS, "trainer", "description"]), max_size=4,
                                 unique=True)):
        if section not in CONFIG_KEYS or draw(st.integers(0, 9)) == 0:
            layer[section] = draw(VALUES)  # an unknown section, or a section that is not a mapping
            continue
        keys = draw(st.lists(st.sampled_from(CONFIG_KEYS[section]), max_size=4, unique=True))
        layer[section] = {k: draw(GOOD_VALUES.get(f"{section}.{k}", VALUES)) for k in keys}
    return layer


def _one_line_or_loads(fn, *args):
    try:
        return fn(*args)
    except SuiteError as exc:
        assert "\n" not in str(exc) and str(exc).strip(), repr(str(exc))
        return None


@FUZZ
@given(config_layers())
def test_any_config_builds_or_is_refused_in_one_line(layer):
    from suite.assemble import build_model, build_task

    cfg = _one_line_or_loads(build_config, layer)
    if cfg is None:
        return
    task = _one_line_or_loads(build_task, cfg)  # the task and cell registries check their own options
    if task is not None:
        import torch

        with torch.device("meta"):  # sizes only: no memory for a huge hidden_size
            _one_line_or_loads(build_model, cfg, task)


@FUZZ
@given(st.text(max_size=40))
def test_any_set_override_parses_or_is_refused(text):
    parsed = _one_line_or_loads(parse_override, text)
    if parsed is not None:
        _one_line_or_loads(lambda: build_config(overrides=dict([parsed])))


YAML_TEXT = st.one_of(
    st.text(alphabet=string.printable + "äé€\x00\x85\ufeff", max_size=80),
    st.builds(lambda d: yaml.safe_dump(d, allow_unicode=True), st.dictionaries(st.text(max_size=6), VALUES,
                                                                                 max_size=4)),
    st.sampled_from(["a: [1, 2\n", "? [a]\n: b\n", "x: 2001-13-01\n", "&a [*a]\n", "!!python/object:os.system\n",
                     "a: !!binary ZZZ\n", "- 1\n- 2\n", "{a: 1, a: 2}\n", "%YAML 9.9\n---\na: 1\n", "\t- x"]))


@FUZZ
@given(YAML_TEXT)
def test_any_yaml_text_loads_or_is_refused(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("yaml") / "config.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    data = _one_line_or_loads(load_yaml, path)
    if data is not None:
        _one_line_or_loads(build_config, data)


SWEEP_BASE = {
    "name": "fuzz", "task": "adding", "cells": ["gru"], "budget": {"trials": 2, "steps": 5},
    "base": {"task": {"length": 8, "batch_size": 4, "val_size": 8}, "model": {"hidden_size": 4}},
    "search": {"optim.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-1}},
}
SWEEP_KEYS = ["name", "description", "task", "base", "cells", "budget", "search", "param_match", "sampler",
              "pruner", "objective", "confirm", "nosuch"]
SWEEP_VALUES = {
    "name": st.one_of(st.sampled_from(["ok", "a/b", " x", ""]), VALUES),
    "task": st.one_of(st.sampled_from(["adding", "copy", "copy-T100", "nosuch", "tasks/none.yaml"]),
                      st.fixed_dictionaries({"name": st.sampled_from(["adding", "copy", "x"])},
                                            optional={"length": VALUES, "batch_size": VALUES}), VALUES),
    "cells": st.one_of(st.lists(st.sampled_from(["gru", "lstm", "mgu", "nosuch"]), max_size=3), VALUES),
    "budget": st.one_of(st.fixed_dictionaries({}, optional={"trials": VALUES, "steps": VALUES, "epochs": VALUES,
                                                             "x": VALUES}), VALUES),
    "search": st.one_of(st.dictionaries(st.sampled_from(["optim.lr", "model.hidden_size", "optim.nosuch", "x"]),
                                        st.one_of(st.fixed_dictionaries(
                                            {"type": st.sampled_from(["loguniform", "uniform", "int", "choice",
                                                                      "gauss"])},
                                            optional={"low": VALUES, "high": VALUES, "values": VALUES,
                                                      "log": VALUES}), VALUES), max_size=2), VALUES),
    "sampler": st.one_of(st.fixed_dictionaries({}, optional={"name": st.sampled_from(["tpe", "random", "cmaes"]),
                                                             "seed": VALUES}), VALUES),
    "pruner": st.one_of(st.fixed_dictionaries({}, optional={
        "name": st.sampled_from(["median", "hyperband", "none", "x"]), "warmup_steps": VALUES,
        "startup_trials": VALUES}), VALUES),
    "confirm": st.one_of(st.fixed_dictionaries({}, optional={"top_k": VALUES, "seeds": VALUES}), VALUES),
    "base": st.one_of(st.fixed_dictionaries({"task": st.just(SWEEP_BASE["base"]["task"])}, optional={
        "model": st.fixed_dictionaries({}, optional={"hidden_size": VALUES, "layers": VALUES, "cell": VALUES}),
        "optim": st.dictionaries(st.sampled_from(["lr", "name", "clip", "x"]), VALUES, max_size=2),
        "train": st.dictionaries(st.sampled_from(["steps", "seed", "device", "x"]), VALUES, max_size=2)}), VALUES),
    "param_match": st.one_of(st.sampled_from([0, 500, 10**12, -1]), VALUES),
    "objective": st.one_of(st.fixed_dictionaries({}, optional={
        "metric": st.one_of(st.sampled_from(["val/mse", "val/acc"]), VALUES),
        "direction": st.one_of(st.sampled_from(["minimize", "maximize"]), VALUES)}), VALUES),
}


@st.composite
def sweep_files(draw):
    spec = dict(SWEEP_BASE)
    for key in draw(st.lists(st.sampled_from(SWEEP_KEYS), min_size=1, max_size=2, unique=True)):
        if key in spec and draw(st.integers(0, 4)) == 0:
            del spec[key]  # a missing key
        else:
            spec[key] = draw(SWEEP_VALUES.get(key, VALUES))
    return spec


@FUZZ
@given(sweep_files())
def test_any_sweep_file_loads_or_is_refused_in_one_line(tmp_path_factory, spec):
    from suite.sweep import load_sweep

    folder = tmp_path_factory.mktemp("sweep")
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, allow_unicode=True))
    loaded = _one_line_or_loads(load_sweep, path)
    if loaded is not None:
        assert loaded.trials >= 1 and loaded.cells and isinstance(loaded.metric, str)
        assert isinstance(loaded.sampler, dict) and isinstance(loaded.pruner, dict)
        assert all(isinstance(s, int) and not isinstance(s, bool) for s in loaded.seeds)
        assert isinstance(loaded.top_k, int) and not isinstance(loaded.top_k, bool)
    assert [p.name for p in folder.iterdir()] == ["sweep.yaml"]  # nothing written


@pytest.mark.parametrize("text", ["a: 2001-13-01\n", "{train: {seed: 2001-02-30}}\n"])
def test_a_date_yaml_cannot_build_is_one_line(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(SuiteError, match="malformed YAML"):
        load_yaml(path)
