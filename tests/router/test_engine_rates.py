"""Engine speed from vLLM's /metrics counters: step time and prefill rate between scrapes."""

from __future__ import annotations

import pytest

from ascendra.runtime.engine_state import RateTracker, parse_metrics


def _scrape(itl_sum: float, itl_count: int, prefill_sum: float, prefills: int,
            prefill_tokens: int) -> str:
    """The families the tracker reads, as vLLM's /metrics writes them (two engines of a
    data-parallel server, which parse_metrics sums)."""
    histograms = {"inter_token_latency_seconds": (itl_sum, itl_count),
                  "request_prefill_time_seconds": (prefill_sum, prefills),
                  "request_prefill_kv_computed_tokens": (prefill_tokens, prefills)}
    lines = []
    for name, (total, count) in histograms.items():
        lines.append(f"# TYPE vllm:{name} histogram")
        for engine in ("0", "1"):
            labels = f'{{engine="{engine}",model_name="m"}}'
            lines += [f"vllm:{name}_sum{labels} {total / 2}",
                      f"vllm:{name}_count{labels} {count / 2}"]
    lines.append("# TYPE vllm:num_requests_running gauge")
    lines += [f'vllm:num_requests_running{{engine="{e}",model_name="m"}} 1' for e in "01"]
    return "\n".join(lines) + "\n"


def test_parse_sums_the_engines():
    s = parse_metrics(_scrape(1.0, 100, 0.5, 4, 400))
    assert (s.running, s.itl_sum, s.itl_count) == (2, 1.0, 100)
    assert (s.prefill_sum, s.prefill_count, s.prefill_tokens_sum) == (0.5, 4, 400)


def test_step_time_is_the_mean_gap_between_tokens_in_the_window():
    rates = RateTracker()
    rates.observe(parse_metrics(_scrape(1.0, 100, 0, 0, 0)))
    assert rates.step_time is None  # one scrape is no window
    rates.observe(parse_metrics(_scrape(3.0, 200, 0, 0, 0)))
    assert rates.step_time == pytest.approx(0.02)


def test_prefill_rate_leaves_out_the_step_each_prefill_rides_in():
    # Steps of 30 ms; one prefill of 2 tokens took 31 ms, then four of 500 tokens took 230 ms
    # each: 0.5 ms and 0.4 ms a token beyond the step, not the 15.5 ms a token the short
    # prompt reads as when its whole time is put on its tokens.
    rates = RateTracker(alpha=1.0)
    rates.observe(parse_metrics(_scrape(0.0, 0, 0.0, 0, 0)))
    rates.observe(parse_metrics(_scrape(0.3, 10, 0.031, 1, 2)))
    assert rates.prefill_s_per_token == pytest.approx(0.0005)
    rates.observe(parse_metrics(_scrape(0.6, 20, 0.031 + 4 * 0.23, 5, 2002)))
    assert rates.prefill_s_per_token == pytest.approx(0.0004)


def test_a_prefill_faster_than_the_step_reads_as_free_tokens_not_negative_ones():
    rates = RateTracker(alpha=1.0)
    rates.observe(parse_metrics(_scrape(0.0, 0, 0.0, 0, 0)))
    rates.observe(parse_metrics(_scrape(0.3, 10, 0.02, 1, 3)))
    assert rates.prefill_s_per_token == 0.0


def _step_scrape(itl_sum: float, itl_count: float, step_tokens: float, steps: float,
                 generated: float) -> str:
    """The per-step families: vLLM's step-token histogram and its generated-token counter."""
    return _scrape(itl_sum, itl_count, 0.0, 0, 0) + "\n".join([
        "# TYPE vllm:iteration_tokens_total histogram",
        f'vllm:iteration_tokens_total_sum{{engine="0",model_name="m"}} {step_tokens}',
        f'vllm:iteration_tokens_total_count{{engine="0",model_name="m"}} {steps}',
        "# TYPE vllm:generation_tokens_total counter",
        f'vllm:generation_tokens_total{{engine="0",model_name="m"}} {generated}']) + "\n"


def test_parse_reads_step_tokens_and_generated_tokens():
    s = parse_metrics(_step_scrape(1.0, 10, 5000, 20, 400))
    assert (s.step_tokens_sum, s.step_tokens_count, s.generated_tokens) == (5000, 20, 400)


def _engine_windows(prompt_per_step: list[float], base: float, per_token: float,
                    decodes: int = 200, steps: int = 10) -> list[str]:
    """Scrapes of an engine whose every step takes base + per_token × its prompt tokens,
    ``decodes`` streams each getting a token a step, ``steps`` steps a window."""
    itl_sum = itl_count = step_tokens = nsteps = generated = 0.0
    out = [_step_scrape(0, 0, 0, 0, 0)]
    for p in prompt_per_step:
        d = base + per_token * p
        itl_sum += steps * decodes * d
        itl_count += steps * decodes
        step_tokens += steps * (p + decodes)
        generated += steps * decodes
        nsteps += steps
        out.append(_step_scrape(itl_sum, itl_count, step_tokens, nsteps, generated))
    return out


