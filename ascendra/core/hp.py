"""The Ascendra high-priority (HP) step and its ticket rule.

HP instances serve urgent work with low latency: prefill-first with whole prompts (vLLM v0 style),
offloaded requests ahead of ticket-admitted ones, both in deadline order, and requests that can no
longer make their deadline at the back so they do not drag down the ones that still can. A request
that has already streamed tokens (preempted, or moved here mid-stream) resumes before all of them:
its TTFT deadline has passed, so "past saving" would park it behind every new request while its
client waits mid-stream (the band :func:`ascendra.core.priority.engine_priority` gives it). The
seat limit is soft, as in the authors' code: it binds only when free KV runs below 5%.
"""

from __future__ import annotations

from dataclasses import dataclass

from ascendra.core.baselines import PrefillFirstScheduler
from ascendra.core.kv import KvCache
from ascendra.core.request import Request
from ascendra.core.values import ValueKey, least_slack


class HighPriorityScheduler(PrefillFirstScheduler):
    name = "ascendra-hp"
    soft_seat_limit = True

    def __init__(
        self,
        kv: KvCache,
        *,
        token_budget: int = 8192,
        max_seqs: int = 128,
        key: ValueKey = least_slack,
    ) -> None:
        super().__init__(kv, token_budget=token_budget, max_seqs=max_seqs, key=key)

    def waiting_order(self, now: float) -> list[Request]:
        return sorted(
            self.waiting,
            key=lambda r: (r.num_generated == 0, r.slack(now) <= 0, not r.offloaded,
                           r.priority, r.seq),
        )

    def running_order(self) -> list[Request]:
        return sorted(self.running, key=lambda r: (r.priority, r.seq))


@dataclass(frozen=True, slots=True)
class TicketRule:
    """When an HP instance may take a *new* request directly (the paper's ticket).

    Only when it has nothing queued or in transit, runs fewer than ``seat_fraction`` of its seats
    (the paper's ratio·max_seqs with ratio = 1 − running/max_seqs reduces to one half), and has more
    than ``min_free_kv`` of its KV free, so that direct admissions never crowd out offloads.

    Beyond the paper, ``max_step_fraction`` also asks that the HP's current step time be at most
    that fraction of the request's TBT target: seats say nothing about speed when an engine runs
    out of compute long before it runs out of seats, and an HP that is already slow is no place
    for more work. ``None`` keeps the paper's rule.
    """

    seat_fraction: float = 0.5
    min_free_kv: float = 0.10
    max_step_fraction: float | None = None

    def grants(self, *, waiting: int, pending: int, running: int, max_seqs: int,
               kv_free_fraction: float, step_time: float | None = None,
               tbt_slo: float | None = None) -> bool:
        fast_enough = (self.max_step_fraction is None or step_time is None or tbt_slo is None
                       or step_time <= self.max_step_fraction * tbt_slo)
        return (
            waiting == 0
            and pending == 0
            and running < self.seat_fraction * max_seqs
            and kv_free_fraction > self.min_free_kv
            and fast_enough
        )
