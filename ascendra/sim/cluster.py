"""A discrete-event simulator of a serving cluster that runs the policy core unchanged.

Events are request arrivals at the router, engine steps finishing, and moved requests (offloaded
before their first token, or migrated mid-stream for their TBT) reaching their new instance.
Each instance is a policy-core scheduler whose steps take the time a latency model gives for
the batch (optionally with seeded jitter, so the scheduler's own predictor is not an oracle).
The router side is the core's routing policy fed with instance snapshots. Everything is
deterministic for a seed.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ascendra.core.dispatch import (
    AscendraRouting,
    BaselineRouting,
    InstanceLoad,
    Role,
    make_dispatcher,
)
from ascendra.core.hp import TicketRule
from ascendra.core.kv import KvCache
from ascendra.core.latency import BatchShape, LatencyModel
from ascendra.core.migration import StreamProgress, migration_target
from ascendra.core.offload import DeadlinePredictor, QueueSnapshot, at_risk, queue_snapshot
from ascendra.core.priority import engine_priority
from ascendra.core.request import Request, Slo
from ascendra.core.scheduler import Scheduler, SchedulerOutput
from ascendra.core.split import SplitPolicy, SplitSignals, decide_split
from ascendra.core.systems import SystemSpec
from ascendra.errors import AscendraError
from ascendra.metrics import RequestOutcome
from ascendra.predict.observations import Observation, ObservationRecorder
from ascendra.sim.planner import PlannerConfig, WorkloadMix, plan_split
from ascendra.workloads.spec import RequestSpec

_ARRIVAL, _STEP_DONE, _MOVED, _RESIZE = 0, 1, 2, 3


@dataclass(frozen=True)
class ClusterConfig:
    system: SystemSpec
    instances: int = 3
    hp_instances: int = 1  # used by partitioned systems only
    kv_tokens: int = 451_840  # per instance (H100 80GB, Llama-3.1-8B, 0.9 memory)
    offload_delay: float = 0.01  # a move (offload, migration): abort here → enqueued there, s
    jitter_cv: float = 0.0  # multiplicative noise on step times
    drain_timeout: float = 120.0  # stop this long after the last arrival; unfinished = missed
    # Live LP:HP resizing by the core's split policy (partitioned systems): bounds and period.
    resize: SplitConfig | None = None

    def roles(self) -> list[Role]:
        if not self.system.partitioned:
            return [Role.MIXED] * self.instances
        if not 0 <= self.hp_instances <= self.instances:
            raise AscendraError(f"HP instances must be within 0..{self.instances}")
        return [Role.LP] * (self.instances - self.hp_instances) + [Role.HP] * self.hp_instances


@dataclass(frozen=True)
class SplitConfig:
    hp_min: int
    hp_max: int
    interval: float = 10.0
    policy: SplitPolicy = field(default_factory=SplitPolicy)
    # Also plan: simulate the last window's mix on each split (with the true latency model, so
    # this is the planner at its best; the operator's uses a calibrated one).
    planner: bool = False
    planner_requests: int = 1500  # simulated per candidate split


@dataclass(slots=True)
class _Track:
    first: float = -1.0
    last: float = -1.0
    tokens: int = 0
    max_gap: float = 0.0
    finished: bool = False


@dataclass(slots=True)
class _Instance:
    index: int
    role: Role
    scheduler: Scheduler
    busy: bool = False
    current: SchedulerOutput | None = None
    pending: int = 0
    steps: int = 0
    busy_time: float = 0.0
    next_role: Role | None = None  # a role change waiting for the running step to end
    last_step: float = 0.0  # the last step's duration: the step time the router sees

    def load(self) -> InstanceLoad:
        s = self.scheduler
        return InstanceLoad(
            index=self.index, role=self.role, num_waiting=len(s.waiting),
            num_running=len(s.running), waiting_tokens=s.waiting_tokens,
            decode_context=sum(r.num_tokens for r in s.running),
            kv_free_fraction=s.kv.free_fraction, max_seqs=s.max_seqs, pending=self.pending,
            step_time=self.last_step,
        )


@dataclass
class SimResult:
    outcomes: list[RequestOutcome]
    gaps: np.ndarray
    duration: float
    steps: list[int] = field(default_factory=list)
    utilization: list[float] = field(default_factory=list)
    offloads: int = 0
    migrations: int = 0
    resizes: list[tuple[float, int, str]] = field(default_factory=list)  # (time, HP count, why)
    observations: list[Observation] = field(default_factory=list)  # with a recorder only


class Simulation:
    """``recorder``: also record queued requests' snapshots and times to first token (the TTFT
    predictor's data); ``offload=False`` keeps every request where it was placed, so that those
    times are what staying would have cost (the oracle of offload decisions)."""

    def __init__(self, config: ClusterConfig, truth: LatencyModel, predictor: DeadlinePredictor,
                 slo: Slo, seed: int = 0, recorder: ObservationRecorder | None = None,
                 offload: bool = True) -> None:
        self.config = config
        self.recorder = recorder
        self.offload = offload
        self._observations: list[Observation] = []
        self.truth = truth
        self.predictor = predictor
        self.slo = slo
        self.rng = np.random.default_rng(seed)
        spec = config.system
        dispatcher = make_dispatcher(spec.dispatch, predictor)
        self.routing: AscendraRouting | BaselineRouting = (
            AscendraRouting(dispatcher, TicketRule(max_step_fraction=spec.ticket_step_fraction),
                            predictor if spec.offload_guard else None)
            if spec.partitioned else BaselineRouting(dispatcher)
        )
        self.instances: list[_Instance] = []
        idle_step = predictor.batch_time(BatchShape(num_decodes=1, decode_context=1))
        for i, role in enumerate(config.roles()):
            engine = spec.hp_engine if role is Role.HP and spec.hp_engine else spec.engine
            kv = KvCache.from_tokens(config.kv_tokens)
            self.instances.append(_Instance(i, role, engine.build(kv), last_step=idle_step))
        self._events: list[tuple[float, int, int, object]] = []
        self._seq = itertools.count()
        self._tracks: dict[int, _Track] = {}
        self._gaps: list[float] = []
        self._offloaded: set[int] = set()
        self._migrated: set[int] = set()
        self._window = [0, 0]  # arrivals and offloads since the last resize check
        # (prompt, output) of requests finished in the window, kept only for the planner.
        self._finished: list[tuple[int, int]] | None = \
            [] if config.resize is not None and config.resize.planner else None
        self._last_resize: float | None = None
        self._resizes: list[tuple[float, int, str]] = []

    def _swap_role(self, inst: _Instance, role: Role) -> None:
        """Hand an instance's requests (and their KV) to the other role's scheduler: the
        engine keeps running them, only the policy changes, as on a real label flip."""
        spec = self.config.system
        engine = spec.hp_engine if role is Role.HP and spec.hp_engine else spec.engine
        old, new = inst.scheduler, engine.build(inst.scheduler.kv)
        new.running.extend(old.running)
        for req in old.waiting:  # an engine keeps the priority a request was sent with
            new.add(req, req.priority if spec.engine_priorities else None)
        inst.scheduler, inst.role, inst.next_role = new, role, None

    def _resize(self, now: float) -> None:
        cfg = self.config.resize
        assert cfg is not None
        hps = [i for i in self.instances if i.role is Role.HP]
        lps = [i for i in self.instances if i.role is Role.LP]
        arrivals, offloads = self._window
        self._window = [0, 0]
        steps = [self.predictor.batch_time(BatchShape(
            num_decodes=len(i.scheduler.running),
            decode_context=sum(r.num_tokens for r in i.scheduler.running)))
            for i in hps if i.scheduler.running]
        slack = [r.slack(now) for i in lps for r in i.scheduler.waiting]
        signals = SplitSignals(
            requests=arrivals, offload_fraction=offloads / arrivals if arrivals else None,
            hp_queue=sum(len(i.scheduler.waiting) for i in hps) / len(hps) if hps else None,
            hp_step_time=sum(steps) / len(steps) if steps else None,
            lp_min_slack=min(slack) if slack else None, tbt_slo=self.slo.tbt)
        plan = None
        finished, self._finished = self._finished, ([] if cfg.planner else None)
        if finished is not None and arrivals and len(finished) >= cfg.policy.min_requests:
            mix = WorkloadMix(arrivals / cfg.interval, tuple(p for p, _ in finished),
                              tuple(o for _, o in finished))
            plan = plan_split(mix, self.truth, self.slo, PlannerConfig(
                len(self.instances), cfg.hp_min, cfg.hp_max, self.config.kv_tokens,
                requests=cfg.planner_requests))
        decision = decide_split(signals, len(hps), cfg.hp_min, cfg.hp_max, now,
                                self._last_resize, cfg.policy, plan)
        if decision.moved(len(hps)):
            self._last_resize = now
            self._resizes.append((now, decision.hp, decision.reason))
            target, role = (lps[-1], Role.HP) if decision.hp > len(hps) else (hps[-1], Role.LP)
            if target.busy:
                target.next_role = role
            else:
                self._swap_role(target, role)

    def _push(self, t: float, kind: int, payload: object) -> None:
        heapq.heappush(self._events, (t, next(self._seq), kind, payload))

    def _loads(self) -> list[InstanceLoad]:
        return [inst.load() for inst in self.instances]

    def _jitter(self) -> float:
        cv = self.config.jitter_cv
        if cv <= 0:
            return 1.0
        sigma = np.sqrt(np.log1p(cv * cv))
        return float(self.rng.lognormal(-sigma * sigma / 2, sigma))

    def _kick(self, inst: _Instance, now: float) -> None:
        """Start the instance's next step if it is idle and has work."""
        if inst.busy or not inst.scheduler.has_work:
            return
        s = inst.scheduler
        out = s.schedule(now)
        if out.is_empty and out.preempted:
            out = s.schedule(now)  # preemption freed KV for the requests it put back
        lp = inst.role is Role.LP and self.offload and any(
            i.role is Role.HP for i in self.instances)
        if lp or self.recorder is not None:
            queued = self._queued(inst, out, now)
            if self.recorder is not None:
                for req, snap in queued:
                    self.recorder.snapshot(req.id, now, snap, req.slo.ttft)
            if lp:
                self._offload(inst, queued, now)
        if out.is_empty:
            if not s.running and s.waiting:
                # Nothing runs and nothing fits: the head can never be served here.
                if self.recorder is not None:
                    self.recorder.forget(s.waiting[0].id)
                s.remove(s.waiting[0])
            return
        dur = self.truth.batch_time(out.shape) * self._jitter()
        inst.busy, inst.current, inst.last_step = True, out, dur
        inst.steps += 1
        inst.busy_time += dur
        self._push(now + dur, _STEP_DONE, inst)

    def _queued(self, inst: _Instance, out: SchedulerOutput,
                now: float) -> list[tuple[Request, QueueSnapshot]]:
        """Snapshots of the instance's unstarted waiting requests as this step starts."""
        s = inst.scheduler
        running = [r.num_tokens for r in s.running]
        batch_time = self.predictor.batch_time(out.shape)
        kv_used = 1.0 - s.kv.free_fraction
        out_: list[tuple[Request, QueueSnapshot]] = []
        ahead: list[int] = []
        for req in s.waiting:  # in service order
            if not req.ever_scheduled:
                out_.append((req, queue_snapshot(req, now, ahead, running, kv_used, batch_time,
                                                 self.predictor)))
            ahead.append(req.remaining)
        return out_

    def _offload(self, inst: _Instance, queued: list[tuple[Request, QueueSnapshot]],
                 now: float) -> None:
        bounds = self.predictor.ttft_bounds([snap for _, snap in queued])
        for (req, _), bound in zip(queued, bounds, strict=True):
            if not at_risk(req, now, bound):
                continue
            target = self.routing.route_offload(self._loads(), req, now)
            if target is None:
                continue
            inst.scheduler.remove(req)
            if self.recorder is not None:
                self.recorder.forget(req.id)
            req.offloaded = True
            self._offloaded.add(req.id)
            self._window[1] += 1
            self.instances[target].pending += 1
            self._push(now + self.config.offload_delay, _MOVED, (target, req))

    def _migrate(self, inst: _Instance, now: float) -> None:
        """The router's TBT migration, as its control loop runs it: a running request whose
        mean TBT is over target and would stay over moves to the instance with the fastest
        step, if the core's rule says the move (a re-prefill there) helps; once per request."""
        targets = [(i, i.last_step) for i in self.instances if i is not inst]
        for req in list(inst.scheduler.running):
            tr = self._tracks[req.id]
            if req.id in self._migrated or tr.tokens == 0:
                continue
            p = StreamProgress(tr.first, tr.last, tr.tokens, req.max_tokens - req.num_generated)
            target = migration_target(
                p, now, source_step=inst.last_step, targets=targets, slo_tbt=req.slo.tbt,
                prefill_time=lambda r=req: self.predictor.prefill_time(r.num_tokens))
            if target is None:
                continue
            inst.scheduler.remove(req)
            req.num_computed = 0  # token replay: prompt + output so far is prefilled again
            self._migrated.add(req.id)
            target.pending += 1
            self._push(now + self.config.offload_delay, _MOVED, (target.index, req))

    def _enqueue(self, inst: _Instance, req: Request, now: float) -> None:
        """A request reaches an instance: with engine priorities, the one the router sends."""
        prio = engine_priority(req, inst.role, now, started=req.num_generated > 0) \
            if self.config.system.engine_priorities else None
        inst.scheduler.add(req, prio)
        self._kick(inst, now)

    def _fresh(self, spec: RequestSpec) -> Request:
        return Request(
            id=spec.id, arrival=spec.arrival, prompt_len=spec.prompt_len,
            max_tokens=spec.output_len, slo=self.slo,
            predicted_prefill=self.predictor.prefill_time(spec.prompt_len),
        )

    def run(self, requests: Sequence[RequestSpec]) -> SimResult:
        for spec in requests:
            self._push(spec.arrival, _ARRIVAL, spec)
        if self.config.resize is not None and self.config.system.partitioned:
            self._push(self.config.resize.interval, _RESIZE, None)
        horizon = (max((r.arrival for r in requests), default=0.0)
                   + self.config.drain_timeout)
        tracks, gaps = self._tracks, self._gaps
        now = 0.0
        while self._events:
            now, _, kind, payload = heapq.heappop(self._events)
            if now > horizon:
                break
            if kind == _STEP_DONE:
                inst: _Instance = payload  # type: ignore[assignment]
                assert inst.current is not None
                result = inst.scheduler.update(inst.current)
                for req in result.sampled:
                    tr = tracks[req.id]
                    if tr.tokens:
                        gap = now - tr.last
                        gaps.append(gap)
                        if gap > tr.max_gap:
                            tr.max_gap = gap
                    else:
                        tr.first = now
                        if self.recorder is not None:
                            self._observations += self.recorder.first_token(req.id, now)
                    tr.last = now
                    tr.tokens += 1
                for req in result.finished:
                    tracks[req.id].finished = True
                    if self._finished is not None:
                        self._finished.append((req.prompt_len, req.max_tokens))
                inst.busy, inst.current = False, None
                if inst.next_role is not None:
                    self._swap_role(inst, inst.next_role)
                if self.config.system.migrate:
                    self._migrate(inst, now)
                self._kick(inst, now)
            elif kind == _RESIZE:
                self._resize(now)
                if self._events:
                    self._push(now + self.config.resize.interval, _RESIZE, None)  # type: ignore[union-attr]
            elif kind == _ARRIVAL:
                self._window[0] += 1
                req = self._fresh(payload)  # type: ignore[arg-type]
                tracks[req.id] = _Track()
                route = self.routing.route_new(self._loads(), req)
                self._enqueue(self.instances[route.index], req, now)
            else:
                target, req = payload  # type: ignore[misc]
                inst = self.instances[target]
                inst.pending -= 1
                self._enqueue(inst, req, now)
        outcomes = [self._outcome(spec) for spec in requests]
        return SimResult(
            outcomes=outcomes,
            gaps=np.asarray(gaps),
            duration=now,
            steps=[i.steps for i in self.instances],
            utilization=[i.busy_time / now if now > 0 else 0.0 for i in self.instances],
            offloads=len(self._offloaded),
            migrations=len(self._migrated),
            resizes=self._resizes,
            observations=self._observations,
        )

    def _outcome(self, spec: RequestSpec) -> RequestOutcome:
        tr = self._tracks.get(spec.id)
        if tr is None or tr.tokens == 0:
            return RequestOutcome(spec.id, spec.arrival, spec.prompt_len, spec.output_len,
                                  self.slo, offloaded=spec.id in self._offloaded)
        tbt = (tr.last - tr.first) / (tr.tokens - 1) if tr.tokens > 1 else None
        return RequestOutcome(
            spec.id, spec.arrival, spec.prompt_len, spec.output_len, self.slo,
            ttft=tr.first - spec.arrival, tbt_mean=tbt,
            max_gap=tr.max_gap if tr.tokens > 1 else None, tokens=tr.tokens,
            finished=tr.finished, offloaded=spec.id in self._offloaded,
        )