def test_the_prefill_rate_is_the_slope_of_step_time_against_prompt_tokens_a_step():
    # An H200-like engine: 30 ms without prompts, 24 µs a prompt token. Each window is one
    # load; ten prompts of 600 tokens a step is a 6,000-token step, which charging each
    # prompt the step's whole excess would read as ten times 24 µs.
    rates = RateTracker()
    loads = [0, 2000, 6000, 4000, 500, 8000, 3000, 1000, 7000, 5000] * 3
    for text in _engine_windows(loads, 0.030, 24e-6):
        rates.observe(parse_metrics(text))
    assert rates.prefill_s_per_token == pytest.approx(24e-6, rel=1e-6)
    assert rates.decode_step_time == pytest.approx(0.030, rel=1e-6)


def test_no_fit_until_the_windows_spread():
    # Every window the same load: no line to fit, the per-request fallback stands (here: no
    # prefill observations, so no rate at all) and no prompt-free step is claimed.
    rates = RateTracker()
    for text in _engine_windows([3000] * 20, 0.030, 24e-6):
        rates.observe(parse_metrics(text))
    assert rates.decode_step_time is None and rates.prefill_s_per_token is None
    assert rates.step_time == pytest.approx(0.030 + 3000 * 24e-6)


def test_the_router_model_starts_a_batch_from_the_prompt_free_step_when_an_engine_has_one():
    from ascendra.core.latency import BatchShape
    from ascendra.router.control import EngineRateModel
    from ascendra.router.instances import Instance, InstanceSpec
    from ascendra.runtime.engine_state import EngineState

    fitted, unfitted = Instance(0, InstanceSpec("http://a")), Instance(1, InstanceSpec("http://b"))
    fitted.state = EngineState(role="lp", ready=True, step_time=0.09,
                               prefill_s_per_token=24e-6, decode_step_time=0.03)
    unfitted.state = EngineState(role="lp", ready=True, step_time=0.05)
    model = EngineRateModel()
    model.observe([fitted, unfitted])
    assert model.step_time == pytest.approx((0.03 + 0.05) / 2)  # the mean step where no fit
    assert model.batch_time(BatchShape.prefill(1000)) == pytest.approx(0.04 + 1000 * 24e-6)


def test_a_window_without_tokens_between_still_counts_its_prefills():
    # A lone request's prefill lands in a window where no stream produced a second token:
    # no step time to fit against, but the fallback rate still takes the prefill.
    rates = RateTracker(alpha=1.0)
    rates.observe(parse_metrics(_scrape(0.0, 0, 0.0, 0, 0)))
    rates.observe(parse_metrics(_scrape(0.0, 0, 0.05, 1, 100)))
    assert rates.step_time is None
    assert rates.prefill_s_per_token == pytest.approx(0.0005)


def test_an_engine_with_work_and_no_steps_is_stalled_and_an_idle_one_is_not():
    from ascendra.runtime.engine_state import MetricsSample, ProgressWatch

    w = ProgressWatch(timeout=5.0)
    busy = MetricsSample(running=3, step_tokens_count=100, generated_tokens=900)
    w.observe(busy.progress, True, 0.0)
    w.observe(busy.progress, True, 4.0)
    assert not w.stalled(4.0)
    w.observe(busy.progress, True, 6.0)
    assert w.stalled(6.0)  # requests running, not one step in 6 s
    w.observe(MetricsSample(running=3, step_tokens_count=101, generated_tokens=903).progress,
              True, 7.0)
    assert not w.stalled(7.0)  # it moved again
    for t in (8.0, 20.0, 60.0):
        w.observe(busy.progress + 4, False, t)
        assert not w.stalled(t)  # nothing to do is no hang


def test_a_core_that_hung_while_idle_is_stalled_once_work_sent_to_it_waits():
    """Its counts stay those of an idle engine (a hung core publishes nothing new): only the
    caller knows it sent work, which waits unstarted while nothing moves."""
    from ascendra.runtime.engine_state import ProgressWatch

    w = ProgressWatch(timeout=5.0)
    w.observe(500.0, False, 0.0)
    w.observe(500.0, False, 10.0)  # idle for long: no hang
    w.observe(500.0, True, 10.5)  # a request sent there waits unstarted
    w.observe(500.0, True, 15.0)
    assert not w.stalled(15.0)
    w.observe(500.0, True, 15.6)
    assert w.stalled(15.6)  # counted from the last time it had nothing to do
    w.observe(500.0, False, 16.0)  # its request moved elsewhere: no work, still hung
    assert w.stalled(16.0)
    w.observe(500.0, False, 20.0)
    assert w.stalled(20.0)
    w.observe(500.0, False, 20.7)  # a timeout with no work since it was found hung
    assert not w.stalled(20.7)  # tried again: the next request tells
    w.observe(500.0, True, 21.0)
    w.observe(500.0, True, 26.1)
    assert w.stalled(26.1)
    w.observe(501.0, True, 26.5)  # it moved: not hung, at once
    assert not w.stalled(26.5)
