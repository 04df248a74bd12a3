"""Live LP:HP resizing in the simulator: a mix that shifts half-way, static splits vs dynamic.

Phase A is ShareGPT-like at ``--rate-a`` req/s, phase B LongBench-like at ``--rate-b`` (equal
request counts), on 3 H100 instances (the measured profile), TTFT 1.5 s / mean TBT 0.15 s, the
deployed ``ascendra``. Static splits keep 0 HP (its default) or 1; dynamic starts at 0 and lets
``ascendra.core.split`` (the same code as the operator's) move one instance at a time within
[0, 1], checked every 10 s with a 60 s cooldown; "dynamic + planner" also simulates the last
window's mix on both splits (``ascendra.sim.planner``, the deployed system) and follows a
clearly better prediction when the signals are steady. Attainment is reported overall and per
phase.

    python bench/dynamic_split.py --json docs/results/dynamic-split.json
"""

from __future__ import annotations

import argparse
import json

from ascendra.core.offload import FixedMarginPredictor
from ascendra.core.request import Slo
from ascendra.core.split import SplitPolicy
from ascendra.core.systems import system
from ascendra.experiments.presets import H100_PROFILE
from ascendra.metrics import attainment
from ascendra.perf import latency_model
from ascendra.sim.cluster import ClusterConfig, Simulation, SplitConfig
from ascendra.workloads.lengths import LongBenchLike, ShareGptLike
from ascendra.workloads.spec import RequestSpec, SyntheticWorkload


def shifted(rate_a: float, rate_b: float, n: int) -> tuple[list[RequestSpec], int]:
    a = SyntheticWorkload(ShareGptLike()).requests(rate_a, n // 2, 1)
    b = SyntheticWorkload(LongBenchLike()).requests(rate_b, n - n // 2, 2)
    t0 = a[-1].arrival
    return a + [RequestSpec(len(a) + i, t0 + r.arrival, r.prompt_len, r.output_len)
                for i, r in enumerate(b)], len(a)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--loads", default="110:33,120:36,130:39", help="RATE_A:RATE_B,...")
    ap.add_argument("--requests", type=int, default=6000)
    ap.add_argument("--json")
    args = ap.parse_args()
    lm = latency_model(profile=H100_PROFILE)
    slo = Slo(1.5, 0.15)
    setups = {
        "static 3 LP (default)": (0, None),
        "static 2 LP + 1 HP": (1, None),
        "dynamic [0, 1] HP": (0, SplitConfig(0, 1, interval=10, policy=SplitPolicy(cooldown=60))),
        "dynamic + planner [0, 1] HP": (0, SplitConfig(0, 1, interval=10, planner=True,
                                                       policy=SplitPolicy(cooldown=60))),
    }
    out = []
    for load in args.loads.split(","):
        ra, rb = (float(x) for x in load.split(":"))
        reqs, split_at = shifted(ra, rb, args.requests)
        row: dict[str, object] = {"rate_a": ra, "rate_b": rb}
        for label, (hp, resize) in setups.items():
            cfg = ClusterConfig(system("ascendra"), instances=3, hp_instances=hp,
                                jitter_cv=0.03, resize=resize)
            res = Simulation(cfg, lm, FixedMarginPredictor(lm), slo, seed=1).run(reqs)
            row[label] = {
                "attainment": round(attainment(res.outcomes), 4),
                "phase_a": round(attainment(res.outcomes[:split_at]), 4),
                "phase_b": round(attainment(res.outcomes[split_at:]), 4),
                "resizes": [[round(t, 1), h, why] for t, h, why in res.resizes],
            }
            print(f"A {ra:g}/s B {rb:g}/s  {label:<29} {row[label]['attainment']:.3f} "
                  f"(A {row[label]['phase_a']:.3f}, B {row[label]['phase_b']:.3f}) "
                  f"resizes {[(round(t), h) for t, h, _ in res.resizes]}", flush=True)
        out.append(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"instances": 3, "slo": {"ttft_s": 1.5, "tbt_s": 0.15, "tbt_kind": "mean"},
                       "requests": args.requests, "loads": out}, f, indent=1)


if __name__ == "__main__":
    main()
