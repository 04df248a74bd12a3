"""The policy as vLLM's ``priority`` field: an int64, lower served first, FCFS among equals.

Keys are absolute times in milliseconds on a clock shared by every router (wall time), so that
requests from several router replicas order correctly on one engine.

* LP: the value key itself (least slack: deadline − predicted prefill). Ordering by it equals
  ordering by slack at any instant, so vLLM's static priority queue runs the paper's LP order.
* HP: offloaded requests ahead of ticket-admitted ones, both by deadline; a request that is
  already past saving at submission goes behind everything. (vLLM's queue is static, so a request
  that becomes late while queued on the HP keeps its place: the one thing a static key cannot
  express.)
"""

from __future__ import annotations

from ascendra.core.request import Request
from ascendra.core.values import ValueKey, least_slack
from ascendra.core.view import Role

_MS = 1000.0
BAND = 1 << 50  # ≈ 35,000 years of milliseconds: bands never overlap real keys


def lp_priority(req: Request, key: ValueKey = least_slack) -> int:
    return round(key(req) * _MS)


def hp_priority(req: Request, now: float) -> int:
    base = round(least_slack(req) * _MS)
    if req.slack(now) <= 0:
        return base + BAND
    if req.offloaded:
        return base - BAND
    return base


def engine_priority(req: Request, role: Role, now: float, started: bool) -> int:
    """The priority a request is sent to an instance with.

    ``started``: it has already streamed tokens (it is being moved). Its client is mid-stream,
    every step it waits is a gap in the stream, and vLLM pushes the running request with the
    largest key out first when KV runs short; so it goes in a band ahead of everything. (In
    the HP's "past saving" band, where its passed TTFT deadline put it before, a moved stream
    on a loaded HP was the first one preempted and then waited behind every new request.)
    """
    if started:
        return lp_priority(req) - 2 * BAND
    if role is Role.HP:
        return hp_priority(req, now)
    return lp_priority(req)
