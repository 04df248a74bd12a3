"""A discrete-event simulator of a serving pool that executes the cluster controller's decisions.

The router side is :class:`~ascendra.core.controller.ClusterController`, called as the router
calls it: on every arrival, first token and finish (event passes) and every ``policy.tick``
(periodic passes, with the streams). Its releases and moves reach their instance after the
router's hop; each instance is a policy-core scheduler driven like a vLLM engine core
(``schedule``, run the batch, ``update``) whose steps take what a latency model gives for the
batch, times a seeded log-normal jitter so that the controller's own model is not an oracle.
Everything is deterministic for a seed. No scheduling rule lives here.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from ascendra.core.controller import ClusterController, Decisions, Move, Release
from ascendra.core.kv import KvCache
from ascendra.core.latency import BatchShape, LatencyModel
from ascendra.core.offload import DeadlinePredictor
from ascendra.core.request import Request, Slo, TbtKind
from ascendra.core.scheduler import Scheduler, SchedulerOutput
from ascendra.core.split import SplitPolicy, SplitSignals
from ascendra.core.systems import SystemSpec
from ascendra.core.view import ClusterView, InFlight, InstanceView, Role, SplitQuery
from ascendra.errors import AscendraError
from ascendra.metrics import RequestOutcome
from ascendra.predict.observations import Observation, ObservationRecorder
from ascendra.sim.planner import PlannerConfig, WorkloadMix, plan_split
from ascendra.workloads.spec import RequestSpec

_ARRIVAL, _STEP_DONE, _AT_ENGINE, _TICK, _FIRST_BACK = 0, 1, 2, 3, 4


@dataclass(frozen=True)
class SplitConfig:
    """Live LP:HP resizing, as the operator runs it: bounds, period and the split policy."""

    hp_min: int
    hp_max: int
    interval: float = 10.0
    policy: SplitPolicy = field(default_factory=SplitPolicy)
    # Also plan: simulate the last window's mix on each split (with the true latency model, so
    # this is the planner at its best; the operator's uses a calibrated one).
    planner: bool = False
    planner_requests: int = 1500  # simulated per candidate split


@dataclass(frozen=True)
class ClusterConfig:
    system: SystemSpec
    instances: int = 3
    hp_instances: int | None = None  # None: the system's own split
    kv_tokens: int = 451_840  # per instance (H100 80GB, Llama-3.1-8B, 0.9 memory)
    release_delay: float = 0.002  # router → engine for a released request, s
    offload_delay: float = 0.01  # a move (abort here, resend there), s
    # Engine → router for a first token beyond its step (a real engine's API server and output
    # path; every later token is late alike, so gaps are not). The router counts the request
    # unstarted until then.
    first_token_delay: float = 0.0
    jitter_cv: float = 0.0  # multiplicative noise on step times
    drain_timeout: float = 120.0  # stop this long after the last arrival; unfinished = missed
    resize: SplitConfig | None = None

    @property
    def hp(self) -> int:
        return self.system.hp_instances if self.hp_instances is None else self.hp_instances

    def roles(self) -> list[Role]:
        """A system that may split runs LP instances (and its HPs), a baseline alike ones; the
        controller treats LP and alike instances the same."""
        if not 0 <= self.hp <= self.instances:
            raise AscendraError(f"HP instances must be within 0..{self.instances}")
        if not self.system.splittable:
            return [Role.MIXED] * self.instances
        return [Role.LP] * (self.instances - self.hp) + [Role.HP] * self.hp


@dataclass(slots=True)
class _Track:
    """One request's life as the router sees it."""

    request: Request
    instance: int = -1  # where it runs or is headed; -1 while queued at the router
    attempt: int = 0  # bumped by every send, so a superseded arrival at an engine is dropped
    at_engine: bool = False  # in its instance's scheduler (not on the way there)
    first_on_the_way: bool = False  # its first token here is computed, not yet at the router
    sent_at: float = 0.0
    engine_priority: int | None = None
    first: float = -1.0
    last: float = -1.0
    tokens: int = 0
    max_gap: float = 0.0
    gaps: list[float] | None = None
    finished: bool = False
    moves: int = 0
    tbt_moves: int = 0
    offloaded: bool = False
    relegated: bool = False
    rejected: str | None = None


