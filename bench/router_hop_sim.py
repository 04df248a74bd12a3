"""What the simulator says a slow router hop costs on one H200: each system at each rate, with
the time a released request takes to reach its engine (``ClusterConfig.release_delay``) set to
each of ``--delays``.

On the H200 (docs/gpu.md, 2026-12-02) every system behind the router lost to the bare engine,
and those holding the queue lost most. If a hop this slow explained it, the simulator would
show attainment falling with the delay; it shows TTFT growing by the delay and nothing else,
which says its engine model, not only the hop, is what it lacks.

    python bench/router_hop_sim.py [--delays 0.002,0.02,0.05,0.1] [--rates 36,44,52,60]
        [--json docs/results/h200-2026-12-02/router-hop-sim.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ascendra.core.offload import FixedMarginPredictor
from ascendra.core.request import Slo
from ascendra.core.systems import system
from ascendra.experiments.presets import H200_KV_TOKENS, H200_PROFILE
from ascendra.metrics import goodput, summarize
from ascendra.perf import latency_model
from ascendra.sim.cluster import ClusterConfig, Simulation
from ascendra.workloads.lengths import ShareGptLike
from ascendra.workloads.spec import SyntheticWorkload


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--delays", default="0.002,0.02,0.05,0.1")
    ap.add_argument("--rates", default="36,44,52,60")
    ap.add_argument("--systems", default="vllm,vllm-shed,ascendra")
    ap.add_argument("--requests", type=int, default=1200)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    lm = latency_model(gpu_name="h200", profile=str(H200_PROFILE))
    work, slo = SyntheticWorkload(ShareGptLike()), Slo(1.0, 0.15)
    rates = [float(r) for r in args.rates.split(",")]
    rows = []
    for name in args.systems.split(","):
        for delay in (float(d) for d in args.delays.split(",")):
            cfg = ClusterConfig(system(name), instances=1, kv_tokens=H200_KV_TOKENS,
                                release_delay=delay)
            points = {}
            for rate in rates:
                res = Simulation(cfg, lm, FixedMarginPredictor(lm), slo, seed=1).run(
                    work.requests(rate, args.requests, 1))
                s = summarize(res.outcomes, res.gaps)
                points[f"{rate:g}"] = {"attainment": round(s.attainment, 4),
                                       "ttft_p50": s.ttft_p50, "tbt_mean_p50": s.tbt_mean_p50}
            curve = [(float(r), p["attainment"]) for r, p in points.items()]
            row = {"system": name, "release_delay_s": delay, "goodput_qps": goodput(curve),
                   "rates": points}
            rows.append(row)
            print(f"{name:<10} hop {delay * 1e3:5.0f} ms  goodput {row['goodput_qps']:5.1f}  " +
                  "  ".join(f"{r}: {p['attainment']:.0%} TTFT p50 {p['ttft_p50'] * 1e3:.0f} ms"
                            for r, p in points.items()), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"gpu": "h200", "profile": H200_PROFILE.name,
                                         "requests_per_rate": args.requests, "slo": [1.0, 0.15],
                                         "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
