"""Workloads: what a run sends, as a list of :class:`RequestSpec`.

A synthetic workload draws lengths and arrivals for a target rate. A trace workload replays a CSV
of (timestamp, prompt tokens, output tokens); for a target rate its time axis is scaled so that the
replayed mean rate matches, which keeps the trace's burst shape.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Protocol

import numpy as np

from ascendra.errors import AscendraError
from ascendra.workloads.arrivals import arrival_times
from ascendra.workloads.lengths import LengthDistribution


@dataclass(frozen=True, slots=True)
class RequestSpec:
    id: int
    arrival: float  # seconds from the start of the run
    prompt_len: int
    output_len: int


@dataclass(frozen=True, slots=True)
class RateLoad:
    """One rate's arrivals: a lead-in, sent and not measured, that brings the system to the
    state sustained load holds it in, then the measured requests, one Poisson stream. Measured
    from an idle engine, 1,200 requests at 60 req/s end before the first of them finish (a
    ShareGPT-like request streams for about 25 s on the H200): such a run measures how a
    burst fills an empty engine, not what the engine sustains (docs/gpu.md, 2026-12-03c)."""

    specs: list[RequestSpec]
    lead: int  # the first ``lead`` specs are the lead-in

    @property
    def measured(self) -> list[RequestSpec]:
        return self.specs[self.lead:]


def rate_load(workload: Workload, rate: float, requests: int, seed: int,
              lead_seconds: float = 0.0) -> RateLoad:
    """``requests`` measured arrivals at ``rate``, after ``lead_seconds`` of lead-in."""
    lead = math.ceil(rate * lead_seconds) if lead_seconds > 0 else 0
    return RateLoad(workload.requests(rate, lead + requests, seed), lead)


class Workload(Protocol):
    name: str

    def requests(self, rate: float, n: int, seed: int) -> list[RequestSpec]: ...


@dataclass(frozen=True, slots=True)
class SyntheticWorkload:
    lengths: LengthDistribution
    process: str = "poisson"
    cv: float = 1.0

    @property
    def name(self) -> str:
        arr = "poisson" if self.process == "poisson" else f"gamma(cv={self.cv:g})"
        return f"{self.lengths.name}/{arr}"

    def requests(self, rate: float, n: int, seed: int) -> list[RequestSpec]:
        rng = np.random.default_rng(seed)
        times = arrival_times(rng, rate, n, process=self.process, cv=self.cv)
        lens = self.lengths.sample(rng, n)
        return [RequestSpec(i, float(t), p, o)
                for i, (t, (p, o)) in enumerate(zip(times, lens, strict=True))]


_TIME_COLS = ("timestamp", "TIMESTAMP", "arrival", "arrival_time")
_PROMPT_COLS = ("prompt_tokens", "ContextTokens", "prompt_len", "input_tokens")
_OUTPUT_COLS = ("output_tokens", "GeneratedTokens", "output_len", "max_tokens")


def _pick(fields: list[str], options: tuple[str, ...], what: str, path: Path) -> str:
    for name in options:
        if name in fields:
            return name
    raise AscendraError(f"trace {path}: no {what} column (expected one of {', '.join(options)})")


def _parse_time(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return datetime.fromisoformat(value.strip()).timestamp()


def load_trace(path: str | Path, *, max_total: int | None = None) -> list[RequestSpec]:
    """Read a trace CSV; arrivals are re-based to start at 0 and sorted.

    Rows whose prompt + output exceed ``max_total`` (the model's context) are dropped, as an
    engine would reject them.
    """
    p = Path(path)
    try:
        f = p.open(newline="", encoding="utf-8-sig")
    except (FileNotFoundError, IsADirectoryError):
        raise AscendraError(f"trace not found: {p}") from None
    rows: list[tuple[float, int, int]] = []
    with f:
        reader = csv.DictReader(f)
        fields = list(reader.fieldnames or [])
        tcol = _pick(fields, _TIME_COLS, "timestamp", p)
        pcol = _pick(fields, _PROMPT_COLS, "prompt-tokens", p)
        ocol = _pick(fields, _OUTPUT_COLS, "output-tokens", p)
        for lineno, rec in enumerate(reader, start=2):
            try:
                t = _parse_time(rec[tcol] or "")
                prompt, output = int(rec[pcol] or ""), int(rec[ocol] or "")
            except (TypeError, ValueError):
                raise AscendraError(
                    f"trace {p} line {lineno}: unreadable timestamp or token count") from None
            if prompt < 1 or output < 1:
                raise AscendraError(f"trace {p} line {lineno}: token counts must be ≥ 1")
            if max_total is None or prompt + output <= max_total:
                rows.append((t, prompt, output))
    if not rows:
        raise AscendraError(f"trace {p} has no usable requests")
    rows.sort(key=lambda r: r[0])
    t0 = rows[0][0]
    return [RequestSpec(i, t - t0, pr, out) for i, (t, pr, out) in enumerate(rows)]


def builtin_trace(name: str) -> Path:
    """Path of a trace shipped in ``ascendra/data/traces`` (e.g. ``azure-llm-2023/code``)."""
    f = resources.files("ascendra") / "data" / "traces" / f"{name}.csv"
    if not f.is_file():
        raise AscendraError(f"unknown built-in trace {name!r}")
    return Path(str(f))


@dataclass(frozen=True)
class TraceWorkload:
    path: Path
    max_total: int | None = 8192
    name: str = "trace"
    _cache: list[RequestSpec] = field(default_factory=list, repr=False, compare=False)

    def all_requests(self) -> list[RequestSpec]:
        if not self._cache:
            self._cache.extend(load_trace(self.path, max_total=self.max_total))
        return self._cache

    def native_rate(self, n: int | None = None) -> float:
        reqs = self.all_requests()[:n] if n else self.all_requests()
        span = reqs[-1].arrival - reqs[0].arrival
        return (len(reqs) - 1) / span if span > 0 else float("inf")

    def requests(self, rate: float, n: int, seed: int) -> list[RequestSpec]:
        """The first ``n`` requests, time-scaled to a mean rate of ``rate`` (the seed is unused:
        a replay is already deterministic)."""
        if not rate > 0:
            raise AscendraError(f"arrival rate must be positive, got {rate}")
        reqs = self.all_requests()[:n]
        if len(reqs) < 2 or reqs[-1].arrival <= 0:
            return list(reqs)
        scale = self.native_rate(n) / rate
        return [RequestSpec(r.id, r.arrival * scale, r.prompt_len, r.output_len) for r in reqs]


@dataclass(frozen=True)
class PhasedWorkload:
    """Workloads one after another, each for a share of the requests (a mix that shifts)."""

    phases: tuple[Workload, ...]
    name: str = "phased"

    def requests(self, rate: float, n: int, seed: int) -> list[RequestSpec]:
        out: list[RequestSpec] = []
        start = 0.0
        per = -(-n // len(self.phases))
        for k, phase in enumerate(self.phases):
            count = min(per, n - len(out))
            reqs = phase.requests(rate, count, seed + k)
            out += [RequestSpec(len(out) + i, start + r.arrival, r.prompt_len, r.output_len)
                    for i, r in enumerate(reqs)]
            start = out[-1].arrival if out else start
        return out
