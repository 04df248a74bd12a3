"""The simulator as split planner: deterministic predictions for every split in bounds."""

from __future__ import annotations

import pytest

from ascendra.core.request import Slo
from ascendra.errors import AscendraError
from ascendra.perf import latency_model
from ascendra.sim.planner import PlannerConfig, WorkloadMix, plan_split
from ascendra.workloads.lengths import LongBenchLike
from ascendra.workloads.spec import SyntheticWorkload


def test_plan_covers_the_bounds_and_is_repeatable():
    reqs = SyntheticWorkload(LongBenchLike()).requests(30, 300, 1)
    mix = WorkloadMix(30, tuple(r.prompt_len for r in reqs), tuple(r.output_len for r in reqs))
    cfg = PlannerConfig(3, 0, 2, requests=300)
    plan = plan_split(mix, latency_model(), Slo(1.5, 0.15), cfg)
    assert sorted(plan.predicted) == [0, 1, 2]
    assert all(0.0 <= v <= 1.0 for v in plan.predicted.values())
    assert plan_split(mix, latency_model(), Slo(1.5, 0.15), cfg) == plan


def test_unpaired_mix_draws_outputs_independently():
    mix = WorkloadMix(10, (100,) * 5, (7, 9), paired=False)
    reqs = mix.requests(50, 0)
    assert {r.output_len for r in reqs} == {7, 9} and all(r.prompt_len == 100 for r in reqs)


@pytest.mark.parametrize("mix", [WorkloadMix(0, (1,), (1,)), WorkloadMix(5, (), (1,)),
                                 WorkloadMix(5, (1, 2), (1,))])
def test_bad_mixes_are_refused(mix):
    with pytest.raises(AscendraError):
        mix.requests(10, 0)
