"""The LP step against hand-computed cases."""

from __future__ import annotations

from policy_helpers import decoding, req

from ascendra.core.kv import KvCache
from ascendra.core.lp import LowPriorityScheduler
from ascendra.core.request import Status
from ascendra.core.values import fcfs, shortest_job


def test_decodes_first_then_whole_prefills_by_least_slack(big_kv):
    s = LowPriorityScheduler(big_kv)
    d1, d2 = decoding(s, req(1, 100)), decoding(s, req(2, 100))
    # Static least-slack keys: arrival + TTFT − predicted prefill → A: 0.5, B: 0.6, C: 0.9.
    a = req(3, 5000, pf=0.5)
    b = req(4, 4000, pf=0.4)
    c = req(5, 100, pf=0.1)
    for r in (c, b, a):
        s.add(r)
    out = s.schedule(now=0.0)
    # Budget 8192 − 2 running = 8190: A (5000) fits, B (4000) no longer does, C (100) does.
    assert [(r.id, n) for r, n in out.scheduled] == [(1, 1), (2, 1), (3, 5000), (5, 100)]
    assert out.shape.num_decodes == 2 and out.shape.decode_context == 2 * 101
    assert out.shape.num_prefill_tokens == 5100 and out.shape.num_prefill_seqs == 2
    assert s.waiting == [b] and set(s.running) == {d1, d2, a, c}


def test_late_requests_sort_first_like_the_papers_infinite_value(big_kv):
    s = LowPriorityScheduler(big_kv)
    on_time = req(1, 10, arrival=5.0, pf=0.1)
    late = req(2, 10, arrival=0.0, pf=0.1)
    s.add(on_time)
    s.add(late)
    assert s.waiting == [late, on_time]


def test_seat_limit_caps_admissions(big_kv):
    s = LowPriorityScheduler(big_kv, max_seqs=3)
    decoding(s, req(1, 10))
    decoding(s, req(2, 10))
    s.add(req(3, 10, pf=0.2))  # key 0.8: less slack, goes first
    s.add(req(4, 10, pf=0.1))
    out = s.schedule(0.0)
    assert [r.id for r, _ in out.scheduled] == [1, 2, 3]
    assert len(s.running) == 3 and [r.id for r in s.waiting] == [4]


def test_kv_exhaustion_preempts_lowest_value_and_admits_nothing():
    kv = KvCache(total_blocks=5, block_size=16)
    s = LowPriorityScheduler(kv)
    hi = decoding(s, req(1, 32, pf=0.5))  # key 0.5: higher value
    lo = decoding(s, req(2, 32, pf=0.1))  # key 0.9
    s.add(req(3, 4, pf=0.9))
    # Each holds 2 blocks (32 tokens); the next token needs a 3rd block; 1 block is free.
    out = s.schedule(0.0)
    assert [(r.id, n) for r, n in out.scheduled] == [(1, 1)]
    assert out.preempted == [lo]
    assert lo.status is Status.WAITING and lo.num_computed == 0 and lo.kv_blocks == 0
    assert hi.kv_blocks == 3 and kv.free_blocks == 2
    assert lo.remaining == 33  # prompt + its one output token, recomputed


def test_other_value_functions(big_kv):
    s = LowPriorityScheduler(big_kv, key=shortest_job)
    long, short = req(1, 900), req(2, 50)
    s.add(long)
    s.add(short)
    assert s.waiting == [short, long]
    f = LowPriorityScheduler(KvCache.from_tokens(10_000), key=fcfs)
    late, early = req(1, 5, arrival=2.0), req(2, 900, arrival=1.0)
    f.add(late)
    f.add(early)
    assert f.waiting == [early, late]


def test_update_samples_and_finishes(big_kv):
    s = LowPriorityScheduler(big_kv)
    r = req(1, 20, max_tokens=2, pf=0.1)
    s.add(r)
    res = s.update(s.schedule(0.0))
    assert res.sampled == [r] and r.num_generated == 1 and r.is_decode
    res = s.update(s.schedule(0.1))
    assert res.finished == [r] and r.status is Status.FINISHED
    assert big_kv.free_blocks == big_kv.total_blocks and not s.has_work
