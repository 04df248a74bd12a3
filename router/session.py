"""One client request's life in the router: its upstream stream, and moving it by token replay.

A :class:`Session` owns the prompt's token ids and every token generated so far. Its upstream
reader appends tokens as they arrive and queues them for the client. ``move()`` cancels the
reader (closing the connection aborts the request on the engine) and starts a new one on another
instance with prompt + generated tokens and the remaining budget. Because the old reader is gone
before the new one starts and every token is recorded where it is queued, the client's stream has
no gap and no duplicate, and its usage counts each token once. Once a session has moved with
tokens already sent, the router derives the text from the token ids itself
(:mod:`ascendra.router.detokenize`): the new engine's text is not relative to what the client saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ascendra.core.request import Request, TbtKind
from ascendra.router.detokenize import IncrementalText
from ascendra.router.instances import Instance
from ascendra.router.upstream import EngineConnections, EngineRefused, UpstreamError, stream_tokens

log = logging.getLogger("ascendra.router")


@dataclass(slots=True)
class TokenEvent:
    token_ids: list[int]
    text: str
    finish_reason: str | None


@dataclass(slots=True)
class FailureEvent:
    """The stream's current attempt ended without finishing. ``status`` None: its instance
    failed (the request may be recovered elsewhere); else the request itself failed, with
    that HTTP status for the client (an engine's refusal, a router fault), and the instance
    is as healthy as before."""

    attempt: int
    instance: Instance
    error: str
    status: int | None = None


@dataclass(eq=False)
class Session:
    id: str
    request: Request  # the policy core's view (arrival, SLO, predicted prefill, ...)
    prompt_ids: list[int]
    max_tokens: int
    sampling: dict[str, Any]
    min_tokens: int = 0
    model: str = ""
    decode: Callable[[list[int]], str] | None = None  # the model's detokenizer, for moves
    generated: list[int] = field(default_factory=list)
    first_token_at: float | None = None
    last_token_at: float | None = None
    max_gap: float = 0.0
    gaps: list[float] = field(default_factory=list)  # between its tokens, for a p99 target
    finish_reason: str | None = None
    instance: Instance | None = None
    sent_at: float = 0.0
    moves: int = 0
    predicted_ttft: float | None = None  # at placement, for the predictor-error metric
    tbt_moves: int = 0
    offloaded: bool = False
    priority: int | None = None  # the vLLM priority it was sent with (its place in the queue)
    criticality: int = 0  # the client's class: higher first, negative sheddable
    relegated: bool = False
    moving: bool = False  # a move is under way
    closed: bool = False  # its client's answer has ended: it never runs anywhere again
    tokens_here: int = 0  # tokens from its current instance (0: it waits there unstarted)
    # Resolved when the controller releases it (None) or sheds it (the Reject); made when the
    # session is submitted.
    placed: asyncio.Future[Any] | None = None
    on_change: Callable[[], None] | None = None  # called at a first token here and at the end
    last_event_at: float = 0.0
    _attempt: int = 0
    _stalled: int = 0
    _text_through: int = 0  # generated tokens whose text the client has been sent
    _text: IncrementalText | None = None  # the router's own detokenizer once moved
    _reader: asyncio.Task[None] | None = None
    _events: asyncio.Queue[TokenEvent | FailureEvent] = field(default_factory=asyncio.Queue)

    @property
    def remaining(self) -> int:
        return self.max_tokens - len(self.generated)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    @property
    def relayed(self) -> bool:
        """Finished, and every event of it taken for the client's answer. The reader sets the
        finish reason when its last event arrives, which under load is before the relay has
        taken the events queued ahead of it: ending the answer at ``done`` cut streams short
        by their last few tokens and their finish, with no error (seen on the CPU stack)."""
        return self.done and self._events.empty()

    @property
    def unstarted(self) -> bool:
        """No token yet from the instance it was last sent to."""
        return self.tokens_here == 0

    def _body(self, priority: int | None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model, "prompt": self.prompt_ids + self.generated,
            "max_tokens": self.remaining, **self.sampling,
        }
        if self.min_tokens > len(self.generated):
            body["min_tokens"] = self.min_tokens - len(self.generated)
        if priority is not None:
            body["priority"] = priority
        return body

    def start(self, engines: EngineConnections, instance: Instance,
              priority: int | None) -> None:
        if self.closed:
            raise RuntimeError(f"session {self.id} is closed")
        self._attempt += 1
        self.instance = instance
        self.priority = priority
        self.tokens_here = 0
        self.sent_at = self.last_event_at = time.time()
        instance.sessions[self.id] = self
        self._reader = asyncio.create_task(
            self._read(engines, instance, self._body(priority), self._attempt))

    async def _read(self, engines: EngineConnections, instance: Instance,
                    body: dict[str, Any], attempt: int) -> None:
        try:
            async for delta in stream_tokens(engines, instance.url, body):
                now = self.last_event_at = time.time()
                if delta.token_ids:
                    if self.last_token_at is not None:
                        if self.request.slo.tbt_kind is TbtKind.P99:
                            self.gaps.append(now - self.last_token_at)
                        self.max_gap = max(self.max_gap, now - self.last_token_at)
                    if self.first_token_at is None:
                        self.first_token_at = now
                    self.last_token_at = now
                    self.generated.extend(delta.token_ids)
                    self.tokens_here += len(delta.token_ids)
                    if self.tokens_here == len(delta.token_ids) and self.on_change:
                        self.on_change()  # room on the engine: the controller may release
                text = delta.text
                if self._text is not None:
                    text = self._text.step(delta.token_ids)
                elif text:
                    self._text_through = len(self.generated)
                if delta.finish_reason is not None:
                    self.finish_reason = delta.finish_reason
                    instance.forget(self, now)
                    if self.on_change:
                        self.on_change()
                self._events.put_nowait(
                    TokenEvent(delta.token_ids, text, delta.finish_reason))
            # Read on to the end of the answer after the finish, so that its connection can
            # take the next request.
            if not self.done:
                raise UpstreamError("engine stream ended without a finish reason")
        except UpstreamError as e:
            if self.done:  # it broke after the finish: the answer is whole, nothing failed
                log.debug("stream %s: %s after its finish", self.id, e)
                return
            self._events.put_nowait(FailureEvent(attempt, instance, str(e)))
        except EngineRefused as e:
            self._events.put_nowait(FailureEvent(attempt, instance, e.message, e.status))
        except Exception as e:  # a fault here ends this request with an error, never a hang
            log.exception("stream %s: reader failed", self.id)
            self._events.put_nowait(FailureEvent(
                attempt, instance, f"internal router error: {e.__class__.__name__}", 500))

    async def stop(self) -> None:
        """Cancel the upstream stream (the engine aborts the request)."""
        reader, self._reader = self._reader, None
        if reader is not None and not reader.done():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        if self.instance is not None:
            self.instance.forget(self, time.time())

    async def close(self) -> None:
        """The client's answer has ended (finished, failed or abandoned): stop the upstream
        for good. A move under way when the client leaves finds the session closed once its
        old stream is stopped, and starts nothing (it used to start an orphan that generated
        to ``max_tokens`` with no reader)."""
        self.closed = True
        await self.stop()

    async def move(self, engines: EngineConnections, target: Instance,
                   priority: int | None) -> bool:
        """Token replay onto ``target``. False if there is nothing left to move."""
        await self.stop()
        if self.done or self.closed:
            return False
        if self.remaining <= 0:
            self.finish_reason = "length"
            self._events.put_nowait(TokenEvent([], "", "length"))
            return False
        self.moves += 1
        if self.generated and self._text is None and self.decode is not None:
            self._text = IncrementalText(self.decode, self.prompt_ids + self.generated,
                                         len(self.prompt_ids) + self._text_through)
        self.start(engines, target, priority)
        return True

    def is_current(self, failure: FailureEvent) -> bool:
        return failure.attempt == self._attempt

    def check_stall(self, now: float, timeout: float) -> bool:
        """Report the current upstream as failed when it has been silent past ``timeout``
        (once per attempt). The control loop calls this, so the hot path carries no timer.

        Only a stream that has started can stall: before its first token a request may wait
        in an overloaded engine's queue for any time, and calling that a failure moved such
        requests and marked busy engines unhealthy (measured on a GPU). An engine that dies
        ends its streams with an error, which is recovered without this."""
        if not self.generated or now - self.last_event_at <= timeout:
            return False
        return self.fail_attempt(f"no token for {timeout:g} s")

    def fail_attempt(self, reason: str) -> bool:
        """Report the current upstream as failed (once per attempt), so that the request is
        recovered elsewhere: a stalled stream, or any request on an engine found hung."""
        if self.done or self.closed or self.instance is None or self._stalled == self._attempt:
            return False
        self._stalled = self._attempt
        self._events.put_nowait(FailureEvent(self._attempt, self.instance, reason))
        return True

    async def next_events(self) -> list[TokenEvent | FailureEvent]:
        """Every event queued for the client, waiting for at least one (a busy router sends
        what piled up in one write)."""
        events = [await self._events.get()]
        while not self._events.empty():
            events.append(self._events.get_nowait())
        return events
