"""An engine's queue state and speed, read from vLLM's own ``/metrics``.

Counts (running, waiting, KV use) are gauges. Speeds come from counter deltas between two
scrapes: the mean inter-token latency over the window is the engine's current step time, and a
fit over windows of that step time against the prompt tokens each step computed gives what a
prompt token adds to a step and what a step without prompts takes (:class:`RateTracker`). Both
are what the engine measured, so they hold on any hardware without a profile.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from prometheus_client.parser import text_string_to_metric_families

_GAUGES = {
    "vllm:num_requests_running": "running",
    "vllm:num_requests_waiting": "waiting",
    "vllm:kv_cache_usage_perc": "kv_usage",
}
_COUNTERS = {  # histograms: their _sum and _count
    "vllm:inter_token_latency_seconds": "itl",
    "vllm:request_prefill_time_seconds": "prefill",
    "vllm:request_prefill_kv_computed_tokens": "prefill_tokens",
    "vllm:iteration_tokens_total": "step_tokens",  # one observation per engine step
}
_GENERATED = "vllm:generation_tokens"  # the counter vllm:generation_tokens_total


@dataclass(frozen=True, slots=True)
class MetricsSample:
    running: int = 0
    waiting: int = 0
    kv_usage: float = 0.0
    kv_capacity_tokens: int = 0
    itl_sum: float = 0.0
    itl_count: float = 0.0
    prefill_sum: float = 0.0
    prefill_count: float = 0.0
    prefill_tokens_sum: float = 0.0
    step_tokens_sum: float = 0.0  # prompt and generated tokens computed, over all steps
    step_tokens_count: float = 0.0  # steps
    generated_tokens: float = 0.0

    @property
    def progress(self) -> float:
        """Steps and generated tokens so far: while requests wait or run, it must move."""
        return self.step_tokens_count + self.generated_tokens


def parse_metrics(text: str) -> MetricsSample:
    """Sum each family over engines (a data-parallel server reports one series per engine)."""
    values: dict[str, float] = {}
    capacity = 0
    for fam in text_string_to_metric_families(text):
        if fam.name in _GAUGES:
            values[_GAUGES[fam.name]] = sum(s.value for s in fam.samples)
        elif fam.name in _COUNTERS:
            key = _COUNTERS[fam.name]
            for s in fam.samples:
                if s.name.endswith("_sum"):
                    values[key + "_sum"] = values.get(key + "_sum", 0.0) + s.value
                elif s.name.endswith("_count"):
                    values[key + "_count"] = values.get(key + "_count", 0.0) + s.value
        elif fam.name == _GENERATED:
            values["generated"] = sum(x.value for x in fam.samples
                                      if x.name.endswith("_total"))
        elif fam.name == "vllm:cache_config_info":
            for s in fam.samples:
                labels = s.labels
                if labels.get("kv_cache_size_tokens", "None").isdigit():
                    capacity += int(labels["kv_cache_size_tokens"])
                elif labels.get("num_gpu_blocks", "None").isdigit():
                    capacity += int(labels["num_gpu_blocks"]) * int(labels.get("block_size", 16))
    return MetricsSample(
        running=int(values.get("running", 0)),
        waiting=int(values.get("waiting", 0)),
        kv_usage=float(values.get("kv_usage", 0.0)),
        kv_capacity_tokens=capacity,
        itl_sum=values.get("itl_sum", 0.0),
        itl_count=values.get("itl_count", 0.0),
        prefill_sum=values.get("prefill_sum", 0.0),
        prefill_count=values.get("prefill_count", 0.0),
        prefill_tokens_sum=values.get("prefill_tokens_sum", 0.0),
        step_tokens_sum=values.get("step_tokens_sum", 0.0),
        step_tokens_count=values.get("step_tokens_count", 0.0),
        generated_tokens=values.get("generated", 0.0),
    )


class ProgressWatch:
    """Whether an engine makes progress: while it has work, its step counter (one per engine
    step, ``vllm:iteration_tokens_total``) or its generated tokens must move within ``timeout``
    seconds. An engine core that hangs while its API server still answers reports the same
    counts forever; without this it stayed healthy, and requests queued on it waited as long as
    it hung. Work is what the engine reports running or waiting, and whatever else the caller
    knows it was given: a core that hung while idle never reports the requests sent to it
    after (a router's unstarted requests there).

    Once found hung it stays so after its work is taken away, until it moves again or
    ``timeout`` more seconds pass with no work: a hung engine is not handed every new
    request only to hold each for ``timeout`` (a hung idle core may show nothing even once it
    recovers, so a later request is what tells). ``now`` is the caller's clock."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._progress: float | None = None
        self._busy = False
        self._since: float | None = None  # when it last moved, or last had nothing to do
        self._hung_at: float | None = None

    def observe(self, progress: float, busy: bool, now: float) -> None:
        moved = self._progress is None or progress != self._progress
        self._progress, self._busy = progress, busy
        if moved or self._since is None:
            self._since, self._hung_at = now, None
        elif not busy:
            if self._hung_at is None or now - self._hung_at > self.timeout:
                self._since, self._hung_at = now, None
        elif self._hung_at is None and now - self._since > self.timeout:
            self._hung_at = now

    def stalled(self, now: float) -> bool:
        return self._hung_at is not None or (
            self._busy and self._since is not None and now - self._since > self.timeout)


@dataclass(frozen=True, slots=True)
class EngineState:
    """What the runtime reports about its engine (the router's view of an instance)."""

    role: str
    ready: bool
    running: int = 0
    waiting: int = 0
    kv_usage: float = 0.0
    kv_capacity_tokens: int = 0
    max_seqs: int | None = None  # the engine's seat limit, when known
    token_budget: int | None = None  # the engine's per-step token budget, when known
    gpu: str = ""  # which GPU(s) it runs on; engines that share one report the same
    step_time: float | None = None  # recent mean gap between an engine's tokens, s
    # What one more prompt token adds to a step, s, and a step with no prompt tokens at the
    # current load (the latency model's batch time is decode_step_time + tokens × this).
    prefill_s_per_token: float | None = None
    decode_step_time: float | None = None
    stalled: bool = False  # requests on it and no step for a while: its core is hung
    # MetricsSample.progress as last scraped, so that a router can also judge progress against
    # the requests it sent (None from an agent that does not report it).
    progress: float | None = None
    sample_age: float = 0.0  # how old the engine's counts were when this was reported, s

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class RateTracker:
    """An engine's speed from successive samples: the step time (the mean gap between its
    tokens, smoothed) and the cost of prompt tokens within a step.

    The cost is a least-squares line, over recent windows, of the mean gap between tokens
    against the prompt tokens an engine step computed in that window (vLLM's per-step token
    histogram less its generated tokens): its slope is what one more prompt token adds to a
    step, its intercept a step without prompt tokens. Until the windows spread wide enough to
    fit, the rate is each request's prefill time beyond the step it rode in, over its tokens.
    That fallback charges every prompt of a step the step's whole excess, which the prompts a
    step prefills together share: on an H200 with ten or more a step it read 60-125 µs a token
    where the profile measures about 24, and the router relegated requests that then met
    their SLO (docs/gpu.md, 2026-12-02).
    """

    def __init__(self, alpha: float = 0.3, fit_alpha: float = 0.05, min_windows: int = 8,
                 min_spread_tokens: float = 64.0) -> None:
        self.alpha = alpha
        self.fit_alpha = fit_alpha
        self.min_windows = min_windows
        self.min_spread = min_spread_tokens
        self._last: MetricsSample | None = None
        self._windows = 0
        self._mx = self._my = self._mxx = self._mxy = 0.0  # weighted moments of the windows
        self.step_time: float | None = None
        self.prefill_s_per_token: float | None = None
        self.decode_step_time: float | None = None

    def _smooth(self, old: float | None, new: float) -> float:
        return new if old is None else old + self.alpha * (new - old)

    def observe(self, sample: MetricsSample) -> None:
        last, self._last = self._last, sample
        if last is None:
            return
        d_count = sample.itl_count - last.itl_count
        steps = sample.step_tokens_count - last.step_tokens_count
        if d_count > 0:
            gap = (sample.itl_sum - last.itl_sum) / d_count
            self.step_time = self._smooth(self.step_time, gap)
            if steps > 0:
                prompt = (sample.step_tokens_sum - last.step_tokens_sum
                          - (sample.generated_tokens - last.generated_tokens))
                self._add_window(max(prompt, 0.0) / steps, gap)
        if self._fit():
            return
        d_tokens = sample.prefill_tokens_sum - last.prefill_tokens_sum
        if d_tokens > 0:
            # Each prefill took at least the step it rode in; only the rest scales with its
            # tokens. Taken whole, one short prompt (a 1-token prefill of 30 ms reads as 30 ms a
            # token) inflated the rate 30-fold, and the router's offload guard, predicting every
            # HP too slow, stopped offloading until the HP happened to prefill again.
            fixed = (sample.prefill_count - last.prefill_count) * (self.step_time or 0.0)
            per_token = max(sample.prefill_sum - last.prefill_sum - fixed, 0.0) / d_tokens
            self.prefill_s_per_token = self._smooth(self.prefill_s_per_token, per_token)

    def _add_window(self, x: float, y: float) -> None:
        self._windows += 1
        a = max(self.fit_alpha, 1.0 / self._windows)  # a plain mean until the EWMA takes over
        self._mx += a * (x - self._mx)
        self._my += a * (y - self._my)
        self._mxx += a * (x * x - self._mxx)
        self._mxy += a * (x * y - self._mxy)

    def _fit(self) -> bool:
        """Set the rate and the prompt-free step from the line, if the windows allow one."""
        var = self._mxx - self._mx * self._mx
        if self._windows < self.min_windows or var < self.min_spread ** 2:
            return False
        slope = (self._mxy - self._mx * self._my) / var
        if slope <= 0:
            return False
        self.prefill_s_per_token = slope
        self.decode_step_time = max(self._my - slope * self._mx, 0.0)
        return True
