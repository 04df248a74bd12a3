"""The learned offload bound against the paper's fixed margin, in the simulator (paper-sharegpt).

1. Observe: the paper's design (2 LP + 1 HP) at the preset's rates with offloading off,
   recording every queued request's snapshots and its time to first token (seed
   ``--train-seed``). With nothing moved, each observation's outcome is what staying would have
   cost: the oracle.
2. Train the TTFT quantile model on them.
3. Score both offload rules on a held-out observe-only run (``--test-seed``): how many flagged
   snapshots were in vain (the request met its target where it was), precision and recall.
4. Goodput: the preset's rate sweep of Ascendra with the paper's margin and with the learned
   bound (same requests, seed ``--test-seed``), attainment and offloads per rate.

    python bench/learned_margin.py --json docs/results/learned-margin.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

from ascendra.core.offload import DeadlinePredictor, FixedMarginPredictor
from ascendra.core.systems import system
from ascendra.experiments.presets import PRESETS
from ascendra.metrics import goodput, summarize
from ascendra.perf import latency_model
from ascendra.predict.evaluate import ttft_eval
from ascendra.predict.learned import LearnedPredictor, TtftModel
from ascendra.predict.observations import Observation, ObservationRecorder
from ascendra.sim.cluster import ClusterConfig, Simulation


def simulate(rate: float, seed: int, predictor: DeadlinePredictor, observe: bool):
    preset = PRESETS["paper-sharegpt"]
    spec = system("ascendra-paper")  # the design whose offload rule the bound serves
    if observe:
        spec = replace(spec, policy=replace(spec.policy, offload=False))
    cfg = ClusterConfig(spec, instances=preset.instances, kv_tokens=preset.kv_tokens,
                        jitter_cv=preset.jitter_cv)
    reqs = preset.workload.requests(rate, preset.request_count(rate), seed)
    truth = latency_model(preset.model, preset.gpu)
    sim = Simulation(cfg, truth, predictor, preset.slo, seed=seed,
                     recorder=ObservationRecorder() if observe else None)
    return sim.run(reqs)


def observe(rates: list[float], seed: int, analytic: DeadlinePredictor) -> list[Observation]:
    return [o for r in rates for o in simulate(r, seed, analytic, observe=True).observations]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rates", default="45,55,65,75,85,95,105")
    ap.add_argument("--train-seed", type=int, default=11)
    ap.add_argument("--test-seed", type=int, default=1)
    ap.add_argument("--quantile", type=float, default=0.9)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rates = [float(x) for x in args.rates.split(",")]
    preset = PRESETS["paper-sharegpt"]
    truth = latency_model(preset.model, preset.gpu)
    paper = FixedMarginPredictor(truth, preset.margin)

    t = time.perf_counter()
    train = observe(rates, args.train_seed, paper)
    model = TtftModel.fit(train, quantiles=(0.5, args.quantile))
    learned = LearnedPredictor(preset.model, model, truth, quantile=args.quantile,
                               source=f"simulated paper-sharegpt, seed {args.train_seed}")
    test = observe(rates, args.test_seed, paper)
    accuracy = ttft_eval(model, test, args.quantile, preset.margin)
    print(f"{len(train)} training and {len(test)} test observations "
          f"({time.perf_counter() - t:.0f} s)")
    print(json.dumps(asdict(accuracy), indent=1))

    sweeps: dict[str, dict[str, object]] = {}
    for name, pred in (("paper-margin", paper), ("learned", learned)):
        points = []
        for rate in rates:
            res = simulate(rate, args.test_seed, pred, observe=False)
            s = summarize(res.outcomes, res.gaps)
            points.append({"qps": rate, "attainment": s.attainment, "offloads": res.offloads,
                           "requests": len(res.outcomes)})
            print(f"{name:13s} {rate:6.1f} req/s  attainment {s.attainment:.3f}  "
                  f"offloads {res.offloads}", flush=True)
        sweeps[name] = {"points": points, "goodput": goodput(
            [(p["qps"], p["attainment"]) for p in points])}  # type: ignore[misc]
        print(f"{name}: goodput {sweeps[name]['goodput']:.1f} req/s", flush=True)
    if args.json:
        args.json.write_text(json.dumps({
            "command": "python bench/learned_margin.py " + " ".join(
                f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                if k != "json" and v is not None),
            "train_observations": len(train), "test_observations": len(test),
            "accuracy": asdict(accuracy), "sweeps": sweeps}, indent=1) + "\n")


if __name__ == "__main__":
    main()
