"""The offload rule, predicted delay and the dispatchers, hand-computed."""

from __future__ import annotations

import pytest
from policy_helpers import LinearModel, req

from ascendra.core.dispatch import Dispatcher, can_meet_ttft, predicted_delay
from ascendra.core.offload import (
    FixedMarginPredictor,
    QueueSnapshot,
    at_risk,
    paper_bound,
    queue_snapshot,
)
from ascendra.core.policy import Dispatch
from ascendra.core.view import InstanceView, Role
from ascendra.perf import latency_model

LIN = LinearModel()  # 10 ms a step + 0.1 ms a prefill token


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


def _inst(i: int, **kw) -> InstanceView:
    return InstanceView(index=i, role=kw.pop("role", Role.MIXED), **kw)


def test_predicted_delay_hand_computed():
    # Idle: its own prefill, one step: 0.01 + 1000 × 1e-4.
    assert predicted_delay(LIN, _inst(0), 1000) == pytest.approx(0.11)
    # Busy: half the running step (40 ms), then 3000 unstarted + 1000 in one step.
    busy = _inst(0, unstarted=2, unstarted_tokens=3000, running=5, step_time=0.08)
    assert predicted_delay(LIN, busy, 1000) == pytest.approx(0.04 + 0.01 + 0.4)
    # Past one step's budget (8192 - 192 decodes = 8000 a step): 12000 tokens take two steps,
    # 0.01 + 0.8 then 0.01 + 0.4.
    full = _inst(0, unstarted=3, unstarted_tokens=11_000, running=192, step_time=0.0)
    assert predicted_delay(LIN, full, 1000) == pytest.approx(0.81 + 0.41)


def test_can_meet_ttft():
    r = req(1, 1000, arrival=0.0)  # deadline 1.0 s
    assert can_meet_ttft(LIN, _inst(0), r, 1000, now=0.85)  # 0.85 + 0.11 = 0.96
    assert not can_meet_ttft(LIN, _inst(0), r, 1000, now=0.9)  # 1.01


def test_round_robin_cycles():
    rr = Dispatcher(Dispatch.ROUND_ROBIN, LIN)
    loads = [_inst(3), _inst(5)]
    assert [rr.pick(loads, 1).index for _ in range(4)] == [3, 5, 3, 5]


def test_least_delay_prefers_the_emptier_queue_and_the_lighter_batch():
    lpd = Dispatcher(Dispatch.LEAST_DELAY, latency_model())
    loads = [_inst(0, unstarted=4, unstarted_tokens=8000), _inst(1, unstarted=1,
                                                                  unstarted_tokens=100)]
    assert lpd.pick(loads, 500).index == 1
    busy = [_inst(0, running=120, decode_context=240_000), _inst(1, running=2,
                                                                  decode_context=400)]
    assert lpd.pick(busy, 500).index == 1


def test_least_tokens_counts_what_is_left_to_compute():
    lt = Dispatcher(Dispatch.LEAST_TOKENS, LIN)
    assert lt.pick([_inst(0, outstanding_tokens=900), _inst(1, outstanding_tokens=400)],
                   1).index == 1
    assert lt.pick([_inst(4, outstanding_tokens=0), _inst(2, outstanding_tokens=0)],
                   1).index == 2  # ties: the lowest index
