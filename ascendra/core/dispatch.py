"""Cluster-level decisions: where a new request goes, and where an offloaded one goes.

Both the simulator and the router describe each instance by an :class:`InstanceLoad` snapshot
(from the engine's own state, so several routers see the same thing) and call these functions.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ascendra.core.hp import TicketRule
from ascendra.core.latency import BatchShape, LatencyModel
from ascendra.core.request import Request
from ascendra.errors import AscendraError


class Role(enum.Enum):
    LP = "lp"
    HP = "hp"
    MIXED = "mixed"  # a baseline instance: takes everything


@dataclass(frozen=True, slots=True)
class InstanceLoad:
    index: int
    role: Role
    num_waiting: int = 0
    num_running: int = 0
    waiting_tokens: int = 0  # prompt tokens still to prefill in the waiting queue
    decode_context: int = 0  # Σ context of running requests
    kv_free_fraction: float = 1.0
    max_seqs: int = 128
    pending: int = 0  # sent to it but not yet in its queues (offloads in transit)
    step_time: float | None = None  # its current step time, s (measured or predicted)


class Dispatcher(Protocol):
    def pick(self, loads: Sequence[InstanceLoad], req: Request) -> int: ...


class RoundRobin:
    """The paper's dispatch across LPs and the baselines' across all instances."""

    def __init__(self) -> None:
        self._next = 0

    def pick(self, loads: Sequence[InstanceLoad], req: Request) -> int:
        load = loads[self._next % len(loads)]
        self._next += 1
        return load.index


def predicted_delay(model: LatencyModel, load: InstanceLoad, prompt_len: int) -> float:
    """Predicted time to a new request's first token on ``load``: everything queued there plus
    the request's own prefill, run alongside the instance's running decodes."""
    tokens = load.waiting_tokens + prompt_len
    seqs = load.num_waiting + 1
    mean = tokens / seqs
    shape = BatchShape(
        num_prefill_tokens=tokens,
        num_prefill_seqs=seqs,
        prefill_attn_pairs=seqs * mean * (mean + 1) / 2,
        num_decodes=load.num_running,
        decode_context=load.decode_context,
    )
    return model.batch_time(shape)


class LeastPredictedDelay:
    def __init__(self, model: LatencyModel) -> None:
        self.model = model

    def pick(self, loads: Sequence[InstanceLoad], req: Request) -> int:
        best = min(loads, key=lambda ld: (predicted_delay(self.model, ld, req.prompt_len),
                                          ld.index))
        return best.index


def make_dispatcher(name: str, model: LatencyModel) -> Dispatcher:
    if name == "round-robin":
        return RoundRobin()
    if name == "least-delay":
        return LeastPredictedDelay(model)
    raise AscendraError(f"unknown dispatch policy {name!r} (known: round-robin, least-delay)")


@dataclass(frozen=True, slots=True)
class Route:
    index: int
    via_ticket: bool = False


def can_meet_ttft(model: LatencyModel, load: InstanceLoad, req: Request, now: float) -> bool:
    """Whether ``req`` moved to ``load`` now would still get its first token by its deadline."""
    return now + predicted_delay(model, load, req.prompt_len) <= req.arrival + req.slo.ttft


class AscendraRouting:
    """The paper's controller: an HP takes a new request only through a ticket; otherwise it goes
    to an LP by the dispatcher. Offloaded requests go round-robin over HPs.

    With ``offload_guard`` (a latency model; beyond the paper), a request is offloaded only to an
    HP predicted to still meet its TTFT deadline. Without it an offload always moves, which on
    GPUs where the HP is no faster than the LP (engines sharing a GPU, measured) turned most
    requests into offloads whose re-prefills slowed everyone.
    """

    def __init__(self, dispatcher: Dispatcher, tickets: TicketRule | None = None,
                 offload_guard: LatencyModel | None = None) -> None:
        self.dispatcher = dispatcher
        self.tickets = tickets or TicketRule()
        self.offload_guard = offload_guard
        self._hp_next = 0

    def _next_hp(self, hps: Sequence[InstanceLoad]) -> InstanceLoad:
        return hps[self._hp_next % len(hps)]

    def route_new(self, loads: Sequence[InstanceLoad], req: Request) -> Route:
        hps = [ld for ld in loads if ld.role is Role.HP]
        lps = [ld for ld in loads if ld.role is not Role.HP]
        if hps:
            hp = self._next_hp(hps)
            if not lps or self.tickets.grants(
                waiting=hp.num_waiting, pending=hp.pending, running=hp.num_running,
                max_seqs=hp.max_seqs, kv_free_fraction=hp.kv_free_fraction,
                step_time=hp.step_time, tbt_slo=req.slo.tbt,
            ):
                self._hp_next += 1
                return Route(hp.index, via_ticket=True)
        if not lps:
            raise AscendraError("no instances to route to")
        return Route(self.dispatcher.pick(lps, req))

    def route_offload(self, loads: Sequence[InstanceLoad], req: Request | None = None,
                      now: float = 0.0) -> int | None:
        hps = [ld for ld in loads if ld.role is Role.HP]
        for k in range(len(hps)):
            hp = hps[(self._hp_next + k) % len(hps)]
            if self.offload_guard is None or req is None or \
                    can_meet_ttft(self.offload_guard, hp, req, now):
                self._hp_next += k + 1
                return hp.index
        return None


class BaselineRouting:
    """Every instance is alike; the dispatcher alone decides."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher

    def route_new(self, loads: Sequence[InstanceLoad], req: Request) -> Route:
        return Route(self.dispatcher.pick(loads, req))

    def route_offload(self, loads: Sequence[InstanceLoad], req: Request | None = None,
                      now: float = 0.0) -> int | None:
        return None
