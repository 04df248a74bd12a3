"""What the cluster controller sees: each instance's measured state and the requests in flight.

The router builds a :class:`ClusterView` from the engines' reports and its own streams; the
simulator from its schedulers. Both describe the same things the same way, so the controller
cannot tell them apart.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

from ascendra.core.request import Request
from ascendra.core.split import SplitPlan, SplitPolicy, SplitSignals


class Role(enum.Enum):
    LP = "lp"
    HP = "hp"
    MIXED = "mixed"  # an instance of an unpartitioned pool: takes everything


@dataclass(frozen=True, slots=True)
class InstanceView:
    index: int
    role: Role
    unstarted: int = 0  # requests sent here that have no first token yet
    unstarted_tokens: int = 0  # the tokens they still have to prefill
    running: int = 0  # streams decoding here (first token out)
    decode_context: int = 0  # Σ their context
    outstanding_tokens: int = 0  # tokens still to compute for everything sent here
    kv_free_fraction: float = 1.0
    kv_capacity_tokens: int = 0  # 0: unknown (the engine has not said)
    max_seqs: int = 1024
    token_budget: int = 8192  # tokens the engine computes per step at most
    step_time: float | None = None  # its recent step time, s
    gpu: str = ""  # instances that share a GPU share this; "" shares with none
    # The engine's own queue: requests it reports waiting for their first step (None: it has
    # not said), and the prompt tokens sent here that its report cannot count yet (sent after
    # the report was sampled, or still on the way there).
    engine_waiting: int | None = None
    unreported_tokens: int = 0

    @property
    def kv_free_tokens(self) -> float:
        """KV left once its unstarted prompts are in (inf when the capacity is unknown)."""
        if self.kv_capacity_tokens <= 0:
            return float("inf")
        return self.kv_free_fraction * self.kv_capacity_tokens - self.unstarted_tokens

    def shares_gpu(self, other: InstanceView) -> bool:
        return bool(self.gpu) and self.gpu == other.gpu


@dataclass(slots=True)
class InFlight:
    """A request on an instance: unstarted (no first token yet) or a stream. (Not frozen: a
    host builds one per request on every periodic pass, and frozen ones cost twice as much.)"""

    request: Request
    instance: int
    tokens: int  # what a replay prefills: prompt plus the tokens generated so far
    generated: int
    first_token_at: float | None
    last_token_at: float | None
    sent_at: float
    engine_priority: int | None = None  # what it was sent with (its place in the engine queue)
    moves: int = 0
    tbt_moves: int = 0

    @property
    def started(self) -> bool:
        return self.first_token_at is not None

    @property
    def remaining(self) -> int:
        return self.request.max_tokens - self.generated

    @property
    def engine_order(self) -> tuple[int, float]:
        """The order an engine serves its waiting requests: priority (lower first; none is
        0, first come first served), then arrival at the engine."""
        return (self.engine_priority or 0, self.sent_at)


@dataclass(frozen=True, slots=True)
class SplitQuery:
    """Ask for a split proposal: the window's signals, the current HP count and its bounds."""

    signals: SplitSignals
    hp: int
    hp_min: int
    hp_max: int
    last_move_at: float | None
    policy: SplitPolicy = field(default_factory=SplitPolicy)
    plan: SplitPlan | None = None


@dataclass(frozen=True, slots=True)
class ClusterView:
    """``streams`` marks the host's periodic pass (every ``policy.tick``): every request in
    flight, or an empty tuple when the controller needs none
    (:meth:`~ascendra.core.controller.ClusterController.needs_streams`). ``None`` on the passes
    events trigger (an arrival, a first token, a finish), which only admit and release."""

    now: float
    instances: Sequence[InstanceView]
    streams: Sequence[InFlight] | None = None
    split: SplitQuery | None = None

    def instance(self, index: int) -> InstanceView:
        for inst in self.instances:
            if inst.index == index:
                return inst
        raise KeyError(index)
