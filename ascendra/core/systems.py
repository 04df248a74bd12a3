"""Named serving systems: which scheduler each instance runs and how the router spreads load.

One registry for every host, so ``sarathi`` means the same thing in the simulator, the runtime's
vLLM arguments and the benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ascendra.core.baselines import ChunkedPrefillScheduler, PrefillFirstScheduler
from ascendra.core.hp import HighPriorityScheduler
from ascendra.core.kv import KvCache
from ascendra.core.lp import LowPriorityScheduler
from ascendra.core.scheduler import Scheduler
from ascendra.core.values import fcfs, value_function
from ascendra.errors import AscendraError


@dataclass(frozen=True, slots=True)
class EngineSpec:
    """Per-instance scheduler settings."""

    scheduler: str  # ascendra-lp | ascendra-hp | prefill-first | chunked | chunked-priority
    token_budget: int = 8192
    max_seqs: int = 128
    value: str = "least-slack"

    def build(self, kv: KvCache) -> Scheduler:
        if self.scheduler == "ascendra-lp":
            return LowPriorityScheduler(kv, token_budget=self.token_budget,
                                        max_seqs=self.max_seqs, key=value_function(self.value))
        if self.scheduler == "ascendra-hp":
            return HighPriorityScheduler(kv, token_budget=self.token_budget,
                                         max_seqs=self.max_seqs, key=value_function(self.value))
        if self.scheduler == "prefill-first":
            return PrefillFirstScheduler(kv, token_budget=self.token_budget,
                                         max_seqs=self.max_seqs, key=fcfs)
        if self.scheduler in ("chunked", "chunked-priority"):
            return ChunkedPrefillScheduler(kv, token_budget=self.token_budget,
                                           max_seqs=self.max_seqs, key=fcfs,
                                           priority_policy=self.scheduler == "chunked-priority")
        raise AscendraError(f"unknown scheduler {self.scheduler!r}")


@dataclass(frozen=True, slots=True)
class SystemSpec:
    """A whole serving system. Partitioned systems have LP and HP engines; others one kind."""

    name: str
    engine: EngineSpec  # LP engine for partitioned systems, the only engine otherwise
    hp_engine: EngineSpec | None = None
    dispatch: str = "round-robin"
    description: str = ""
    # Requests reach the engines with the router's vLLM priority integers
    # (ascendra.core.priority.engine_priority), which order them instead of a value key.
    engine_priorities: bool = False
    # The router's rules beyond the paper (partitioned systems): TBT migration by token replay
    # (ascendra.core.migration, once per request), the offload guard (core.dispatch) and the
    # ticket's step-time fraction (core.hp.TicketRule). The router's defaults: on, on, 0.5.
    migrate: bool = False
    offload_guard: bool = False
    ticket_step_fraction: float | None = None

    @property
    def partitioned(self) -> bool:
        return self.hp_engine is not None


SYSTEMS: dict[str, SystemSpec] = {
    s.name: s
    for s in (
        SystemSpec(
            "ascendra",
            EngineSpec("ascendra-lp", 8192, 128, "least-slack"),
            EngineSpec("ascendra-hp", 8192, 128, "least-slack"),
            description="LP: decode-first + whole prefills by least slack; offload at-risk to HP",
        ),
        SystemSpec(
            "ascendra-v1",
            EngineSpec("chunked-priority", 8192, 128),
            EngineSpec("chunked-priority", 8192, 128),
            engine_priorities=True, migrate=True, offload_guard=True, ticket_step_fraction=0.5,
            description="Ascendra as the router deploys it: stock vLLM v1 engines (chunked "
                        "prefill, budget 8192, 128 seats, priority policy) in both roles, "
                        "ordered by the router's priority integers, with its default rules",
        ),
        SystemSpec("vllm-v0", EngineSpec("prefill-first", 8192, 128),
                   description="FCFS, prefill-first, whole prompts (vLLM v0 / the paper's vLLM)"),
        SystemSpec("sarathi", EngineSpec("chunked", 512, 128),
                   description="FCFS, decode-first, chunked prefill, budget 512"),
        SystemSpec("vllm", EngineSpec("chunked", 8192, 1024),
                   description="vLLM v1 defaults on an H100: decode-first, chunked prefill, "
                               "budget 8192, 1024 seats"),
    )
}


def system(name: str, *, dispatch: str | None = None, max_seqs: int | None = None) -> SystemSpec:
    try:
        spec = SYSTEMS[name]
    except KeyError:
        raise AscendraError(f"unknown system {name!r} (known: {', '.join(SYSTEMS)})") from None
    if dispatch is not None:
        spec = replace(spec, dispatch=dispatch)
    if max_seqs is not None:
        spec = replace(
            spec,
            engine=replace(spec.engine, max_seqs=max_seqs),
            hp_engine=replace(spec.hp_engine, max_seqs=max_seqs) if spec.hp_engine else None,
        )
    return spec
