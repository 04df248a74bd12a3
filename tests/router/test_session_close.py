"""A session whose client has gone is never started again, not even by a move that was under
way when the client left (the offload race: a client leaving while its request was being
offloaded left an orphan generating to max_tokens with no reader, 3 of 8 runs)."""

from __future__ import annotations

import asyncio

import pytest

from ascendra.core.request import Request, Slo
from ascendra.router.instances import Instance, InstanceSpec
from ascendra.router.session import Session


def _session() -> tuple[Session, Instance, Instance]:
    req = Request(id=1, arrival=0.0, prompt_len=4, max_tokens=8, slo=Slo(1.0, 0.1))
    s = Session(id="s", request=req, prompt_ids=[1, 2, 3, 4], max_tokens=8, sampling={})
    a = Instance(0, InstanceSpec.parse("http://127.0.0.1:1"))
    b = Instance(1, InstanceSpec.parse("http://127.0.0.1:2"))
    s.instance = a
    a.sessions[s.id] = s
    return s, a, b


def test_a_move_under_way_when_the_client_leaves_starts_nothing():
    async def run() -> None:
        s, a, b = _session()

        async def old_stream() -> None:  # its cancellation takes a moment, as a socket's does
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                await asyncio.sleep(0.05)
                raise

        s._reader = asyncio.create_task(old_stream())
        await asyncio.sleep(0)
        move = asyncio.create_task(s.move(None, b, None))  # type: ignore[arg-type]
        await asyncio.sleep(0.01)  # the move waits for the old stream to stop
        await s.close()
        assert await move is False
        assert b.sessions == {} and a.sessions == {} and s._reader is None

    asyncio.run(run())


def test_a_closed_session_cannot_be_started():
    s, _, b = _session()
    s.closed = True
    with pytest.raises(RuntimeError, match="closed"):
        s.start(None, b, None)  # type: ignore[arg-type]
    assert b.sessions == {}


def test_a_session_is_relayed_only_once_its_queued_events_are_taken():
    """The reader sets the finish reason with its last event, often before the relay took the
    events ahead of it: an answer that ended at ``done`` lost the last tokens and the finish."""
    from ascendra.router.session import TokenEvent

    async def run() -> None:
        s, _, _ = _session()
        for ids, finish in (([5], None), ([6], None), ([7], "length")):
            s._events.put_nowait(TokenEvent(ids, "t", finish))
        s.generated, s.finish_reason = [5, 6, 7], "length"
        assert s.done and not s.relayed
        events = await s.next_events()
        assert [e.token_ids for e in events] == [[5], [6], [7]]
        assert events[-1].finish_reason == "length"
        assert s.relayed

    asyncio.run(run())
