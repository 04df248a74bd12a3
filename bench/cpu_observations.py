"""Queued requests' observations from a real vLLM CPU engine, for the learned TTFT model.

Starts the local stack with one vLLM CPU engine of the tiny model (vLLM defaults, the router in
``--system vllm`` mode, so nothing is moved and every observation is what staying cost), with the
router writing every queued request's snapshots and time to first token (``--observations``),
and runs ``ascendra bench`` at each rate. Run it twice with different seeds: one run to train
on, the other held out (docs/predictor.md).

    python bench/cpu_observations.py --seed 1 --out docs/results/predictor/cpu-train
    python bench/cpu_observations.py --seed 2 --out docs/results/predictor/cpu-heldout

writes OUT.observations.jsonl.gz and OUT.bench.json (the load generator's report).

Caveat: the engine, the router and the load generator share this machine's two cores.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from ascendra.core.request import Slo
from ascendra.loadgen import BenchConfig, report, run_bench, table
from ascendra.runtime.local_stack import LocalStack, StackConfig
from ascendra.workloads.lengths import ShareGptLike
from ascendra.workloads.spec import SyntheticWorkload


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: the stack is stopped
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True, help="path prefix of the two files written")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rates", default="6,8,10,12,14")
    ap.add_argument("--requests", type=int, default=400, help="requests per rate")
    ap.add_argument("--ttft", type=float, default=2.0)
    ap.add_argument("--tbt", type=float, default=0.1)
    ap.add_argument("--length-scale", type=float, default=0.5)
    ap.add_argument("--port", type=int, default=18950)
    args = ap.parse_args()
    work = SyntheticWorkload(ShareGptLike().scaled(args.length_scale))
    slo = Slo(args.ttft, args.tbt)
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "observations.jsonl"
        cfg = StackConfig(instances=1, system="vllm", port=args.port, base_port=args.port + 10,
                          ttft=slo.ttft, tbt=slo.tbt, router_args=["--observations", str(log)],
                          log_dir=Path(".ascendra/logs/cpu-observations"))
        with LocalStack(cfg) as stack:
            time.sleep(2)
            bench = BenchConfig(url=stack.url + "/v1", model=stack.name, workload=work,
                                rates=[float(r) for r in args.rates.split(",")],
                                requests=args.requests, slo=slo, seed=args.seed)
            rep = report(bench, run_bench(bench))
        # The router appends its last observations as it stops, so the log is read after.
        with log.open("rb") as src, gzip.open(f"{args.out}.observations.jsonl.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
    Path(f"{args.out}.bench.json").write_text(json.dumps(rep, indent=1) + "\n")
    print(table(rep), flush=True)


if __name__ == "__main__":
    main()
