"""The cluster controller: every scheduling decision of a serving pool, in one pure step.

The router and the simulator run the same loop around it: ``enqueue`` each arriving request,
call :meth:`ClusterController.step` with a :class:`~ascendra.core.view.ClusterView`, and
execute the :class:`Decisions` it returns (the router with HTTP, the simulator with events).
Neither decides anything itself, so the simulated system is the deployed one by construction.

One step:

1. Admission. Each new request joins the queue, unless the queue is full (429, or a relegated
   request is evicted with a 503 to make room) or it is sheddable (criticality < 0, or the
   policy rejects on overload) and predicted to miss its TTFT even after the queue ahead of it
   drains (429 at once, with Retry-After).
2. Release (flow control). While some instance has room — fewer unstarted prompt tokens than the
   window (about one step of work) or no queue in the engine itself, a free seat, its KV
   reserve, and, for a gap TBT target, a next step predicted short enough — the head of the
   queue goes to the instance the dispatcher picks. The queue is ordered by criticality, then by
   the policy's order (shortest, least slack or arrival), and is re-decided at every release: a
   head that can no longer meet its TTFT even released now to the fastest instance is relegated
   behind every request that still can (or, if sheddable, rejected). Relegated requests go only
   when no other waits. With promotion on, a request that is running out of slack but can still
   make it goes first, while the whole queue is predicted to drain within that slack (a passing
   backlog). With ``hold_queue`` off (stock vLLM behind a load balancer) every request is
   released at once and the engines' queues hold the backlog.
3. On the host's periodic pass (streams given): requests waiting too long are answered 503,
   requests that could not make it even on an idle engine are relegated wherever they wait,
   LP requests at risk move to an HP (offload), streams whose mean TBT is at risk move by token
   replay (migration), and the split is proposed.

A partitioned pool (some HP instances) follows the paper: an HP takes a new request only
through a ticket, or when the request is urgent (it would miss on the LPs by the offload
margin), and LP requests at risk are offloaded to HPs.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from ascendra.core.dispatch import Dispatcher, can_meet_ttft, predicted_delay
from ascendra.core.hp import TicketRule
from ascendra.core.latency import BatchShape
from ascendra.core.migration import StreamProgress, migration_target
from ascendra.core.offload import DeadlinePredictor, QueueSnapshot, at_risk, queue_snapshot
from ascendra.core.policy import Order, Overload, Policy
from ascendra.core.priority import BAND, engine_priority
from ascendra.core.request import Request, TbtKind
from ascendra.core.split import SplitDecision, decide_split
from ascendra.core.view import ClusterView, InFlight, InstanceView, Role


class RejectReason(enum.Enum):
    HOPELESS = "hopeless"  # sheddable and predicted to miss its TTFT on every instance
    QUEUE_FULL = "queue_full"  # the router's queue is at its limit
    EVICTED = "evicted"  # relegated, pushed out of a full queue by a request that can still make it
    TIMEOUT = "timeout"  # waited at the router longer than the policy allows

    @property
    def status(self) -> int:
        """HTTP status: 429 for what the client can retry later, 503 for an accepted request
        the service gave up on."""
        return 429 if self in (RejectReason.HOPELESS, RejectReason.QUEUE_FULL) else 503


class MoveReason(enum.Enum):
    OFFLOAD = "offload"
    TBT = "tbt"
    RECOVERY = "recovery"
    DRAIN = "drain"


@dataclass(frozen=True, slots=True)
class Release:
    request: Request
    instance: int
    engine_priority: int | None
    predicted_ttft: float  # s from arrival, as predicted at release
    relegated: bool = False


@dataclass(frozen=True, slots=True)
class Reject:
    request: Request
    reason: RejectReason
    retry_after: float  # s until the queue is predicted to have drained

    @property
    def message(self) -> str:
        return {
            RejectReason.HOPELESS: "the service is overloaded: this request would miss its "
                                   "time-to-first-token target, so it was shed (it is "
                                   "sheddable)",
            RejectReason.QUEUE_FULL: "the service is overloaded: its request queue is full",
            RejectReason.EVICTED: "the service is overloaded: this request, already past its "
                                  "time-to-first-token target, was dropped from the queue for "
                                  "one that can still meet its target",
            RejectReason.TIMEOUT: "the service is overloaded: this request waited in the "
                                  "queue longer than the service allows",
        }[self.reason]


@dataclass(frozen=True, slots=True)
class Move:
    request: Request
    source: int
    target: int
    reason: MoveReason
    engine_priority: int | None


@dataclass(slots=True)
class Decisions:
    releases: list[Release] = field(default_factory=list)
    relegated: list[Request] = field(default_factory=list)  # newly relegated, still queued
    rejects: list[Reject] = field(default_factory=list)
    moves: list[Move] = field(default_factory=list)
    split: SplitDecision | None = None


@dataclass(slots=True, eq=False)
class _Queued:
    request: Request
    criticality: int
    seq: int
    relegated: bool = False
    gone: bool = False

    @property
    def sheddable(self) -> bool:
        return self.criticality < 0


class ClusterController:
    """Holds the router's queue (as vLLM's scheduler holds its waiting queue) and decides.

    ``engine_priorities``: the engines order their queues by the vLLM priority integers each
    release and move carries (``--scheduling-policy priority``); otherwise none is sent.
    """

    def __init__(self, policy: Policy, predictor: DeadlinePredictor, *,
                 engine_priorities: bool = False) -> None:
        self.policy = policy
        self.predictor = predictor
        self.engine_priorities = engine_priorities
        self.tickets = TicketRule(max_step_fraction=policy.ticket_step_fraction or None)
        self._dispatcher = Dispatcher(policy.dispatch, predictor)
        self._queue: list[tuple[tuple[float, ...], int, _Queued]] = []  # heap, by order key
        self._relegated: list[tuple[tuple[float, ...], int, _Queued]] = []  # heap, FCFS
        self._by_deadline: list[tuple[tuple[float, ...], int, _Queued]] = []  # for promotion
        self._arrived: list[_Queued] = []
        self._entries: dict[int, _Queued] = {}
        self._seq = itertools.count()
        self._hp_next = 0
        self._retry: float | None = None

    def set_predictor(self, predictor: DeadlinePredictor) -> None:
        """Decide with another predictor from now on (a learned one, a refit)."""
        self.predictor = predictor
        self._dispatcher.model = predictor

    # -- the queue -------------------------------------------------------------------------
    def enqueue(self, request: Request, criticality: int = 0) -> None:
        """A request arrived; the next step admits it (or rejects it)."""
        q = _Queued(request, criticality, next(self._seq))
        self._entries[request.id] = q
        self._arrived.append(q)

    def withdraw(self, request_id: int) -> bool:
        """The client left while its request was queued: it will never be released."""
        q = self._entries.pop(request_id, None)
        if q is None:
            return False
        q.gone = True
        return True

    def __len__(self) -> int:
        return len(self._entries)

    def queued_requests(self) -> list[Request]:
        """Every request the queue holds (relegated ones too)."""
        return [q.request for q in self._entries.values()]

    @property
    def waiting(self) -> bool:
        """Whether a request that is not relegated waits in the queue."""
        return self._live_head() or any(not q.gone for q in self._arrived)

    @property
    def relegated_count(self) -> int:
        return sum(1 for _, _, q in self._relegated if not q.gone)

    def has_room(self, inst: InstanceView) -> bool:
        """Whether ``inst`` would take a request now (a mean-TBT one): what a host shows of the
        flow control, so that a run can tell which instance it held back, and why."""
        return _Rooms([inst], self.policy, self.predictor)._has_room(inst, None)

    def needs_streams(self, instances: Iterable[InstanceView]) -> bool:
        """Whether a periodic pass over ``instances`` needs the streams (for moves); a host
        may skip building them otherwise. Offload moves only onto HP instances, so a pool
        without one needs them only for migration (building them walked every open stream
        twenty times a second: the router's largest cost at a thousand streams)."""
        return self.policy.migration or (
            self.policy.offload and any(i.role is Role.HP for i in instances))

    def _order_key(self, q: _Queued) -> tuple[float, ...]:
        r = q.request
        o = self.policy.order
        if o is Order.FCFS:
            urgency = r.arrival
        elif o is Order.SHORTEST:
            urgency = r.prompt_len + r.max_tokens
        else:
            urgency = r.slack(0.0)
        return (-q.criticality, urgency)

    def _push(self, q: _Queued) -> None:
        heapq.heappush(self._queue, (self._order_key(q), q.seq, q))
        if self.policy.promotion_slack > 0 and self.policy.order is not Order.DEADLINE:
            heapq.heappush(self._by_deadline, ((-q.criticality, q.request.deadline), q.seq, q))

    def _relegate(self, q: _Queued) -> None:
        q.relegated = True
        heapq.heappush(self._relegated, ((-q.criticality, q.request.arrival), q.seq, q))

    def _done(self, q: _Queued) -> None:
        self._entries.pop(q.request.id, None)

    def _sheddable(self, q: _Queued) -> bool:
        return q.sheddable or self.policy.overload is Overload.REJECT

    # -- one step --------------------------------------------------------------------------
    def step(self, view: ClusterView) -> Decisions:
        d = Decisions()
        self._retry = None
        rooms = _Rooms(view.instances, self.policy, self.predictor)
        self._admit(view, d)
        if self.policy.hold_queue:
            self._release(view, rooms, d)
        else:
            self._release_all(view, rooms, d)
        if view.streams is not None:
            self._expire(view, d)
            self._relegate_late(view, d)
            if self.policy.offload:
                self._offload(view, rooms, d)
            if self.policy.migration:
                self._migrate(view, d)
        if view.split is not None:
            s = view.split
            d.split = decide_split(s.signals, s.hp, s.hp_min, s.hp_max, view.now,
                                   s.last_move_at, s.policy, s.plan)
        return d

    def _admit(self, view: ClusterView, d: Decisions) -> None:
        arrived, self._arrived = self._arrived, []
        held = len(self._entries) - sum(not q.gone for q in arrived)  # admitted before
        for q in arrived:
            if q.gone:
                continue
            if self.policy.hold_queue and held >= self.policy.queue_limit:
                victim = self._eviction_victim()
                if victim is None:
                    self._done(q)
                    d.rejects.append(Reject(q.request, RejectReason.QUEUE_FULL,
                                            self._retry_after_now(view)))
                    continue
                victim.gone = True
                self._done(victim)
                held -= 1
                d.rejects.append(Reject(victim.request, RejectReason.EVICTED,
                                        self._retry_after_now(view)))
            if self.policy.hold_queue and self._sheddable(q):
                ahead = self._tokens_ahead(q)
                wait = self._drain_time(view, ahead)
                if self._hopeless(view.now, view.instances, q.request, wait):
                    self._done(q)
                    d.rejects.append(Reject(q.request, RejectReason.HOPELESS,
                                            self._retry_after(view, ahead)))
                    continue
            self._push(q)
            held += 1

    def _eviction_victim(self) -> _Queued | None:
        """The relegated request that has waited longest (it has missed its TTFT anyway)."""
        live = [q for _, _, q in self._relegated if not q.gone]
        return min(live, key=lambda q: (q.criticality, q.request.arrival)) if live else None

    def _queued_tokens(self) -> int:
        return sum(q.request.prompt_len for q in self._entries.values() if not q.relegated)

    def _tokens_ahead(self, q: _Queued) -> int:
        key = (self._order_key(q), q.seq)
        return sum(e.request.prompt_len for k, s, e in self._queue
                   if not (e.gone or e.relegated) and (k, s) < key)

    def _drain_time(self, view: ClusterView, tokens: int) -> float:
        """Predicted time for the instances to take ``tokens`` of queued prompts: each prefills
        at most one step's budget (and no more than its window) per step, beside its decodes."""
        if tokens <= 0:
            return 0.0
        rate = 0.0
        for i in view.instances:
            if i.role is Role.HP:
                continue
            w = int(min(self.policy.release_steps, 1.0) * i.token_budget)
            rate += w / self.predictor.batch_time(BatchShape(
                num_prefill_tokens=w, num_prefill_seqs=1, prefill_attn_pairs=w * (w + 1) / 2,
                num_decodes=i.running, decode_context=i.decode_context))
        return tokens / rate if rate > 0 else math.inf

    def _retry_after(self, view: ClusterView, tokens: int) -> float:
        return max(1.0, math.ceil(min(self._drain_time(view, tokens), 3600.0)))

    def _retry_after_now(self, view: ClusterView) -> float:
        """Retry-After for a request shed now: until the queue is predicted to have drained
        (computed once a step: a step may shed many)."""
        if self._retry is None:
            self._retry = self._retry_after(view, self._queued_tokens())
        return self._retry

    def _release_slack(self, now: float, instances: Iterable[InstanceView], req: Request,
                       wait: float = 0.0) -> float:
        """Time ``req`` has to spare if sent after ``wait`` to the fastest instance, less the
        relegation margin (inf with no instance to judge by)."""
        best = min((predicted_delay(self.predictor, i, req.prompt_len) for i in instances),
                   default=math.inf)
        if best == math.inf:
            return math.inf
        return req.deadline - now - wait - best - self.policy.relegation_margin

    def _hopeless(self, now: float, instances: Iterable[InstanceView], req: Request,
                  wait: float = 0.0) -> bool:
        """Predicted to miss its TTFT even sent after ``wait`` to the fastest instance."""
        return self._release_slack(now, instances, req, wait) < 0

    def _priority(self, req: Request, inst: InstanceView, now: float, *, started: bool = False,
                  relegated: bool = False) -> int | None:
        if not self.engine_priorities:
            return None
        p = engine_priority(req, inst.role, now, started=started)
        return p + BAND if relegated else p

    def _candidates(self, view: ClusterView, rooms: _Rooms, req: Request) -> list[InstanceView]:
        """Instances with room that may take ``req`` now: LPs (or every instance of an
        unpartitioned pool), an HP through a ticket, or an HP when ``req`` is urgent."""
        open_ = rooms.open(req)
        lps = [i for i in open_ if i.role is not Role.HP]
        hps = [i for i in open_ if i.role is Role.HP]
        if not hps:
            return lps
        for k in range(len(hps)):
            hp = hps[(self._hp_next + k) % len(hps)]
            if self.tickets.grants(waiting=hp.unstarted, pending=0, running=hp.running,
                                   max_seqs=hp.max_seqs, kv_free_fraction=hp.kv_free_fraction,
                                   step_time=hp.step_time, tbt_slo=req.slo.tbt):
                self._hp_next += k + 1
                return [hp]
        lp_all = [i for i in rooms.all() if i.role is not Role.HP]
        urgent = not lp_all or (
            view.now - req.arrival + self.policy.offload_margin
            + min(predicted_delay(self.predictor, i, req.prompt_len) for i in lp_all)
            > req.slo.ttft)
        return lps + hps if urgent else lps

    def _send(self, view: ClusterView, rooms: _Rooms, q: _Queued,
              candidates: Sequence[InstanceView], d: Decisions) -> None:
        r = q.request
        inst = self._dispatcher.pick(candidates, r.prompt_len)
        d.releases.append(Release(
            r, inst.index, self._priority(r, inst, view.now, relegated=q.relegated),
            view.now - r.arrival + predicted_delay(self.predictor, inst, r.prompt_len),
            q.relegated))
        rooms.take(inst.index, q.request.prompt_len)
        q.gone = True  # skipped wherever it still sits in a heap
        self._done(q)

    def _promoted(self, view: ClusterView, rooms: _Rooms) -> tuple[_Queued, float] | None:
        """The most urgent queued request and its slack, if that is within the promotion
        slack and it can still make its TTFT."""
        heap = self._by_deadline
        while heap and (heap[0][2].gone or heap[0][2].relegated):
            heapq.heappop(heap)
        if not heap:
            return None
        q = heap[0][2]
        slack = self._release_slack(view.now, rooms.all(), q.request)
        return (q, slack) if 0 <= slack <= self.policy.promotion_slack else None

    def _release(self, view: ClusterView, rooms: _Rooms, d: Decisions) -> None:
        backlog: int | None = None  # the live queue's prompt tokens, counted when first needed
        while self._queue and rooms.any():
            _, _, q = self._queue[0]
            if q.gone or q.relegated:
                heapq.heappop(self._queue)
                continue
            promoted = self._promoted(view, rooms) if self._by_deadline else None
            if promoted is not None and promoted[0] is not q:
                urgent, slack = promoted
                passing = True
                if self.policy.promotion_guard:  # a passing backlog only (Policy says why)
                    if backlog is None:
                        backlog = self._queued_tokens()
                    passing = self._drain_time(view, backlog) <= slack
                candidates = self._candidates(view, rooms, urgent.request) if passing else []
                if candidates:  # sent out of order; its entry in the queue is skipped later
                    self._send(view, rooms, urgent, candidates, d)
                    if backlog is not None:
                        backlog -= urgent.request.prompt_len
                    continue
            candidates = self._candidates(view, rooms, q.request)
            if not candidates:
                break  # no room this request may take: it waits for one
            heapq.heappop(self._queue)
            if backlog is not None:
                backlog -= q.request.prompt_len
            if self._hopeless(view.now, rooms.all(), q.request):
                if self._sheddable(q):
                    self._done(q)
                    d.rejects.append(Reject(q.request, RejectReason.HOPELESS,
                                            self._retry_after_now(view)))
                else:
                    self._relegate(q)
                    d.relegated.append(q.request)
                continue
            self._send(view, rooms, q, candidates, d)
        while not self._live_head() and self._relegated and rooms.any():
            _, _, q = heapq.heappop(self._relegated)
            if q.gone:
                continue
            open_ = rooms.open(q.request)
            if not open_:
                heapq.heappush(self._relegated, ((-q.criticality, q.request.arrival), q.seq, q))
                break
            candidates = [i for i in open_ if i.role is not Role.HP] or open_
            self._send(view, rooms, q, candidates, d)

    def _live_head(self) -> bool:
        while self._queue and (self._queue[0][2].gone or self._queue[0][2].relegated):
            heapq.heappop(self._queue)
        return bool(self._queue)

    def _release_all(self, view: ClusterView, rooms: _Rooms, d: Decisions) -> None:
        """No router queue: each request goes out at once, to a ticketed HP or an LP."""
        rooms.open_all()
        while self._live_head():
            _, _, q = heapq.heappop(self._queue)
            candidates = self._candidates(view, rooms, q.request)
            if len(candidates) != 1 or candidates[0].role is not Role.HP:
                # Without a ticket the LPs take it; an urgent one is offloaded later.
                candidates = [i for i in rooms.all() if i.role is not Role.HP] or rooms.all()
            if not candidates:
                self._push(q)
                return
            self._send(view, rooms, q, candidates, d)

    # -- the periodic pass -----------------------------------------------------------------
    def _expire(self, view: ClusterView, d: Decisions) -> None:
        limit = self.policy.queue_timeout
        for heap in (self._queue, self._relegated):
            for _, _, q in heap:
                if not q.gone and view.now - q.request.arrival > limit:
                    q.gone = True
                    self._done(q)
                    d.rejects.append(Reject(q.request, RejectReason.TIMEOUT,
                                            self._retry_after_now(view)))

    def _relegate_late(self, view: ClusterView, d: Decisions) -> None:
        """Relegate (or shed) queued requests that would miss their TTFT even prefilled alone
        on an idle instance now. The release loop finds hopeless requests only at the head;
        an order that is not by deadline leaves them deeper, where they would hold queue
        places that requests which can still make it need."""
        margin = self.policy.relegation_margin
        live = sum(1 for _, _, q in self._queue if not (q.gone or q.relegated))
        if len(self._queue) > 2 * live + 64:  # drop what lazy deletion left behind
            self._queue = [e for e in self._queue if not (e[2].gone or e[2].relegated)]
            heapq.heapify(self._queue)
            self._relegated = [e for e in self._relegated if not e[2].gone]
            heapq.heapify(self._relegated)
            self._by_deadline = [e for e in self._by_deadline
                                 if not (e[2].gone or e[2].relegated)]
            heapq.heapify(self._by_deadline)
        for _, _, q in self._queue:
            r = q.request
            if q.gone or q.relegated or \
                    view.now - r.arrival + r.predicted_prefill + margin <= r.slo.ttft:
                continue
            if self._sheddable(q):
                q.gone = True
                self._done(q)
                d.rejects.append(Reject(r, RejectReason.HOPELESS,
                                        self._retry_after_now(view)))
            else:
                self._relegate(q)
                d.relegated.append(r)

    def engine_queue(self, view: ClusterView, inst: InstanceView
                     ) -> list[tuple[InFlight, QueueSnapshot]]:
        """Snapshots of ``inst``'s unstarted requests in the order the engine serves them: the
        deadline predictor's features (for offload, and for hosts that record observations)."""
        assert view.streams is not None
        mine = [f for f in view.streams if f.instance == inst.index]
        running = [f.tokens for f in mine if f.started]
        waiting = sorted((f for f in mine if not f.started), key=lambda f: f.engine_order)
        step = inst.step_time if inst.step_time is not None else \
            self.predictor.batch_time(BatchShape(num_decodes=max(1, inst.running),
                                                 decode_context=inst.decode_context))
        kv_used = 1.0 - inst.kv_free_fraction
        out: list[tuple[InFlight, QueueSnapshot]] = []
        ahead: list[int] = []
        for f in waiting:
            out.append((f, queue_snapshot(f.request, view.now, ahead, running, kv_used, step,
                                          self.predictor)))
            ahead.append(f.tokens)
        return out

    def _move_targets(self, view: ClusterView, source: InstanceView) -> list[InstanceView]:
        return [i for i in view.instances if i.index != source.index
                and (self.policy.moves_within_gpu or not i.shares_gpu(source))]

    def _offload(self, view: ClusterView, rooms: _Rooms, d: Decisions) -> None:
        """LP requests at risk move to an HP. (An unpartitioned pool has no faster class of
        instance: each request was placed at release where its first token was predicted
        soonest, and moving it later would throw away whatever prefill it had.)"""
        for inst in view.instances:
            if inst.role is Role.HP:
                continue
            targets = [i for i in self._move_targets(view, inst) if i.role is Role.HP]
            if not targets:
                continue
            queued = [(f, s) for f, s in self.engine_queue(view, inst)
                      if self._may_move(f)]
            if not queued:
                continue
            bounds = self.predictor.ttft_bounds([s for _, s in queued])
            for (f, _), bound in zip(queued, bounds, strict=True):
                if not at_risk(f.request, view.now, bound):
                    continue
                target = self._offload_target(view, rooms, targets, f)
                if target is None:
                    continue
                rooms.take(target.index, f.tokens)
                d.moves.append(Move(f.request, inst.index, target.index, MoveReason.OFFLOAD,
                                    self._priority(f.request, target, view.now)))

    def _offload_target(self, view: ClusterView, rooms: _Rooms, targets: list[InstanceView],
                        f: InFlight) -> InstanceView | None:
        """Round-robin over the HPs, as the paper does; with the guard, only over those
        predicted to meet the request's deadline."""
        fits = [rooms.current(t.index) for t in targets]
        if self.policy.offload_guard:
            fits = [t for t in fits
                    if can_meet_ttft(self.predictor, t, f.request, f.tokens, view.now)]
        if not fits:
            return None
        target = fits[self._hp_next % len(fits)]
        self._hp_next += 1
        return target

    def _migrate(self, view: ClusterView, d: Decisions) -> None:
        """Streams over their mean-TBT target move by replay where the core's rule says the
        move, its re-prefill included, helps the stream, and the target can take it without
        hurting its own: at most one arrival per target per pass, and only where the step
        that re-prefills it is predicted within ``step_fraction`` of the target. (A gap target
        gains nothing from a move: the re-prefill is itself a gap.)"""
        assert view.streams is not None
        steps = {i.index: _step_time(self.predictor, i) for i in view.instances}
        by_index = {i.index: i for i in view.instances}
        landed: set[int] = set()
        for f in view.streams:
            slo = f.request.slo
            if slo.tbt_kind is not TbtKind.MEAN or f.first_token_at is None \
                    or f.last_token_at is None or f.generated < 2 \
                    or (f.last_token_at - f.first_token_at) / (f.generated - 1) <= slo.tbt \
                    or f.remaining <= 0 or not self._may_move(f) \
                    or f.tbt_moves >= self.policy.max_tbt_moves or f.instance not in by_index:
                continue
            source = by_index[f.instance]
            limit = self.policy.step_fraction * slo.tbt
            targets = [(t, steps[t.index]) for t in self._move_targets(view, source)
                       if t.index not in landed
                       and self._replay_step(t, f.tokens) <= limit]
            p = StreamProgress(f.first_token_at, f.last_token_at, f.generated, f.remaining)
            target = migration_target(
                p, view.now, source_step=steps[source.index], targets=targets,
                slo_tbt=slo.tbt, prefill_time=lambda f=f: self.predictor.prefill_time(f.tokens))
            if target is not None:
                landed.add(target.index)
                d.moves.append(Move(f.request, source.index, target.index, MoveReason.TBT,
                                    self._priority(f.request, target, view.now, started=True)))

    def _replay_step(self, inst: InstanceView, tokens: int) -> float:
        """The step in which ``inst`` would re-prefill a moved stream, beside its streams."""
        chunk = min(tokens + inst.unstarted_tokens, inst.token_budget)
        return self.predictor.batch_time(BatchShape(
            num_prefill_tokens=chunk, num_prefill_seqs=inst.unstarted + 1,
            prefill_attn_pairs=chunk * (chunk + 1) / 2, num_decodes=inst.running,
            decode_context=inst.decode_context))

    def _may_move(self, f: InFlight) -> bool:
        """A move by choice (offload, TBT, drain) leaves the budget's last move for a failure:
        streams drained up to their budget could not be recovered when their new engine then
        died, with another one healthy."""
        return f.moves < self.policy.max_moves - 1

    # -- failures and drains ---------------------------------------------------------------
    def recovery(self, view: ClusterView, f: InFlight, failed: int) -> Move | None:
        """Where a request whose instance failed resumes: the healthy instance with the least
        predicted delay, within its move budget (whose last move only a failure spends)."""
        if f.moves >= self.policy.max_moves:
            return None
        others = [i for i in view.instances if i.index != failed]
        if not others:
            return None
        target = min(others, key=lambda i: (predicted_delay(self.predictor, i, f.tokens),
                                            i.index))
        return Move(f.request, failed, target.index, MoveReason.RECOVERY,
                    self._priority(f.request, target, view.now, started=f.started))

    def drain(self, view: ClusterView, instance: int, streams: Iterable[InFlight]) -> list[Move]:
        """Move every request off ``instance`` (before it goes away), each to the instance
        with the least predicted delay given the moves already planned, within budgets."""
        others = {i.index: i for i in view.instances if i.index != instance}
        if not others:
            return []
        rooms = _Rooms(list(others.values()), self.policy, self.predictor)
        moves = []
        for f in streams:
            if not self._may_move(f):
                continue
            target = min((rooms.current(i) for i in others),
                         key=lambda i: (predicted_delay(self.predictor, i, f.tokens), i.index))
            rooms.take(target.index, f.tokens)
            moves.append(Move(f.request, instance, target.index, MoveReason.DRAIN,
                              self._priority(f.request, target, view.now, started=f.started)))
        return moves


def _step_time(model: DeadlinePredictor, inst: InstanceView) -> float:
    if inst.step_time is not None:
        return inst.step_time
    return model.batch_time(BatchShape(num_decodes=max(1, inst.running),
                                       decode_context=inst.decode_context))


class _Rooms:
    """Each instance's flow-control window within one step (what was released this step counts as
    unstarted at once): room for one more while it holds fewer unstarted prompt tokens than the
    window (``release_steps`` of its token budget) or the engine reports no queue of its own
    (:meth:`_window_full`), has a free seat and keeps its KV reserve. And the gap guard: a
    request whose TBT target bounds its gaps is sent only where the step it would join is
    predicted within ``step_fraction`` of that target, or where no stream would feel the step;
    where there is no such engine, to one with nothing left to start (holding a prompt whose own
    step overruns cannot shorten that step, only starve the engine: on the H200, with a rate
    estimate several times the real one, the guard held every LongBench-like prompt until the
    engine ran dry, docs/gpu.md)."""

    def __init__(self, instances: Sequence[InstanceView], policy: Policy,
                 model: DeadlinePredictor) -> None:
        self._views = {i.index: i for i in instances}
        self._policy = policy
        self._model = model
        self._unlimited = False

    def open_all(self) -> None:
        self._unlimited = True

    def _has_room(self, inst: InstanceView, req: Request | None, *, relaxed: bool = False
                  ) -> bool:
        if self._unlimited:
            return True
        p = self._policy
        if self._window_full(inst) or inst.running + inst.unstarted >= inst.max_seqs or \
                inst.kv_free_tokens <= p.kv_reserve * inst.kv_capacity_tokens:
            return False
        if req is None or req.slo.tbt_kind is TbtKind.MEAN or inst.running == 0 or \
                (relaxed and inst.unstarted_tokens == 0):
            return True
        prefill = min(inst.unstarted_tokens + req.prompt_len, inst.token_budget)
        step = self._model.batch_time(BatchShape(
            num_prefill_tokens=prefill, num_prefill_seqs=inst.unstarted + 1,
            prefill_attn_pairs=prefill * (prefill + 1) / 2, num_decodes=inst.running,
            decode_context=inst.decode_context))
        return step <= p.step_fraction * req.slo.tbt

    def _window_full(self, inst: InstanceView) -> bool:
        """The window binds only while the engine may hold a queue of its own: its report
        says requests wait there, or more was sent since than the report can show. An engine
        that has scheduled everything it was sent has no queue, however long its first tokens
        take to come back (on the H200 a quarter of a second of each TTFT is not prefill, so
        under sustained load the unstarted count filled the window while the engine ran 120 of
        1,024 seats with nothing waiting, docs/gpu.md 2026-12-04)."""
        window = self._policy.release_steps * inst.token_budget
        if inst.unstarted_tokens < window:
            return False
        return inst.engine_waiting is None or inst.engine_waiting > 0 or \
            inst.unreported_tokens >= window

    def any(self, req: Request | None = None) -> bool:
        views = self._views.values()
        return any(self._has_room(i, req) for i in views) or \
            any(self._has_room(i, req, relaxed=True) for i in views)

    def open(self, req: Request | None = None) -> list[InstanceView]:
        return [i for i in self._views.values() if self._has_room(i, req)] or \
            [i for i in self._views.values() if self._has_room(i, req, relaxed=True)]

    def all(self) -> list[InstanceView]:
        return list(self._views.values())

    def current(self, index: int) -> InstanceView:
        return self._views[index]

    def take(self, index: int, tokens: int) -> None:
        v = self._views.get(index)
        if v is None:
            return
        self._views[index] = replace(
            v, unstarted=v.unstarted + 1, unstarted_tokens=v.unstarted_tokens + tokens,
            outstanding_tokens=v.outstanding_tokens + tokens,
            unreported_tokens=v.unreported_tokens + tokens)
