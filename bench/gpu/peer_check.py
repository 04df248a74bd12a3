"""vLLM's own benchmark client beside ``ascendra bench``: the same configuration, the same rate
and lengths, side by side (bench/gpu/h200.py's ``h200-peer-*`` steps and the sweeps they sit
beside).

For each ``NAME.vllm.json`` (``vllm bench serve --save-result``) it prints vLLM's goodput
(requests meeting TTFT and TPOT per second of the run), the share of requests that met both
(its good count over the requests sent: the attainment ``ascendra bench`` reports), p50/p99
TTFT and p50 TPOT (mean gap), and the same from every ``ascendra bench`` run of that
configuration at that rate, so run-to-run noise can be read from the repeats.

    python bench/gpu/peer_check.py docs/results/h200-2026-12-02 [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def vllm_row(path: Path) -> dict[str, Any]:
    v = json.loads(path.read_text())
    good = v["request_goodput"] * v["duration"]
    return {"client": "vllm bench serve", "file": path.name, "attainment": good / v["num_prompts"],
            "goodput_rps": v["request_goodput"], "ttft_p50_ms": v["p50_ttft_ms"],
            "ttft_p99_ms": v["p99_ttft_ms"], "tbt_mean_p50_ms": v["p50_tpot_ms"]}


def ascendra_rows(results: Path, system: str, direct: bool, rate: float) -> list[dict[str, Any]]:
    rows = []
    for f in sorted(results.glob("*.json")):
        run = json.loads(f.read_text())
        rep = run.get("report")
        if rep is None or run.get("system") != system or run.get("direct_to_engine") != direct:
            continue
        s = rep["rates"].get(f"{rate:g}")
        if s is None:
            continue
        good = s["attainment"] * s["sent"]
        rows.append({"client": "ascendra bench", "file": f.name, "attainment": s["attainment"],
                     "goodput_rps": good / s["wall_s"], "ttft_p50_ms": s["ttft_p50"] * 1e3,
                     "ttft_p99_ms": s["ttft_p99"] * 1e3,
                     "tbt_mean_p50_ms": s["tbt_mean_p50"] * 1e3})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("results", type=Path)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    groups: dict[str, dict[str, Any]] = {}
    for f in sorted(args.results.glob("*.vllm.json")):
        step = json.loads((args.results / f.name.replace(".vllm.json", ".json")).read_text())
        key = f"{step['system']}{' direct' if step['direct_to_engine'] else ' via router'}" \
              f" at {step['rate']:g} req/s"
        g = groups.setdefault(key, {"rows": [], "ascendra": ascendra_rows(
            args.results, step["system"], step["direct_to_engine"], step["rate"])})
        g["rows"].append(vllm_row(f))
    out = {k: g["rows"] + g["ascendra"] for k, g in groups.items()}
    for key, rows in out.items():
        print(key)
        for r in rows:
            print(f"  {r['client']:<17} attainment {r['attainment']:6.1%}  goodput "
                  f"{r['goodput_rps']:5.1f} req/s  TTFT p50 {r['ttft_p50_ms']:6.0f} ms  p99 "
                  f"{r['ttft_p99_ms']:6.0f} ms  TBT p50 {r['tbt_mean_p50_ms']:5.1f} ms  "
                  f"({r['file']})")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
