"""``ascendra bench``: open-loop load against any OpenAI-compatible completions endpoint.

Requests follow a workload (lengths and Poisson/Gamma arrivals, or a trace) at each rate; every
one streams with ``ignore_eos`` so outputs have the workload's lengths. Per request it records
TTFT (send → first token), the mean gap between tokens, the largest gap and every gap, and
judges it with the shared definitions (``ascendra.metrics``): attainment per rate and goodput
over rates. Requests still unanswered ``drain_timeout`` after the last send count as missed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson

from ascendra.core.controller import RejectReason
from ascendra.core.request import Slo
from ascendra.errors import AscendraError
from ascendra.metrics import LatencySummary, RequestOutcome, goodput, summarize
from ascendra.router.protocol import RELEGATED_HEADER
from ascendra.workloads.spec import RequestSpec, Workload, rate_load

SHED_REASONS = frozenset(r.value for r in RejectReason)


@dataclass
class BenchConfig:
    url: str  # base URL, e.g. http://127.0.0.1:8000/v1
    model: str
    workload: Workload
    rates: Sequence[float]
    requests: int
    slo: Slo
    prompt: str = "tokens"  # tokens: random token ids; text: words of about that many tokens
    vocab: int = 1000  # token ids are drawn from [16, vocab)
    seed: int = 1
    drain_timeout: float = 60.0
    warmup: int = 0  # requests sent (at the first rate) and not measured before the sweep
    lead_seconds: float = 0.0  # each rate's unmeasured lead-in at that rate (RateLoad)
    slo_headers: bool = True  # tell an Ascendra router the SLOs (others ignore the headers)
    criticality: int | None = None  # sent as X-Ascendra-Criticality (negative: sheddable)


@dataclass
class RateResult:
    rate: float
    summary: LatencySummary
    outcomes: list[RequestOutcome] = field(repr=False)
    wall_s: float = 0.0


# Words most tokenizers keep whole: a text prompt of N of them is about N tokens. Drawn at
# random, so that no two prompts share a prefix the engine's cache could serve (one repeated
# word did: every text prompt was the same).
_COMMON_WORDS = ("the of and to in is that for it as with was on be at by this had not are "
                 "but from or have an they which one you were her all she there would their "
                 "we him been has when who will more no if out so said what up its about "
                 "into than them can only other new some could time these two may then do "
                 "first any my now such like our over man me even most made after also did "
                 "many before must through back years where much your way well down should "
                 "because each just those people how too little state good very make world "
                 "still own see men work long get here between both life being under never "
                 "day same another know while last might us great old year off come since "
                 "against go came right used take three")
_WORDS = np.array(_COMMON_WORDS.split())


def _prompt(spec: RequestSpec, cfg: BenchConfig, rng: np.random.Generator) -> list[int] | str:
    if cfg.prompt == "tokens":
        return rng.integers(16, cfg.vocab, spec.prompt_len).tolist()
    return " ".join(rng.choice(_WORDS, max(1, spec.prompt_len - 1)))


async def _events(content: aiohttp.StreamReader) -> AsyncIterator[dict[str, Any]]:
    """The JSON events of an SSE body (one network read at a time, not one line)."""
    pending = b""
    async for data in content.iter_any():
        lines = (pending + data).split(b"\n")
        pending = lines.pop()
        for line in lines:
            if line.startswith(b"data:"):
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    return
                yield orjson.loads(payload)


def request_body(cfg: BenchConfig, spec: RequestSpec, prompt: list[int] | str
                 ) -> dict[str, Any]:
    """What one request of the load sends: a streamed completion of the workload's length."""
    return {"model": cfg.model, "prompt": prompt, "max_tokens": spec.output_len,
            "stream": True, "ignore_eos": True, "return_token_ids": True}


def request_headers(cfg: BenchConfig) -> dict[str, str]:
    headers = {"X-Ascendra-TTFT-SLO": f"{cfg.slo.ttft:g}",
               "X-Ascendra-TBT-SLO": f"{cfg.slo.tbt:g}"} if cfg.slo_headers else {}
    if cfg.criticality is not None:
        headers["X-Ascendra-Criticality"] = str(cfg.criticality)
    return headers


