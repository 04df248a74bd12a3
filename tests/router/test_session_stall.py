"""Stall detection: a started stream that goes silent is a failure; a queued one is not."""

from __future__ import annotations

from ascendra.core.request import Request, Slo
from ascendra.router.instances import Instance, InstanceSpec
from ascendra.router.session import FailureEvent, Session


def _session() -> Session:
    req = Request(id=1, arrival=0.0, prompt_len=4, max_tokens=8, slo=Slo(1.0, 0.1))
    s = Session(id="s", request=req, prompt_ids=[1, 2, 3, 4], max_tokens=8, sampling={})
    s.instance = Instance(0, InstanceSpec.parse("http://127.0.0.1:1"))
    s._attempt = 1
    return s


def test_waiting_for_a_first_token_is_never_a_stall():
    s = _session()
    assert not s.check_stall(now=1000.0, timeout=30.0)


def test_a_started_stream_that_goes_silent_stalls_once_per_attempt():
    s = _session()
    s.generated, s.last_event_at = [7], 100.0
    assert not s.check_stall(now=120.0, timeout=30.0)
    assert s.check_stall(now=131.0, timeout=30.0)
    assert isinstance(s._events.get_nowait(), FailureEvent)
    assert not s.check_stall(now=200.0, timeout=30.0)  # already reported for this attempt
