"""Named serving systems: the engines each instance runs and the controller's policy.

One registry for every host: a name gives the simulator its schedulers, the runtime its vLLM
arguments and the router its policy, so ``vllm-lb`` means the same thing in ``ascendra sim``,
``ascendra runtime``, ``ascendra router`` and the operator.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ascendra.core.baselines import ChunkedPrefillScheduler, PrefillFirstScheduler
from ascendra.core.hp import HighPriorityScheduler
from ascendra.core.kv import KvCache
from ascendra.core.lp import LowPriorityScheduler
from ascendra.core.policy import Dispatch, Order, Policy
from ascendra.core.scheduler import Scheduler
from ascendra.core.values import fcfs, value_function
from ascendra.errors import AscendraError

# vLLM v1's defaults on a GPU with more than 70 GiB (H100, H200) for the API server.
VLLM_TOKEN_BUDGET, VLLM_SEATS = 8192, 1024


@dataclass(frozen=True, slots=True)
class EngineSpec:
    """Per-instance engine settings.

    ``scheduler``: ``vllm`` (vLLM v1: decode-first, chunked prefill, FCFS), ``vllm-priority``
    (the same with ``--scheduling-policy priority``), or, simulated only, ``prefill-first``
    (vLLM v0) and the paper's ``ascendra-lp`` / ``ascendra-hp``.
    """

    scheduler: str
    token_budget: int = VLLM_TOKEN_BUDGET
    max_seqs: int = VLLM_SEATS
    value: str = "least-slack"

    @property
    def priorities(self) -> bool:
        """Whether the engine orders its queue by the priorities requests arrive with."""
        return self.scheduler == "vllm-priority"

    def vllm_args(self) -> tuple[str, ...] | None:
        """vLLM's arguments for this engine beyond its defaults; None when no vLLM runs it."""
        if self.scheduler not in ("vllm", "vllm-priority"):
            return None
        args: list[str] = ["--scheduling-policy", "priority"] if self.priorities else []
        if self.token_budget != VLLM_TOKEN_BUDGET:
            args += ["--max-num-batched-tokens", str(self.token_budget)]
        if self.max_seqs != VLLM_SEATS:
            args += ["--max-num-seqs", str(self.max_seqs)]
        return tuple(args)

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
        if self.scheduler in ("vllm", "vllm-priority"):
            return ChunkedPrefillScheduler(kv, token_budget=self.token_budget,
                                           max_seqs=self.max_seqs, key=fcfs,
                                           priority_policy=self.priorities)
        raise AscendraError(f"unknown scheduler {self.scheduler!r}")


@dataclass(frozen=True, slots=True)
class SystemSpec:
    name: str
    engine: EngineSpec  # every instance's engine (the LPs' in the paper's design)
    policy: Policy
    hp_instances: int = 0  # the default split; the operator and the planner may change it
    hp_engine: EngineSpec | None = None  # the paper's HP scheduler, where it differs
    description: str = ""
    splittable: bool = False  # may run HP instances (the baselines never do)

    @property
    def deployable(self) -> bool:
        return self.engine.vllm_args() is not None and self.hp_engine is None

    def engine_for(self, hp: bool) -> EngineSpec:
        return self.hp_engine if hp and self.hp_engine is not None else self.engine


_STOCK = Policy(hold_queue=False, dispatch=Dispatch.ROUND_ROBIN, offload=False, migration=False)

SYSTEMS: dict[str, SystemSpec] = {
    s.name: s
    for s in (
        SystemSpec(
            "ascendra", EngineSpec("vllm-priority"), Policy(), splittable=True,
            description="one vLLM v1 engine per GPU (defaults, priority scheduling); the "
                        "router holds the queue: releases by least slack to the engine with "
                        "the least predicted delay, relegates requests that can no longer "
                        "meet their TTFT, offloads and migrates where predicted to gain"),
        SystemSpec(
            "ascendra-paper", EngineSpec("ascendra-lp", max_seqs=128),
            Policy(hold_queue=False, dispatch=Dispatch.ROUND_ROBIN, offload_guard=False,
                   migration=False, ticket_step_fraction=0.0),
            hp_instances=1, hp_engine=EngineSpec("ascendra-hp", max_seqs=128), splittable=True,
            description="the paper's design (reference): LP decode-first + whole prefills by "
                        "least slack, HP prefill-first, tickets, offload at-risk to HP"),
        SystemSpec("vllm", EngineSpec("vllm"), _STOCK,
                   description="stock vLLM v1 replicas (defaults), round-robin"),
        SystemSpec("vllm-lb", EngineSpec("vllm"), replace(_STOCK, dispatch=Dispatch.LEAST_DELAY),
                   description="stock vLLM v1 replicas, least predicted delay dispatch"),
        SystemSpec("vllm-shed", EngineSpec("vllm"),
                   replace(_STOCK, hold_queue=True, order=Order.FCFS,
                           dispatch=Dispatch.LEAST_DELAY),
                   description="vllm-lb plus the router's queue, FCFS, with the same "
                               "relegation and rejection rule as ascendra"),
        SystemSpec("sarathi", EngineSpec("vllm", 512, 128), _STOCK,
                   description="vLLM v1, chunked prefill budget 512, 128 seats (Sarathi-Serve)"),
        SystemSpec("vllm-v0", EngineSpec("prefill-first", max_seqs=128), _STOCK,
                   description="FCFS, prefill-first, whole prompts (vLLM v0, the paper's "
                               "vLLM; simulated only)"),
    )
}


def system(name: str, *, max_seqs: int | None = None, policy: Policy | None = None
           ) -> SystemSpec:
    try:
        spec = SYSTEMS[name]
    except KeyError:
        raise AscendraError(f"unknown system {name!r} (known: {', '.join(SYSTEMS)})") from None
    if policy is not None:
        spec = replace(spec, policy=policy)
    if max_seqs is not None:
        spec = replace(
            spec, engine=replace(spec.engine, max_seqs=max_seqs),
            hp_engine=replace(spec.hp_engine, max_seqs=max_seqs) if spec.hp_engine else None)
    return spec
