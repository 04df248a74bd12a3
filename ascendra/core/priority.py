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
