"""The every-gap guard when the controller misjudges prefill: the simulator's controller decides
with a prefill cost K times the truth (the router's per-request rate estimate read 2.5-5x on the
H200, docs/gpu.md) while its engine runs at the truth; one H200 (its measured profile),
LongBench-like, TTFT 2.5 s / every gap within 150 ms, 600 requests a rate.

    python bench/gap_guard_misestimate.py K SYSTEM RATES    # e.g. 5 ascendra 12,16
"""

from __future__ import annotations

import sys
from dataclasses import replace

from ascendra.core.latency import BatchShape, LatencyModel
from ascendra.experiments.presets import preset
from ascendra.experiments.sweep import run_point


class ScaledPrefill:
    """The truth, with what prompt tokens add to a step scaled by ``k``."""

    def __init__(self, truth: LatencyModel, k: float) -> None:
        self.truth, self.k = truth, k

    def batch_time(self, s: BatchShape) -> float:
        base = self.truth.batch_time(replace(s, num_prefill_tokens=0, num_prefill_seqs=0,
                                             prefill_attn_pairs=0.0)) if s.num_decodes else 0.0
        return base + self.k * (self.truth.batch_time(s) - base)

    def prefill_time(self, tokens: int) -> float:
        return self.batch_time(BatchShape.prefill(tokens))


def main() -> None:
    k, name, rates = float(sys.argv[1]), sys.argv[2], sys.argv[3]
    p = replace(preset("one-h200-longbench-gaps"), requests=600)
    for qps in (float(r) for r in rates.split(",")):
        point = run_point(p, name, qps, decide_with=lambda truth: ScaledPrefill(truth, k))
        print(f"k={k:g} {name} {qps:g} req/s: attainment {point.summary.attainment:.1%}")


if __name__ == "__main__":
    main()