@dataclass(slots=True)
class _Instance:
    index: int
    role: Role
    scheduler: Scheduler
    busy: bool = False
    current: SchedulerOutput | None = None
    steps: int = 0
    busy_time: float = 0.0
    idle_with_queue: float = 0.0
    next_role: Role | None = None  # a role change waiting for the running step to end
    last_step: float = 0.0  # the last step's duration: the step time the router sees
    # What the router knows of it, kept up to date as requests come and go.
    unstarted: dict[int, int] = field(default_factory=dict)  # id → tokens to prefill
    unstarted_tokens: int = 0
    in_transit_tokens: int = 0  # of those, on the way to the engine (not in its scheduler yet)
    streams: set[int] = field(default_factory=set)
    context: int = 0  # Σ tokens of its streams
    outstanding: int = 0  # tokens still to compute for everything sent here

    def view(self) -> InstanceView:
        s = self.scheduler
        return InstanceView(
            index=self.index, role=self.role, unstarted=len(self.unstarted),
            unstarted_tokens=self.unstarted_tokens, running=len(self.streams),
            decode_context=self.context, outstanding_tokens=self.outstanding,
            kv_free_fraction=s.kv.free_fraction, kv_capacity_tokens=s.kv.capacity_tokens,
            max_seqs=s.max_seqs,
            token_budget=s.token_budget, step_time=self.last_step,
            engine_waiting=len(s.waiting), unreported_tokens=self.in_transit_tokens)


@dataclass
class SimResult:
    outcomes: list[RequestOutcome]
    gaps: np.ndarray
    duration: float
    steps: list[int] = field(default_factory=list)
    utilization: list[float] = field(default_factory=list)
    offloads: int = 0
    migrations: int = 0
    # What holding the queue costs: per instance, the time it stood idle while requests that
    # could still meet their SLO waited at the router, s.
    idle_with_queue: list[float] = field(default_factory=list)
    resizes: list[tuple[float, int, str]] = field(default_factory=list)  # (time, HP count, why)
    observations: list[Observation] = field(default_factory=list)  # with a recorder only