async def _one(http: aiohttp.ClientSession, cfg: BenchConfig, spec: RequestSpec,
               prompt: list[int] | str, gaps: list[float]) -> RequestOutcome:
    body = request_body(cfg, spec, prompt)
    headers = request_headers(cfg)
    sent = time.perf_counter()
    first = last = None
    tokens, max_gap, error, finished, rejected, relegated = 0, 0.0, None, False, None, False
    own: list[float] = []  # this request's gaps (for a p99 target)
    try:
        async with http.post(cfg.url + "/completions", json=body, headers=headers) as r:
            if r.status != 200:
                text = await r.text()
                error = f"HTTP {r.status}: {text[:200]}"
                if r.status in (429, 503):  # shed by the service, if it says so
                    rejected = _shed_reason(text)
            else:
                relegated = r.headers.get(RELEGATED_HEADER) == "true"  # an Ascendra router's
                async for chunk in _events(r.content):
                    if "error" in chunk:
                        error = str(chunk["error"].get("message", chunk["error"]))
                        break
                    for ch in chunk.get("choices") or ():
                        n = len(ch.get("token_ids") or ()) or (1 if ch.get("text") else 0)
                        if n:
                            now = time.perf_counter()
                            if first is None:
                                first = now
                            else:
                                gap = now - last  # type: ignore[operator]
                                gaps.append(gap)
                                gaps.extend([0.0] * (n - 1))
                                own.append(gap)
                                own.extend([0.0] * (n - 1))
                                max_gap = max(max_gap, gap)
                            last = now
                            tokens += n
                        if ch.get("finish_reason"):
                            finished = True
    except (TimeoutError, aiohttp.ClientError, ValueError) as e:
        error = f"{e.__class__.__name__}: {e}"
    return RequestOutcome(
        id=spec.id, arrival=spec.arrival, prompt_len=spec.prompt_len,
        output_len=spec.output_len, slo=cfg.slo,
        ttft=None if first is None else first - sent,
        tbt_mean=(last - first) / (tokens - 1) if first is not None and last is not None
        and tokens > 1 else None,
        max_gap=max_gap if tokens > 1 else None, tokens=tokens,
        finished=finished and error is None, error=error,
        gap_p99=float(np.percentile(own, 99)) if own else None, rejected=rejected,
        relegated=relegated)


