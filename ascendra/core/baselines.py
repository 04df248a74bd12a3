"""The baseline schedulers of DESIGN.md, run exactly as their systems define them.

* ``PrefillFirstScheduler``: vLLM v0 (the paper's "vLLM"). FCFS; any step that admits prefills is
  prefill-only with whole prompts within the token budget; otherwise every running request decodes.
* ``ChunkedPrefillScheduler``: vLLM v1's single token budget, running requests first in admission
  order (so decodes before the one partial prefill), then waiting requests FCFS, chunked to fit.
  Budget 512 is Sarathi-Serve's setting, 8192 vLLM v1's default on an H100. With
  ``priority_policy`` it is vLLM's ``--scheduling-policy priority``: the waiting queue in the
  order of the priorities requests arrive with, and the running request with the largest one
  preempted first when KV runs short.
"""

from __future__ import annotations

from ascendra.core.kv import KvCache
from ascendra.core.latency import BatchShapeBuilder
from ascendra.core.request import Request
from ascendra.core.scheduler import Scheduler, SchedulerOutput
from ascendra.core.values import ValueKey, fcfs


class PrefillFirstScheduler(Scheduler):
    name = "prefill-first"
    # Whether the seat limit binds always (vLLM v0) or only when KV runs short (Ascendra HP).
    soft_seat_limit = False
    soft_seat_kv_fraction = 0.05

    def waiting_order(self, now: float) -> list[Request]:
        return self.waiting

    def running_order(self) -> list[Request]:
        return list(self.running)

    def _seats_bind(self) -> bool:
        return not self.soft_seat_limit or self.kv.free_fraction < self.soft_seat_kv_fraction

    def schedule(self, now: float) -> SchedulerOutput:
        out = SchedulerOutput()
        b = BatchShapeBuilder()
        budget = self.token_budget
        admitted: list[Request] = []
        for req in self.waiting_order(now):
            if self._seats_bind() and len(self.running) + len(admitted) >= self.max_seqs:
                break
            need = req.remaining
            if need > budget or not self.kv.try_allocate(req, need):
                break  # head-of-line: whole prompts, in order
            admitted.append(req)
            self._add_to_batch(b, out.scheduled, req, need)
            budget -= need
        if admitted:
            for req in admitted:
                self.waiting.remove(req)
                self._admit(req)
        else:
            self._schedule_running(self.running_order(), len(self.running), b, out,
                                   decodes_only=True)
        out.shape = b.build()
        return out


class ChunkedPrefillScheduler(Scheduler):
    name = "chunked"

    def __init__(self, kv: KvCache, *, token_budget: int, max_seqs: int,
                 key: ValueKey = fcfs, priority_policy: bool = False) -> None:
        super().__init__(kv, token_budget=token_budget, max_seqs=max_seqs, key=key)
        self.priority_policy = priority_policy

    def schedule(self, now: float) -> SchedulerOutput:
        out = SchedulerOutput()
        b = BatchShapeBuilder()
        # vLLM grows running requests in admission order and, under the priority policy, picks
        # the largest priority as the KV victim; growing them in priority order instead gives
        # the same victims (a budget of 8192 rarely runs out on decodes alone).
        order = sorted(self.running, key=lambda r: (r.priority, r.seq)) \
            if self.priority_policy else list(self.running)
        budget = self._schedule_running(order, self.token_budget, b, out, decodes_only=False)
        if not out.preempted:
            while self.waiting and budget > 0 and len(self.running) < self.max_seqs:
                req = self.waiting[0]
                n = min(req.remaining, budget)
                if not self.kv.try_allocate(req, n):
                    break
                self.waiting.pop(0)
                self._add_to_batch(b, out.scheduled, req, n)
                self._admit(req)
                budget -= n
        out.shape = b.build()
        return out
