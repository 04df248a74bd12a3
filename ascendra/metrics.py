"""The shared definitions: met SLO, attainment, goodput, latency summaries.

Every report (simulator, benchmark, GPU runs) goes through these functions, so "goodput" means one
thing everywhere: the highest request rate whose attainment (met / sent, where dropped, failed and
unfinished requests count as missed) is at least 90%, by linear interpolation of the
attainment-vs-rate curve at its first crossing of the target.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ascendra.core.request import Slo, TbtKind

GOODPUT_TARGET = 0.9


@dataclass(frozen=True, slots=True)
class RequestOutcome:
    id: int
    arrival: float
    prompt_len: int
    output_len: int  # tokens requested
    slo: Slo
    ttft: float | None = None  # None: no token ever came
    tbt_mean: float | None = None  # mean gap between consecutive output tokens
    max_gap: float | None = None
    tokens: int = 0  # output tokens received
    finished: bool = False
    offloaded: bool = False
    error: str | None = None
    gap_p99: float | None = None  # the 99th percentile of its gaps (when its SLO needs it)
    relegated: bool = False  # served after the requests that could still meet their SLO
    rejected: str | None = None  # why the service shed it (a RejectReason value)

    @property
    def met_ttft(self) -> bool:
        return self.ttft is not None and self.ttft <= self.slo.ttft

    @property
    def tbt(self) -> float | None:
        """The gap statistic its TBT target bounds (mean, p99 or max)."""
        kind = self.slo.tbt_kind
        if kind is TbtKind.MAX:
            return self.max_gap
        if kind is TbtKind.P99:
            return self.gap_p99
        return self.tbt_mean

    @property
    def met_tbt(self) -> bool:
        tbt = self.tbt
        return tbt is None or tbt <= self.slo.tbt

    @property
    def met(self) -> bool:
        """Met SLO: finished, TTFT within its target and TBT within its target."""
        return self.finished and self.error is None and self.met_ttft and self.met_tbt

    @property
    def miss_reason(self) -> str | None:
        if self.met:
            return None
        if self.rejected is not None:
            return "rejected"
        if self.error is not None:
            return "error"
        if not self.finished:
            return "dropped"
        return "ttft" if not self.met_ttft else "tbt"


def attainment(outcomes: Sequence[RequestOutcome], sent: int | None = None) -> float:
    total = len(outcomes) if sent is None else sent
    if total == 0:
        return 0.0
    return sum(o.met for o in outcomes) / total


def goodput(curve: Sequence[tuple[float, float]], target: float = GOODPUT_TARGET) -> float:
    """Rate at which attainment first falls below ``target``, linearly interpolated.

    0.0 if even the lowest rate misses the target; the highest rate if none does (the curve does
    not bracket the crossing then: see :func:`brackets`).
    """
    pts = sorted(curve)
    if not pts or pts[0][1] < target:
        return 0.0
    for (q0, a0), (q1, a1) in itertools.pairwise(pts):
        if a1 < target:
            return q0 + (a0 - target) / (a0 - a1) * (q1 - q0)
    return pts[-1][0]


def brackets(curve: Sequence[tuple[float, float]],
             target: float = GOODPUT_TARGET) -> tuple[bool, bool]:
    """(lowest rate meets target, some rate misses it): both true when goodput is interpolated."""
    pts = sorted(curve)
    return (bool(pts) and pts[0][1] >= target, any(a < target for _, a in pts))


def percentile(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


@dataclass(frozen=True, slots=True)
class LatencySummary:
    attainment: float
    ttft_p50: float | None
    ttft_p99: float | None
    tbt_mean_p50: float | None
    tbt_mean_p99: float | None
    max_gap_p99: float | None
    gap_p99: float | None
    finished: int
    sent: int
    offloaded: int
    misses: dict[str, int]
    relegated: int = 0
    rejected: int = 0
    # Who pays: prompt and output lengths (mean, 90th percentile) of all requests and of
    # those that missed.
    prompt_mean: float | None = None
    prompt_mean_missed: float | None = None
    output_mean: float | None = None
    output_mean_missed: float | None = None
    prompt_p90: float | None = None
    prompt_p90_missed: float | None = None
    output_p90: float | None = None
    output_p90_missed: float | None = None

    def as_dict(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in self.__slots__}


def summarize(outcomes: Sequence[RequestOutcome], gaps: Sequence[float] = (),
              sent: int | None = None) -> LatencySummary:
    ttft = [o.ttft for o in outcomes if o.ttft is not None]
    tbt = [o.tbt_mean for o in outcomes if o.tbt_mean is not None]
    mg = [o.max_gap for o in outcomes if o.max_gap is not None]
    misses: dict[str, int] = {}
    for o in outcomes:
        reason = o.miss_reason
        if reason:
            misses[reason] = misses.get(reason, 0) + 1
    n = len(outcomes) if sent is None else sent
    if n > len(outcomes):
        misses["dropped"] = misses.get("dropped", 0) + n - len(outcomes)
    missed = [o for o in outcomes if not o.met]

    def mean(values: list[int]) -> float | None:
        return round(float(np.mean(values)), 1) if values else None

    def p90(values: list[int]) -> float | None:
        return round(float(np.percentile(values, 90)), 1) if values else None

    return LatencySummary(
        attainment=attainment(outcomes, n),
        ttft_p50=percentile(ttft, 50), ttft_p99=percentile(ttft, 99),
        tbt_mean_p50=percentile(tbt, 50), tbt_mean_p99=percentile(tbt, 99),
        max_gap_p99=percentile(mg, 99), gap_p99=percentile(gaps, 99),
        finished=sum(o.finished for o in outcomes), sent=n,
        offloaded=sum(o.offloaded for o in outcomes), misses=misses,
        relegated=sum(o.relegated for o in outcomes),
        rejected=sum(o.rejected is not None for o in outcomes),
        prompt_mean=mean([o.prompt_len for o in outcomes]),
        prompt_mean_missed=mean([o.prompt_len for o in missed]),
        output_mean=mean([o.output_len for o in outcomes]),
        output_mean_missed=mean([o.output_len for o in missed]),
        prompt_p90=p90([o.prompt_len for o in outcomes]),
        prompt_p90_missed=p90([o.prompt_len for o in missed]),
        output_p90=p90([o.output_len for o in outcomes]),
        output_p90_missed=p90([o.output_len for o in missed]),
    )
