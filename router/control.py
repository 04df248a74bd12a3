"""The router's decisions, each one a call into the policy core.

* placing a new request (HP ticket or LP dispatch; round-robin for baselines),
* its vLLM priority integer,
* the offload loop: queued LP requests the core's rule says will miss their TTFT move to an HP,
* migration: running requests whose mean TBT the core projects over target move by replay,
* recovery: a stream whose instance fails or stalls resumes elsewhere.

Timing inputs come from the engines' own measurements (step time, prefill rate), fed into a
latency model the core functions accept.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from ascendra.core.dispatch import (
    AscendraRouting,
    BaselineRouting,
    Role,
    make_dispatcher,
    predicted_delay,
)
from ascendra.core.hp import TicketRule
from ascendra.core.latency import BatchShape
from ascendra.core.migration import StreamProgress, migration_target
from ascendra.core.offload import (
    DeadlinePredictor,
    FixedMarginPredictor,
    QueueSnapshot,
    at_risk,
    queue_snapshot,
)
from ascendra.core.priority import engine_priority
from ascendra.predict.observations import Observation, ObservationRecorder
from ascendra.router.instances import Instance, InstancePool
from ascendra.router.session import Session

log = logging.getLogger("ascendra.router")


@dataclass
class EngineRateModel:
    """A latency model from what the engines report: step time plus prefill time per token.

    The values are the pool's latest measurements (mutable, updated by the controller); before
    any are in, the configured defaults stand.
    """

    step_time: float = 0.02
    prefill_s_per_token: float = 2e-4

    def batch_time(self, shape: BatchShape) -> float:
        return self.step_time + shape.num_prefill_tokens * self.prefill_s_per_token

    def prefill_time(self, prompt_len: int) -> float:
        return self.batch_time(BatchShape.prefill(prompt_len))

    def observe(self, instances: list[Instance]) -> None:
        steps = [i.state.step_time for i in instances if i.state and i.state.step_time]
        rates = [i.state.prefill_s_per_token for i in instances
                 if i.state and i.state.prefill_s_per_token]
        if steps:
            self.step_time = sum(steps) / len(steps)
        if rates:
            self.prefill_s_per_token = sum(rates) / len(rates)


def _service_order(s: Session) -> tuple[int, float]:
    """The order an engine serves its waiting requests: priority (lower first), then arrival
    (sessions sent without a priority are all 0: first come, first served)."""
    return (s.priority or 0, s.sent_at)


def instance_step_time(inst: Instance, fallback: float) -> float:
    return inst.state.step_time if inst.state and inst.state.step_time else fallback


@dataclass
class ControlConfig:
    partitioned: bool = True  # Ascendra LP/HP; False: every instance alike (baselines)
    priorities: bool = True  # send vLLM priorities (engines run --scheduling-policy priority)
    dispatch: str = "round-robin"
    margin: float = 0.7  # offload safety margin Δ, seconds
    interval: float = 0.05  # control loop period, seconds
    migrate: bool = True
    max_moves: int = 3  # offloads + migrations + recoveries per request
    max_tbt_moves: int = 1  # TBT-driven migrations per request (each costs a re-prefill)
    stall_timeout: float = 30.0  # an upstream silent this long counts as failed
    # HP tickets also need the HP's step time ≤ this fraction of the request's TBT target
    # (None: the paper's seat-and-queue rule alone).
    ticket_step_fraction: float | None = 0.5
    # Offload only to an HP predicted to still meet the request's deadline (core's
    # can_meet_ttft); False is the paper's unconditional offload.
    offload_guard: bool = True


class Controller:
    """``predictor`` bounds queued requests' time to first token for the offload rule (default:
    the paper's fixed margin over the engines' measured rates). With ``on_observations`` (an
    observation log, an online refit), every queued request's snapshots and, at its first token,
    the time they took go there; without it none are recorded (they cost time on every
    request's path)."""

    def __init__(self, cfg: ControlConfig, pool: InstancePool, model: EngineRateModel,
                 predictor: DeadlinePredictor | None = None,
                 on_observations: Callable[[list[Observation]], None] | None = None) -> None:
        self.cfg = cfg
        self.pool = pool
        self.model = model
        self.analytic = FixedMarginPredictor(model, cfg.margin)
        self.predictor: DeadlinePredictor = predictor or self.analytic
        self.recorder = ObservationRecorder()
        self.on_observations = on_observations
        dispatcher = make_dispatcher(cfg.dispatch, model)
        tickets = TicketRule(max_step_fraction=cfg.ticket_step_fraction)
        guard = model if cfg.offload_guard else None
        self.routing = AscendraRouting(dispatcher, tickets, guard) if cfg.partitioned \
            else BaselineRouting(dispatcher)
        self.offloads = 0
        self.migrations = 0
        self.recoveries = 0

    # -- placement -------------------------------------------------------------------------
    def place(self, session: Session) -> Instance:
        live = self.pool.routable()
        if not live:
            raise LookupError("no healthy instance")
        loads = self.pool.loads(live)
        route = self.routing.route_new(loads, session.request)
        load = next(ld for ld in loads if ld.index == route.index)
        session.predicted_ttft = predicted_delay(self.model, load, len(session.prompt_ids))
        return self.pool.instances[route.index]

    def priority(self, session: Session, target: Instance, now: float) -> int | None:
        if not self.cfg.priorities:
            return None
        return engine_priority(session.request, target.role, now, started=bool(session.generated))

    async def move(self, http: aiohttp.ClientSession, session: Session, target: Instance,
                   why: str) -> bool:
        now = time.time()
        if why == "offload":
            session.request.offloaded = session.offloaded = True
        moved = await session.move(http, target, self.priority(session, target, now))
        if moved:
            self.recorder.forget(session.id)  # its wait there is no longer what it waits
            log.info("moved %s to %s (%s, %d tokens so far)", session.id, target.url, why,
                     len(session.generated))
        return moved

    # -- the control loop ------------------------------------------------------------------
    def queued(self, inst: Instance, now: float) -> list[tuple[Session, QueueSnapshot]]:
        """Snapshots of this router's requests on ``inst`` that have no token yet, in the order
        the engine serves them (priority, then submission). "Not started" is "no token yet":
        vLLM gives a request a seat long before it can serve it when compute rather than seats
        runs out, so its own waiting count says little, and the first token is the start a
        router can see."""
        waiting = sorted((s for s in inst.sessions.values() if not s.generated),
                         key=_service_order)
        running, batch, kv_used = self._instance_state(inst)
        out: list[tuple[Session, QueueSnapshot]] = []
        ahead: list[int] = []
        for s in waiting:
            out.append((s, queue_snapshot(s.request, now, ahead, running, kv_used, batch,
                                          self.model)))
            ahead.append(len(s.prompt_ids) + len(s.generated))
        return out

    def _instance_state(self, inst: Instance) -> tuple[list[int], float, float]:
        running = [len(s.prompt_ids) + len(s.generated)
                   for s in inst.sessions.values() if s.generated]
        return (running, instance_step_time(inst, self.model.step_time),
                inst.state.kv_usage if inst.state else 0.0)

    def offload_candidates(self, queued: list[tuple[Session, QueueSnapshot]],
                           now: float) -> list[Session]:
        """Those of an LP's queued requests the core's rule says will miss their TTFT. (A
        request moved mid-prefill loses that prefill, which the bound is there to absorb.)"""
        movable = [(s, snap) for s, snap in queued if s.moves < self.cfg.max_moves]
        snaps = [snap for _, snap in movable]
        try:
            bounds = self.predictor.ttft_bounds(snaps)
        except Exception:  # a learned model that cannot predict must not stop the offloads
            log.exception("deadline predictor failed; back to the analytic one")
            self.predictor = self.analytic
            bounds = self.predictor.ttft_bounds(snaps)
        return [s for (s, _), b in zip(movable, bounds, strict=True)
                if at_risk(s.request, now, b)]

    def observe(self, now: float) -> list[Session]:
        """Snapshot every queued request, settle those with a first token, and return the LP
        ones the offload rule picks."""
        out: list[Session] = []
        settled: list[Observation] = []
        record = self.on_observations is not None
        offloading = self.cfg.partitioned
        for inst in self.pool.routable():
            lp = offloading and inst.role is Role.LP
            if not (record or lp):
                continue
            queued = self.queued(inst, now)
            if record:
                for s, snap in queued:
                    self.recorder.snapshot(s.id, now, snap, s.request.slo.ttft)
                for s in inst.sessions.values():
                    if s.first_token_at is not None:
                        settled += self.recorder.first_token(s.id, s.first_token_at)
            if lp:
                out += self.offload_candidates(queued, now)
        if settled and self.on_observations is not None:
            self.on_observations(settled)
        return out

    def started(self, session: Session, now: float) -> None:
        """Snapshot a request as it joins its instance's queue, so that every request that
        stays has at least its arrival observed (ticks alone miss the quick ones). One pass,
        no sort: this is on every request's path."""
        inst = session.instance
        assert inst is not None
        if self.on_observations is None:
            return
        mine = _service_order(session)
        ahead = [len(s.prompt_ids) for s in inst.sessions.values()
                 if not s.generated and s is not session and _service_order(s) < mine]
        running, batch, kv_used = self._instance_state(inst)
        self.recorder.snapshot(session.id, now, queue_snapshot(
            session.request, now, ahead, running, kv_used, batch, self.model),
            session.request.slo.ttft)

    def settle(self, session: Session) -> None:
        """A session ended: its snapshots become observations if it got a first token."""
        if self.on_observations is None:
            return
        if session.first_token_at is None:
            self.recorder.forget(session.id)
            return
        obs = self.recorder.first_token(session.id, session.first_token_at)
        if obs:
            self.on_observations(obs)

    def migration_candidates(self, now: float) -> list[tuple[Session, Instance]]:
        out = []
        steps = [(i, instance_step_time(i, self.model.step_time)) for i in self.pool.routable()]
        for inst, source_step in steps:
            targets = [(i, step) for i, step in steps if i is not inst]
            for s in list(inst.sessions.values()):
                if not s.generated or s.done or s.moves >= self.cfg.max_moves \
                        or s.tbt_moves >= self.cfg.max_tbt_moves \
                        or s.first_token_at is None or s.last_token_at is None:
                    continue
                p = StreamProgress(s.first_token_at, s.last_token_at, len(s.generated),
                                   s.remaining)
                target = migration_target(
                    p, now, source_step=source_step, targets=targets,
                    slo_tbt=s.request.slo.tbt, prefill_time=lambda s=s: self.model.prefill_time(
                        len(s.prompt_ids) + len(s.generated)))
                if target is not None:
                    out.append((s, target))
        return out

    async def tick(self, http: aiohttp.ClientSession) -> None:
        self.model.observe(self.pool.routable())
        now = time.time()
        for inst in self.pool.instances:
            for s in list(inst.sessions.values()):
                s.check_stall(now, self.cfg.stall_timeout)
        candidates = self.observe(now)
        if candidates:
            for s in candidates:
                target = self.routing.route_offload(self.pool.loads(), s.request, now)
                if target is None:
                    continue
                if await self.move(http, s, self.pool.instances[target], "offload"):
                    self.offloads += 1
        if self.cfg.migrate:
            for s, target in self.migration_candidates(now):
                if await self.move(http, s, target, "tbt"):
                    s.tbt_moves += 1
                    self.migrations += 1

    # -- failures --------------------------------------------------------------------------
    async def recover(self, http: aiohttp.ClientSession, session: Session,
                      failed: Instance) -> bool:
        """Resume a stream whose instance failed on another healthy one, if any is left."""
        failed.healthy = False
        if session.moves >= self.cfg.max_moves:
            return False
        others = [i for i in self.pool.routable() if i is not failed]
        if not others:
            return False
        target = min(others, key=lambda i: (i.state.waiting if i.state else 0,
                                            len(i.sessions)))
        moved = await self.move(http, session, target, "recovery")
        self.recoveries += moved
        return moved

    async def drain(self, http: aiohttp.ClientSession, inst: Instance) -> int:
        """Move every stream of this router off ``inst`` (before it is removed or restarted)."""
        others = [i for i in self.pool.routable() if i is not inst]
        if not others:
            return 0
        moved = 0
        for i, s in enumerate(list(inst.sessions.values())):
            moved += await self.move(http, s, others[i % len(others)], "drain")
        return moved
