"""The router's view of its instances: engine URL, live role and queue state.

State comes from the runtime agent beside each engine (``GET /ascendra/state``) or, for a bare
vLLM, from its ``/metrics``; either way it is the engine's own count, shared by every router
replica. What only this router knows is added on top: the requests it sent that the engine has
not reported yet (``pending``) and its own streams on the instance.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiohttp

from ascendra.core.dispatch import InstanceLoad, Role
from ascendra.runtime.engine_state import EngineState, RateTracker, parse_metrics

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
    state_at: float = 0.0
    healthy: bool = False
    removed: bool = False  # gone from discovery; kept so that indexes stay stable
    sessions: dict[str, Session] = field(default_factory=dict)
    _rates: RateTracker = field(default_factory=RateTracker)

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

    def load(self, default_seats: int) -> InstanceLoad:
        st = self.state or EngineState(role=self.role.value, ready=False)
        waiting_own = [s for s in self.sessions.values() if not s.generated]
        return InstanceLoad(
            index=self.index, role=self.role, num_waiting=st.waiting, num_running=st.running,
            waiting_tokens=sum(len(s.prompt_ids) for s in waiting_own),
            decode_context=sum(len(s.prompt_ids) + len(s.generated)
                               for s in self.sessions.values() if s.generated),
            kv_free_fraction=1.0 - st.kv_usage, max_seqs=st.max_seqs or default_seats,
            # Own requests still without a first token: sent, but not yet through prefill (a
            # vLLM engine counts them as running as soon as they have a seat).
            pending=len(waiting_own), step_time=st.step_time,
        )


class InstancePool:
    def __init__(self, specs: list[InstanceSpec], *, poll_interval: float = 0.1,
                 default_seats: int = 128) -> None:
        self.instances = [Instance(i, s) for i, s in enumerate(specs)]
        self.poll_interval = poll_interval
        self.default_seats = default_seats

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
                self.instances.append(Instance(len(self.instances), spec))

    def loads(self, among: list[Instance] | None = None) -> list[InstanceLoad]:
        return [i.load(self.default_seats) for i in (among or self.routable())]

    async def refresh(self, http: aiohttp.ClientSession, inst: Instance) -> None:
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
                    prefill_s_per_token=inst._rates.prefill_s_per_token)
        except (TimeoutError, aiohttp.ClientError, ValueError, KeyError, TypeError):
            inst.healthy = False
            return
        inst.state, inst.state_at, inst.healthy = state, time.time(), state.ready

    async def poll_forever(self, http: aiohttp.ClientSession) -> None:
        while True:
            await asyncio.gather(*(self.refresh(http, i) for i in self.instances
                                   if not i.removed))
            await asyncio.sleep(self.poll_interval)
