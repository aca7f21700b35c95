"""`rnnsuite bench`: its JSON contract, its CLI behaviour and the measuring machinery behind the numbers.

No assertion here is about speed (timings on shared machines are noise at these sizes); the benchmark's figures
are in docs/benchmarks.md. One subprocess run of the CLI on the internal ``tiny`` profile (every section at toy
sizes) is shared by the tests that read its output; most of its time is importing Lightning and creating the
MLflow database of the tracking section.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from suite import bench, cells
from suite.registry import SuiteError

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("cells", "scaling", "scan", "diagnostics off", "kernels", "data", "tracking", "packed")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """`python -m suite bench --json` with the tiny profile, from an empty folder, with its own TMPDIR and
    RNNSUITE_HOME, so that the test can see everything the run leaves behind."""
    work, tmp, home = (tmp_path_factory.mktemp(n) for n in ("bench-cwd", "bench-tmp", "bench-home"))
    env = {**os.environ, bench.PROFILE_ENV: "tiny", "TMPDIR": str(tmp), "RNNSUITE_HOME": str(home),
           "PYTHONPATH": str(ROOT), "MPLCONFIGDIR": str(tmp_path_factory.mktemp("mpl"))}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run([sys.executable, "-m", "suite", "bench", "--json"], cwd=work, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, work, tmp, home


@pytest.fixture(scope="module")
def result(tiny):
    return json.loads(tiny[0].stdout.strip().splitlines()[-1])


def test_the_last_stdout_line_is_one_json_object_and_progress_goes_to_stderr(tiny):
    proc = tiny[0]
    lines = proc.stdout.strip().splitlines()
    assert isinstance(json.loads(lines[-1]), dict)
    progress = [line for line in proc.stderr.splitlines() if line.startswith("[bench] ")]
    assert "profiler_start" not in proc.stderr and "CPUAllocator" not in proc.stderr  # torch profiler noise
    for section in SECTIONS:  # one line announcing each section and one when it is done
        assert any(line.startswith(f"[bench] {section}:") for line in progress), section
        assert any(line.startswith(f"[bench]   {section} done in") for line in progress), section


def test_the_json_has_every_key_the_issue_asks_for(result):
    p = bench.PROFILES["tiny"]
    assert result["device"] == "cpu" and result["torch"] == torch.__version__
    assert result["profile"] == "tiny" and result["threads"] == 1 == torch.get_num_threads()
    assert set(result["cells"]) == set(cells.names())  # every registered cell, none left out
    for name, row in result["cells"].items():
        assert {"fwd_ms", "fwd_bwd_ms", "ratio_vs_gru", "ratio_vs_lstm", "peak_mem_mb", "target", "pass"} <= set(row)
    assert set(result["anchors"]) == {"nn.GRU", "nn.LSTM"}
    assert result["anchors"]["nn.GRU"]["ratio_vs_gru"] == 1.0 and result["anchors"]["nn.LSTM"]["ratio_vs_lstm"] == 1.0
    assert {"bare_steps_per_s", "tracked_steps_per_s", "ratio"} <= set(result["tracking"])
    for key in ("scan", "scan_logscan"):  # the default blocked scan and the paper's log-space scan
        assert set(result[key]) == {"mingru", "minlstm"}
        for speed in result[key].values():
            assert set(speed) == {str(T) for T in p.scan_T}
    assert set(result["data"]) == {"copy", "selective_copy", "adding"}  # every synthetic task
    assert set(result["packed"]) == {str(M) for M in p.packed_M}
    sc = result["scaling"]
    assert set(sc["cells"]) == {"nn.GRU", "sgru", "mingru"}
    for per_h in sc["cells"].values():
        assert set(per_h) == {str(H) for H in p.scaling_H}
        for v in per_h.values():
            assert set(v["fwd_bwd_ms"]) == {str(T) for T in p.scaling_T}
            assert isinstance(v["linear"], bool) and math.isfinite(v["exponent"])
    assert result["shape"] == dict(zip("BTIH", p.cpu_shape))


def finite_positive(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def test_times_ratios_and_memory_are_positive_finite_numbers(result):
    for name, row in {**result["cells"], **result["anchors"]}.items():
        for key in ("fwd_ms", "fwd_bwd_ms", "ratio_vs_gru", "ratio_vs_lstm", "peak_mem_mb"):
            assert finite_positive(row[key]), (name, key, row[key])
    for key in ("bare_steps_per_s", "tracked_steps_per_s", "ratio"):
        assert finite_positive(result["tracking"][key])
    for speed in (*result["scan"].values(), *result["scan_logscan"].values()):
        assert all(finite_positive(v) for v in speed.values())
    assert all(finite_positive(v) for v in result["packed"].values())
    assert all(0 < v < 1 for v in result["data"].values())  # a share of (generation + step)
    d = result["diagnostics_off"]
    assert finite_positive(d["ratio_never"]) and finite_positive(d["ratio_after_trace"])
    k = result["kernels"]
    for key in ("onednn_linear_us", "addmm_us", "onednn_vs_addmm", "tanh_via_sigmoid_us", "torch_tanh_us",
                "tanh_via_sigmoid_vs_tanh"):
        assert finite_positive(k[key]), key
    assert k["chosen"] == result["kernels_chosen"] == "linear=addmm,tanh=torch (plain)"  # the default


def test_target_verdicts_agree_with_the_measured_ratios(result):
    """pass/fail is derived from the figure next to it, with the issue's limits; nothing is silently lowered."""
    for name, row in result["cells"].items():
        if name in bench.CPU_CELL_TARGETS:
            anchor, limit = bench.CPU_CELL_TARGETS[name]
            assert row["pass"] == (row[f"ratio_vs_{anchor}"] <= limit), name
            assert result["targets"][f"cell:{name}"]["value"] == row[f"ratio_vs_{anchor}"]
        else:
            assert row["target"] is None and row["pass"] is None and f"cell:{name}" not in result["targets"]
    assert result["tracking"]["pass"] == (result["tracking"]["ratio"] >= 0.9)
    pk = result["packed_detail"]
    assert pk["pass"] == (max(result["packed"].values()) >= 4.0)
    assert result["packed"][str(pk["best_M"])] == max(result["packed"].values())
    # the tiny profile does not reach T=1024: the scan target is reported as not measured, not as passed
    assert result["targets"]["scan:mingru@T=1024"]["pass"] is None


