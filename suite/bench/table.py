"""``rnnsuite bench`` without ``--json``: the result as a readable table."""
from __future__ import annotations

def _f(v, spec=".2f") -> str:
    return "-" if v is None else format(v, spec)


def _mark(ok) -> str:
    return "" if ok is None else ("ok" if ok else "MISSED")


def format_table(r: dict) -> str:
    lines = [f"rnnsuite bench ({r['profile']}: {r['note']})",
             f"device {r['device']} ({r['device_name']}, {r['cpu_count']} CPUs), torch {r['torch']}, "
             f"{r['threads']} thread(s); {r['elapsed_s']:.0f} s"]
    lines += [f"section {k} skipped: {v}" for k, v in r.get("skipped", {}).items()]
    if r.get("cells"):
        lines += _cell_lines(r)
    if r.get("scaling"):
        lines += _scaling_lines(r)
    if r.get("scan"):
        lines += _scan_lines(r)
    lines += _pipeline_lines(r)
    lines += ["", "targets:"]
    for k, v in r["targets"].items():
        lines.append(f"  {k:28s} {v['target']:34s} {_f(v['value'], '.3f'):>7s}  {_mark(v['pass']) or 'n/a'}")
    return "\n".join(lines)


def _cell_lines(r: dict) -> list[str]:
    s = r["shape"]
    lines = ["",
             f"cells at B={s['B']} T={s['T']} I={s['I']} H={s['H']} (medians; ratios = median of per-round ratios "
             "of fwd+bwd)",
             f"{'cell':18s} {'fwd ms':>8s} {'fwd+bwd':>8s} {'x GRU':>6s} {'x LSTM':>6s} {'peak MB':>8s}  target"]
    rows = [(k, v) for k, v in r["anchors"].items()] + list(r["cells"].items())
    for name, v in rows:
        tgt = f"{v['target']} {_mark(v['pass'])}" if v.get("target") else ""
        lines.append(f"{name:18s} {v['fwd_ms']:8.2f} {v['fwd_bwd_ms']:8.2f} {v['ratio_vs_gru']:6.2f} "
                     f"{v['ratio_vs_lstm']:6.2f} {_f(v['peak_mem_mb'], '8.1f'):>8s}  {tgt}")
    return lines


def _scaling_lines(r: dict) -> list[str]:
    sc = r["scaling"]
    lines = ["", f"scaling: fwd+bwd ms at B={sc['B']} I={sc['I']}; k = growth exponent in T"]
    lines.append(f"{'cell':8s} {'H':>4s} " + " ".join(f"{'T=' + str(T):>9s}" for T in sc["T"])
                 + f" {'us/step':>18s} {'k':>5s}")
    for name, per_h in sc["cells"].items():
        for H, v in per_h.items():
            us = "/".join(f"{v['us_per_step'][str(T)]:.0f}" for T in sc["T"])
            lines.append(f"{name:8s} {H:>4s} " + " ".join(f"{v['fwd_bwd_ms'][str(T)]:9.1f}" for T in sc["T"])
                         + f" {us:>18s} {v['exponent']:5.2f} {'linear' if v['linear'] else 'SUPERLINEAR'}")
    return lines


def _scan_lines(r: dict) -> list[str]:
    lines = ["", "scan: fwd+bwd speed-up over mode=sequential (ms scan / sequential)"]
    for mode, table in (("scan", r["scan"]), ("logscan", r.get("scan_logscan") or {})):
        for name, speed in table.items():
            d = r["scan_detail"][name]
            lines.append(f"{name:8s} {mode:8s} " + "  ".join(
                f"T={T}: {v:.2f}x ({d[T][mode + '_ms']:.1f}/{d[T]['sequential_ms']:.1f})" for T, v in speed.items()))
    return lines


def _pipeline_lines(r: dict) -> list[str]:
    lines: list[str] = []
    t = r.get("tracking")
    if t:
        lines += ["", f"tracking: bare {t['bare_steps_per_s']:.2f} steps/s, tracked {t['tracked_steps_per_s']:.2f} "
                  f"steps/s, ratio {t['ratio']:.3f} (target {t['target']}: {_mark(t['pass'])})"]
    d = r.get("diagnostics_off")
    if d:
        lines.append(f"diagnostics off ({d['cell']}): never traced {d['ratio_never']:.3f}x, after a trace "
                     f"{d['ratio_after_trace']:.3f}x of the bare fast path ({d['bare_ms']:.2f} ms) "
                     f"[{_mark(d['pass'])}]")
    k = r.get("kernels")
    if k:
        lines.append(f"kernels: step GEMM {k['gemm_shape']} oneDNN-packed {k['onednn_linear_us']:.1f} us vs addmm "
                     f"{k['addmm_us']:.1f} us ({k['onednn_vs_addmm']:.2f}x); tanh via sigmoid "
                     f"{k['tanh_via_sigmoid_us']:.1f} us vs torch.tanh {k['torch_tanh_us']:.1f} us "
                     f"({k['tanh_via_sigmoid_vs_tanh']:.2f}x); the cells chose {k['chosen']}")
    if r.get("data"):
        lines += ["", "data generation share of a training step: " + ", ".join(
            f"{k} {100 * v:.2f}% ({r['data_detail'][k]['data_ms']:.3f}/{r['data_detail'][k]['step_ms']:.1f} ms)"
            for k, v in r["data"].items())]
    pk = r.get("packed_detail")
    if pk:
        lines += ["", f"packed trials/hour vs one model per process ({pk['cell']} H={pk['hidden_size']}, "
                  f"{pk['steps']} steps; single trial {pk['single_trial_s']:.1f} s): " + ", ".join(
                      f"M={M}: {v:.2f}x" for M, v in r["packed"].items())
                  + f"  [best M={pk['best_M']}, {pk['target']}: {_mark(pk['pass'])}]"]
    return lines


