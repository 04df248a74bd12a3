"""``ascendra profile``: measure an engine's iteration times for the latency model.

It drives one otherwise idle vLLM engine through controlled batch compositions and reads the
times the engine itself measured from its ``/metrics`` (deltas of vLLM's own histograms), not
the client's end-to-end latency:

* a prefill sample: one request of P prompt tokens and one output token; the engine's
  ``vllm:request_prefill_time_seconds`` for it is the time of a step that prefills P tokens;
* a mixed sample (``mixed_prefill`` × ``mixed_decodes``): while N decode streams of
  ``mixed_context`` prompt tokens run, one request of P prompt tokens is prefilled; its prefill
  time is that of a step carrying P prefill tokens beside N decodes, the step a loaded engine
  runs (fitted to pure prefills and pure decodes alone, the model put a loaded H200's mean
  TBT at 60% of the measured one: docs/gpu.md);
* a decode sample: N requests of C prompt tokens started together (streamed), each generating M
  tokens; once every one has its first token (all prefills done, so every later step decodes
  only), the mean of ``vllm:inter_token_latency_seconds`` until they finish is the time of a
  step decoding N sequences at a mean context of C + M/2. (Averaging from the start instead
  counts the steps that also carry other requests' prefill chunks: on the H100 that made a
  step of 128 decodes at context 2048 look 108 ms long.) M must exceed the prefill steps the
  batch needs, or the first requests finish before the last start. A batch that finishes before
  the engine has published any of those steps' stats (a small one on a fast engine) is timed
  from its start instead, where one prefill among M steps hardly matters.

Each row is the median of S samples of its composition taken one after another (``samples``),
and the grid is walked ``repeat`` times. On this project's 2-core CPU machine one prefill
varied by ±20% and an occasional one took half as long again; the median of a few is what a
latency model can learn, and what it is checked against in a held-out run.

Rows use :data:`ascendra.perf.profile.PROFILE_COLUMNS`, so ``load_profile`` and the roofline fit
read the file directly. Prompts are random token ids drawn afresh on every run: a second run
against the same engine with the first run's prompts found them in vLLM's prefix cache and
measured a 1,024-token prefill at 68 ms instead of 380 ms.
"""

from __future__ import annotations

import asyncio
import csv
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import numpy as np

from ascendra.errors import AscendraError
from ascendra.perf.profile import PROFILE_COLUMNS
from ascendra.runtime.engine_state import MetricsSample, parse_metrics


@dataclass(frozen=True)
class ProfileGrid:
    prefill_tokens: Sequence[int] = (32, 128, 512, 1024, 2048)
    decode_batches: Sequence[int] = (1, 4, 16, 64)
    decode_contexts: Sequence[int] = (64, 512)
    decode_tokens: int = 32  # M: output tokens of each decode request
    mixed_prefill: Sequence[int] = ()  # P of the mixed samples (none by default)
    mixed_decodes: Sequence[int] = ()  # N decoding beside each
    mixed_context: int = 512  # prompt tokens of each of those N
    samples: int = 1  # S: measurements of a composition whose median is its row
    repeat: int = 2
    vocab: int = 1000  # token ids drawn from [16, vocab)

    def check(self, max_model_len: int) -> None:
        values = [*self.prefill_tokens, *self.decode_batches, *self.decode_contexts,
                  *self.mixed_prefill, *self.mixed_decodes, self.mixed_context,
                  self.decode_tokens, self.samples, self.repeat]
        if not values or min(values) <= 0:
            raise AscendraError("profile grid values must be positive")
        if bool(self.mixed_prefill) != bool(self.mixed_decodes):
            raise AscendraError("mixed samples need both prefill lengths and decode batches")
        longest = max([*self.prefill_tokens, *self.mixed_prefill, self.mixed_context + 1,
                       max(self.decode_contexts) + self.decode_tokens])
        if longest >= max_model_len:
            raise AscendraError(f"a profile request of {longest} tokens does not fit "
                                f"--max-model-len {max_model_len}")