def test_a_run_leaves_nothing_behind(tiny):
    _, work, tmp, home = tiny
    assert list(work.iterdir()) == []  # no rnnsuite-runs/, mlruns/, lightning_logs/ in the working folder
    assert list(home.iterdir()) == []  # the user's RNNSUITE_HOME is not touched
    # the MLflow database, checkpoints and temporary folders are removed; torch's own per-user compile cache
    # folder (created empty when Lightning imports torch._dynamo, shared by every torch program) may remain
    assert [p.name for p in tmp.iterdir() if not p.name.startswith("torchinductor_")] == []


def test_the_readable_table_names_every_cell_and_target(result):
    text = bench.format_table(result)
    for name in cells.names():
        assert f"\n{name} " in text
    assert "targets:" in text and ("MISSED" in text or " ok" in text)
    assert "tiny" in text.splitlines()[0]  # a reduced run says so


def test_device_cuda_without_a_gpu_exits_2_with_one_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    proc = subprocess.run([sys.executable, "-m", "suite", "bench", "--device", "cuda"], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rnnsuite: error:") and "cuda" in lines[0]


def test_an_unknown_profile_is_refused(monkeypatch):
    monkeypatch.setenv(bench.PROFILE_ENV, "huge")
    with pytest.raises(SuiteError, match="tiny"):
        bench.run_bench(argparse.Namespace(json=True, quick=False, device="cpu"))


# ---------------------------------------------------------------------------------------------- the machinery
def test_interleaved_rounds_time_every_runner_once_in_fresh_orders():
    calls = []
    runners = {k: (lambda k=k: calls.append(k)) for k in "abcdefgh"}
    samples = bench.interleaved(runners, bench.Clock(torch.device("cpu")), repeats=5, warmup=2)
    assert calls[:16] == [k for k in "abcdefgh" for _ in range(2)]  # warm-up first, untimed
    rounds = [calls[16 + 8 * r:24 + 8 * r] for r in range(5)]
    assert all(sorted(r) == list("abcdefgh") for r in rounds)
    assert len({tuple(r) for r in rounds}) > 1  # the order changes between rounds
    assert all(len(v) == 5 and all(t >= 0 for t in v) for v in samples.values())


def test_ratios_are_medians_of_per_round_ratios():
    # round by round 2, 3, 1.5 -> 2; the ratio of the medians would be 9/3 = 3
    assert bench.paired_ratio([2.0, 9.0, 30.0], [1.0, 3.0, 20.0]) == 2.0


def test_cpu_peak_memory_is_the_peak_of_live_tensor_bytes():
    mib = 1 << 18  # float32 elements in 1 MiB

    def one_after_another():
        a = torch.ones(4 * mib)
        del a
        b, c = torch.ones(2 * mib), torch.ones(mib)
        return b, c

    def together():
        a = torch.ones(4 * mib)
        b = torch.ones(2 * mib)
        return a, b

    cpu = torch.device("cpu")
    assert bench.peak_memory_mb(one_after_another, cpu) == pytest.approx(4.0, abs=0.01)
    assert bench.peak_memory_mb(together, cpu) == pytest.approx(6.0, abs=0.01)


def test_a_cells_peak_memory_grows_with_the_sequence():
    cell = bench.build_cell("sgru", 8, 32, torch.device("cpu"))
    peaks = {}
    for T in (20, 80):
        x, g = torch.randn(8, T, 8), torch.randn(8, T, 32)
        _, fb = bench.make_runners(cell, x, g)
        fb()  # warm-up, as the benchmark does: first-call work (the kernel probe) is not the cell's memory
        peaks[T] = bench.peak_memory_mb(fb, torch.device("cpu"))
    # at least the saved per-step activations: outputs, gate and candidate, (8, T, 32) floats each
    assert peaks[20] >= 3 * 8 * 20 * 32 * 4 / 2**20
    assert peaks[80] > 2.5 * peaks[20]


def test_cells_are_built_as_a_training_model_builds_them():
    with pytest.raises(SuiteError, match="project_input"):
        cells.build("mut1", 8, 16)  # why the benchmark cannot build it bare at I != H
    for name in cells.names():
        cell = bench.build_cell(name, 8, 16, torch.device("cpu"))
        out, _ = cell(torch.randn(2, 3, 8))
        assert out.shape == (2, 3, 16)
    assert bench.build_cell("mut1", 8, 16, torch.device("cpu")).project_input
    assert not bench.build_cell("mut1", 16, 16, torch.device("cpu")).project_input


def test_cell_targets_are_the_issues():
    row = {"ratio_vs_gru": 0.84, "ratio_vs_lstm": 9.0}
    assert bench.cell_target("sgru", row, "cpu")["pass"] is True
    assert bench.cell_target("sgru", {**row, "ratio_vs_gru": 0.86}, "cpu")["pass"] is False
    assert bench.cell_target("gru2", {**row, "ratio_vs_gru": 1.05}, "cpu")["pass"] is True
    assert bench.cell_target("cifg", row, "cpu")["pass"] is False  # against nn.LSTM, not nn.GRU
    assert bench.cell_target("lstm_peephole", {"ratio_vs_gru": 9.0, "ratio_vs_lstm": 1.19}, "cpu")["pass"] is True
    assert bench.cell_target("rnn_tanh", row, "cpu") == {"target": None, "pass": None}
    assert bench.cell_target("mingru", {"ratio_vs_gru": 1.6}, "cuda")["pass"] is False  # GPU: <= 1.5x cuDNN GRU
    assert bench.cell_target("gru", {"ratio_vs_gru": 1.6}, "cuda")["pass"] is None
