"""The router's own health on /metrics: how long its controller's passes take and how late its
event loop wakes for them, against the router process over the STAND-IN backend."""

from __future__ import annotations

import time

from standin_router import get, standin_router

BACKEND, ROUTER = 18964, 18974


def _series(text: str, name: str) -> float:
    return next(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                if line.startswith(name + " "))


def test_control_passes_and_loop_lag_are_measured():
    with standin_router(BACKEND, ROUTER) as url:
        _, first = get(url + "/metrics")
        time.sleep(1.0)  # the periodic pass runs every 50 ms
        status, text = get(url + "/metrics")
    assert status == 200
    for name in ("ascendra_control_pass_seconds", "ascendra_event_loop_lag_seconds"):
        passes = _series(text, name + "_count") - _series(first, name + "_count")
        assert passes >= 5, (name, passes)
        # An idle router keeps up: no pass or wake-up near the 50 ms period.
        assert _series(text, name + "_sum") / _series(text, name + "_count") < 0.05
