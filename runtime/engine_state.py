"""An engine's queue state and speed, read from vLLM's own ``/metrics``.

Counts (running, waiting, KV use) are gauges. Speeds come from counter deltas between two
scrapes: the mean inter-token latency over the window is the engine's current step time, and
prefill seconds per prompt token, beyond the one step each prefill rides in, its current prefill
rate. Both are what the engine measured, so they hold on any hardware without a profile.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from prometheus_client.parser import text_string_to_metric_families

_GAUGES = {
    "vllm:num_requests_running": "running",
    "vllm:num_requests_waiting": "waiting",
    "vllm:kv_cache_usage_perc": "kv_usage",
}
_COUNTERS = {
    "vllm:inter_token_latency_seconds": "itl",
    "vllm:request_prefill_time_seconds": "prefill",
    "vllm:request_prefill_kv_computed_tokens": "prefill_tokens",
}


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
    )


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
    prefill_s_per_token: float | None = None  # recent prefill time per prompt token, s,
    # beyond one step (the latency model's batch time is step_time + tokens × this)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class RateTracker:
    """Exponentially smoothed step time and prefill rate from successive samples."""

    def __init__(self, alpha: float = 0.3) -> None:
        self.alpha = alpha
        self._last: MetricsSample | None = None
        self.step_time: float | None = None
        self.prefill_s_per_token: float | None = None

    def _smooth(self, old: float | None, new: float) -> float:
        return new if old is None else old + self.alpha * (new - old)

    def observe(self, sample: MetricsSample) -> None:
        last, self._last = self._last, sample
        if last is None:
            return
        d_count = sample.itl_count - last.itl_count
        if d_count > 0:
            self.step_time = self._smooth(self.step_time,
                                          (sample.itl_sum - last.itl_sum) / d_count)
        d_tokens = sample.prefill_tokens_sum - last.prefill_tokens_sum
        if d_tokens > 0:
            # Each prefill took at least the step it rode in; only the rest scales with its
            # tokens. Taken whole, one short prompt (a 1-token prefill of 30 ms reads as 30 ms a
            # token) inflated the rate 30-fold, and the router's offload guard, predicting every
            # HP too slow, stopped offloading until the HP happened to prefill again.
            fixed = (sample.prefill_count - last.prefill_count) * (self.step_time or 0.0)
            per_token = max(sample.prefill_sum - last.prefill_sum - fixed, 0.0) / d_tokens
            self.prefill_s_per_token = self._smooth(self.prefill_s_per_token, per_token)
