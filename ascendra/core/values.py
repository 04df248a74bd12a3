"""LP value functions, written as static sort keys (lower is served first).

The paper's default value is 1/slack with slack = TTFT-SLO − (now − arrival + T̂_prefill), and +∞
once slack ≤ 0. Ordering by it at any instant equals ordering by the static key
``arrival + TTFT-SLO − T̂_prefill`` (late requests have the smallest keys, so they also come first).
A static key is what lets stock vLLM's ``--scheduling-policy priority`` run the same order.
"""

from __future__ import annotations

from collections.abc import Callable

from ascendra.core.request import Request
from ascendra.errors import AscendraError

ValueKey = Callable[[Request], float]


def least_slack(req: Request) -> float:
    return req.deadline - req.predicted_prefill


def shortest_job(req: Request) -> float:
    return float(req.prompt_len)


def fcfs(req: Request) -> float:
    return req.arrival


VALUE_FUNCTIONS: dict[str, ValueKey] = {
    "least-slack": least_slack,
    "sjf": shortest_job,
    "fcfs": fcfs,
}


def value_function(name: str) -> ValueKey:
    try:
        return VALUE_FUNCTIONS[name]
    except KeyError:
        known = ", ".join(VALUE_FUNCTIONS)
        raise AscendraError(f"unknown value function {name!r} (known: {known})") from None
