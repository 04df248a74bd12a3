"""The Ascendra low-priority (LP) step: decodes first, then whole prefills chosen by value.

LP instances trade latency for throughput. Every running decode goes into the batch (decode-first,
so TBT is protected); the rest of the token budget is filled with the *whole* remaining prompts of
waiting requests in value order (least slack first by default), skipping ones that do not fit, as
the authors' ``NonPreemptiveSolver`` does. No request is chunked.
"""

from __future__ import annotations

from ascendra.core.kv import KvCache
from ascendra.core.latency import BatchShapeBuilder
from ascendra.core.scheduler import Scheduler, SchedulerOutput
from ascendra.core.values import ValueKey, least_slack


class LowPriorityScheduler(Scheduler):
    name = "ascendra-lp"

    def __init__(
        self,
        kv: KvCache,
        *,
        token_budget: int = 8192,
        max_seqs: int = 128,
        key: ValueKey = least_slack,
        scan_limit: int = 256,
    ) -> None:
        super().__init__(kv, token_budget=token_budget, max_seqs=max_seqs, key=key)
        # Bounds the knapsack scan per step; the queue is value-ordered, so the head matters most.
        self.scan_limit = scan_limit

    def schedule(self, now: float) -> SchedulerOutput:
        out = SchedulerOutput()
        b = BatchShapeBuilder()
        # Highest value first, so that preemption victims come from the low-value end.
        order = sorted(self.running, key=lambda r: (r.priority, r.seq))
        self._schedule_running(order, self.token_budget, b, out, decodes_only=True)
        seats = self.max_seqs - len(self.running)
        if not out.preempted and seats > 0:
            budget = self.token_budget - len(self.running)
            admitted = []
            for idx, req in enumerate(self.waiting[: self.scan_limit]):
                need = req.remaining
                if need > budget or not self.kv.try_allocate(req, need):
                    continue
                admitted.append(idx)
                self._add_to_batch(b, out.scheduled, req, need)
                budget -= need
                seats -= 1
                if seats == 0 or budget == 0:
                    break
            for idx in reversed(admitted):
                self._admit(self.waiting.pop(idx))
        out.shape = b.build()
        return out
