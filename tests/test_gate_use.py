"""Gate use tested properly (issue 21, point 4): the two ends of saturation logged apart (near0, near1), a
fixed-bin histogram of the activations, and the report's rule for "mostly zeros and ones"."""
from __future__ import annotations

import pytest
import torch

from suite import tasks
from suite.diagnostics import HIST_BINS, diagnose, gate_histogram, gate_stats, write_gate_hist
from suite.model import SequenceModel


def sgru_with_update_bias(bias_first_half: float, bias_second_half: float):
    """sgru whose update gate Γu is constant per unit: half the units at sigmoid(b1), half at sigmoid(b2)."""
    torch.manual_seed(0)
    task = tasks.build("adding", length=20, val_size=32)
    model = SequenceModel("sgru", task.encoding, task.input_size, task.output_size, 16)
    cell = model.layers[0]
    n = cell.hidden_size
    with torch.no_grad():
        cell.weight_ih[:n].zero_()
        cell.weight_hh[:n].zero_()
        cell.bias_ih[:n // 2].fill_(bias_first_half)
        cell.bias_ih[n // 2:n].fill_(bias_second_half)
        if hasattr(cell, "bias_hh"):
            cell.bias_hh[:n].zero_()
    return task, model, task.val_batches("cpu")[0]


@pytest.mark.parametrize("b1,b2,near0,near1", [(-20, 20, 0.5, 0.5), (20, 20, 0.0, 1.0), (-20, -20, 1.0, 0.0),
                                               (0, 0, 0.0, 0.0)])
def test_near0_and_near1_split_saturation(b1, b2, near0, near1):
    task, model, batch = sgru_with_update_bias(b1, b2)
    _, _, traces = model.trace(batch.x)
    stats = gate_stats(traces)
    assert stats["gates/l0/u/near0"] == pytest.approx(near0)
    assert stats["gates/l0/u/near1"] == pytest.approx(near1)
    assert stats["gates/l0/u/saturation"] == pytest.approx(near0 + near1)  # the old metric is unchanged


def test_histogram_has_fixed_bins_summing_to_one_and_its_ends_are_near0_near1():
    task, model, batch = sgru_with_update_bias(-20, 20)
    profile, stats, hist = diagnose(model, task, batch)
    fracs = hist[("l0", "u")]
    assert len(fracs) == HIST_BINS and sum(fracs) == pytest.approx(1.0)
    assert fracs[0] == pytest.approx(stats["gates/l0/u/near0"]) and fracs[-1] == pytest.approx(
        stats["gates/l0/u/near1"])
    _, _, traces = model.trace(batch.x)
    assert gate_histogram(traces)[("l0", "u")] == pytest.approx(fracs)


def test_gate_hist_csv(tmp_path):
    (path,) = write_gate_hist([(0, "l0", "u", 0, 0.25), (0, "l0", "u", 9, 0.75)], tmp_path)
    lines = path.read_text().splitlines()
    assert lines[0] == "step,layer,gate,bin,lo,hi,fraction" and lines[2] == "0,l0,u,9,0.9,1,0.75"
    assert write_gate_hist([], tmp_path / "none") == []
