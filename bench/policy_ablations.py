"""Why the controller's defaults are what they are: single simulated points, one knob changed
at a time from ``ascendra``'s policy (same requests, same seed), attainment side by side.

    python bench/policy_ablations.py --json docs/results/policy-ablations.json
    python bench/policy_ablations.py --only "promotion slack" \
        --json docs/results/policy-ablations-promotion.json

Each row is (preset, rate, policy overrides or HP count); the presets are those of
``ascendra sim`` with the measured H100 profile. A preset name ending in ``@burst`` is that
preset cut to its first 300 requests: a burst that the engines can clear, where the question is
whether the order lets every request that had time make it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
from typing import Any

from ascendra.experiments.presets import preset
from ascendra.experiments.sweep import run_point

Variants = dict[str, tuple[dict[str, Any], int | None]]  # label → (policy overrides, HP count)
ABLATIONS: list[tuple[str, str, tuple[float, ...], Variants]] = [  # question, preset, rates
    ("queue order", "one-h100-sharegpt", (40.0, 44.0), {
        "shortest (default)": ({}, None), "deadline": ({"order": "deadline"}, None),
        "fcfs": ({"order": "fcfs"}, None)}),
    ("a split", "paper-sharegpt", (130.0, 140.0), {
        "no HP (default)": ({}, None), "1 HP": ({}, 1)}),
    ("a split", "paper-longbench", (36.0, 40.0), {
        "no HP (default)": ({}, None), "1 HP": ({}, 1)}),
    ("TBT migration", "azure-conv", (70.0, 80.0), {
        "off (default)": ({}, None), "on": ({"migration": True}, None)}),
    ("flow-control window", "paper-sharegpt", (130.0,), {
        "2 steps (default)": ({}, None),
        "1": ({"releaseSteps": 1.0}, None), "4": ({"releaseSteps": 4.0}, None)}),
    ("KV reserve", "paper-sharegpt", (110.0, 130.0), {
        "5% (default)": ({}, None), "0%": ({"kvReserveFraction": 0.0}, None),
        "15%": ({"kvReserveFraction": 0.15}, None)}),
    ("relegation margin", "one-h100-sharegpt", (40.0, 44.0), {
        "0.1 s (default)": ({}, None), "0": ({"relegationMarginSeconds": 0.0}, None),
        "0.2 s": ({"relegationMarginSeconds": 0.2}, None)}),
] + [
    ("promotion slack", name, rates, {
        "off (default)": ({}, None), "0.25 s": ({"promotionSlackSeconds": 0.25}, None),
        "0.5 s": ({"promotionSlackSeconds": 0.5}, None),
        "0.5 s unguarded": ({"promotionSlackSeconds": 0.5, "promotionGuard": False}, None),
        "fcfs": ({"order": "fcfs"}, None)})
    for name, rates in (("one-h100-sharegpt", (40.0, 44.0)), ("paper-sharegpt", (130.0, 140.0)),
                        ("paper-longbench", (36.0,)),
                        ("paper-longbench@burst", (80.0, 120.0, 160.0)))
]
BURST = 300  # requests of a burst


def _point(task: tuple[str, float, tuple[tuple[str, Any], ...], int | None]) -> dict[str, Any]:
    name, rate, policy, hp = task
    base, _, burst = name.partition("@")
    p = preset(base).with_overrides(policy=policy, hp_instances=hp)
    if burst:
        p = p.with_overrides(requests=BURST, duration_s=None)
    s = run_point(p, "ascendra", rate).summary
    return {"attainment": round(s.attainment, 4), "relegated": s.relegated,
            "rejected": s.rejected, "misses": s.misses,
            "prompt_mean_missed": s.prompt_mean_missed}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--only", help="one question's rows (e.g. 'promotion slack')")
    ap.add_argument("--jobs", type=int, default=min(len(os.sched_getaffinity(0)), 8))
    args = ap.parse_args()
    tasks, keys = [], []
    for question, name, rates, variants in ABLATIONS:
        if args.only is not None and question != args.only:
            continue
        for label, (policy, hp) in variants.items():
            for rate in rates:
                tasks.append((name, rate, tuple(policy.items()), hp))
                keys.append((question, name, label, rate))
    with mp.get_context("fork").Pool(args.jobs) as pool:
        results = pool.map(_point, tasks)
    rows: list[dict[str, Any]] = []
    for (question, name, label, rate), res in zip(keys, results, strict=True):
        rows.append({"question": question, "preset": name, "variant": label, "qps": rate, **res})
        print(f"{question:<20} {name:<19} {rate:>6g} req/s  {label:<22} "
              f"attainment {res['attainment']:.3f}  relegated {res['relegated']}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"system": "ascendra", "rows": rows}, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
