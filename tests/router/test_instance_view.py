"""What a router tells the controller about an engine: the engine's own counts (sampled now and
then) with this router's requests in detail. The requests of other clients, such as another
router replica, are what the engine counted besides this router's."""

from __future__ import annotations

from ascendra.core.request import Request, Slo
from ascendra.router.instances import Instance, InstanceSpec
from ascendra.router.session import Session
from ascendra.runtime.engine_state import EngineState

SAMPLED = 100.0


def _instance(running: int, waiting: int) -> Instance:
    inst = Instance(0, InstanceSpec.parse("http://127.0.0.1:1"))
    inst.observed(EngineState(role="lp", ready=True, running=running, waiting=waiting,
                              max_seqs=4), SAMPLED)
    return inst


def _send(inst: Instance, sid: str, at: float, *, started: bool) -> Session:
    req = Request(id=len(inst.sessions), arrival=0.0, prompt_len=4, max_tokens=8,
                  slo=Slo(1.0, 0.1))
    s = Session(id=sid, request=req, prompt_ids=[1, 2, 3, 4], max_tokens=8, sampling={})
    s.instance, s.sent_at = inst, at
    if started:
        s.generated, s.tokens_here = [7], 1
    inst.sessions[sid] = s
    return s


def _seats_taken(inst: Instance) -> int:
    v = inst.view(default_seats=4, default_budget=512)
    return v.running + v.unstarted


def test_another_routers_requests_hold_seats_while_this_one_sends_more():
    """The engine ran 3 requests of another router when sampled; since, this router sent one
    (not in the counts yet). All 4 seats are taken. Counting this router's unsent-when-sampled
    request against the engine's running count saw a seat free, and a second router replica
    released past the seats into the engine's queue."""
    inst = _instance(running=3, waiting=0)
    _send(inst, "b", SAMPLED + 0.01, started=False)
    view = inst.view(default_seats=4, default_budget=512)
    assert (view.running, view.unstarted) == (3, 1)
    assert _seats_taken(inst) == 4


def test_this_routers_requests_waiting_in_the_engine_are_not_taken_for_others():
    inst = _instance(running=4, waiting=1)
    for i in range(4):
        _send(inst, f"s{i}", SAMPLED - 1, started=True)
    _send(inst, "w", SAMPLED - 0.5, started=False)  # in the engine's queue when sampled
    assert inst.view(default_seats=4, default_budget=512).running == 4
    assert _seats_taken(inst) == 5


def test_a_request_that_ended_since_the_sample_frees_its_seat_at_once():
    """The counts still hold a stream of this router that has ended since: it is not another
    client's, and its seat is free for the next release without waiting for a new sample."""
    inst = _instance(running=4, waiting=0)
    streams = [_send(inst, f"s{i}", SAMPLED - 1, started=True) for i in range(4)]
    inst.forget(streams[0], SAMPLED + 0.2)
    assert _seats_taken(inst) == 3
    _send(inst, "next", SAMPLED + 0.5, started=False)
    assert _seats_taken(inst) == 4


def test_ended_requests_stop_counting_once_a_later_sample_cannot_hold_them():
    inst = _instance(running=2, waiting=0)
    first = _send(inst, "a", SAMPLED - 1, started=True)
    _send(inst, "b", SAMPLED - 1, started=True)
    inst.forget(first, SAMPLED + 0.5)
    inst.observed(EngineState(role="lp", ready=True, running=3, waiting=0, max_seqs=4),
                  SAMPLED + 1)  # b and two requests of another client
    assert inst.view(default_seats=4, default_budget=512).running == 3


def test_a_request_moved_away_before_the_sample_was_never_in_its_counts():
    inst = _instance(running=1, waiting=0)
    gone = _send(inst, "a", SAMPLED - 2, started=True)
    inst.sampled_at = SAMPLED - 3  # an older sample: a was sent after it
    inst.forget(gone, SAMPLED - 1)
    inst.observed(EngineState(role="lp", ready=True, running=1, waiting=0, max_seqs=4), SAMPLED)
    assert inst.view(default_seats=4, default_budget=512).running == 1  # another client's
