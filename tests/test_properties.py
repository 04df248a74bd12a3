"""Properties of every scheduler under random workloads (hypothesis)."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st
from policy_helpers import req

from ascendra.core.kv import KvCache
from ascendra.core.request import Status
from ascendra.core.systems import EngineSpec

ENGINES = [
    EngineSpec("ascendra-lp", 256, 8),
    EngineSpec("ascendra-hp", 256, 8),
    EngineSpec("prefill-first", 256, 8),
    EngineSpec("vllm", 64, 8),
    EngineSpec("vllm", 256, 8),
    EngineSpec("vllm-priority", 256, 8),
]

workloads = st.lists(
    st.tuples(st.integers(1, 200), st.integers(1, 40), st.floats(0, 5), st.floats(0, 0.5)),
    min_size=1, max_size=30,
)


@settings(max_examples=150, deadline=None)
@given(engine=st.sampled_from(ENGINES), work=workloads, kv_blocks=st.integers(16, 200))
def test_every_request_finishes_once_with_all_its_tokens(engine, work, kv_blocks):
    kv = KvCache(total_blocks=kv_blocks, block_size=16)
    sched = engine.build(kv)
    reqs = [req(i, p, arrival=a, max_tokens=o, pf=pf) for i, (p, o, a, pf) in enumerate(work)]
    # Only requests whose whole sequence fits in KV on its own can always finish.
    reqs = [r for r in reqs if kv.blocks_for(r.prompt_len + r.max_tokens) <= kv_blocks
            and r.prompt_len + r.max_tokens <= engine.token_budget]
    for r in reqs:
        sched.add(r)
    sampled: Counter[int] = Counter()
    finished: list[int] = []
    now = 0.0
    for _ in range(20_000):
        if not sched.has_work:
            break
        out = sched.schedule(now)
        ids = [r.id for r, _ in out.scheduled]
        assert len(ids) == len(set(ids)), "a request is in a batch twice"
        assert sum(n for _, n in out.scheduled) <= max(engine.token_budget, len(sched.running))
        if engine.scheduler != "ascendra-hp":  # the HP seat limit is soft by design
            assert len(sched.running) <= engine.max_seqs
        held = sum(r.kv_blocks for r in reqs)
        assert kv.free_blocks >= 0 and held + kv.free_blocks == kv.total_blocks
        assert out.scheduled or out.preempted, "a step with work made no progress"
        res = sched.update(out)
        sampled.update(r.id for r in res.sampled)
        finished.extend(r.id for r in res.finished)
        now += 0.01
    assert not sched.has_work
    assert sorted(finished) == sorted(r.id for r in reqs)
    assert all(sampled[r.id] == r.max_tokens for r in reqs)
    assert all(r.status is Status.FINISHED for r in reqs)
    assert kv.free_blocks == kv.total_blocks
