"""Typed run configuration: merging, overrides, and one-line refusals naming the key."""
from __future__ import annotations

import pytest

from suite.config import RunConfig, build_config, load_yaml, parse_override
from suite.registry import SuiteError


def test_defaults_and_dotted_overrides():
    cfg = build_config({"task": {"name": "copy", "length": 20}, "model": {"cell": "sgru"}},
                       overrides={"optim.lr": 0.01, "model.hidden_size": 64, "model.beta": 2.0})
    assert cfg.task.name == "copy" and cfg.task.options == {"length": 20}
    assert cfg.model.cell == "sgru" and cfg.model.hidden_size == 64
    assert cfg.model.cell_options == {"beta": 2.0}  # cell options are checked by the cell registry
    assert cfg.optim.lr == 0.01 and cfg.optim.name == "adam"
    flat = cfg.flat()
    assert flat["task.length"] == 20 and flat["optim.lr"] == 0.01 and flat["model.beta"] == 2.0


def test_yaml_round_trip():
    cfg = build_config({"task": {"name": "adding", "length": 50}}, overrides={"train.seed": 3})
    again = build_config(__import__("yaml").safe_load(cfg.to_yaml()))
    assert again == cfg


def test_later_layers_win():
    cfg = build_config({"optim": {"lr": 0.1, "clip": 2.0}}, {"optim": {"lr": 0.2}}, overrides={"optim.lr": 0.3})
    assert cfg.optim.lr == 0.3 and cfg.optim.clip == 2.0


@pytest.mark.parametrize("text,key,value", [
    ("optim.lr=1e-3", "optim.lr", 1e-3), ("model.chrono_init=true", "model.chrono_init", True),
    ("train.steps=200", "train.steps", 200), ("tracking.experiment=my exp", "tracking.experiment", "my exp"),
])
def test_parse_override_keeps_types(text, key, value):
    assert parse_override(text) == (key, value)


@pytest.mark.parametrize("overrides,message", [
    ({"optim.lrr": 0.1}, "unknown config key 'optim.lrr' (did you mean 'optim.lr'?); accepted: "),
    ({"optimizer.lr": 0.1}, "unknown config key 'optimizer.lr'"),
    ({"optim.lr": 0}, "optim.lr must be > 0"),
    ({"optim.lr": -1e-3}, "optim.lr must be > 0"),
    ({"optim.lr": "fast"}, "optim.lr must be a number"),
    ({"optim.name": "adagrad"}, "optim.name='adagrad' is not accepted; choose one of: adam, adamw, sgd, rmsprop"),
    ({"train.steps": 0}, "train.steps must be > 0"),
    ({"train.steps": -5}, "train.steps must be > 0"),
    ({"train.steps": 2.5}, "train.steps must be an integer"),
    ({"model.hidden_size": -1}, "model.hidden_size must be > 0"),
    ({"model.dropout": 1.5}, "model.dropout must be in [0, 1)"),
    ({"model.chrono_init": 1}, "model.chrono_init must be true, false or an integer T_max >= 3"),
    ({"train.device": "tpu"}, "train.device='tpu' is not accepted"),
    ({"train.precision": "16"}, "train.precision='16' is not accepted"),
    ({"optim.clip": -1}, "optim.clip must be >= 0"),
    ({"train.deterministic": "yes"}, "train.deterministic must be true or false"),
])
def test_bad_values_are_refused_with_the_key(overrides, message):
    with pytest.raises(SuiteError) as err:
        build_config(overrides=overrides)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_section():
    with pytest.raises(SuiteError, match="unknown config section 'trainer'"):
        build_config({"trainer": {"steps": 3}})


def test_set_without_equals():
    with pytest.raises(SuiteError, match="expected KEY=VALUE"):
        parse_override("optim.lr")


def test_malformed_and_missing_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("task:\n  name: copy\n  length: [1, 2\n")
    with pytest.raises(SuiteError, match="malformed YAML in .*bad.yaml.* at line"):
        load_yaml(bad)
    with pytest.raises(SuiteError, match="does not exist"):
        load_yaml(tmp_path / "nope.yaml")
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(SuiteError, match="must hold a mapping"):
        load_yaml(scalar)


def test_default_config_is_valid():
    assert build_config() == RunConfig()
