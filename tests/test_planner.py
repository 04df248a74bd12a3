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


def test_the_simulators_resize_loop_plans_from_what_finished(monkeypatch):
    """The resize loop hands the planner the window's finished requests and follows its plan
    when the measured signals are steady (light load here)."""
    import ascendra.sim.cluster as cluster
    from ascendra.core.offload import FixedMarginPredictor
    from ascendra.core.split import SplitPlan, SplitPolicy
    from ascendra.core.systems import system

    mixes: list[WorkloadMix] = []

    def spy(mix, model, slo, cfg):  # type: ignore[no-untyped-def]
        mixes.append(mix)
        return SplitPlan({1: 0.5, 2: 0.9})

    monkeypatch.setattr(cluster, "plan_split", spy)
    lm = latency_model()
    reqs = SyntheticWorkload(LongBenchLike()).requests(4, 200, 2)
    resize = cluster.SplitConfig(1, 2, interval=10, planner=True,
                                 policy=SplitPolicy(cooldown=30, min_requests=5))
    cfg = cluster.ClusterConfig(system("ascendra"), instances=3, hp_instances=1, resize=resize)
    result = cluster.Simulation(cfg, lm, FixedMarginPredictor(lm), Slo(2.5, 0.15),
                                seed=0).run(reqs)
    assert mixes and all(m.paired and min(m.prompt_lens) >= 1900 for m in mixes)
    assert abs(mixes[-1].rate - 4) < 2.5  # the window's arrivals per second
    assert [(hp, why.split(":")[0]) for _, hp, why in result.resizes] == [(2, "planner")]


def test_the_planner_simulates_the_deployed_system_and_its_policy():
    """Plans come from the registry's system with the service's policy. A burst of 300 long
    prompts at 120 req/s on three instances: a policy that sheds everything it cannot serve in
    time predicts the same attainment as relegation (both count as missed); promotion (a
    policy field, unguarded) and another system each change the prediction; an unknown system is
    refused."""
    from dataclasses import replace

    from ascendra.core.policy import Overload, Policy

    reqs = SyntheticWorkload(LongBenchLike()).requests(40, 300, 1)
    mix = WorkloadMix(120, tuple(r.prompt_len for r in reqs), tuple(r.output_len for r in reqs))
    lm, slo = latency_model(), Slo(2.5, 0.15)

    def plan(system: str = "ascendra", **policy) -> dict[int, float]:
        return plan_split(mix, lm, slo, PlannerConfig(
            3, 0, 1, requests=300, system=system,
            policy=replace(Policy(), **policy) if policy else None)).predicted

    relegate, reject = plan(), plan(overload=Overload.REJECT)
    assert sorted(relegate) == sorted(reject) == [0, 1]
    assert relegate[0] == pytest.approx(reject[0], abs=0.02)
    # Unguarded promotion serves the burst's long prompts that had time; the guard, which
    # promotes only while the queue drains within a request's slack, leaves this backlog be.
    assert plan(promotion_slack=0.5, promotion_guard=False)[0] > relegate[0]
    assert plan(promotion_slack=0.5)[0] == pytest.approx(relegate[0], abs=0.005)
    assert plan("vllm-shed") != relegate  # another system, another prediction
    with pytest.raises(AscendraError, match="unknown system"):
        plan_split(mix, lm, slo, PlannerConfig(3, 0, 1, requests=50, system="nope"))
