"""The router's view of its instances: engine URL, live role and queue state.

State comes from the runtime agent beside each engine (``GET /ascendra/state``) or, for a bare
vLLM, from its ``/metrics``; either way it is the engine's own count, shared by every router
replica. What only this router knows is added on top: the requests it sent that the engine has
not reported yet (their prompt tokens, ``unreported_tokens``) and its own streams on it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import aiohttp

from ascendra.core.view import InstanceView, Role
from ascendra.runtime.engine_state import (
    EngineState,
    ProgressWatch,
    RateTracker,
    parse_metrics,
)

if TYPE_CHECKING:
    from ascendra.router.session import Session


@dataclass(frozen=True)
class InstanceSpec:
    engine_url: str
    agent_url: str | None = None  # None: a bare vLLM with a fixed role
    role: Role = Role.MIXED  # the fixed role of a bare vLLM

    @classmethod
    def parse(cls, text: str) -> InstanceSpec:
        """``ENGINE_URL[,agent=AGENT_URL][,role=lp|hp|mixed]``."""
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts or not parts[0].startswith(("http://", "https://")):
            raise ValueError(f"instance {text!r}: expected ENGINE_URL[,agent=URL][,role=ROLE]")
        kw: dict[str, str] = {}
        for p in parts[1:]:
            key, _, value = p.partition("=")
            if key not in ("agent", "role") or not value:
                raise ValueError(f"instance {text!r}: unknown option {p!r}")
            kw[key] = value
        try:
            role = Role(kw.get("role", "mixed"))
        except ValueError:
            raise ValueError(f"instance {text!r}: role must be lp, hp or mixed") from None
        return cls(parts[0].rstrip("/"), kw.get("agent", "").rstrip("/") or None, role)


@dataclass(eq=False)
class Instance:
    index: int
    spec: InstanceSpec
    state: EngineState | None = None
    # When the engine counts in ``state`` were taken (at the latest): what was sent after is
    # not in them.
    sampled_at: float = 0.0
    healthy: bool = False
    removed: bool = False  # gone from discovery; kept so that indexes stay stable
    sessions: dict[str, Session] = field(default_factory=dict)
    _rates: RateTracker = field(default_factory=RateTracker)
    # The engine's progress judged here, against what it reports and this router's requests
    # waiting there unstarted (an agent judges its engine's only against what it reports).
    progress: ProgressWatch = field(default_factory=lambda: ProgressWatch(30.0))
    # This router's requests that left the engine: (sent at, left at), kept while the engine's
    # last counts may still include them.
    _ended: list[tuple[float, float]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.spec.engine_url

    @property
    def role(self) -> Role:
        if self.state is not None and self.spec.agent_url:
            try:
                return Role(self.state.role)
            except ValueError:
                return self.spec.role
        return self.spec.role

    def forget(self, session: Session, now: float) -> None:
        """``session`` left this engine at ``now`` (finished, stopped or moved away)."""
        if self.sessions.pop(session.id, None) is not None and \
                session.sent_at < self.sampled_at:
            self._ended.append((session.sent_at, now))

    def observed(self, state: EngineState, sampled_at: float) -> None:
        """The engine's counts as they were at ``sampled_at``."""
        self.state, self.sampled_at = state, sampled_at
        self._ended = [e for e in self._ended if e[1] >= sampled_at]

    def view(self, default_seats: int, default_budget: int) -> InstanceView:
        """The controller's view: the engine's own counts, with this router's requests on it
        in detail. Requests of other clients (other router replicas) are what the engine
        counted besides this router's; they are taken to run (so they hold seats) and to be
        as long as this router's average stream."""
        st = self.state or EngineState(role=self.role.value, ready=False)
        # One walk over the sessions: every release decision builds this view, and a loaded
        # H200 holds a thousand of them.
        unstarted = unstarted_tokens = unreported = streams = context = remaining = 0
        counted = 0  # this router's requests that the engine's counts include
        for s in self.sessions.values():
            tokens = len(s.prompt_ids) + len(s.generated)
            remaining += s.max_tokens - len(s.generated)
            if s.sent_at < self.sampled_at:
                counted += 1
            if s.tokens_here == 0:  # Session.unstarted
                unstarted += 1
                unstarted_tokens += tokens
                if s.sent_at >= self.sampled_at:
                    unreported += tokens
            else:
                streams += 1
                context += tokens
        # Those counts still include this router's requests that ended after they were taken.
        counted += sum(sent < self.sampled_at <= ended for sent, ended in self._ended)
        others = min(st.running, max(0, st.running + st.waiting - counted))
        if others:
            context += others * (context // streams if streams else 0)
        return InstanceView(
            index=self.index, role=self.role, unstarted=unstarted,
            unstarted_tokens=unstarted_tokens, running=streams + others,
            decode_context=context, outstanding_tokens=remaining + unstarted_tokens,
            kv_free_fraction=1.0 - st.kv_usage, kv_capacity_tokens=st.kv_capacity_tokens,
            max_seqs=st.max_seqs or default_seats,
            token_budget=st.token_budget or default_budget, step_time=st.step_time,
            gpu=st.gpu, engine_waiting=st.waiting if self.state is not None else None,
            unreported_tokens=unreported)


class InstancePool:
    def __init__(self, specs: list[InstanceSpec], *, poll_interval: float = 0.1,
                 default_seats: int = 1024, progress_timeout: float = 30.0) -> None:
        self.poll_interval = poll_interval
        self.default_seats = default_seats
        self.progress_timeout = progress_timeout
        self.instances = [self._new(i, s) for i, s in enumerate(specs)]

    def _new(self, index: int, spec: InstanceSpec) -> Instance:
        return Instance(index, spec, progress=ProgressWatch(self.progress_timeout))

    def routable(self) -> list[Instance]:
        return [i for i in self.instances if i.healthy and not i.removed]

    def sync(self, specs: list[InstanceSpec]) -> None:
        """Adopt a discovered instance list: add new instances, retire vanished ones (their
        streams then fail over like any lost instance)."""
        wanted = {s.engine_url: s for s in specs}
        for inst in self.instances:
            inst.removed = inst.url not in wanted
            if inst.removed:
                inst.healthy = False
            else:
                inst.spec = wanted[inst.url]  # its labels (the role) may have changed
        known = {i.url for i in self.instances}
        for url, spec in wanted.items():
            if url not in known:
                self.instances.append(self._new(len(self.instances), spec))

    def instance(self, index: int) -> Instance:
        return self.instances[index]

    async def refresh(self, http: aiohttp.ClientSession, inst: Instance) -> None:
        asked = time.time()
        try:
            if inst.spec.agent_url:
                async with http.get(inst.spec.agent_url + "/ascendra/state") as r:
                    r.raise_for_status()
                    data = await r.json()
                state = EngineState(**{k: data[k] for k in EngineState.__slots__ if k in data})
            else:
                async with http.get(inst.url + "/metrics") as r:
                    r.raise_for_status()
                    sample = parse_metrics(await r.text())
                inst._rates.observe(sample)
                state = EngineState(
                    role=inst.spec.role.value, ready=True, running=sample.running,
                    waiting=sample.waiting, kv_usage=sample.kv_usage,
                    kv_capacity_tokens=sample.kv_capacity_tokens,
                    step_time=inst._rates.step_time,
                    prefill_s_per_token=inst._rates.prefill_s_per_token,
                    decode_step_time=inst._rates.decode_step_time, progress=sample.progress)
        except (TimeoutError, aiohttp.ClientError, ValueError, KeyError, TypeError):
            inst.healthy = False
            return
        if state.progress is not None:
            now = time.monotonic()
            sent = any(s.unstarted for s in inst.sessions.values())
            inst.progress.observe(state.progress, sent or state.running + state.waiting > 0,
                                  now)
            if inst.progress.stalled(now):
                state = replace(state, ready=False, stalled=True)
        inst.observed(state, asked - state.sample_age)
        inst.healthy = state.ready

    async def poll_forever(self, http: aiohttp.ClientSession) -> None:
        while True:
            await asyncio.gather(*(self.refresh(http, i) for i in self.instances
                                   if not i.removed))
            await asyncio.sleep(self.poll_interval)
