"""What the simulator predicts for ``h200.py``'s sweeps before they run: each load's rates
(``RATES``), the sweep's request count and lead-in, for one vLLM engine and for Ascendra, with
the shipped H200 profile. It is how those rates were chosen (to bracket both crossings), and
the prediction the measured runs are later held against (``sim_fidelity.py``).

    python bench/gpu/sim_plan.py --json docs/results/h200-2026-12-03c/sim-plan.json
    python bench/gpu/sim_plan.py --lead-seconds 0   # the burst runs of 2026-12-03b and before
    python bench/gpu/sim_plan.py --systems ascendra --loads sharegpt --rates 40,44,48,52 \
        --policy '{}' --policy '{"overload": "reject"}' --policy '{"order": "fcfs"}'
        # policy variants (camelCase fields, as in the CRD)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from h200 import LOADS, RATES, Sweep
from sim_fidelity import predict

from ascendra.experiments.presets import H200_KV_TOKENS, H200_PROFILE


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", type=Path)
    ap.add_argument("--systems", default="vllm,ascendra")
    ap.add_argument("--loads", default=",".join(RATES))
    ap.add_argument("--lead-seconds", type=float, help="in place of the sweeps' own")
    ap.add_argument("--rates", help="comma-separated, in place of each load's RATES")
    ap.add_argument("--policy", action="append", type=json.loads, default=[],
                    help="a JSON mapping of policy fields: one variant of every system (again "
                         "for more variants)")
    args = ap.parse_args()
    out: dict[str, dict[str, object]] = {}
    for load in args.loads.split(","):
        work, slo = LOADS[load]
        rates = tuple(float(r) for r in args.rates.split(",")) if args.rates else RATES[load]
        sweep = Sweep(load, None, work, slo, rates)
        lead = sweep.lead_seconds if args.lead_seconds is None else args.lead_seconds
        for name in args.systems.split(","):
            for policy in args.policy or [{}]:
                run = {"system": name, "engine_args": [], "report": {
                    "slo": {"ttft_s": slo.ttft, "tbt_s": slo.tbt,
                            "tbt_kind": slo.tbt_kind.value},
                    "workload": work.name, "rates": {f"{r:g}": {} for r in sweep.rates},
                    "requests_per_rate": sweep.requests, "lead_seconds": lead}}
                p = predict(run, Path(str(H200_PROFILE)), gpu="h200", kv_full=H200_KV_TOKENS,
                            policy=policy)
                label = f"{load}/{name}" + (json.dumps(policy) if policy else "")
                curve = {r: v["attainment"] for r, v in p["rates"].items()}
                print(f"{label:40} goodput {p['goodput_qps']:6.2f}  {curve}", flush=True)
                out[label] = {"lead_seconds": lead, "requests": sweep.requests, **p}
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
