"""Turn sweeps into the table, the JSON and the plot that every report shares."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ascendra.experiments.presets import Preset
from ascendra.experiments.sweep import SystemSweep
from ascendra.metrics import GOODPUT_TARGET
from ascendra.perf import latency_model
from ascendra.perf.bound import saturation_bound


def workload_bound(preset: Preset) -> tuple[float, float, float]:
    """(bound QPS, mean prompt, mean output) for the preset's workload on its instances."""
    sample = preset.workload.requests(10.0, max(preset.requests, 2000), preset.seed)
    p = float(np.mean([r.prompt_len for r in sample]))
    o = float(np.mean([r.output_len for r in sample]))
    bound = saturation_bound(latency_model(preset.model, preset.gpu, preset.profile), p, o,
                             instances=preset.instances, kv_tokens=preset.kv_tokens)
    return bound, p, o


def to_json(preset: Preset, sweeps: dict[str, SystemSweep]) -> dict[str, Any]:
    bound, p, o = workload_bound(preset)
    systems: dict[str, Any] = {}
    for name, sw in sweeps.items():
        at = sw.at_goodput()
        s = at.summary if at else None
        systems[name] = {
            "goodput_qps": round(sw.goodput, 3),
            "curve": [[q, round(a, 4)] for q, a in sw.curve],
            "ttft_p99": s.ttft_p99 if s else None,
            "tbt_mean_p99": s.tbt_mean_p99 if s else None,
            "max_gap_p99": s.max_gap_p99 if s else None,
            "gap_p99": s.gap_p99 if s else None,
            "reported_at_qps": at.qps if at else None,
            # At that rate: what the policy gave up, and who paid (mean lengths of the
            # requests that missed against those of all requests).
            "relegated_fraction": round(s.relegated / s.sent, 4) if s else None,
            "rejected_fraction": round(s.rejected / s.sent, 4) if s else None,
            "who_pays": {k: getattr(s, k) for k in (
                "prompt_mean", "prompt_mean_missed", "output_mean", "output_mean_missed",
                "prompt_p90", "prompt_p90_missed", "output_p90", "output_p90_missed")}
            if s else None,
            "goodput_over_bound": round(sw.goodput / bound, 4) if bound else None,
            "points": {
                str(q): {**pt.summary.as_dict(), "wall_s": round(pt.wall_s, 3),
                         "utilization": [round(u, 3) for u in pt.utilization],
                         # engines idle while the router held requests that could still
                         # make it: the cost of holding the queue (fraction of the run)
                         "idle_with_queue": [round(x / pt.sim_duration_s, 4)
                                             if pt.sim_duration_s else 0.0
                                             for x in pt.idle_with_queue]}
                for q, pt in sorted(sw.points.items())
            },
        }
    return {
        "preset": preset.name,
        "description": preset.description,
        "workload": {"name": preset.workload.name, "mean_prompt": round(p, 1),
                     "mean_output": round(o, 1), "min_requests_per_rate": preset.requests,
                     "min_duration_s": preset.duration_s},
        "slo": {"ttft_s": preset.slo.ttft, "tbt_s": preset.slo.tbt,
                "tbt_kind": preset.slo.tbt_kind.value},
        "setup": {"model": preset.model, "gpu": preset.gpu,
                  "profile": Path(preset.profile).name if preset.profile else None,
                  "instances": preset.instances,
                  "hp_instances": preset.hp_instances, "kv_tokens": preset.kv_tokens,
                  "max_seqs": preset.max_seqs, "margin_s": preset.margin,
                  "policy_overrides": dict(preset.policy),
                  "predictor": preset.predictor, "offloads": not preset.observe,
                  "jitter_cv": preset.jitter_cv, "seed": preset.seed},
        "goodput_target": GOODPUT_TARGET,
        "saturation_bound_qps": round(bound, 3),
        "systems": systems,
    }


def _fmt(x: float | None, scale: float = 1.0, digits: int = 0) -> str:
    return "-" if x is None else f"{x * scale:.{digits}f}"


def table(report: dict[str, Any]) -> str:
    """One row a system: goodput, Ascendra's ratio to it, latencies at the goodput point, and
    there what was given up (relegated, rejected) and by whom (mean prompt/output of the
    requests that missed, against the workload's)."""
    systems = report["systems"]
    bound = report["saturation_bound_qps"]
    ref = systems.get("ascendra", {}).get("goodput_qps")
    head = (f"{'system':<15} {'goodput':>8} {'/bound':>7} {'ascendra×':>9} {'TTFT p99':>9} "
            f"{'TBT p99':>8} {'maxgap p99':>10} {'relegated':>9} {'rejected':>8} "
            f"{'missed prompt/out':>18}")
    slo = report["slo"]
    lines = [f"preset {report['preset']}: {report['description']}",
             f"SLO TTFT {slo['ttft_s']:g} s, TBT ({slo['tbt_kind']}) "
             f"{slo['tbt_s']:g} s; saturation bound {bound:.1f} QPS "
             f"(goodput = QPS at {GOODPUT_TARGET:.0%} attainment)",
             head, "-" * len(head)]
    pays = next((s["who_pays"] for s in systems.values() if s.get("who_pays")), None)
    for name, s in systems.items():
        g = s["goodput_qps"]
        ratio = f"{ref / g:.2f}" if ref is not None and g > 0 and name != "ascendra" else "-"
        w = s.get("who_pays") or {}
        missed = f"{_fmt(w.get('prompt_mean_missed'))}/{_fmt(w.get('output_mean_missed'))}"
        lines.append(
            f"{name:<15} {g:>8.2f} {_fmt(s['goodput_over_bound'], 1, 2):>7} {ratio:>9} "
            f"{_fmt(s['ttft_p99'], 1e3):>7}ms {_fmt(s['tbt_mean_p99'], 1e3):>6}ms "
            f"{_fmt(s['max_gap_p99'], 1e3):>8}ms {_fmt(s.get('relegated_fraction'), 100, 1):>8}% "
            f"{_fmt(s.get('rejected_fraction'), 100, 1):>7}% {missed:>18}")
    if pays:
        lines.append(f"(all requests: mean prompt {_fmt(pays['prompt_mean'])}, mean output "
                     f"{_fmt(pays['output_mean'])}; relegated, rejected and missed lengths at "
                     f"each system's goodput point)")
    return "\n".join(lines)


def write_json(report: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(json.dumps(report, indent=1) + "\n")


def plot(report: dict[str, Any], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for name, s in report["systems"].items():
        q, a = zip(*s["curve"], strict=True) if s["curve"] else ((), ())
        ax.plot(q, [x * 100 for x in a], marker="o", ms=3,
                label=f"{name} ({s['goodput_qps']:.1f} QPS)")
    ax.axhline(GOODPUT_TARGET * 100, ls="--", c="grey", lw=0.8)
    ax.axvline(report["saturation_bound_qps"], ls=":", c="k", lw=0.8, label="saturation bound")
    ax.set_xlabel("request rate (QPS)")
    ax.set_ylabel("SLO attainment (%)")
    ax.set_ylim(0, 102)
    ax.set_title(report["preset"])
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
