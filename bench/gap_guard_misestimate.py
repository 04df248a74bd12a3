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
from ascendra.core.offload import FixedMarginPredictor
from ascendra.experiments.presets import preset
from ascendra.experiments.sweep import preset_system
from ascendra.metrics import summarize
from ascendra.perf.calibration import latency_model
from ascendra.sim.cluster import ClusterConfig, Simulation


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
    p = preset("one-h200-longbench-gaps")
    truth = latency_model(p.model, p.gpu, p.profile)
    for qps in (float(r) for r in rates.split(",")):
        cfg = ClusterConfig(preset_system(p, name), instances=1, kv_tokens=p.kv_tokens,
                            jitter_cv=p.jitter_cv)
        predictor = FixedMarginPredictor(ScaledPrefill(truth, k), p.margin)
        result = Simulation(cfg, truth, predictor, p.slo, seed=p.seed).run(
            p.workload.requests(qps, 600, p.seed))
        s = summarize(result.outcomes, result.gaps)
        print(f"k={k:g} {name} {qps:g} req/s: attainment {s.attainment:.1%}")


if __name__ == "__main__":
    main()
