"""Simulator fidelity: what the simulator predicts for each measured GPU run, side by side.

For every ``RUN.json`` that ``experiments.py`` wrote, simulate the same system, instances,
seats, KV size, SLOs, workload, rates, request count and seed (the load generator's) with the
calibrated H100 / Llama-3.1-8B latency model, and compare goodput, p50/p99 TTFT and p50 mean TBT.

Each run is simulated as the registry's system of the same name, with the run's HP count
(``hp`` in its JSON; runs written before the cluster controller landed, 2026-12-01, ran
Ascendra as static vLLM priorities over 1 LP + 1 HP, which the registry no longer holds: they
are simulated as today's ``ascendra`` with 1 HP, so their rows compare two different systems).
``--paper`` simulates Ascendra runs with the paper's LP/HP schedulers (``ascendra-paper``).

Two engines sharing one GPU are simulated as two instances with half the GPU's compute and
bandwidth each (the calibrated fixed overheads unchanged), divided once more by
``--shared-gpu-slowdown`` (default 1: a fair split with no cost of sharing). Two processes on
one GPU without MPS are time-sliced, which costs more than a fair split. ``--shared-profile``
replaces both with a profile measured on one engine while another shares the GPU under load
(``experiments.py --only profile-h100-shared``): engines of multi-engine runs then step as that
profile says, with no split.

    python bench/gpu/sim_fidelity.py docs/results/gpu --json docs/results/gpu/sim-fidelity.json
    python bench/gpu/sim_fidelity.py docs/results/h200-2026-12-02 --gpu h200 \
        --kv-tokens 919824 --profile ascendra/data/profiles/llama31-8b-h200-vllm026.csv \
        --json docs/results/h200-2026-12-02/sim-fidelity.json
    python bench/gpu/sim_fidelity.py docs/results/gpu/round3 \
        --profile ascendra/data/profiles/llama31-8b-h100-vllm026.csv \
        --json docs/results/gpu/round3/sim-fidelity-profiled.json
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from ascendra.core.offload import FixedMarginPredictor
from ascendra.core.request import Slo, TbtKind
from ascendra.core.systems import system
from ascendra.metrics import goodput, summarize
from ascendra.perf import latency_model
from ascendra.perf.roofline import RooflineLatencyModel
from ascendra.sim.cluster import ClusterConfig, Simulation
from ascendra.workloads.lengths import LongBenchLike, ShareGptLike
from ascendra.workloads.spec import SyntheticWorkload, rate_load

WORKLOADS = {"sharegpt/poisson": SyntheticWorkload(ShareGptLike()),
             "longbench/poisson": SyntheticWorkload(LongBenchLike())}
KV_FULL = 451_840  # one engine at 0.9 memory (measured)


def _arg(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args else None


def model_for(instances: int, profile: Path | None = None, slowdown: float = 1.0,
              shared_profile: Path | None = None, gpu: str = "h100") -> RooflineLatencyModel:
    if instances > 1 and shared_profile is not None:
        return latency_model(gpu_name=gpu, profile=shared_profile)
    lm = latency_model(gpu_name=gpu, profile=profile)
    if instances == 1:
        return lm
    share = 1.0 / (instances * slowdown)
    gpu = replace(lm.gpu, name=f"{lm.gpu.name}/{instances}",
                  peak_flops=lm.gpu.peak_flops * share,
                  mem_bandwidth=lm.gpu.mem_bandwidth * share)
    return RooflineLatencyModel(lm.model, gpu, lm.coef)


def predict(run: dict[str, Any], profile: Path | None = None, paper: bool = False,
            slowdown: float = 1.0, shared_profile: Path | None = None, gpu: str = "h100",
            kv_full: int = KV_FULL, policy: dict[str, Any] | None = None,
            first_token_delay: float = 0.0) -> dict[str, Any]:
    """``policy``: fields (camelCase, as in the CRD) that change the system's policy;
    ``first_token_delay``: the engine's first-token latency beyond its steps, s."""
    rep = run["report"]
    args = run["engine_args"]
    seats = _arg(args, "--max-num-seqs")
    kv_bytes = _arg(args, "--kv-cache-memory-bytes")
    # 128 KiB of KV per token for the 8B shape (32 layers × 8 KV heads × 128 × K,V × bf16).
    kv = int(kv_bytes) // (128 * 1024) if kv_bytes else kv_full
    instances = run.get("instances", 1)  # h200.py's runs: one engine owning the GPU
    hp = int(run.get("hp", 1 if run["system"] == "ascendra" and instances > 1 else 0))
    name = "ascendra-paper" if run["system"] == "ascendra" and paper else run["system"]
    spec = system(name, max_seqs=int(seats) if seats else None)
    if policy:
        spec = replace(spec, policy=spec.policy.with_values(policy))
    lm = model_for(instances, profile, slowdown, shared_profile, gpu)
    slo = Slo(rep["slo"]["ttft_s"], rep["slo"].get("tbt_s", rep["slo"].get("tbt_mean_s")),
              TbtKind(rep["slo"].get("tbt_kind", "mean")))  # the every-gap runs' too
    work = WORKLOADS[rep["workload"]]
    out: dict[str, Any] = {"rates": {}, "offloads": 0, "migrations": 0}
    curve = []
    for rate in rep["rates"]:
        load = rate_load(work, float(rate), rep["requests_per_rate"], 1,  # loadgen's seed
                         rep.get("lead_seconds", 0.0))
        res = Simulation(ClusterConfig(spec, instances=instances, hp_instances=hp,
                                       kv_tokens=kv, first_token_delay=first_token_delay),
                         lm,
                         FixedMarginPredictor(lm), slo, seed=1).run(load.specs)
        out["offloads"] += res.offloads
        out["migrations"] += res.migrations
        # The measured requests only, as the load generator judged them (the pooled gaps of
        # the run are not compared here).
        s = summarize([o for o in res.outcomes if o.id >= load.lead])
        curve.append((float(rate), s.attainment))
        out["rates"][rate] = {"attainment": round(s.attainment, 4), "ttft_p50": s.ttft_p50,
                              "ttft_p99": s.ttft_p99, "tbt_mean_p50": s.tbt_mean_p50}
    out["goodput_qps"] = round(goodput(curve), 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("results", type=Path)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--profile", type=Path, help="fit the latency model to this measured "
                    "profile instead of the anchor-calibrated constants")
    ap.add_argument("--shared-gpu-slowdown", type=float, default=1.0, help="engines sharing "
                    "a GPU run this much slower than a fair split of it (≥ 1)")
    ap.add_argument("--shared-profile", type=Path, help="profile measured on one of two "
                    "engines sharing the GPU: multi-engine runs use it instead of a split")
    ap.add_argument("--only", help="simulate only the runs whose name contains this")
    ap.add_argument("--gpu", default="h100", help="the GPU the runs were measured on")
    ap.add_argument("--kv-tokens", type=int, default=KV_FULL, help="one engine's KV cache "
                    "owning the GPU, in tokens (vLLM logs it at start)")
    ap.add_argument("--paper", action="store_true", help="simulate Ascendra runs with the "
                    "paper's LP/HP schedulers and rules instead of what the router deploys")
    ap.add_argument("--first-token-delay", type=float, default=0.0, help="what a real "
                    "engine adds to each first token beyond its steps, s (its API server and "
                    "output path; 0.25 fits the H200's bare engine of 2026-12-04)")
    args = ap.parse_args()
    if args.shared_gpu_slowdown < 1.0:
        ap.error("--shared-gpu-slowdown must be ≥ 1")
    if not 0.0 <= args.first_token_delay < 60.0:
        ap.error("--first-token-delay must be within [0, 60) s")
    rows = {}
    for f in sorted(args.results.glob("*.json")):
        run = json.loads(f.read_text())
        name = run.get("run") or run.get("step")  # experiments.py's or h200.py's
        if "report" not in run or (args.only and args.only not in name):
            continue
        measured, predicted = run["report"], predict(
            run, args.profile, args.paper, args.shared_gpu_slowdown, args.shared_profile,
            args.gpu, args.kv_tokens, first_token_delay=args.first_token_delay)
        rows[name] = {"measured_goodput": measured["goodput_qps"],
                            "predicted_goodput": predicted["goodput_qps"],
                            "measured": {r: {k: v[k] for k in ("attainment", "ttft_p50",
                                                               "ttft_p99", "tbt_mean_p50")}
                                         for r, v in measured["rates"].items()},
                            "predicted": predicted["rates"],
                            "predicted_moves": {"offloads": predicted["offloads"],
                                                "migrations": predicted["migrations"]}}
        m, p = measured["goodput_qps"], predicted["goodput_qps"]
        err = f"{(p - m) / m:+.0%}" if m else "n/a"
        print(f"{name:<36} measured {m:6.2f}  predicted {p:6.2f}  ({err})  predicted "
              f"moves: {predicted['offloads']} offloads, {predicted['migrations']} migrations")
        for rate, mv in measured["rates"].items():
            pv = predicted["rates"][rate]
            print(f"    {rate:>5} req/s  attainment {mv['attainment']:.2f} vs "
                  f"{pv['attainment']:.2f}"
                  f"  TTFT p50 {_ms(mv['ttft_p50'])} vs {_ms(pv['ttft_p50'])}"
                  f"  p99 {_ms(mv['ttft_p99'])} vs {_ms(pv['ttft_p99'])}"
                  f"  TBT p50 {_ms(mv['tbt_mean_p50'])} vs {_ms(pv['tbt_mean_p50'])}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1e3:.0f}ms"


if __name__ == "__main__":
    main()
