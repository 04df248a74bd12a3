"""Requests and their SLOs, as every scheduler and host sees them.

A request follows vLLM v1's token accounting: it holds ``num_tokens`` (prompt plus the output
sampled so far) and ``num_computed`` (tokens whose KV is in the cache). Each step computes some of
the missing tokens; when a step catches a request up, one new token is sampled. Prefill and
decode are therefore not separate states: a request is decoding when exactly one token is
missing and it has produced output before. Preemption by recompute sets ``num_computed`` to 0,
which turns the request back into a prefill of its prompt plus its output so far.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ascendra.errors import AscendraError


class TbtKind(enum.Enum):
    """Which of a request's gaps between tokens its TBT target bounds."""

    MEAN = "mean"  # the mean gap (the paper's definition)
    P99 = "p99"  # the 99th percentile of its gaps
    MAX = "max"  # every gap: what users feel as stutter


@dataclass(frozen=True, slots=True)
class Slo:
    """Latency targets of a request, in seconds: TTFT, and TBT over the gaps ``tbt_kind``
    names."""

    ttft: float
    tbt: float
    tbt_kind: TbtKind = TbtKind.MEAN

    def __post_init__(self) -> None:
        if not (self.ttft > 0 and self.tbt > 0):
            raise AscendraError(
                f"SLO targets must be positive, got ttft={self.ttft} tbt={self.tbt}")


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"
    REMOVED = "removed"  # taken off this instance (offloaded, migrated, aborted)


@dataclass(slots=True, eq=False)
class Request:
    """One request on one instance's scheduler.

    ``arrival`` is when the request reached the router (TTFT counts from it, also after an
    offload). ``predicted_prefill`` is the performance model's estimate of the request's
    stand-alone prefill time, fixed at admission so that priority keys stay static.
    """

    id: int
    arrival: float
    prompt_len: int
    max_tokens: int
    slo: Slo
    predicted_prefill: float = 0.0
    offloaded: bool = False

    status: Status = Status.WAITING
    num_generated: int = 0
    num_computed: int = 0
    ever_scheduled: bool = False
    num_preemptions: int = 0
    kv_blocks: int = 0
    # Sort key inside an instance's queues; set by the scheduler from its value function.
    priority: float = 0.0
    seq: int = field(default=0, repr=False)

    @property
    def num_tokens(self) -> int:
        return self.prompt_len + self.num_generated

    @property
    def remaining(self) -> int:
        """Tokens that must be computed before the next token can be sampled."""
        return self.num_tokens - self.num_computed

    @property
    def is_decode(self) -> bool:
        return self.num_generated > 0 and self.remaining == 1

    @property
    def deadline(self) -> float:
        """Latest time the first token may appear."""
        return self.arrival + self.slo.ttft

    def slack(self, now: float) -> float:
        """TTFT-SLO − (waited + predicted prefill): how long the request can still wait."""
        return self.deadline - self.predicted_prefill - now

    @property
    def finished(self) -> bool:
        return self.num_generated >= self.max_tokens