class Simulation:
    """``recorder``: also record the engine-queued requests' snapshots and times to first token
    on every periodic pass (the TTFT predictor's data; pair it with a policy without moves so
    that each outcome is what staying cost)."""

    def __init__(self, config: ClusterConfig, truth: LatencyModel, predictor: DeadlinePredictor,
                 slo: Slo, seed: int = 0, recorder: ObservationRecorder | None = None) -> None:
        self.config = config
        self.truth = truth
        self.predictor = predictor
        self.slo = slo
        self.recorder = recorder
        self.rng = np.random.default_rng(seed)
        spec = config.system
        self.controller = ClusterController(spec.policy, predictor,
                                            engine_priorities=spec.engine.priorities)
        self.instances = [
            _Instance(i, role, spec.engine_for(role is Role.HP).build(
                KvCache.from_tokens(config.kv_tokens)),
                last_step=predictor.batch_time(BatchShape(num_decodes=1, decode_context=1)))
            for i, role in enumerate(config.roles())]
        self._events: list[tuple[float, int, int, object]] = []
        self._seq = itertools.count()
        self._tracks: dict[int, _Track] = {}
        self._gaps: list[float] = []
        self._observations: list[Observation] = []
        self._offloads = 0
        self._migrations = 0
        self._last_resize: float | None = None
        self._next_resize = config.resize.interval if config.resize else None
        self._window = [0, 0]  # arrivals and offloads since the last resize check
        self._finished: list[tuple[int, int]] = []  # (prompt, output) in the window
        self._resizes: list[tuple[float, int, str]] = []
        self._keep_gaps = slo.tbt_kind is TbtKind.P99

    # -- the controller's view ---------------------------------------------------------------
    def _view(self, now: float, periodic: bool) -> ClusterView:
        streams: tuple[InFlight, ...] | None = None
        views = [i.view() for i in self.instances]
        if periodic:
            streams = self._streams() if self.controller.needs_streams(views) \
                or self.recorder else ()
        return ClusterView(now, views, streams, self._split_query(now) if periodic else None)

    def _streams(self) -> tuple[InFlight, ...]:
        out = []
        for t in self._tracks.values():
            if t.instance < 0 or t.finished or t.rejected:
                continue
            r = t.request
            seen = 0 if t.first_on_the_way else t.tokens  # what the router has of it
            out.append(InFlight(
                r, t.instance, r.prompt_len + seen, seen,
                t.first if seen else None, t.last if seen else None, t.sent_at,
                t.engine_priority, t.moves, t.tbt_moves))
        return tuple(out)

    def _split_query(self, now: float) -> SplitQuery | None:
        cfg = self.config.resize
        if cfg is None or self._next_resize is None or now < self._next_resize \
                or not self.config.system.splittable:
            return None
        self._next_resize = now + cfg.interval
        hps = [i for i in self.instances if i.role is Role.HP]
        lps = [i for i in self.instances if i.role is Role.LP]
        arrivals, offloads = self._window
        self._window = [0, 0]
        steps = [i.last_step for i in hps if i.streams]
        slack = [self._tracks[k].request.slack(now) for i in lps for k in i.unstarted]
        signals = SplitSignals(
            requests=arrivals, offload_fraction=offloads / arrivals if arrivals else None,
            hp_queue=sum(len(i.unstarted) for i in hps) / len(hps) if hps else None,
            hp_step_time=sum(steps) / len(steps) if steps else None,
            lp_min_slack=min(slack) if slack else None, tbt_slo=self.slo.tbt)
        plan = None
        finished, self._finished = self._finished, []
        if cfg.planner and arrivals and len(finished) >= cfg.policy.min_requests:
            mix = WorkloadMix(arrivals / cfg.interval, tuple(p for p, _ in finished),
                              tuple(o for _, o in finished))
            plan = plan_split(mix, self.truth, self.slo, PlannerConfig(
                len(self.instances), cfg.hp_min, cfg.hp_max, self.config.kv_tokens,
                system=self.config.system.name, requests=cfg.planner_requests))
        return SplitQuery(signals, len(hps), cfg.hp_min, cfg.hp_max, self._last_resize,
                          cfg.policy, plan)

    # -- executing decisions -----------------------------------------------------------------
    def _pass(self, now: float, periodic: bool = False) -> None:
        view = self._view(now, periodic)
        if periodic and self.recorder is not None:
            for inst in view.instances:
                for f, snap in self.controller.engine_queue(view, inst):
                    self.recorder.snapshot(f.request.id, now, snap, f.request.slo.ttft)
        self._execute(self.controller.step(view), now)

    def _execute(self, d: Decisions, now: float) -> None:
        for req in d.relegated:
            self._tracks[req.id].relegated = True
        for rej in d.rejects:
            self._tracks[rej.request.id].rejected = rej.reason.value
        for rel in d.releases:
            self._release(rel, now)
        for mv in d.moves:
            self._move(mv, now)
        if d.split is not None and d.split.moved(sum(i.role is Role.HP for i in self.instances)):
            self._resplit(d.split.hp, d.split.reason, now)

    def _send(self, t: _Track, inst: _Instance, tokens: int, priority: int | None,
              at: float) -> None:
        """``t`` goes to ``inst``: unstarted there (as the router counts it) from now, in its
        engine's queue after the hop."""
        t.instance, t.sent_at, t.engine_priority = inst.index, at, priority
        t.attempt += 1
        inst.unstarted[t.request.id] = tokens
        inst.unstarted_tokens += tokens
        inst.in_transit_tokens += tokens
        inst.outstanding += tokens + t.request.max_tokens - t.tokens
        self._push(at, _AT_ENGINE, (inst, t, t.attempt))

    def _release(self, rel: Release, now: float) -> None:
        t = self._tracks[rel.request.id]
        self._send(t, self.instances[rel.instance], rel.request.prompt_len,
                   rel.engine_priority, now + self.config.release_delay)

    def _leave(self, t: _Track, inst: _Instance) -> None:
        """``t`` is no longer on ``inst`` (moved, finished, dropped)."""
        req = t.request
        tokens = inst.unstarted.pop(req.id, None)
        if tokens is not None:
            inst.unstarted_tokens -= tokens
            inst.outstanding -= tokens
        if req.id in inst.streams:
            inst.streams.discard(req.id)
            inst.context -= req.num_tokens
        inst.outstanding -= req.max_tokens - t.tokens
        t.first_on_the_way = False
        if t.at_engine:
            inst.scheduler.remove(req)
            t.at_engine = False
        elif tokens is not None:
            inst.in_transit_tokens -= tokens

    def _move(self, mv: Move, now: float) -> None:
        t = self._tracks[mv.request.id]
        if t.finished or t.instance != mv.source:
            return
        self._leave(t, self.instances[mv.source])
        req = t.request
        req.num_computed = 0  # token replay: prompt + output so far is prefilled again
        t.moves += 1
        if mv.reason.value == "offload":
            req.offloaded = t.offloaded = True
            self._offloads += 1
            self._window[1] += 1
        elif mv.reason.value == "tbt":
            t.tbt_moves += 1
            self._migrations += 1
        self._send(t, self.instances[mv.target], req.num_tokens, mv.engine_priority,
                   now + self.config.offload_delay)

    def _resplit(self, hp: int, reason: str, now: float) -> None:
        hps = [i for i in self.instances if i.role is Role.HP]
        lps = [i for i in self.instances if i.role is Role.LP]
        self._last_resize = now
        self._resizes.append((now, hp, reason))
        target, role = (lps[-1], Role.HP) if hp > len(hps) else (hps[-1], Role.LP)
        if target.busy:
            target.next_role = role
        else:
            self._swap_role(target, role)

    def _swap_role(self, inst: _Instance, role: Role) -> None:
        """Hand an instance's requests (and their KV) to the other role's scheduler: the
        engine keeps running them, only the policy changes, as on a real label flip."""
        engine = self.config.system.engine_for(role is Role.HP)
        old, new = inst.scheduler, engine.build(inst.scheduler.kv)
        new.running.extend(old.running)
        for req in old.waiting:  # an engine keeps the priority a request was sent with
            new.add(req, req.priority if engine.priorities else None)
        inst.scheduler, inst.role, inst.next_role = new, role, None

    # -- the engines -------------------------------------------------------------------------
    def _push(self, t: float, kind: int, payload: object) -> None:
        heapq.heappush(self._events, (t, next(self._seq), kind, payload))

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
        if out.is_empty:
            if not s.running and s.waiting:
                # Nothing runs and nothing fits: the head can never be served here.
                t = self._tracks[s.waiting[0].id]
                self._leave(t, inst)
                t.instance = -1
                if self.recorder is not None:
                    self.recorder.forget(t.request.id)
            return
        dur = self.truth.batch_time(out.shape) * self._jitter()
        inst.busy, inst.current, inst.last_step = True, out, dur
        inst.steps += 1
        inst.busy_time += dur
        self._push(now + dur, _STEP_DONE, inst)

    def _step_done(self, inst: _Instance, now: float) -> bool:
        """Apply the step; True when a request started or finished (the router's events)."""
        assert inst.current is not None
        result = inst.scheduler.update(inst.current)
        inst.busy, inst.current = False, None
        changed = bool(result.finished)
        for req in result.sampled:
            t = self._tracks[req.id]
            inst.outstanding -= 1
            if t.tokens:
                gap = now - t.last
                self._gaps.append(gap)
                if t.gaps is not None:
                    t.gaps.append(gap)
                if gap > t.max_gap:
                    t.max_gap = gap
            else:
                t.first = now
                if self._keep_gaps:
                    t.gaps = []
                if self.recorder is not None:
                    self._observations += self.recorder.first_token(
                        req.id, now + self.config.first_token_delay)
            if req.id in inst.unstarted:  # a first token, or a moved stream's first here
                if not self.config.first_token_delay:
                    self._first_here(inst, t)
                    changed = True
                elif not t.first_on_the_way:
                    t.first_on_the_way = True
                    self._push(now + self.config.first_token_delay, _FIRST_BACK,
                               (inst, t, t.attempt))
            else:
                inst.context += 1
            t.last = now
            t.tokens += 1
        for req in result.finished:
            t = self._tracks[req.id]
            if t.first_on_the_way:  # its first and last tokens reach the router together
                self._first_here(inst, t)
            t.finished = True
            inst.streams.discard(req.id)
            inst.context -= req.num_tokens
            self._finished.append((req.prompt_len, req.max_tokens))
        if inst.next_role is not None:
            self._swap_role(inst, inst.next_role)
        return changed

    def _first_here(self, inst: _Instance, t: _Track) -> None:
        """The router has the first token of ``t`` from ``inst``: it is a stream there."""
        req = t.request
        t.first_on_the_way = False
        inst.unstarted_tokens -= inst.unstarted.pop(req.id)
        inst.streams.add(req.id)
        inst.context += req.num_tokens

    def _fresh(self, spec: RequestSpec) -> Request:
        return Request(
            id=spec.id, arrival=spec.arrival, prompt_len=spec.prompt_len,
            max_tokens=spec.output_len, slo=self.slo,
            predicted_prefill=self.predictor.prefill_time(spec.prompt_len),
        )

    def run(self, requests: Sequence[RequestSpec]) -> SimResult:
        for spec in requests:
            self._push(spec.arrival, _ARRIVAL, spec)
        tick = self.config.system.policy.tick
        self._push(tick, _TICK, None)
        last_arrival = max((r.arrival for r in requests), default=0.0)
        horizon = last_arrival + self.config.drain_timeout
        now = 0.0
        while self._events:
            t, _, kind, payload = heapq.heappop(self._events)
            if t > horizon:
                break
            if self.controller.waiting:
                for inst in self.instances:
                    if not inst.busy:
                        inst.idle_with_queue += t - now
            now = t
            if kind == _STEP_DONE:
                inst: _Instance = payload  # type: ignore[assignment]
                if self._step_done(inst, now):
                    self._pass(now)
                self._kick(inst, now)
            elif kind == _ARRIVAL:
                self._window[0] += 1
                req = self._fresh(payload)  # type: ignore[arg-type]
                self._tracks[req.id] = _Track(req)
                self.controller.enqueue(req)
                self._pass(now)
            elif kind == _FIRST_BACK:
                inst, t, attempt = payload  # type: ignore[misc]
                if attempt == t.attempt and t.first_on_the_way:
                    self._first_here(inst, t)
                    self._pass(now)
            elif kind == _AT_ENGINE:
                inst, t, attempt = payload  # type: ignore[misc]
                if attempt == t.attempt and not t.finished:
                    t.at_engine = True
                    inst.in_transit_tokens -= inst.unstarted[t.request.id]
                    inst.scheduler.add(t.request, t.engine_priority)
                    self._kick(inst, now)
            else:
                self._pass(now, periodic=True)
                if now < last_arrival or self._in_flight():
                    self._push(now + tick, _TICK, None)
        return SimResult(
            outcomes=[self._outcome(spec) for spec in requests],
            gaps=np.asarray(self._gaps), duration=now,
            steps=[i.steps for i in self.instances],
            utilization=[i.busy_time / now if now > 0 else 0.0 for i in self.instances],
            offloads=self._offloads, migrations=self._migrations,
            idle_with_queue=[i.idle_with_queue for i in self.instances],
            resizes=self._resizes, observations=self._observations)

    def _in_flight(self) -> bool:
        return len(self.controller) > 0 or any(i.unstarted or i.streams for i in self.instances)

    def _outcome(self, spec: RequestSpec) -> RequestOutcome:
        t = self._tracks.get(spec.id)
        base = RequestOutcome(spec.id, spec.arrival, spec.prompt_len, spec.output_len,
                              self.slo)
        if t is None:
            return base
        if t.tokens == 0:
            return replace(base, offloaded=t.offloaded, relegated=t.relegated,
                           rejected=t.rejected)
        many = t.tokens > 1
        return replace(
            base, ttft=t.first + self.config.first_token_delay - spec.arrival,
            tbt_mean=(t.last - t.first) / (t.tokens - 1) if many else None,
            max_gap=t.max_gap if many else None,
            gap_p99=float(np.percentile(t.gaps, 99)) if t.gaps else None,
            tokens=t.tokens, finished=t.finished, offloaded=t.offloaded,
            relegated=t.relegated, rejected=t.rejected)

