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
from ascendra.core.offload import (
    FixedMarginPredictor,
    QueueSnapshot,
    at_risk,
    paper_bound,
    queue_snapshot,
)
from ascendra.perf import latency_model


def _snap(batch_time: float, own_prefill: float) -> QueueSnapshot:
    return QueueSnapshot(prompt_len=100, waited=0.0, tokens_ahead=0, seqs_ahead=0,
                         num_running=0, decode_context=0, kv_used=0.0, batch_time=batch_time,
                         own_prefill=own_prefill, ahead_prefill=own_prefill)


def test_offload_rule_hand_computed():
    r = req(1, 100, arrival=0.0, pf=0.2)  # TTFT SLO 1.0 s
    # waited + max(batch, prefill) + margin: 0.05 + 0.2 + 0.7 = 0.95 ≤ 1.0 → stays.
    assert not at_risk(r, now=0.05, bound=paper_bound(_snap(0.1, 0.2), 0.7))
    # 0.11 + 0.2 + 0.7 = 1.01 > 1.0 → moves.
    assert at_risk(r, now=0.11, bound=paper_bound(_snap(0.1, 0.2), 0.7))
    # A long current batch dominates the request's own prefill: 0.05 + 0.3 + 0.7 > 1.0.
    assert at_risk(r, now=0.05, bound=paper_bound(_snap(0.3, 0.2), 0.7))
    r.ever_scheduled = True  # started requests never move
    assert not at_risk(r, now=5.0, bound=0.0)


def test_fixed_margin_predictor_bounds_with_its_margin():
    pred = FixedMarginPredictor(latency_model(), margin_s=0.5)
    assert pred.ttft_bounds([_snap(0.02, 0.01), _snap(0.3, 0.1)]) == [0.52, 0.8]


def test_queue_snapshot_counts_what_is_ahead():
    lm = latency_model()
    r = req(7, 200, arrival=1.0, pf=0.05)
    snap = queue_snapshot(r, 1.5, ahead=[100, 300], running=[50, 70, 80], kv_used=0.25,
                          batch_time=0.03, model=lm)
    assert (snap.tokens_ahead, snap.seqs_ahead, snap.num_running, snap.decode_context) == \
        (400, 2, 3, 200)
    assert snap.waited == 0.5 and snap.own_prefill == 0.05
    alone = queue_snapshot(r, 1.5, ahead=[], running=[], kv_used=0.0, batch_time=0.0, model=lm)
    assert snap.ahead_prefill > alone.ahead_prefill > 0


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
