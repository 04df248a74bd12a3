"""Workload generators, trace replay and the shared SLO metrics."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from ascendra.core.request import Slo, TbtKind
from ascendra.errors import AscendraError
from ascendra.metrics import RequestOutcome, attainment, goodput, summarize
from ascendra.workloads.arrivals import arrival_times
from ascendra.workloads.lengths import LongBenchLike, ShareGptLike
from ascendra.workloads.spec import SyntheticWorkload, TraceWorkload, builtin_trace, load_trace

SLO = Slo(1.0, 0.15)


def test_sharegpt_like_lengths():
    lens = ShareGptLike().sample(np.random.default_rng(0), 20_000)
    p, o = np.array(lens).T
    assert (p + o < 2048).all() and p.min() >= 4 and o.min() >= 4
    assert 500 < p.mean() < 620 and 250 < o.mean() < 310


def test_longbench_like_lengths():
    lens = LongBenchLike().sample(np.random.default_rng(0), 5000)
    p, o = np.array(lens).T
    assert p.min() >= 1900 and p.max() <= 2048
    assert o.min() >= 100 and o.max() <= 1200 and 300 < np.median(o) < 460


def test_scaled_lengths_keep_their_shape():
    half = ShareGptLike().scaled(0.5)
    p, o = np.array(half.sample(np.random.default_rng(0), 20_000)).T
    assert (p + o < 1024).all() and 250 < p.mean() < 310 and 125 < o.mean() < 155
    lb = LongBenchLike().scaled(0.25)
    assert (lb.prompt_min, lb.prompt_max, lb.output_min, lb.output_max) == (475, 512, 25, 300)


def test_arrivals_poisson_and_gamma():
    rng = np.random.default_rng(1)
    t = arrival_times(rng, 20.0, 20_000)
    gaps = np.diff(t)
    assert gaps.mean() == pytest.approx(1 / 20, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.05)
    g = np.diff(arrival_times(rng, 20.0, 20_000, process="gamma", cv=3.0))
    assert g.mean() == pytest.approx(1 / 20, rel=0.1)
    assert g.std() / g.mean() == pytest.approx(3.0, rel=0.1)
    with pytest.raises(AscendraError, match="positive"):
        arrival_times(rng, -1.0, 10)
    with pytest.raises(AscendraError, match="unknown arrival"):
        arrival_times(rng, 1.0, 10, process="uniform")


def test_synthetic_workload_is_deterministic_per_seed():
    w = SyntheticWorkload(ShareGptLike())
    assert w.requests(10, 50, 7) == w.requests(10, 50, 7)
    assert w.requests(10, 50, 7) != w.requests(10, 50, 8)


def test_azure_traces_ship_and_replay():
    conv = load_trace(builtin_trace("azure-llm-2023/conv"))
    assert len(conv) == 19_366 and conv[0].arrival == 0.0
    assert all(a.arrival <= b.arrival for a, b in itertools.pairwise(conv))
    code = TraceWorkload(builtin_trace("azure-llm-2023/code"), max_total=8192)
    assert all(r.prompt_len + r.output_len <= 8192 for r in code.all_requests())
    scaled = code.requests(rate=10.0, n=1000, seed=0)
    assert (len(scaled) - 1) / scaled[-1].arrival == pytest.approx(10.0)


def test_malformed_traces_are_refused(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("timestamp,prompt_tokens,output_tokens\n0.0,10,5\n0.5,ten,5\n")
    with pytest.raises(AscendraError, match="line 3: unreadable"):
        load_trace(p)
    p.write_text("timestamp,prompt_tokens\n0.0,10\n")
    with pytest.raises(AscendraError, match="no output-tokens column"):
        load_trace(p)
    p.write_text("timestamp,prompt_tokens,output_tokens\n0.0,0,5\n")
    with pytest.raises(AscendraError, match="≥ 1"):
        load_trace(p)
    with pytest.raises(AscendraError, match="not found"):
        load_trace(tmp_path / "nope.csv")


def test_goodput_interpolates_the_first_crossing():
    assert goodput([(10, 1.0), (20, 0.95), (30, 0.85)]) == pytest.approx(25.0)
    assert goodput([(30, 0.85), (10, 1.0), (20, 0.95)]) == pytest.approx(25.0)
    assert goodput([(10, 1.0), (20, 0.99)]) == 20  # never misses: the highest rate tried
    assert goodput([(10, 0.5), (20, 0.2)]) == 0.0
    assert goodput([(10, 0.9), (20, 0.5)]) == pytest.approx(10.0)


def _o(**kw) -> RequestOutcome:
    base = dict(id=0, arrival=0.0, prompt_len=10, output_len=4, slo=SLO, ttft=0.5, tbt_mean=0.1,
                max_gap=0.2, tokens=4, finished=True)
    return RequestOutcome(**{**base, **kw})


def test_met_slo_and_attainment():
    ok, slow_first, slow_tbt = _o(), _o(ttft=1.2), _o(tbt_mean=0.2)
    unfinished, failed = _o(finished=False), _o(error="instance died")
    assert ok.met and not slow_first.met and not slow_tbt.met
    assert [o.miss_reason for o in (slow_first, slow_tbt, unfinished, failed)] == [
        "ttft", "tbt", "dropped", "error"]
    outs = [ok, slow_first, slow_tbt, unfinished, failed]
    assert attainment(outs) == pytest.approx(0.2)
    assert attainment([ok], sent=4) == pytest.approx(0.25)  # never answered = missed
    s = summarize(outs, gaps=[0.1, 0.2], sent=6)
    assert s.misses == {"ttft": 1, "tbt": 1, "dropped": 2, "error": 1}
    assert s.attainment == pytest.approx(1 / 6)


def test_the_tbt_target_bounds_the_gaps_its_kind_names():
    base = dict(id=0, arrival=0.0, prompt_len=10, output_len=5, ttft=0.1, tbt_mean=0.05,
                max_gap=0.3, gap_p99=0.2, tokens=5, finished=True)
    assert RequestOutcome(slo=Slo(1.0, 0.15), **base).met  # mean 0.05
    assert not RequestOutcome(slo=Slo(1.0, 0.15, TbtKind.MAX), **base).met  # max gap 0.3
    assert not RequestOutcome(slo=Slo(1.0, 0.15, TbtKind.P99), **base).met  # p99 gap 0.2
    assert RequestOutcome(slo=Slo(1.0, 0.25, TbtKind.P99), **base).met


def test_summaries_say_what_was_given_up_and_who_paid():
    slo = Slo(1.0, 0.15)
    short = [RequestOutcome(i, 0.0, 100, 50, slo, ttft=0.1, tbt_mean=0.02, tokens=50,
                            finished=True) for i in range(8)]
    late = RequestOutcome(8, 0.0, 900, 400, slo, ttft=30.0, tbt_mean=0.02, tokens=400,
                          finished=True, relegated=True)
    shed = RequestOutcome(9, 0.0, 1100, 200, slo, rejected="hopeless")
    s = summarize([*short, late, shed])
    assert (s.attainment, s.relegated, s.rejected) == (0.8, 1, 1)
    assert s.misses == {"ttft": 1, "rejected": 1}
    assert (s.prompt_mean, s.prompt_mean_missed) == (280.0, 1000.0)
    assert (s.output_mean, s.output_mean_missed) == (100.0, 300.0)


def test_a_bench_never_sends_the_same_prompt_twice():
    """vLLM's prefix cache would serve a repeated prompt's prefill: every rate and every run
    draws its own prompts, of the lengths the seed gives."""
    from ascendra.loadgen import BenchConfig, prompts_for

    work = SyntheticWorkload(ShareGptLike())
    cfg = BenchConfig(url="http://x", model="m", workload=work, rates=(4, 8), requests=20,
                      slo=Slo(1.0, 0.15))
    specs = work.requests(4, 20, cfg.seed)
    a, b = prompts_for(cfg, specs), prompts_for(cfg, specs)
    assert [len(p) for p in a] == [s.prompt_len for s in specs] == [len(p) for p in b]
    assert not {tuple(p) for p in a} & {tuple(p) for p in b}
    text = BenchConfig(url="http://x", model="m", workload=work, rates=(4,), requests=20,
                       slo=Slo(1.0, 0.15), prompt="text")
    c, d = prompts_for(text, specs), prompts_for(text, specs)
    assert len({p[:40] for p in c} | {p[:40] for p in d}) == 40  # no shared opening either