@dataclass(frozen=True, slots=True)
class Row:
    num_prefill_tokens: int
    num_prefill_seqs: int
    prefill_attn_pairs: float
    num_decodes: int
    decode_context: int
    time_s: float

    def values(self) -> tuple[object, ...]:
        return tuple(getattr(self, c) for c in PROFILE_COLUMNS)


class _Engine:
    def __init__(self, http: aiohttp.ClientSession, url: str, model: str, vocab: int) -> None:
        self.http, self.url, self.model = http, url.rstrip("/"), model
        self.rng = np.random.default_rng()  # fresh entropy: no prefix-cache hits across runs
        self.vocab = vocab

    async def metrics(self) -> MetricsSample:
        async with self.http.get(self.url + "/metrics") as r:
            if r.status != 200:
                raise AscendraError(f"{self.url}/metrics answered {r.status}")
            return parse_metrics(await r.text())

    async def complete(self, prompt_len: int, max_tokens: int) -> None:
        body = {"model": self.model, "max_tokens": max_tokens, "ignore_eos": True,
                "prompt": self.rng.integers(16, self.vocab, prompt_len).tolist()}
        async with self.http.post(self.url + "/v1/completions", json=body) as r:
            if r.status != 200:
                raise AscendraError(f"the engine refused a profile request: {r.status} "
                                    f"{(await r.text())[:200]}")
            await r.read()

    async def prefill_time(self, tokens: int) -> float:
        before = await self.metrics()
        await self.complete(tokens, 1)
        after = await self.metrics()
        return after.prefill_sum - before.prefill_sum

    async def stream(self, prompt_len: int, max_tokens: int, started: Callable[[], None],
                     tokens: list[int] | None = None) -> None:
        """A streamed completion; ``started()`` once its first token (or its failure) is in;
        ``tokens[0]`` counts the tokens streamed."""
        body = {"model": self.model, "max_tokens": max_tokens, "ignore_eos": True,
                "stream": True, "prompt": self.rng.integers(16, self.vocab, prompt_len).tolist()}
        first = True
        try:
            async with self.http.post(self.url + "/v1/completions", json=body) as r:
                if r.status != 200:
                    raise AscendraError(f"the engine refused a profile request: {r.status} "
                                        f"{(await r.text())[:200]}")
                async for line in r.content:
                    if line.startswith(b"data:") and tokens is not None:
                        tokens[0] += 1
                    if first and line.startswith(b"data:"):
                        first = False
                        started()
        finally:
            if first:
                started()

    async def decode_time(self, batch: int, context: int, tokens: int) -> float:
        all_in = asyncio.Event()
        count = 0

        def started() -> None:
            nonlocal count
            count += 1
            if count == batch:
                all_in.set()

        start = await self.metrics()
        runs = [asyncio.create_task(self.stream(context, tokens, started)) for _ in range(batch)]
        await all_in.wait()
        before = await self.metrics()
        await asyncio.gather(*runs)
        after = await self.metrics()
        gaps = after.itl_count - before.itl_count
        if gaps <= 0:  # a small batch may finish before the engine publishes its stats
            before, gaps = start, after.itl_count - start.itl_count
        if gaps <= 0:
            raise AscendraError("the engine reported no inter-token latencies; is it vLLM?")
        return (after.itl_sum - before.itl_sum) / gaps


    async def mixed_time(self, prefill: int, batch: int, context: int,
                         tokens: int) -> tuple[float, int]:
        """A ``prefill``-token request's prefill time while ``batch`` streams of ``context``
        tokens decode; and those streams' context then. The streams are aborted after. A
        sample during which a stream finished (the prefill was not seated beside them: on a
        CPU engine its API server can starve for seconds) is taken again, five times at most."""
        for _ in range(5):
            got = await self._mixed_once(prefill, batch, context, tokens)
            if got is not None:
                return got
        raise AscendraError(f"decode streams kept finishing before a prefill beside {batch} "
                            f"of them: the engine must seat {batch + 1} requests at once and "
                            f"--max-model-len leave the streams room")

    async def _mixed_once(self, prefill: int, batch: int, context: int,
                          tokens: int) -> tuple[float, int] | None:
        all_in = asyncio.Event()
        count, streamed = 0, [0]

        def started() -> None:
            nonlocal count
            count += 1
            if count == batch:
                all_in.set()

        # Read before the streams start: a request's prefill time is recorded when it ends, so
        # the streams add nothing to it until one finishes, and the prefill goes in as soon as
        # they are under way (a /metrics read there cost a starved CPU engine's streams seconds).
        before = await self.metrics()
        runs = [asyncio.create_task(self.stream(context, tokens, started, streamed))
                for _ in range(batch)]
        try:
            await all_in.wait()
            done = streamed[0]
            await self.complete(prefill, 1)
            after = await self.metrics()
            for _ in range(20):  # its stats may land just after its answer
                if after.prefill_count > before.prefill_count:
                    break
                await asyncio.sleep(0.05)
                after = await self.metrics()
            if after.prefill_count - before.prefill_count != 1:  # a stream finished too
                return None
            return after.prefill_sum - before.prefill_sum, \
                batch * context + (done + streamed[0]) // 2
        finally:
            for r in runs:
                r.cancel()  # closing the connection aborts the request in vLLM
            await asyncio.gather(*runs, return_exceptions=True)
            for _ in range(600):  # the aborts land before the next sample (30 s at most)
                if not (await self.metrics()).running:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AscendraError("the engine kept running requests after a mixed sample: "
                                    "is something else using it?")