def _shed_reason(text: str) -> str | None:
    """The reason an Ascendra router gave for shedding the request (its error code), or None
    when the answer is some other failure."""
    try:
        code = orjson.loads(text)["error"]["code"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    return code if code in SHED_REASONS else None


def prompts_for(cfg: BenchConfig, specs: list[RequestSpec]) -> list[list[int] | str]:
    """The prompts of one rate, drawn afresh on every call (the lengths and arrivals stay the
    seed's): vLLM's prefix cache serves any prompt it has seen. Drawn from the seed, every rate
    repeated the first one's prompts and attainment rose with the rate (81% at 9 req/s, 97% at
    12 on the CPU engines); drawn from the seed and the rate, a second system benchmarked
    against the same engine found the first one's prompts cached."""
    rng = np.random.default_rng()
    return [_prompt(s, cfg, rng) for s in specs]


async def run_rate(cfg: BenchConfig, rate: float,
                   on_done: Callable[[], None] = lambda: None) -> RateResult:
    load = rate_load(cfg.workload, rate, cfg.requests, cfg.seed, cfg.lead_seconds)
    specs = load.specs
    prompts = prompts_for(cfg, specs)
    gaps: list[float] = []  # the measured requests' gaps
    unmeasured: list[float] = []
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    start = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        tasks: list[asyncio.Task[RequestOutcome]] = []
        for i, (spec, prompt) in enumerate(zip(specs, prompts, strict=True)):
            delay = start + spec.arrival - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            t = asyncio.create_task(_one(http, cfg, spec, prompt,
                                         gaps if i >= load.lead else unmeasured))
            if i >= load.lead:
                t.add_done_callback(lambda _: on_done())
            tasks.append(t)
        done, pending = await asyncio.wait(tasks, timeout=cfg.drain_timeout
                                           + max(0.0, start + specs[-1].arrival
                                                 - time.perf_counter()))
        for t in pending:
            t.cancel()
        outcomes = [t.result() if t in done else RequestOutcome(
            id=s.id, arrival=s.arrival, prompt_len=s.prompt_len, output_len=s.output_len,
            slo=cfg.slo) for t, s in zip(tasks, specs, strict=True)][load.lead:]
    return RateResult(rate, summarize(outcomes, gaps), outcomes, time.perf_counter() - start)


async def _reachable(url: str, timeout_s: float = 10.0) -> None:
    """Refuse to measure a server that does not answer: every request of a sweep against a
    stopped one fails alike, and a report of 0% attainment would hide why."""
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as http, http.get(f"{url}/models"):
            pass  # any HTTP answer (also 401 or 404) says a server is there
    except (TimeoutError, aiohttp.ClientConnectionError) as e:
        raise AscendraError(f"cannot reach the server at {url}: {e or 'timed out'}") from None


def run_bench(cfg: BenchConfig, progress: Callable[[int, str], Any] | None = None
              ) -> list[RateResult]:
    if not cfg.rates or any(r <= 0 for r in cfg.rates):
        raise AscendraError("rates must be positive")
    asyncio.run(_reachable(cfg.url))
    if cfg.warmup:
        # Engines compile kernels for new batch shapes lazily; do that before measuring.
        warm = replace(cfg, requests=cfg.warmup, seed=cfg.seed + 1000)
        bar = progress(cfg.warmup, "warm-up") if progress else None
        asyncio.run(run_rate(warm, cfg.rates[0], bar.update if bar else lambda: None))
        if bar:
            bar.close()
    results = []
    for rate in cfg.rates:
        bar = progress(cfg.requests, f"{rate:g} req/s") if progress else None
        res = asyncio.run(run_rate(cfg, rate, bar.update if bar else lambda: None))
        if bar:
            bar.close()
        results.append(res)
    return results


def report(cfg: BenchConfig, results: list[RateResult]) -> dict[str, Any]:
    curve = [(r.rate, r.summary.attainment) for r in results]
    return {
        "endpoint": cfg.url, "model": cfg.model, "workload": cfg.workload.name,
        "requests_per_rate": cfg.requests, "lead_seconds": cfg.lead_seconds,
        "prompt": cfg.prompt,
        "slo": {"ttft_s": cfg.slo.ttft, "tbt_s": cfg.slo.tbt, "tbt_kind": cfg.slo.tbt_kind.value},
        "goodput_qps": round(goodput(curve), 4),
        "curve": [[q, round(a, 4)] for q, a in curve],
        "rates": {f"{r.rate:g}": {**r.summary.as_dict(), "wall_s": round(r.wall_s, 2)}
                  for r in results},
    }


def table(rep: dict[str, Any]) -> str:
    lines = [f"{rep['endpoint']}  model {rep['model']}  workload {rep['workload']}  "
             f"SLO TTFT {rep['slo']['ttft_s']:g} s / TBT ({rep['slo']['tbt_kind']}) "
             f"{rep['slo']['tbt_s']:g} s",
             f"{'rate':>7} {'attain':>7} {'TTFT p50':>9} {'TTFT p99':>9} {'TBT p50':>8} "
             f"{'TBT p99':>8} {'maxgap p99':>10} {'misses':>8} {'shed':>6}"]

    def ms(x: float | None) -> str:
        return "-" if x is None else f"{x * 1e3:.0f}ms"

    for rate, s in rep["rates"].items():
        lines.append(f"{rate:>7} {s['attainment']:>7.1%} {ms(s['ttft_p50']):>9} "
                     f"{ms(s['ttft_p99']):>9} {ms(s['tbt_mean_p50']):>8} "
                     f"{ms(s['tbt_mean_p99']):>8} {ms(s['max_gap_p99']):>10} "
                     f"{sum(s['misses'].values()):>8} {s['rejected']:>6}")
    lines.append(f"goodput (90% attainment): {rep['goodput_qps']:.2f} req/s")
    return "\n".join(lines)


def plot(reports: dict[str, dict[str, Any]], path: str | Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for name, rep in reports.items():
        q, a = zip(*rep["curve"], strict=True)
        ax.plot(q, [x * 100 for x in a], marker="o", ms=3,
                label=f"{name} ({rep['goodput_qps']:.2f} req/s)")
    ax.axhline(90, ls="--", c="grey", lw=0.8)
    ax.set_xlabel("request rate (req/s)")
    ax.set_ylabel("SLO attainment (%)")
    ax.set_ylim(0, 102)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
