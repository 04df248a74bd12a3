"""The router's HTTP surface (FastAPI). Handlers validate, hand each request to the control
loop (which queues it until the cluster controller releases or sheds it) and relay events; no
scheduling rule lives here."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from ascendra.core.controller import Reject
from ascendra.core.policy import Policy
from ascendra.core.request import Request as CoreRequest
from ascendra.core.request import Slo
from ascendra.core.systems import system
from ascendra.core.view import Role
from ascendra.metrics import RequestOutcome
from ascendra.predict.observations import Observation, write_observations
from ascendra.router.asgi import (
    App,
    BodyTooLarge,
    BodyTooSlow,
    ClientGone,
    Exchange,
    hot_routes,
)
from ascendra.router.auth import Credentials
from ascendra.router.control import ControlLoop, EngineRateModel
from ascendra.router.discovery import KubernetesDiscovery
from ascendra.router.formats import SSE_DONE, ResponseShape, sse
from ascendra.router.instances import InstancePool, InstanceSpec
from ascendra.router.learning import OnlineLearner, initial_predictor
from ascendra.router.metrics import RouterMetrics
from ascendra.router.prompts import PromptEncoder
from ascendra.router.protocol import (
    RELEGATED_HEADER,
    ApiError,
    ChatBody,
    CompletionBody,
    DetokenizeBody,
    TokenizeBody,
    criticality_from_headers,
    parse_body,
    slo_from_headers,
)
from ascendra.router.session import Session, TokenEvent
from ascendra.router.upstream import EngineConnections

log = logging.getLogger("ascendra.router")

ENGINE_KEEPALIVE_S = 4.0  # below the engine server's keep-alive (5 s), see the lifespan


@dataclass
class RouterSettings:
    model_name: str
    tokenizer: str
    max_model_len: int
    instances: list[InstanceSpec]
    slo: Slo = field(default_factory=lambda: Slo(1.0, 0.15))
    system: str = "ascendra"  # the registry's name: the engines' settings and the policy's base
    policy: Policy = field(default_factory=Policy)
    stall_timeout: float = 30.0  # an upstream that started and then stays silent this long fails
    # An engine with work (its own, or this router's requests waiting there) and no step this
    # long is hung: its requests are recovered elsewhere.
    progress_timeout: float = 30.0
    poll_interval: float = 0.1
    discovery: KubernetesDiscovery | None = None
    default_step_time: float = 0.02
    default_prefill_s_per_token: float = 2e-4
    observations: Path | None = None  # append queued requests' observations (JSONL) here
    predictor: Path | None = None  # a learned predictor file to start from
    refit_every: int = 0  # refit the TTFT model after this many new observations (0: never)
    predictor_dir: Path | None = None  # write each refitted version here
    # Larger request bodies are refused (413) before they are read: a prompt of the longest
    # context as text or token ids is far smaller.
    max_body_bytes: int = 8 << 20
    body_timeout: float = 30.0  # a body slower than this is refused (408)
    credentials: Credentials = field(default_factory=Credentials)  # none: open (local)


class Router:
    def __init__(self, settings: RouterSettings) -> None:
        self.settings = settings
        self.encoder = PromptEncoder(settings.tokenizer, settings.max_model_len)
        self.pool = InstancePool(settings.instances, poll_interval=settings.poll_interval,
                                 progress_timeout=settings.progress_timeout)
        self.model = EngineRateModel(settings.default_step_time,
                                     settings.default_prefill_s_per_token)
        self.metrics = RouterMetrics(settings.slo.ttft, settings.slo.tbt)
        engine = system(settings.system).engine
        learning = settings.observations is not None or settings.refit_every > 0
        self.control = ControlLoop(settings.policy, self.pool, self.model, self.metrics,
                                   engine_priorities=engine.priorities,
                                   token_budget=engine.token_budget,
                                   stall_timeout=settings.stall_timeout,
                                   on_observations=self._observed if learning else None)
        learned = initial_predictor(settings.predictor, settings.model_name, self.model)
        if learned is not None:
            self.control.predictor = learned
        self.learner = OnlineLearner(settings.model_name, self.model, settings.refit_every,
                                     save_dir=settings.predictor_dir, start=learned)
        self._refit: asyncio.Task[None] | None = None  # held: the loop keeps tasks weakly
        self._unwritten: list[Observation] = []  # for the observation log, flushed per tick
        self.http: aiohttp.ClientSession | None = None
        self._ids = itertools.count()
        self._prefix = f"{os.getpid():x}-{int(time.time()):x}"

    def _observed(self, observations: list[Observation]) -> None:
        if self.settings.observations is not None:
            self._unwritten += observations
        if self.learner.add(observations):
            self._refit = asyncio.get_running_loop().create_task(self._refit_predictor())

    def _flush_observations(self) -> None:
        """One append per control tick, not one per finished request."""
        if self._unwritten and self.settings.observations is not None:
            write_observations(self.settings.observations, self._unwritten)
            self._unwritten = []

    async def _refit_predictor(self) -> None:
        p = await self.learner.refit()
        if p is not None:
            self.control.predictor = p

    # -- one request -------------------------------------------------------------------------
    def _session(self, body: CompletionBody | ChatBody, ids: list[int], max_tokens: int,
                 slo: Slo, criticality: int, arrival: float) -> Session:
        n = next(self._ids)
        req = CoreRequest(id=n, arrival=arrival, prompt_len=len(ids),
                          max_tokens=max_tokens, slo=slo,
                          predicted_prefill=self.model.prefill_time(len(ids)))
        return Session(id=f"{self._prefix}-{n}", request=req, prompt_ids=ids,
                       max_tokens=max_tokens, sampling=body.sampling_params(),
                       min_tokens=body.min_tokens, model=self.settings.model_name,
                       decode=self.encoder.decode, criticality=criticality)

    async def _client_body(self, x: Exchange) -> bytes:
        """A client's request body, once its key is checked, within the size and time caps."""
        self.settings.credentials.check_client(x.headers.get("authorization"))
        try:
            return await x.body(self.settings.max_body_bytes, self.settings.body_timeout)
        except BodyTooLarge as e:
            raise ApiError(413, str(e), code="request_too_large") from None
        except BodyTooSlow as e:
            raise ApiError(408, str(e), code="request_timeout") from None

    async def tokens(self, x: Exchange, detokenize: bool) -> None:
        """vLLM's ``/tokenize`` and ``/detokenize``, with the router's own tokenizer: what
        ``vllm bench serve`` asks to check that its prompts are the lengths it meant."""
        try:
            raw = await self._client_body(x)
            if detokenize:
                back = parse_body(raw, DetokenizeBody)
                self.encoder.check_vocabulary(back.tokens, "tokens")
                result: dict[str, Any] = {"prompt": self.encoder.decode(back.tokens)}
            else:
                body = parse_body(raw, TokenizeBody)
                ids = await self.encoder.encode(body.prompt, body.add_special_tokens)
                result = {"count": len(ids), "max_model_len": self.settings.max_model_len,
                          "tokens": ids}
        except ClientGone:
            return
        except ApiError as e:
            await x.json(e.status, e.body())
            return
        await x.json(200, result)

    async def generate(self, x: Exchange, chat: bool) -> None:
        arrival = time.time()
        endpoint = "chat" if chat else "completions"
        try:
            raw = await self._client_body(x)
            if chat:
                body: CompletionBody | ChatBody = parse_body(raw, ChatBody)
            else:
                body = parse_body(raw, CompletionBody)
            if body.model != self.settings.model_name:
                raise ApiError(404, f"model {body.model!r} does not exist; this router serves "
                                    f"{self.settings.model_name!r}", param="model",
                               code="model_not_found")
            slo = slo_from_headers(x.headers, self.settings.slo)
            if isinstance(body, ChatBody):
                ids, requested = await self.encoder.chat_ids(body), body.requested_max_tokens
            else:
                ids, requested = await self.encoder.completion_ids(body), body.max_tokens
            max_tokens = self.encoder.budget(len(ids), requested)
            body.check_min_tokens(max_tokens)
            self.encoder.check_vocabulary(body.stop_token_ids or [], "stop_token_ids")
            criticality = criticality_from_headers(x.headers)
            if not self.pool.routable():
                raise ApiError(503, "no healthy engine instance is available",
                               type_="server_error", code="no_instance")
        except ClientGone:
            self.metrics.requests.labels(endpoint, "499").inc()
            return
        except ApiError as e:
            self.metrics.requests.labels(endpoint, str(e.status)).inc()
            await x.json(e.status, e.body())
            return
        session = self._session(body, ids, max_tokens, slo, criticality, arrival)
        status = await self._placement(x, session)
        if status is None:
            opening = await self._opening(x, session)
            status = opening if isinstance(opening, int) else None
        if status is not None:
            self.metrics.requests.labels(endpoint, str(status)).inc()
            return
        shape = ResponseShape(
            chat=chat, id=("chatcmpl-" if chat else "cmpl-") + session.id,
            model=self.settings.model_name, prompt_tokens=len(ids),
            include_usage=bool(body.stream_options and body.stream_options.include_usage),
            return_token_ids=body.return_token_ids)
        self.metrics.requests.labels(endpoint, "200").inc()
        # Said once it is known (the request waited relegated before release), so that a
        # client or benchmark can count who was served late on purpose.
        headers = {RELEGATED_HEADER: "true"} if session.relegated else None
        if body.stream:
            await x.stream(self._stream(session, shape, opening), headers)
        else:
            await self._whole(x, session, shape, opening, headers)

    async def _placement(self, x: Exchange, session: Session) -> int | None:
        """Queue the request and wait for the controller: None once it is released to an
        engine (the response then streams), else the status of the answer it was sent (shed:
        429 or 503 with Retry-After; the client left: 499)."""
        self.control.submit(session)
        placed = session.placed
        assert placed is not None
        await asyncio.sleep(0)  # the pass is due first: most arrivals are decided by then
        if not await x.unless_gone(placed):
            self._record(session, "client disconnected while queued")
            return 499
        outcome = placed.result()
        if isinstance(outcome, Reject):
            self._record(session, outcome.message, rejected=outcome.reason.value)
            err = ApiError(outcome.reason.status, outcome.message, type_="server_error"
                           if outcome.reason.status >= 500 else "rate_limit_error",
                           code=outcome.reason.value)
            await x.json(err.status, err.body(),
                         {"retry-after": f"{outcome.retry_after:.0f}"})
            return err.status
        return None

    async def _next_batch(self, session: Session) -> list[TokenEvent]:
        """The token events ready for the client, once any failed instance is recovered from.
        Raises ApiError when the stream cannot go on: the engine refused the request (its
        4xx, the client's error: no recovery, and the instance stays healthy), or it failed
        and no other instance could take the request over."""
        out: list[TokenEvent] = []
        for ev in await session.next_events():
            if isinstance(ev, TokenEvent):
                out.append(ev)
                continue
            if not session.is_current(ev):
                continue
            if ev.status is not None:
                raise ApiError(ev.status, ev.error, code="engine_refused" if ev.status < 500
                               else "internal_error", type_="invalid_request_error"
                               if ev.status < 500 else "server_error")
            log.warning("stream %s failed on %s: %s", session.id, ev.instance.url, ev.error)
            if await self.control.recover(session, ev.instance):
                continue
            raise ApiError(502, f"the engine failed and no other instance could take the "
                                f"request over: {ev.error}", type_="server_error",
                           code="engine_failed")
        return out

    async def _opening(self, x: Exchange, session: Session) -> list[TokenEvent] | int:
        """The first token events, waited for before anything is sent, so that an engine's
        refusal reaches the client as that HTTP error; else the status the client was
        answered (the error's, or 499 when it left)."""
        async def first() -> list[TokenEvent]:
            while True:
                events = await self._next_batch(session)
                if events or session.done:
                    return events

        work = asyncio.ensure_future(first())
        if not await x.unless_gone(work):
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
            await session.close()
            self._record(session, "client disconnected before its first token")
            return 499
        try:
            return work.result()
        except ApiError as e:
            await session.close()
            self._record(session, e.message, client_error=e.status < 500)
            await x.json(e.status, e.body())
            return e.status

    async def _stream(self, session: Session, shape: ResponseShape,
                      opening: list[TokenEvent]) -> AsyncIterator[tuple[bytes, bool]]:
        """The response's events as ``(data, last)``: each batch as it comes, and the last
        batch with what ends the stream (an error, the usage, ``[DONE]``) in one piece."""
        error: ApiError | None = None
        first = True
        batch = opening
        parts: list[bytes] = []
        try:
            try:
                while True:
                    for ev in batch:
                        parts.append(shape.event(ev.text, ev.token_ids, ev.finish_reason,
                                                 first))
                        first = False
                    if session.relayed:
                        break
                    if parts:
                        yield b"".join(parts), False
                        parts = []
                    batch = await self._next_batch(session)
            except ApiError as e:
                error = e
                parts.append(sse(e.body()))
            if error is None and shape.include_usage:
                parts.append(sse(shape.usage_chunk(len(session.generated))))
            parts.append(SSE_DONE)
            yield b"".join(parts), True
        finally:
            await session.close()  # a client that went away aborts the engine request
            self._record(session, error and error.message,
                         client_error=error is not None and error.status < 500)

    async def _whole(self, x: Exchange, session: Session, shape: ResponseShape,
                     opening: list[TokenEvent], headers: dict[str, str] | None) -> None:
        async def collect() -> dict[str, Any]:
            texts = [ev.text for ev in opening]
            while not session.relayed:
                texts += [ev.text for ev in await self._next_batch(session)]
            return shape.whole("".join(texts), session.generated, session.finish_reason,
                               len(session.generated))

        work = asyncio.ensure_future(collect())
        error: str | None = None
        client_error = False
        try:
            if not await x.unless_gone(work):
                error = "client disconnected"
                await x.empty(499)
                return
            try:
                result = work.result()
            except ApiError as e:
                error, client_error = e.message, e.status < 500
                await x.json(e.status, e.body())
                return
            await x.json(200, result, headers)
        finally:
            work.cancel()
            await session.close()
            self._record(session, error, client_error=client_error)

    def _record(self, s: Session, error: str | None, rejected: str | None = None,
                client_error: bool = False) -> None:
        """The request's outcome into the metrics, and out of the controller. A client's
        error is no SLO miss: a client sending what no engine can serve must not page
        anyone."""
        r = s.request
        n = len(s.generated)
        outcome = RequestOutcome(
            id=r.id, arrival=r.arrival, prompt_len=r.prompt_len, output_len=s.max_tokens,
            slo=r.slo, tokens=n, finished=s.done and error is None, offloaded=s.offloaded,
            error=error,
            ttft=None if s.first_token_at is None else s.first_token_at - r.arrival,
            tbt_mean=(s.last_token_at - s.first_token_at) / (n - 1)
            if n > 1 and s.first_token_at is not None and s.last_token_at is not None else None,
            max_gap=s.max_gap if n > 1 else None,
            gap_p99=float(np.percentile(s.gaps, 99)) if s.gaps else None,
            relegated=s.relegated, rejected=rejected,
        )
        if not client_error:
            self.metrics.observe(outcome, s.predicted_ttft)
        self.control.finished(s)

    # -- the app ---------------------------------------------------------------------------
    def app(self) -> App:
        """The POST endpoints clients use as plain ASGI (ascendra.router.asgi): the completions,
        /tokenize and /detokenize; the rest FastAPI."""

        async def completions(x: Exchange) -> None:
            await self.generate(x, chat=False)

        async def chat_completions(x: Exchange) -> None:
            await self.generate(x, chat=True)

        async def tokenize(x: Exchange) -> None:
            await self.tokens(x, detokenize=False)

        async def detokenize(x: Exchange) -> None:
            await self.tokens(x, detokenize=True)

        return hot_routes({"/v1/completions": completions,
                           "/v1/chat/completions": chat_completions,
                           "/tokenize": tokenize, "/detokenize": detokenize},
                          self._admin_app())

    def _admin_app(self) -> FastAPI:
        @contextlib.asynccontextmanager
        async def lifespan(_: FastAPI) -> AsyncIterator[None]:
            # An idle pooled connection is dropped before vLLM's server closes it (uvicorn's
            # keep-alive, VLLM_HTTP_TIMEOUT_KEEP_ALIVE, 5 s by default; aiohttp keeps one for
            # 15 s unless told), and a request sent on a connection the engine is closing that
            # instant is reset (11 of 1,200 requests at 76 req/s on the H200, 2026-12-03).
            self.http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300,
                                               keepalive_timeout=ENGINE_KEEPALIVE_S),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5))
            self.control.engines = EngineConnections(keepalive=ENGINE_KEEPALIVE_S)
            tasks = [asyncio.create_task(self.pool.poll_forever(self.http)),
                     asyncio.create_task(self._control_forever())]
            if self.settings.discovery is not None:
                tasks.append(asyncio.create_task(self.settings.discovery.poll_forever(self.pool)))
            # Everything loaded so far lives as long as the process: keep it out of the
            # collector's generations, so that collections on the request path stay short.
            gc.collect()
            gc.freeze()
            try:
                yield
            finally:
                for t in tasks:
                    t.cancel()
                await self.http.close()
                self.control.engines.close()
                self._flush_observations()  # what the last tick did not write

        app = FastAPI(title="ascendra router", lifespan=lifespan)

        @app.exception_handler(StarletteHTTPException)
        async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
            return JSONResponse(ApiError(exc.status_code, str(exc.detail)).body(),
                                exc.status_code)

        def refused(check: Any, request: Request) -> JSONResponse | None:
            try:
                check(request.headers.get("authorization"))
            except ApiError as e:
                return JSONResponse(e.body(), e.status)
            return None

        @app.get("/v1/models", response_model=None)
        async def models(request: Request) -> dict[str, Any] | JSONResponse:
            if (denied := refused(self.settings.credentials.check_client, request)) is not None:
                return denied
            return {"object": "list", "data": [{
                "id": self.settings.model_name, "object": "model", "created": 0,
                "owned_by": "ascendra", "max_model_len": self.settings.max_model_len}]}

        @app.get("/health")
        async def health() -> JSONResponse:
            n = len(self.pool.routable())
            return JSONResponse({"healthy_instances": n}, 200 if n else 503)

        @app.get("/metrics")
        async def metrics() -> Response:
            self._export_gauges()
            return Response(generate_latest(self.metrics.registry),
                            media_type=CONTENT_TYPE_LATEST)

        @app.get("/ascendra/instances", response_model=None)
        async def instances(request: Request) -> list[dict[str, Any]] | JSONResponse:
            if (denied := refused(self.settings.credentials.check_admin, request)) is not None:
                return denied
            return [self.control.describe(i) for i in self.pool.instances]

        @app.post("/ascendra/drain")
        async def drain(request: Request) -> JSONResponse:
            if (denied := refused(self.settings.credentials.check_admin, request)) is not None:
                return denied
            try:
                url = str((await request.json())["instance"]).rstrip("/")
            except (ValueError, KeyError, TypeError):
                return JSONResponse(ApiError(400, 'body must be {"instance": ENGINE_URL}').body(),
                                    400)
            inst = next((i for i in self.pool.instances if i.url == url), None)
            if inst is None:
                return JSONResponse(ApiError(404, f"no instance {url}").body(), 404)
            moved, stayed = await self.control.drain(inst)
            return JSONResponse({"moved": moved, "stayed": stayed})

        return app

    async def _control_forever(self) -> None:
        tick = self.settings.policy.tick
        while True:
            began = time.monotonic()
            try:
                self.control.tick()
            except Exception:  # the loop must outlive any one bad pass
                log.exception("control pass failed")
            self._flush_observations()
            # 0 whenever the analytic predictor serves, also after a learned one failed
            self.metrics.predictor_version.set(getattr(self.control.predictor, "version", 0))
            slept = time.monotonic()
            self.metrics.control_pass.observe(slept - began)
            await asyncio.sleep(tick)
            self.metrics.loop_lag.observe(max(0.0, time.monotonic() - slept - tick))

    def _export_gauges(self) -> None:
        now = time.time()
        slack = [r.slack(now) for r in self.control.core.queued_requests()]
        slack += [s.request.slack(now) for i in self.pool.instances if i.role is not Role.HP
                  for s in i.sessions.values() if s.first_token_at is None]
        self.metrics.lp_slack.set(min(slack) if slack else float("inf"))
        for m in (self.metrics.inflight, self.metrics.queue, self.metrics.step):
            m.clear()  # roles change: drop the series of the old role
        for i in self.pool.instances:
            if i.removed:
                continue
            role = i.role.value
            self.metrics.inflight.labels(i.url, role).set(len(i.sessions))
            self.metrics.queue.labels(i.url, role).set(i.state.waiting if i.state else 0)
            if i.state and i.state.step_time is not None:
                self.metrics.step.labels(i.url, role).set(i.state.step_time)
