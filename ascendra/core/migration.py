"""When moving a running request helps its time between tokens (beyond the paper).

The paper only offloads requests that have not started. A running request whose decode slows
down (a crowded instance, a long prefill landing next to it) can still miss its mean-TBT target;
token replay moves it: abort on the source, resend prompt + generated tokens with the remaining
budget to another instance. The move costs a re-prefill there, so it is worth it only when the
projected mean TBT after the move is within the target and better than staying.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class StreamProgress:
    first_token_at: float
    last_token_at: float
    tokens: int  # output tokens delivered so far
    remaining: int  # output tokens still to come (at most)


def projected_mean_tbt(p: StreamProgress, now: float, step_time: float,
                       extra_delay: float = 0.0) -> float:
    """Mean gap over the whole request if the remaining tokens arrive one per ``step_time``
    after ``extra_delay`` (a re-prefill) from now."""
    total = p.tokens + p.remaining
    if total <= 1 or p.tokens == 0:
        return 0.0
    end = max(now, p.last_token_at) + extra_delay + p.remaining * step_time
    return (end - p.first_token_at) / (total - 1)


def observed_mean_tbt(p: StreamProgress) -> float:
    return (p.last_token_at - p.first_token_at) / (p.tokens - 1) if p.tokens > 1 else 0.0


def tbt_at_risk(p: StreamProgress, now: float, step_time: float, slo_tbt: float,
                min_tokens: int = 8) -> bool:
    """A request is at risk when it is already over its target after enough tokens to tell
    (a few slow gaps early on are noise) and staying would keep it over."""
    return (p.remaining > 0 and p.tokens >= min_tokens
            and observed_mean_tbt(p) > slo_tbt
            and projected_mean_tbt(p, now, step_time) > slo_tbt)


def migration_helps(p: StreamProgress, now: float, *, source_step: float, target_step: float,
                    target_prefill: float, slo_tbt: float, min_gain: float = 0.1) -> bool:
    """Moving must meet the target and beat staying by at least ``min_gain`` (a fraction), so
    that noise in the step estimates does not bounce a request between instances."""
    stay = projected_mean_tbt(p, now, source_step)
    move = projected_mean_tbt(p, now, target_step, extra_delay=target_prefill)
    return move <= slo_tbt and move < stay * (1 - min_gain)


def migration_target(p: StreamProgress, now: float, *, source_step: float,
                     targets: Sequence[tuple[T, float]], slo_tbt: float,
                     prefill_time: Callable[[], float]) -> T | None:
    """Where a running stream moves for its TBT, if anywhere: only when it is at risk where it
    is, to the target with the fastest step (``targets``: each with its step time), and only if
    the move, its re-prefill included, helps. ``prefill_time`` is called only then."""
    if not targets or not tbt_at_risk(p, now, source_step, slo_tbt):
        return None
    target, step = min(targets, key=lambda t: t[1])
    helps = migration_helps(p, now, source_step=source_step, target_step=step,
                            target_prefill=prefill_time(), slo_tbt=slo_tbt)
    return target if helps else None
