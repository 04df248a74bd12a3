"""vLLM priority integers and the TBT-driven migration rule, hand-computed."""

from __future__ import annotations

import pytest
from policy_helpers import req

from ascendra.core.migration import (
    StreamProgress,
    migration_helps,
    migration_target,
    observed_mean_tbt,
    projected_mean_tbt,
    tbt_at_risk,
)
from ascendra.core.priority import BAND, engine_priority, hp_priority, lp_priority
from ascendra.core.view import Role


def test_lp_priority_is_the_least_slack_key_in_ms():
    r = req(1, 100, arrival=1_700_000_000.0, pf=0.25)  # TTFT SLO 1.0 s
    assert lp_priority(r) == round((1_700_000_000.0 + 1.0 - 0.25) * 1000)
    earlier_deadline = req(2, 100, arrival=1_700_000_000.5, pf=0.9)
    assert lp_priority(earlier_deadline) < lp_priority(r)


def test_hp_priority_bands():
    now = 100.0
    ticket = req(1, 10, arrival=99.9, pf=0.1)
    offloaded = req(2, 10, arrival=99.95, pf=0.1)
    offloaded.offloaded = True
    late = req(3, 10, arrival=90.0, pf=0.1)
    late.offloaded = True
    assert hp_priority(offloaded, now) < hp_priority(ticket, now) < hp_priority(late, now)
    assert hp_priority(late, now) > BAND and hp_priority(offloaded, now) < 0


def test_a_moved_stream_resumes_ahead_of_every_unstarted_request():
    now = 100.0
    moved = req(1, 10, arrival=90.0, pf=0.1)  # its TTFT deadline passed long ago
    offloaded = req(2, 10, arrival=99.95, pf=0.1)
    offloaded.offloaded = True
    fresh = req(3, 10, arrival=99.99, pf=0.1)
    for role in (Role.HP, Role.LP):
        key = engine_priority(moved, role, now, started=True)
        assert key < engine_priority(offloaded, role, now, started=False)
        assert key < engine_priority(fresh, role, now, started=False)
    # Not started, it keeps its role's key: on the HP a request past saving goes last.
    assert engine_priority(moved, Role.HP, now, started=False) == hp_priority(moved, now) > BAND
    assert engine_priority(fresh, Role.LP, now, started=False) == lp_priority(fresh)


def test_projected_mean_tbt():
    p = StreamProgress(first_token_at=10.0, last_token_at=11.0, tokens=11, remaining=10)
    # 10 gaps so far over 1 s; 10 more at 0.05 s: (1.0 + 0.5) / 20 = 0.075.
    assert observed_mean_tbt(p) == pytest.approx(0.1)
    assert projected_mean_tbt(p, now=11.0, step_time=0.05) == pytest.approx(0.075)
    assert projected_mean_tbt(p, now=11.0, step_time=0.05, extra_delay=0.3) == pytest.approx(0.09)
    # Observed so far: 1 s / 10 gaps = 0.1 s.
    assert not tbt_at_risk(p, 11.0, 0.05, slo_tbt=0.08)  # projected 0.075: recovers in place
    assert tbt_at_risk(p, 11.0, 0.2, slo_tbt=0.08)  # projected (1 + 2) / 20 = 0.15
    assert not tbt_at_risk(p, 11.0, 0.2, slo_tbt=0.12)  # not over the target yet
    early = StreamProgress(first_token_at=10.0, last_token_at=10.5, tokens=3, remaining=10)
    assert not tbt_at_risk(early, 10.5, 0.5, slo_tbt=0.1)  # too few tokens to judge


def test_migration_helps_only_when_it_meets_the_target_and_beats_staying():
    p = StreamProgress(first_token_at=10.0, last_token_at=11.0, tokens=11, remaining=10)
    # Staying: (1 + 2.0)/20 = 0.15. Moving: (1 + 0.1 + 0.5)/20 = 0.08.
    assert migration_helps(p, 11.0, source_step=0.2, target_step=0.05, target_prefill=0.1,
                           slo_tbt=0.1)
    # A slow re-prefill makes the move miss the target: (1 + 1.5 + 0.5)/20 = 0.15.
    assert not migration_helps(p, 11.0, source_step=0.2, target_step=0.05, target_prefill=1.5,
                               slo_tbt=0.1)
    # Barely better than staying is not worth a move.
    assert not migration_helps(p, 11.0, source_step=0.05, target_step=0.048,
                               target_prefill=0.0, slo_tbt=1.0)


def test_migration_target_is_the_fastest_target_when_moving_helps():
    p = StreamProgress(first_token_at=10.0, last_token_at=11.0, tokens=11, remaining=10)
    calls = []

    def prefill() -> float:
        calls.append(1)
        return 0.1

    targets = [("slow", 0.09), ("fast", 0.05)]
    # At risk at a 0.2 s step (0.1 observed, 0.15 projected, over 0.095); moving to "fast":
    # (1 + 0.1 + 0.5)/20 = 0.08 (to "slow" it would be (1 + 0.1 + 0.9)/20 = 0.1, over).
    assert migration_target(p, 11.0, source_step=0.2, targets=targets, slo_tbt=0.095,
                            prefill_time=prefill) == "fast"
    # Not at risk: no target, and the re-prefill is never estimated.
    calls.clear()
    assert migration_target(p, 11.0, source_step=0.05, targets=targets, slo_tbt=0.12,
                            prefill_time=prefill) is None
    assert not calls
    assert migration_target(p, 11.0, source_step=0.2, targets=[], slo_tbt=0.095,
                            prefill_time=prefill) is None
    # At risk, but a slow re-prefill makes no move help.
    assert migration_target(p, 11.0, source_step=0.2, targets=targets, slo_tbt=0.095,
                            prefill_time=lambda: 1.5) is None
