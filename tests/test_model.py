"""SequenceModel: weight tying (one tensor for the embedding and the head) and dropout between layers."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from suite.config import build_config
from suite.model import SequenceModel
from suite.registry import SuiteError
from suite.assemble import build_model, count_params


def test_tied_head_weight_is_the_embedding_weight():
    torch.manual_seed(0)
    model = SequenceModel("lstm", "embedding", 50, 50, 16, layers=2, tie_weights=True)
    assert model.head.weight is model.embedding.weight  # one tensor, not a copy
    assert model.head.weight.data_ptr() == model.embedding.weight.data_ptr()

    untied = SequenceModel("lstm", "embedding", 50, 50, 16, layers=2)
    assert count_params(untied) - count_params(model) == 50 * 16  # counted once
    with torch.no_grad():
        model.embedding.weight[3, 0] = 123.0
    assert model.head.weight[3, 0].item() == 123.0
    out, _ = model(torch.randint(0, 50, (2, 5)))
    out.sum().backward()
    assert model.embedding.weight.grad is model.head.weight.grad  # both uses accumulate into one gradient


def test_tie_weights_refuses_size_mismatches_clearly():
    with pytest.raises(ValueError, match=r"tie_weights needs embedding_size == hidden_size \(8 != 16\)"):
        SequenceModel("gru", "embedding", 50, 50, 16, embedding_size=8, tie_weights=True)
    with pytest.raises(ValueError, match=r"tie_weights needs output_size == the embedding's vocabulary size "
                                         r"\(40 != 50\)"):
        SequenceModel("gru", "embedding", 50, 40, 16, tie_weights=True)
    with pytest.raises(ValueError, match="tie_weights needs an embedding encoder"):
        SequenceModel("gru", "real", 2, 1, 16, tie_weights=True)


def test_tie_weights_mismatch_through_the_config_is_one_suite_error():
    lm = SimpleNamespace(encoding="embedding", input_size=50, output_size=50, seq_len=20)
    cfg = build_config(overrides={"model.tie_weights": True, "model.embedding_size": 8, "model.hidden_size": 16})
    with pytest.raises(SuiteError, match=r"^model: tie_weights needs embedding_size == hidden_size \(8 != 16\)$"):
        build_model(cfg, lm)
    adding = SimpleNamespace(encoding="real", input_size=2, output_size=1, seq_len=20)
    with pytest.raises(SuiteError, match="^model: tie_weights needs an embedding encoder"):
        build_model(build_config(overrides={"model.tie_weights": True}), adding)
    tied = build_model(build_config(overrides={"model.tie_weights": True, "model.hidden_size": 16}), lm)
    assert tied.head.weight is tied.embedding.weight


# ------------------------------------------------------------------------------------ dropout between layers
def _layer_io(model, x):
    """(output of layer 0, input of layer 1) of one forward pass."""
    seen = {}
    h0 = model.layers[0].register_forward_hook(lambda mod, args, out: seen.__setitem__("out0", out[0]))
    h1 = model.layers[1].register_forward_pre_hook(lambda mod, args: seen.__setitem__("in1", args[0]))
    try:
        model(x)
    finally:
        h0.remove()
        h1.remove()
    return seen["out0"], seen["in1"]


def test_dropout_between_layers_in_train_mode_only():
    torch.manual_seed(0)
    model = SequenceModel("gru", "real", 3, 2, 64, layers=2, dropout=0.5)
    x = torch.randn(8, 10, 3)
    model.train()
    out0, in1 = _layer_io(model, x)
    dropped = in1 == 0
    assert 0.4 < dropped.float().mean().item() < 0.6  # p = 0.5 of the units between the layers
    torch.testing.assert_close(in1[~dropped], 2 * out0[~dropped])  # inverted dropout: kept units scaled 1/(1-p)
    _, again = _layer_io(model, x)
    assert not torch.equal(again == 0, dropped)  # a fresh mask each pass

    model.eval()
    out0, in1 = _layer_io(model, x)
    assert torch.equal(in1, out0)  # nothing dropped, nothing scaled
    torch.testing.assert_close(model(x)[0], model(x)[0], rtol=0, atol=0)  # deterministic


def test_no_dropout_means_identity_between_layers_even_in_train_mode():
    model = SequenceModel("gru", "real", 3, 2, 16, layers=2, dropout=0.0).train()
    out0, in1 = _layer_io(model, torch.randn(2, 4, 3))
    assert torch.equal(in1, out0)
