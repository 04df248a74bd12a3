"""A STAND-IN for a vLLM engine, for measuring the router's own overhead only.

It answers ``POST /v1/completions`` with an OpenAI/vLLM-style SSE stream of ``max_tokens`` token
ids, the first after ``--first-delay`` and the rest ``--gap`` apart, and serves a minimal vLLM-like
``/metrics`` so a router sees it as a healthy engine. With ``--refuse-token ID`` it answers a
prompt holding that token id as vLLM answers a request it rejects (400 and an OpenAI-style error
body): how the router's tests reach a refusal the router itself does not foresee. It runs no model
and must never be used to judge scheduling; the real engine in every other test and benchmark is
vLLM.

    python bench/standin_backend.py --port 18900 [--first-delay 0.002] [--gap 0.001]
        [--refuse-token ID]
"""

from __future__ import annotations

import argparse
import asyncio
import json

from aiohttp import web

METRICS = """# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{engine="0",model_name="standin"}} {running}
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{engine="0",model_name="standin"}} 0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{{engine="0",model_name="standin"}} 0.0
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{{engine="0",model_name="standin"}} {generated}
"""


def make_app(first_delay: float, gap: float, refuse_token: int | None = None) -> web.Application:
    running = 0
    generated = 0  # what a router's progress check reads: without it, streams longer than its
    # timeout (30 s) made the stand-in look hung and every request was recovered, then failed

    async def completions(request: web.Request) -> web.StreamResponse:
        nonlocal running, generated
        body = await request.json()
        if refuse_token is not None and refuse_token in (body.get("prompt") or ()):
            return web.json_response({"error": {
                "message": f"the stand-in refuses token {refuse_token}",
                "type": "BadRequestError", "param": None, "code": 400}}, status=400)
        n = int(body.get("max_tokens") or 16)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        running += 1
        try:
            await asyncio.sleep(first_delay)
            for i in range(n):
                last = i == n - 1
                chunk = {"id": "cmpl-standin", "object": "text_completion", "created": 0,
                         "model": body.get("model"), "choices": [{
                             "index": 0, "text": " tok", "token_ids": [100 + i % 500],
                             "finish_reason": "length" if last else None}]}
                await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                generated += 1
                if not last:
                    await asyncio.sleep(gap)
            await resp.write(b"data: [DONE]\n\n")
        finally:
            running -= 1
        return resp

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=METRICS.format(running=running, generated=generated))

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/health", health)
    return app


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=18900)
    ap.add_argument("--first-delay", type=float, default=0.002)
    ap.add_argument("--gap", type=float, default=0.001)
    ap.add_argument("--refuse-token", type=int, help="answer prompts holding this token id 400")
    args = ap.parse_args()
    web.run_app(make_app(args.first_delay, args.gap, args.refuse_token), host="127.0.0.1",
                port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
