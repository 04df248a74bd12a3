"""Offload rule, dispatchers and the Ascendra router policy."""

from __future__ import annotations

from policy_helpers import req

from ascendra.core.dispatch import (
    AscendraRouting,
    BaselineRouting,
    InstanceLoad,
    LeastPredictedDelay,
    Role,
    RoundRobin,
)
from ascendra.core.offload import FixedMarginPredictor, at_risk, select_offloads
from ascendra.perf import latency_model


def test_offload_rule_hand_computed():
    r = req(1, 100, arrival=0.0, pf=0.2)  # TTFT SLO 1.0 s
    # waited + max(batch, prefill) + margin: 0.05 + 0.2 + 0.7 = 0.95 ≤ 1.0 → stays.
    assert not at_risk(r, now=0.05, batch_time=0.1, margin=0.7)
    # 0.11 + 0.2 + 0.7 = 1.01 > 1.0 → moves.
    assert at_risk(r, now=0.11, batch_time=0.1, margin=0.7)
    # A long current batch dominates the request's own prefill: 0.05 + 0.3 + 0.7 > 1.0.
    assert at_risk(r, now=0.05, batch_time=0.3, margin=0.7)
    r.ever_scheduled = True  # started requests never move
    assert not at_risk(r, now=5.0, batch_time=0.1, margin=0.7)


def test_select_offloads_uses_the_predictor_margin():
    pred = FixedMarginPredictor(latency_model(), margin_s=0.5)
    safe, risky = req(1, 10, arrival=0.9, pf=0.01), req(2, 10, arrival=0.0, pf=0.01)
    assert select_offloads([safe, risky], now=1.0, batch_time=0.02, predictor=pred) == [risky]


def _load(i: int, role: Role = Role.LP, **kw) -> InstanceLoad:
    return InstanceLoad(index=i, role=role, **kw)


def test_round_robin_cycles():
    rr = RoundRobin()
    loads = [_load(3), _load(5)]
    assert [rr.pick(loads, req(0, 1)) for _ in range(4)] == [3, 5, 3, 5]


def test_least_predicted_delay_prefers_the_emptier_queue():
    lpd = LeastPredictedDelay(latency_model())
    loads = [_load(0, num_waiting=4, waiting_tokens=8000),
             _load(1, num_waiting=1, waiting_tokens=100)]
    assert lpd.pick(loads, req(0, 500)) == 1
    busy = [_load(0, num_running=120, decode_context=240_000), _load(1, num_running=2,
                                                                        decode_context=400)]
    assert lpd.pick(busy, req(0, 500)) == 1


def test_ascendra_routing_tickets_then_lps():
    routing = AscendraRouting(RoundRobin())
    idle_hp = _load(2, Role.HP, num_running=10, kv_free_fraction=0.9)
    busy_hp = _load(2, Role.HP, num_waiting=3, kv_free_fraction=0.9)
    lps = [_load(0), _load(1)]
    assert routing.route_new([*lps, idle_hp], req(0, 5)).via_ticket
    routes = [routing.route_new([*lps, busy_hp], req(0, 5)) for _ in range(3)]
    assert [r.index for r in routes] == [0, 1, 0] and not any(r.via_ticket for r in routes)
    assert routing.route_offload([*lps, busy_hp]) == 2
    assert routing.route_offload(lps) is None


def test_baseline_routing_never_offloads():
    routing = BaselineRouting(RoundRobin())
    loads = [_load(0, Role.MIXED), _load(1, Role.MIXED)]
    assert [routing.route_new(loads, req(0, 5)).index for _ in range(2)] == [0, 1]
    assert routing.route_offload(loads) is None


def test_guarded_offload_goes_only_where_the_deadline_can_still_be_met():
    lm = latency_model()
    routing = AscendraRouting(RoundRobin(), offload_guard=lm)
    r = req(1, 500, arrival=0.0)  # TTFT SLO 1.0 s
    idle_hp = _load(2, Role.HP)
    swamped_hp = _load(3, Role.HP, num_waiting=40, waiting_tokens=80_000)
    # The swamped HP is skipped for the idle one; with only the swamped one, nothing moves.
    assert routing.route_offload([_load(0), swamped_hp, idle_hp], r, now=0.5) == 2
    assert routing.route_offload([_load(0), swamped_hp], r, now=0.5) is None
    # Past the deadline no HP can make it; unguarded (the paper's rule) it moves regardless.
    assert routing.route_offload([_load(0), idle_hp], r, now=1.5) is None
    assert AscendraRouting(RoundRobin()).route_offload([_load(0), swamped_hp], r, 0.5) == 3