async def _median(samples: int, measure: Callable[[], Awaitable[float]]) -> float:
    return float(np.median([await measure() for _ in range(samples)]))


async def _profile(url: str, model: str, grid: ProfileGrid, max_model_len: int,
                   progress: Callable[[str], None]) -> list[Row]:
    timeout = aiohttp.ClientTimeout(total=600)
    # A fresh connection per request: a kept-alive one the server closed while the profiler
    # was busy elsewhere failed a /metrics read on the GPU ("Server disconnected").
    connector = aiohttp.TCPConnector(force_close=True, limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
        engine = _Engine(http, url, model, grid.vocab)
        try:
            await engine.metrics()
        except aiohttp.ClientError as e:
            raise AscendraError(f"cannot reach the engine at {url}: {e}") from None
        await engine.complete(max(grid.prefill_tokens), 4)  # first-use compilation, not timed
        rows: list[Row] = []
        for _ in range(grid.repeat):
            for p in grid.prefill_tokens:
                t = await _median(grid.samples, lambda p=p: engine.prefill_time(p))
                rows.append(Row(p, 1, p * (p + 1) / 2, 0, 0, t))
                progress(f"prefill {p} tokens: {t * 1e3:.1f} ms")
            for n in grid.mixed_decodes:
                for p in grid.mixed_prefill:
                    # Streams as long as the model allows: aborted once the prefill is timed.
                    c = grid.mixed_context
                    got = [await engine.mixed_time(p, n, c, max_model_len - c - 1)
                           for _ in range(grid.samples)]
                    t, ctx = float(np.median([g[0] for g in got])), int(np.median(
                        [g[1] for g in got]))
                    rows.append(Row(p, 1, p * (p + 1) / 2, n, ctx, t))
                    progress(f"prefill {p} tokens beside {n} decodes: {t * 1e3:.1f} ms")
            for c in grid.decode_contexts:
                for n in grid.decode_batches:
                    t = await _median(grid.samples, lambda n=n, c=c: engine.decode_time(
                        n, c, grid.decode_tokens))
                    rows.append(Row(0, 0, 0.0, n, n * (c + grid.decode_tokens // 2), t))
                    progress(f"decode ×{n} at context {c}: {t * 1e3:.1f} ms")
        return rows


def profile_engine(url: str, model: str, grid: ProfileGrid, out: Path, max_model_len: int,
                   progress: Callable[[str], None] = lambda _: None) -> list[Row]:
    """Profile the idle engine at ``url`` (its base URL, without /v1) and write ``out``."""
    grid.check(max_model_len)
    if not out.parent.is_dir():
        raise AscendraError(f"cannot write {out}: {out.parent} is not a directory")
    rows = asyncio.run(_profile(url, model, grid, max_model_len, progress))
    with out.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(PROFILE_COLUMNS)
        w.writerows(r.values() for r in rows)
    return rows
