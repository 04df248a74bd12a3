"""How fast the simulator runs: 2,000 ShareGPT-like requests on 3 H100 instances, per system.

    python bench/sim_speed.py [--qps 80] [--repeat 3] [--json docs/results/sim-speed.json]

Each run is one process, one core; the median of ``--repeat`` runs is reported with the machine's
core count, so numbers from different machines are not mixed up.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

from ascendra.core.offload import FixedMarginPredictor
from ascendra.core.request import Slo
from ascendra.core.systems import SYSTEMS, system
from ascendra.perf import latency_model
from ascendra.sim.cluster import ClusterConfig, Simulation
from ascendra.workloads.lengths import ShareGptLike
from ascendra.workloads.spec import SyntheticWorkload


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--qps", type=float, default=80.0)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json")
    args = ap.parse_args()
    lm = latency_model()
    reqs = SyntheticWorkload(ShareGptLike()).requests(args.qps, args.requests, seed=1)
    rows = {}
    for name in SYSTEMS:
        cfg = ClusterConfig(system(name), instances=3, jitter_cv=0.03)  # its own split
        times, steps = [], 0
        for _ in range(args.repeat):
            sim = Simulation(cfg, lm, FixedMarginPredictor(lm), Slo(1.0, 0.15), seed=1)
            t = time.perf_counter()
            res = sim.run(reqs)
            times.append(time.perf_counter() - t)
            steps = sum(res.steps)
        rows[name] = {"wall_s_median": round(statistics.median(times), 3),
                      "wall_s_max": round(max(times), 3), "engine_steps": steps,
                      "simulated_s": round(res.duration, 1)}
        print(f"{name:<10} {rows[name]['wall_s_median']:6.2f} s  ({steps} steps, "
              f"{res.duration:.0f} s simulated)")
    out = {"requests": args.requests, "qps": args.qps, "instances": 3,
           "cpu_count": os.cpu_count(), "python": platform.python_version(),
           "machine": platform.machine(), "systems": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
