"""The shared skeleton of every instance scheduler: queues, KV growth with preemption, and the
update that follows an executed step.

A host (the simulator, or the runtime around a real engine) drives a scheduler like vLLM's v1
engine core: ``out = schedule(now)``, run the batch, ``update(out)``. Subclasses only decide which
requests go into a step and with how many tokens.
"""

from __future__ import annotations

import bisect
import itertools
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from ascendra.core.kv import KvCache
from ascendra.core.latency import BatchShape, BatchShapeBuilder
from ascendra.core.request import Request, Status
from ascendra.core.values import ValueKey, fcfs


@dataclass(slots=True)
class SchedulerOutput:
    """One step: requests with their token counts, the batch's shape, and what was preempted."""

    scheduled: list[tuple[Request, int]] = field(default_factory=list)
    shape: BatchShape = field(default_factory=BatchShape)
    preempted: list[Request] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


@dataclass(slots=True)
class StepResult:
    sampled: list[Request]  # each got exactly one new output token in this step
    finished: list[Request]


def _queue_key(req: Request) -> tuple[float, int]:
    return (req.priority, req.seq)


class Scheduler(ABC):
    """Waiting queue (sorted by the value key, lower first) and running list (admission order)."""

    name = "base"

    def __init__(
        self, kv: KvCache, *, token_budget: int, max_seqs: int, key: ValueKey = fcfs
    ) -> None:
        if token_budget <= 0 or max_seqs <= 0:
            raise ValueError("token budget and seat limit must be positive")
        self.kv = kv
        self.token_budget = token_budget
        self.max_seqs = max_seqs
        self.key = key
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        self._seq = itertools.count()

    # -- queue management ----------------------------------------------------------------
    def add(self, req: Request, priority: float | None = None) -> None:
        """Queue ``req`` by this scheduler's value key, or by ``priority`` where the request
        arrives with one (a vLLM engine ordering by the router's priority integers)."""
        req.status = Status.WAITING
        req.priority = self.key(req) if priority is None else priority
        req.seq = next(self._seq)
        bisect.insort(self.waiting, req, key=_queue_key)

    def remove(self, req: Request) -> None:
        """Take a request off this instance (offload, migration, abort), freeing its KV."""
        if req.status is Status.WAITING:
            self.waiting.remove(req)
        elif req.status is Status.RUNNING:
            self.running.remove(req)
        else:
            return
        self.kv.free(req)
        req.status = Status.REMOVED

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # -- one step --------------------------------------------------------------------------
    @abstractmethod
    def schedule(self, now: float) -> SchedulerOutput:
        """Choose the next batch. ``now`` feeds deadline-aware orderings only."""

    def update(self, out: SchedulerOutput) -> StepResult:
        """Apply an executed step: advance computed tokens, sample, retire finished requests."""
        sampled: list[Request] = []
        finished: list[Request] = []
        running = Status.RUNNING
        for req, n in out.scheduled:
            if req.status is not running:
                continue  # removed while the step ran; its output is dropped
            req.num_computed += n
            if req.num_computed == req.prompt_len + req.num_generated:
                req.num_generated += 1
                sampled.append(req)
                if req.num_generated >= req.max_tokens:
                    finished.append(req)
        for req in finished:
            self.running.remove(req)
            self.kv.free(req)
            req.status = Status.FINISHED
        return StepResult(sampled, finished)

    # -- helpers for subclasses ------------------------------------------------------------
    def _admit(self, req: Request) -> None:
        req.status = Status.RUNNING
        req.ever_scheduled = True
        self.running.append(req)

    def _preempt(self, req: Request) -> None:
        """Recompute preemption: drop the KV, requeue; the next prefill covers prompt + output."""
        self.running.remove(req)
        self.kv.free(req)
        req.num_computed = 0
        req.num_preemptions += 1
        req.status = Status.WAITING
        req.seq = next(self._seq)
        bisect.insort(self.waiting, req, key=_queue_key)

    @staticmethod
    def _add_to_batch(
        b: BatchShapeBuilder, scheduled: list[tuple[Request, int]], req: Request, n: int
    ) -> None:
        if req.is_decode:
            b.add_decode(req.num_tokens)
        else:
            b.add_prefill(n, req.num_computed)
        scheduled.append((req, n))

    def _schedule_running(
        self,
        order: list[Request],
        budget: int,
        b: BatchShapeBuilder,
        out: SchedulerOutput,
        *,
        decodes_only: bool,
    ) -> int:
        """Grow running requests in ``order`` within ``budget`` tokens; return the budget left.

        When the KV cache is full, the request at the end of ``order`` (lowest priority, not yet
        served this step) is preempted, as in vLLM and Sarathi-Serve; if that is the request
        itself, it waits for the next step.
        """
        i, end = 0, len(order)
        kv, size = self.kv, self.kv.block_size
        scheduled = out.scheduled
        while i < end and budget > 0:
            req = order[i]
            i += 1
            # Inlined Request.remaining / is_decode and KvCache.try_allocate: this loop runs
            # once per running request per step, the simulator's hottest path.
            total = req.prompt_len + req.num_generated
            remaining = total - req.num_computed
            decode = req.num_generated > 0 and remaining == 1
            if decodes_only and not decode:
                continue
            n = min(remaining, budget)
            need = -(-(req.num_computed + n) // size) - req.kv_blocks
            if need <= 0 or need <= kv.free_blocks:
                if need > 0:
                    kv.free_blocks -= need
                    req.kv_blocks += need
                if decode:
                    b.decodes += 1
                    b.ctx += total
                else:
                    b.add_prefill(n, req.num_computed)
                scheduled.append((req, n))
                budget -= n
                continue
            while not kv.try_allocate(req, n):
                end -= 1
                victim = order[end]
                self._preempt(victim)
                out.preempted.append(victim)
                if victim is req:
                    break
            else:
                self._add_to_batch(b, scheduled, req, n)
                budget -= n
        return budget
