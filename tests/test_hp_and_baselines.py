"""HP step, ticket rule and the baseline schedulers against hand-computed cases."""

from __future__ import annotations

from policy_helpers import decoding, req

from ascendra.core.baselines import ChunkedPrefillScheduler, PrefillFirstScheduler
from ascendra.core.hp import HighPriorityScheduler, TicketRule
from ascendra.core.kv import KvCache


def test_hp_order_offloaded_first_then_deadline_late_last(big_kv):
    s = HighPriorityScheduler(big_kv)
    ticket_early = req(1, 10, arrival=0.2, pf=0.1)  # deadline key 1.1
    offl_late_key = req(2, 10, arrival=0.5, pf=0.1)  # key 1.4, offloaded
    offl_late_key.offloaded = True
    offl_early_key = req(3, 10, arrival=0.3, pf=0.1)  # key 1.2, offloaded
    offl_early_key.offloaded = True
    hopeless = req(4, 10, arrival=-5.0, pf=0.1)  # slack < 0 at now = 0
    hopeless.offloaded = True
    for r in (ticket_early, offl_late_key, offl_early_key, hopeless):
        s.add(r)
    assert [r.id for r in s.waiting_order(now=0.0)] == [3, 2, 1, 4]
    resumed = req(5, 10, arrival=-9.0, pf=0.1)  # preempted or moved here mid-stream
    resumed.num_generated = 12
    s.add(resumed)
    assert [r.id for r in s.waiting_order(now=0.0)] == [5, 3, 2, 1, 4]


def test_hp_step_is_prefill_only_when_it_admits(big_kv):
    s = HighPriorityScheduler(big_kv)
    decoding(s, req(1, 10))
    s.add(req(2, 300, pf=0.05))
    out = s.schedule(0.0)
    assert [(r.id, n) for r, n in out.scheduled] == [(2, 300)]
    s.update(out)
    out = s.schedule(0.1)  # nothing waiting: every running request decodes
    assert sorted(r.id for r, _ in out.scheduled) == [1, 2]
    assert out.shape.num_decodes == 2


def test_hp_seat_limit_is_soft_until_kv_runs_low():
    roomy = HighPriorityScheduler(KvCache.from_tokens(100_000), max_seqs=2)
    for i in range(3):
        decoding(roomy, req(i, 16))
    roomy.add(req(9, 16))
    assert [r.id for r, _ in roomy.schedule(0.0).scheduled] == [9]
    tight = HighPriorityScheduler(KvCache(total_blocks=100, block_size=16), max_seqs=2)
    for i in range(3):
        decoding(tight, req(i, 16 * 32))  # 96 of 100 blocks used: 4% free
    tight.add(req(9, 16))
    out = tight.schedule(0.0)
    assert 9 not in [r.id for r, _ in out.scheduled] and out.shape.num_decodes == 3


def test_ticket_rule():
    rule = TicketRule()
    ok = dict(waiting=0, pending=0, running=63, max_seqs=128, kv_free_fraction=0.5)
    assert rule.grants(**ok)
    assert not rule.grants(**{**ok, "waiting": 1})
    assert not rule.grants(**{**ok, "pending": 1})
    assert not rule.grants(**{**ok, "running": 64})
    assert not rule.grants(**{**ok, "kv_free_fraction": 0.10})
    # The paper's rule ignores speed; with a step-time cap, a slow HP takes no tickets.
    assert rule.grants(**ok, step_time=0.2, tbt_slo=0.15)
    capped = TicketRule(max_step_fraction=0.5)
    assert capped.grants(**ok, step_time=0.07, tbt_slo=0.15)
    assert not capped.grants(**ok, step_time=0.08, tbt_slo=0.15)
    assert capped.grants(**ok)  # no measurement yet: seats and queue decide


def test_vllm_v0_fcfs_head_of_line_whole_prompts_prefill_only(big_kv):
    s = PrefillFirstScheduler(big_kv, token_budget=8192, max_seqs=128)
    decoding(s, req(1, 10))
    for r in (req(2, 5000, arrival=1), req(3, 4000, arrival=2), req(4, 100, arrival=3)):
        s.add(r)
    out = s.schedule(0.0)
    # A fits; B does not and blocks C behind it; the step holds no decode.
    assert [(r.id, n) for r, n in out.scheduled] == [(2, 5000)]
    assert out.shape.num_decodes == 0


def test_sarathi_chunks_within_512_after_decodes(big_kv):
    s = ChunkedPrefillScheduler(big_kv, token_budget=512, max_seqs=128)
    decoding(s, req(1, 10))
    decoding(s, req(2, 10))
    s.add(req(3, 1000, arrival=1))
    s.add(req(4, 50, arrival=2))
    out = s.schedule(0.0)
    assert [(r.id, n) for r, n in out.scheduled] == [(1, 1), (2, 1), (3, 510)]
    s.update(out)
    out = s.schedule(0.1)
    # Decodes, then the partial prefill's remaining 490, then 20 tokens of the next request.
    assert [(r.id, n) for r, n in out.scheduled] == [(1, 1), (2, 1), (3, 490), (4, 20)]
    assert out.shape.num_prefill_tokens == 510
    assert out.shape.prefill_attn_pairs == 490 * 510 + 490 * 491 / 2 + 20 * 21 / 2


def test_chunked_preempts_last_admitted_when_kv_is_full():
    kv = KvCache(total_blocks=4, block_size=16)
    s = ChunkedPrefillScheduler(kv, token_budget=512, max_seqs=128)
    first = decoding(s, req(1, 32, arrival=0))
    last = decoding(s, req(2, 16, arrival=1))
    # first needs a 3rd block, last a 2nd; one block is free → last is preempted.
    out = s.schedule(0.0)
    assert out.preempted == [last] and [r.id for r, _ in out.scheduled] == [1]
    assert first.kv_blocks == 3 and kv.free_blocks == 1
