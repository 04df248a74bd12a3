"""The router's side of the cluster controller: build the view, carry out the decisions.

Each pass builds a :class:`~ascendra.core.view.ClusterView` from the pool (the engines' own
reports plus this router's sessions), calls the core's
:class:`~ascendra.core.controller.ClusterController`, and executes what it returns: a released
session starts on its instance, a rejected one is answered, a moved one is replayed elsewhere.
Passes run on events (an arrival, a first token, a finish; coalesced, one per loop turn) and
every ``policy.tick`` with the streams, as the simulator runs them. No scheduling rule lives
here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ascendra.core.controller import ClusterController, Decisions, Move, MoveReason, Reject
from ascendra.core.latency import BatchShape
from ascendra.core.offload import DeadlinePredictor, FixedMarginPredictor, queue_snapshot
from ascendra.core.policy import Policy
from ascendra.core.view import ClusterView, InFlight, InstanceView
from ascendra.predict.observations import Observation, ObservationRecorder
from ascendra.router.instances import Instance, InstancePool
from ascendra.router.learning import FallbackPredictor
from ascendra.router.metrics import RouterMetrics
from ascendra.router.session import Session
from ascendra.router.upstream import EngineConnections

log = logging.getLogger("ascendra.router")


@dataclass
class EngineRateModel:
    """A latency model from what the engines report: a step without prompt tokens plus what
    each prompt token adds (``ascendra.runtime.engine_state.RateTracker``).

    The values are the pool's latest measurements (mutable, updated every periodic pass);
    before any are in, the configured defaults stand. Until an engine's fit is in, its mean
    step time stands for the prompt-free step.
    """

    step_time: float = 0.02
    prefill_s_per_token: float = 2e-4

    def batch_time(self, shape: BatchShape) -> float:
        return self.step_time + shape.num_prefill_tokens * self.prefill_s_per_token

    def prefill_time(self, prompt_len: int) -> float:
        return self.batch_time(BatchShape.prefill(prompt_len))

    def observe(self, instances: list[Instance]) -> None:
        states = [i.state for i in instances if i.state is not None]
        steps = [t for t in (s.decode_step_time if s.decode_step_time is not None
                             else s.step_time for s in states) if t]
        rates = [s.prefill_s_per_token for s in states if s.prefill_s_per_token]
        if steps:
            self.step_time = sum(steps) / len(steps)
        if rates:
            self.prefill_s_per_token = sum(rates) / len(rates)


def in_flight(s: Session, index: int) -> InFlight:
    return InFlight(s.request, index, len(s.prompt_ids) + len(s.generated), len(s.generated),
                    s.first_token_at, s.last_token_at, s.sent_at, s.priority, s.moves,
                    s.tbt_moves)


class ControlLoop:
    """``on_observations``: where the queued requests' snapshots and, at their first token,
    the times they took go (an observation log, an online refit); None records nothing."""

    def __init__(self, policy: Policy, pool: InstancePool, model: EngineRateModel,
                 metrics: RouterMetrics, *, engine_priorities: bool, token_budget: int,
                 stall_timeout: float = 30.0,
                 on_observations: Callable[[list[Observation]], None] | None = None) -> None:
        self.policy = policy
        self.pool = pool
        self.model = model
        self.metrics = metrics
        self.token_budget = token_budget
        self.stall_timeout = stall_timeout
        self.analytic = FixedMarginPredictor(model, policy.offload_margin)
        self.core = ClusterController(policy, self.analytic,
                                      engine_priorities=engine_priorities)
        self.sessions: dict[int, Session] = {}  # by request id: queued and in flight
        self.recorder = ObservationRecorder()
        self.on_observations = on_observations
        self.engines: EngineConnections | None = None  # for the token streams
        self._pass_due = False
        self._moves: set[asyncio.Task[None]] = set()  # held: the loop keeps tasks weakly

    @property
    def predictor(self) -> DeadlinePredictor:
        return self.core.predictor

    @predictor.setter
    def predictor(self, p: DeadlinePredictor) -> None:
        """Decide with ``p`` (a learned predictor), falling back to the analytic one for good
        the first time it fails."""
        self.core.set_predictor(FallbackPredictor(p, self.analytic))

    # -- the view --------------------------------------------------------------------------
    def view(self, now: float, periodic: bool) -> ClusterView:
        live = self.pool.routable()
        views = [i.view(self.pool.default_seats, self.token_budget) for i in live]
        streams = None
        if periodic:
            streams = tuple(in_flight(s, i.index) for i in live for s in i.sessions.values()
                            if not s.done and not s.moving) \
                if self.core.needs_streams(views) or self.on_observations else ()
        return ClusterView(now, views, streams)

    def describe(self, inst: Instance) -> dict[str, Any]:
        """What ``/ascendra/instances`` says of ``inst``: the engine's report, and the view
        the controller decides on (this router's unstarted requests and tokens, what the
        report cannot count yet) with whether its flow-control window lets one more in."""
        v = inst.view(self.pool.default_seats, self.token_budget)
        view = {f: getattr(v, f) for f in ("unstarted", "unstarted_tokens",
                                           "unreported_tokens", "engine_waiting", "running",
                                           "kv_free_fraction", "step_time")}
        return {"url": inst.url, "role": inst.role.value, "healthy": inst.healthy,
                "state": inst.state.as_dict() if inst.state else None,
                "own_streams": len(inst.sessions),
                "view": {**view, "has_room": self.core.has_room(v)}}

    # -- passes ----------------------------------------------------------------------------
    def submit(self, session: Session) -> None:
        """A request arrived: queue it for the pass at the next loop turn (it may be released
        or shed there). One pass decides every arrival of a turn: a pass walks every open
        session, and at 1,300 requests a second a pass per arrival was 15% of the router's
        CPU."""
        self.sessions[session.request.id] = session
        session.placed = asyncio.get_running_loop().create_future()
        session.on_change = self.pass_soon
        self.core.enqueue(session.request, session.criticality)
        self.pass_soon()

    def pass_soon(self) -> None:
        """An arrival, or an engine gained room (a first token, a finish): one pass at the
        next loop turn, however many such events this turn brings. None while the queue is
        empty: such a pass could only release, and there is nothing to release (a loaded H200
        brings a hundred first tokens and finishes a second)."""
        if not self._pass_due and len(self.core):
            self._pass_due = True
            asyncio.get_running_loop().call_soon(self._deferred_pass)

    def _deferred_pass(self) -> None:
        self._pass_due = False
        self.run_pass()

    def run_pass(self, periodic: bool = False) -> None:
        now = time.time()
        view = self.view(now, periodic)
        if periodic and self.on_observations is not None:
            self._record(view, now)
        self.execute(self.core.step(view), now)

    def tick(self) -> None:
        """The periodic pass: fresh engine rates, stalled streams, then moves and timeouts."""
        self.model.observe(self.pool.routable())
        if self.engines is not None:
            self.engines.prune()
        now = time.time()
        for inst in self.pool.instances:
            hung = inst.state is not None and inst.state.stalled
            for s in list(inst.sessions.values()):
                if hung:  # queued there or streaming, nothing will come: recover them all
                    s.fail_attempt(f"engine {inst.url} makes no progress")
                else:
                    s.check_stall(now, self.stall_timeout)
        self.run_pass(periodic=True)
        relegated = self.core.relegated_count
        self.metrics.router_queue.labels("waiting").set(len(self.core) - relegated)
        self.metrics.router_queue.labels("relegated").set(relegated)

    # -- executing decisions ---------------------------------------------------------------
    def execute(self, d: Decisions, now: float) -> None:
        assert self.engines is not None
        for req in d.relegated:
            s = self.sessions.get(req.id)
            if s is not None:
                s.relegated = True
                self.metrics.relegated.inc()
        for rej in d.rejects:
            self._reject(rej)
        for rel in d.releases:
            s = self.sessions.get(rel.request.id)
            if s is None or s.closed or s.placed is None or s.placed.done():
                continue
            inst = self.pool.instance(rel.instance)
            s.start(self.engines, inst, rel.engine_priority)
            s.predicted_ttft = rel.predicted_ttft
            s.placed.set_result(None)
            self.metrics.queue_wait.observe(now - s.request.arrival)
            if self.on_observations is not None:
                self._snapshot_release(s, inst, now)
        for mv in d.moves:
            s = self.sessions.get(mv.request.id)
            if s is not None and not s.moving and not s.done and not s.closed:
                self._start_move(s, mv)

    def _reject(self, rej: Reject) -> None:
        s = self.sessions.pop(rej.request.id, None)
        self.metrics.rejected.labels(rej.reason.value).inc()
        if s is not None and s.placed is not None and not s.placed.done():
            s.placed.set_result(rej)

    def _start_move(self, s: Session, mv: Move) -> None:
        task = asyncio.get_running_loop().create_task(self.move(s, mv))
        self._moves.add(task)
        task.add_done_callback(self._moves.discard)

    async def move(self, s: Session, mv: Move) -> bool:
        assert self.engines is not None
        target = self.pool.instance(mv.target)
        s.moving = True
        try:
            if mv.reason is MoveReason.OFFLOAD:
                s.request.offloaded = s.offloaded = True
            moved = await s.move(self.engines, target, mv.engine_priority)
        finally:
            s.moving = False
        if moved:
            self.recorder.forget(s.id)  # its wait there is no longer what it waits
            if mv.reason is MoveReason.OFFLOAD:
                self.metrics.offloads.inc()
            else:
                if mv.reason is MoveReason.TBT:
                    s.tbt_moves += 1
                self.metrics.migrations.labels(mv.reason.value).inc()
            log.info("moved %s to %s (%s, %d tokens so far)", s.id, target.url,
                     mv.reason.value, len(s.generated))
        return moved

    def finished(self, s: Session) -> None:
        """A session ended (answered, failed or abandoned): it leaves the controller too."""
        if s.moves == 0 and s.first_token_at is not None:
            self.metrics.engine_ttft.observe(s.first_token_at - s.sent_at)
        self.sessions.pop(s.request.id, None)
        self.core.withdraw(s.request.id)
        self.settle(s)

    # -- failures --------------------------------------------------------------------------
    async def recover(self, s: Session, failed: Instance) -> bool:
        """Resume a stream whose instance failed on another healthy one, if any is left."""
        failed.healthy = False
        now = time.time()
        move = self.core.recovery(self.view(now, False), in_flight(s, failed.index),
                                  failed.index)
        return move is not None and await self.move(s, move)

    async def drain(self, inst: Instance) -> tuple[int, int]:
        """Move every stream of this router off ``inst`` (before it is removed or restarted):
        how many moved, and how many stayed (no other instance healthy now, or a stream's
        moves spent), so that an operator knows whether to drain again before removing it."""
        now = time.time()
        view = self.view(now, False)
        view = ClusterView(now, [v for v in view.instances if v.index != inst.index]
                           + [inst.view(self.pool.default_seats, self.token_budget)])
        moves = self.core.drain(view, inst.index, [in_flight(s, inst.index)
                                                   for s in list(inst.sessions.values())])
        moved = 0
        for mv in moves:
            s = self.sessions.get(mv.request.id)
            if s is not None:
                moved += await self.move(s, mv)
        stayed = sum(not s.done for s in inst.sessions.values())
        if stayed:
            log.warning("drain of %s: %d streams stayed (%d other instances healthy)",
                        inst.url, stayed, len(view.instances) - 1)
        return moved, stayed

    # -- observations (the deadline predictor's data) ---------------------------------------
    def _record(self, view: ClusterView, now: float) -> None:
        settled: list[Observation] = []
        for inst in view.instances:
            for f, snap in self.core.engine_queue(view, inst):
                s = self.sessions.get(f.request.id)
                if s is not None:
                    self.recorder.snapshot(s.id, now, snap, s.request.slo.ttft)
        for s in self.sessions.values():
            if s.first_token_at is not None:
                settled += self.recorder.first_token(s.id, s.first_token_at)
        if settled and self.on_observations is not None:
            self.on_observations(settled)

    def _snapshot_release(self, s: Session, inst: Instance, now: float) -> None:
        """Its snapshot as it joins the engine's queue (after every unstarted one there), so
        that quick requests are observed too: ticks alone miss them."""
        v: InstanceView = inst.view(self.pool.default_seats, self.token_budget)
        ahead = [len(o.prompt_ids) + len(o.generated) for o in inst.sessions.values()
                 if o is not s and o.first_token_at is None]
        running = [len(o.prompt_ids) + len(o.generated) for o in inst.sessions.values()
                   if o.first_token_at is not None]
        step = v.step_time if v.step_time is not None else self.model.step_time
        self.recorder.snapshot(s.id, now, queue_snapshot(
            s.request, now, ahead, running, 1.0 - v.kv_free_fraction, step, self.model),
            s.request.slo.ttft)

    def settle(self, s: Session) -> None:
        """A session ended: its snapshots become observations if it got a first token."""
        if self.on_observations is None:
            return
        if s.first_token_at is None:
            self.recorder.forget(s.id)
            return
        obs = self.recorder.first_token(s.id, s.first_token_at)
        if obs:
            self.on_observations(obs)
