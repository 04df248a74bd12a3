"""Builders for policy tests: requests and running-state setup."""

from __future__ import annotations

from dataclasses import dataclass

from ascendra.core.latency import BatchShape
from ascendra.core.request import Request, Slo, Status
from ascendra.core.scheduler import Scheduler

SLO = Slo(ttft=1.0, tbt=0.15)


def req(rid: int, prompt: int, *, arrival: float = 0.0, max_tokens: int = 8, pf: float = 0.0,
        slo: Slo = SLO) -> Request:
    return Request(id=rid, arrival=arrival, prompt_len=prompt, max_tokens=max_tokens, slo=slo,
                   predicted_prefill=pf)


def decoding(sched: Scheduler, r: Request) -> Request:
    """Put ``r`` on ``sched`` as a running request that has finished its prefill."""
    sched.add(r)
    sched.waiting.remove(r)
    r.num_computed = r.prompt_len
    r.num_generated = 1
    r.ever_scheduled = True
    r.status = Status.RUNNING
    assert sched.kv.try_allocate(r, 0)
    sched.running.append(r)
    return r


@dataclass(frozen=True)
class LinearModel:
    """A latency model to compute by hand: a fixed cost per step plus a cost per prefill token
    and per decode."""

    fixed: float = 0.01
    per_prefill: float = 1e-4
    per_decode: float = 0.0

    def batch_time(self, shape: BatchShape) -> float:
        return self.fixed + self.per_prefill * shape.num_prefill_tokens + \
            self.per_decode * shape.num_decodes
