"""Named simulator experiments (``ascendra sim --preset NAME``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from importlib import resources

from ascendra.core.request import Slo, TbtKind
from ascendra.errors import AscendraError
from ascendra.workloads.lengths import LongBenchLike, ShareGptLike
from ascendra.workloads.spec import SyntheticWorkload, TraceWorkload, Workload, builtin_trace


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    workload: Workload
    slo: Slo
    systems: tuple[str, ...]
    qps: tuple[float, ...]
    instances: int = 3
    hp_instances: int | None = None  # None: each system's own split (the baselines have none)
    requests: int = 2000  # per rate, at least
    # Arrivals span at least this long, so that a high rate is a sustained load and not a burst
    # the engines can absorb in memory (2,000 requests last only ~10 s at 200 QPS).
    duration_s: float | None = 60.0
    model: str = "llama-3.1-8b"
    gpu: str = "h100"
    # A measured profile CSV the latency model is fitted to (None: the anchor-calibrated
    # constants). The H100 presets use the one measured on vLLM 0.26.0 (docs/latency-model.md).
    profile: str | None = field(default_factory=lambda: str(H100_PROFILE))
    kv_tokens: int = 451_840
    max_seqs: int | None = None  # None: each system's own seat limit
    margin: float = 0.7  # the paper's Δ for Llama-3.1-8B
    policy: tuple[tuple[str, object], ...] = ()  # policy overrides (camelCase) for every system
    # A learned predictor file (ascendra predictor train): the offload rule bounds with it
    # instead of the margin.
    predictor: str | None = None
    # Record every queued request's observations with offloads off, so that each outcome is
    # what staying cost (the predictor's training data and its oracle).
    observe: bool = False
    jitter_cv: float = 0.03
    seed: int = 1

    def request_count(self, rate: float) -> int:
        if self.duration_s is None:
            return self.requests
        return max(self.requests, math.ceil(rate * self.duration_s))

    def with_overrides(self, **kw: object) -> Preset:
        """A copy with the given fields replaced; ``None`` leaves a field as it is, except for
        ``duration_s``, where ``None`` means a fixed request count."""
        keep = {k: v for k, v in kw.items() if v is not None or k == "duration_s"}
        return replace(self, **keep)  # type: ignore[arg-type]


H100_PROFILE = resources.files("ascendra") / "data" / "profiles" / "llama31-8b-h100-vllm026.csv"
# Measured 2026-12-02 on one H200 at the shipped settings (bench/gpu/h200.py, docs/gpu.md).
H200_PROFILE = resources.files("ascendra") / "data" / "profiles" / "llama31-8b-h200-vllm026.csv"
H200_KV_TOKENS = 919_824  # one engine owning an H200 at 0.9 memory (vLLM's log)

# Ascendra as deployed, the paper's design, and every baseline a user would pick.
_SYSTEMS = ("ascendra", "ascendra-paper", "vllm", "vllm-lb", "vllm-shed", "sarathi", "vllm-v0")
# One instance: no dispatch to choose, no partition.
_ONE_GPU = ("ascendra", "vllm", "vllm-shed", "sarathi")

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "paper-sharegpt",
            "Llama-3.1-8B on 3×H100; ShareGPT-like, Poisson; TTFT 1.0 s / mean TBT 0.15 s",
            SyntheticWorkload(ShareGptLike()),
            Slo(1.0, 0.15),
            _SYSTEMS,
            qps=(45, 55, 65, 75, 85, 95),
        ),
        Preset(
            "paper-longbench",
            "Llama-3.1-8B on 3×H100; LongBench-like, Poisson; TTFT 2.5 s / mean TBT 0.15 s",
            SyntheticWorkload(LongBenchLike()),
            Slo(2.5, 0.15),
            _SYSTEMS,
            qps=(12, 16, 20, 24, 28, 32),
        ),
        Preset(
            "one-h100-sharegpt",
            "Llama-3.1-8B on one H100; ShareGPT-like, Poisson; TTFT 1.0 s / mean TBT 0.15 s",
            SyntheticWorkload(ShareGptLike()),
            Slo(1.0, 0.15),
            _ONE_GPU,
            qps=(25, 30, 35, 40, 45),
            instances=1,
        ),
        Preset(
            "one-h100-longbench-gaps",
            "Llama-3.1-8B on one H100; LongBench-like, Poisson; TTFT 2.5 s / every gap between "
            "tokens ≤ 150 ms (what users feel as stutter)",
            SyntheticWorkload(LongBenchLike()),
            Slo(2.5, 0.15, TbtKind.MAX),
            _ONE_GPU,
            qps=(3, 5, 7, 9, 11),
            instances=1,
        ),
        Preset(
            "one-h200-sharegpt",
            "Llama-3.1-8B on one H200 (its measured profile); ShareGPT-like, Poisson; TTFT "
            "1.0 s / mean TBT 0.15 s; the rates of the GPU runs (docs/gpu.md)",
            SyntheticWorkload(ShareGptLike()),
            Slo(1.0, 0.15),
            _ONE_GPU,
            qps=(36, 44, 52, 60, 68),
            instances=1,
            gpu="h200",
            profile=str(H200_PROFILE),
            kv_tokens=H200_KV_TOKENS,
        ),
        Preset(
            "one-h200-longbench-gaps",
            "Llama-3.1-8B on one H200 (its measured profile); LongBench-like, Poisson; TTFT "
            "2.5 s / every gap between tokens ≤ 150 ms",
            SyntheticWorkload(LongBenchLike()),
            Slo(2.5, 0.15, TbtKind.MAX),
            _ONE_GPU,
            qps=(6, 9, 12, 15),
            instances=1,
            gpu="h200",
            profile=str(H200_PROFILE),
            kv_tokens=H200_KV_TOKENS,
        ),
        Preset(
            "anchor-h100",
            "One H100 instance, the measured anchor's load (400 requests a rate): "
            "vLLM defaults vs budget 512",
            SyntheticWorkload(ShareGptLike()),
            Slo(1.0, 0.15),
            ("vllm", "sarathi"),
            qps=(16, 20, 24, 28, 32),
            instances=1,
            hp_instances=0,
            requests=400,
            duration_s=None,
            max_seqs=128,  # as measured (--max-num-seqs 128)
            profile=None,  # what the calibrated constants were fitted to reproduce
        ),
        Preset(
            "azure-conv",
            "Azure LLM 2023 conversation trace replayed (time-scaled) on 3×H100; "
            "TTFT 0.5 s / TBT 0.1 s (the authors' trace SLOs)",
            TraceWorkload(builtin_trace("azure-llm-2023/conv"), name="azure-conv"),
            Slo(0.5, 0.1),
            _SYSTEMS,
            qps=(10, 15, 20, 25, 30),
        ),
        Preset(
            "azure-code",
            "Azure LLM 2023 code trace replayed (time-scaled, very bursty) on 3×H100; "
            "TTFT 1.5 s / TBT 0.3 s (the authors' trace SLOs)",
            TraceWorkload(builtin_trace("azure-llm-2023/code"), name="azure-code"),
            Slo(1.5, 0.3),
            _SYSTEMS,
            qps=(4, 6, 8, 10, 12),
        ),
    )
}


def preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise AscendraError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})") from None
