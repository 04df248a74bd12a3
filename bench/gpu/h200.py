"""One H200 owned by one vLLM engine: the cluster controller's GPU runs (issue "GPU truth for
the new controller"), run on the GPU machine.

An engine start costs minutes of device time, so the steps that share an engine run against
one engine started once (an ``EngineSession``): the profile, ``ascendra bench`` straight to the
engine and behind each system's router in turn (a fresh router per step, so its counters are
that step's), and vLLM's own benchmark client (``vllm bench serve``) on the same lengths.
Baselines run vLLM's defaults (FCFS); Ascendra's engine adds ``--scheduling-policy priority``
and is a second session. Every step's prompts are drawn afresh (``ascendra.loadgen``), so no
step finds another's in the prefix cache; each step's engine counter deltas, prefix-cache hits
included, are in its JSON.

The model is the Llama-3.1-8B shape with dummy weights and a tokenizer of one word per id
(``write_id_tokenizer``), so text prompts (vLLM's client) and token-id prompts (ours) are
the same tokens. Each step is written to ``OUT/NAME.json`` as it ends.

    PYTHONPATH=/tmp/site python3 bench/gpu/h200.py --out /tmp/ascendra-results [--only A,B]
    python bench/gpu/h200.py --out /tmp/h200-smoke --smoke   # the same steps, scaled down,
                                                             # on the CPU build and tiny model
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from experiments import PROFILE_GRID, _engine_counters, _router_counters, record_environment

from ascendra.core.request import Slo, TbtKind
from ascendra.loadgen import BenchConfig, report, run_bench, table
from ascendra.perf.profiler import ProfileGrid, profile_engine
from ascendra.runtime.local_stack import LocalStack, StackConfig
from ascendra.runtime.tiny_model import build_tiny_model, write_id_tokenizer
from ascendra.workloads.lengths import LongBenchLike, ShareGptLike
from ascendra.workloads.spec import SyntheticWorkload

HERE = Path(__file__).resolve().parent
SHAREGPT = SyntheticWorkload(ShareGptLike())
LONGBENCH = SyntheticWorkload(LongBenchLike())
SLO_SHAREGPT, SLO_LONGBENCH = Slo(1.0, 0.15), Slo(2.5, 0.15)
SLO_GAPS = Slo(2.5, 0.15, TbtKind.MAX)  # every gap between tokens within 150 ms
SEED = 1  # the load generator's: lengths and arrivals (prompts are drawn afresh)


@dataclass(frozen=True)
class Sweep:
    """``ascendra bench`` straight to the engine (``system`` None) or through ``system``'s
    router over it."""

    name: str
    system: str | None
    workload: SyntheticWorkload
    slo: Slo
    rates: tuple[float, ...]
    requests: int = 1200
    # Each rate's stream starts with this much unmeasured load at that rate (RateLoad): a
    # ShareGPT-like request streams for about 25 s here, so 1,200 requests sent to an idle
    # engine end before it reaches what the rate sustains. Runs before 2026-12-03c had none,
    # and a separate 300-request warm-up, which the lead-in also does (kernels compiled).
    lead_seconds: float = 30.0
    warmup: int = 0
    router_args: tuple[str, ...] = ()  # policy flags beyond the system's (ascendra router -h)
    observe: bool = False  # the router logs its observations (the TTFT predictor's data)


@dataclass(frozen=True)
class PeerBench:
    """``vllm bench serve`` at one rate with its goodput option at the same SLOs (TTFT and
    TPOT, its name for the mean gap), on the lengths ``ascendra bench`` draws for that rate
    and seed."""

    name: str
    system: str | None
    workload: SyntheticWorkload
    slo: Slo
    rate: float
    requests: int = 1200


@dataclass(frozen=True)
class Profile:
    """``ascendra profile`` of the idle engine: the setup's grid, or with ``at_load`` its
    grid of the batches a loaded engine runs (hundreds of decodes, prefills beside them)."""

    name: str
    at_load: bool = False


Step = Sweep | PeerBench | Profile


@dataclass(frozen=True)
class EngineSession:
    """Steps run in order against one engine owning the GPU, started once with the engine
    arguments of ``engine_system`` (a registry system) and ``engine_args`` after them."""

    engine_system: str
    steps: tuple[Step, ...]
    engine_args: tuple[str, ...] = ()
    label: str = ""  # names its logs' folder when two sessions start the same system

    @property
    def name(self) -> str:
        return self.label or self.engine_system


# Rates that bracket each system's 90% crossing under sustained load (a 30 s lead-in), as the
# simulator with the H200 profile (its at-load rows included) predicts them: one engine at 39
# req/s ShareGPT-like, Ascendra 44 (and 47 would be the 1.2x goal); LongBench-like 12 and 13;
# every gap within 150 ms 8 and above 12 (docs/gpu.md, 2026-12-03c). Before 2026-12-03c the
# runs had no lead-in and crossed at 59-67 req/s: a burst into an idle engine.
RATES = {"sharegpt": (36, 40, 44, 48), "longbench": (11, 13, 15, 17),
         "longbench-gaps": (6, 9, 12, 15)}
LOADS = {"sharegpt": (SHAREGPT, SLO_SHAREGPT), "longbench": (LONGBENCH, SLO_LONGBENCH),
         "longbench-gaps": (LONGBENCH, SLO_GAPS)}
PEER_RATE = 44  # ShareGPT-like; from an idle engine, as vLLM's client runs (crossing: 59-62)


def _sweep(label: str, system: str | None, load: str, *router_args: str,
           suffix: str = "") -> Sweep:
    work, slo = LOADS[load]
    return Sweep(f"h200-{label}-{load}{suffix}", system, work, slo, RATES[load],
                 router_args=router_args)


def _peer(label: str, system: str | None, suffix: str = "") -> PeerBench:
    return PeerBench(f"h200-peer-{label}-sharegpt-{PEER_RATE}{suffix}", system, SHAREGPT,
                     SLO_SHAREGPT, PEER_RATE)


SESSIONS = [
    EngineSession("ascendra", (
        _sweep("ascendra", "ascendra", "sharegpt"),
        # The steps a loaded engine runs, which the 2026-12-02 profile (decodes up to 256, no
        # prefill beside a decode batch) never measured: the ShareGPT-like runs reach 1,015
        # running, and the simulator fitted to that profile predicted TTFT a quarter of the
        # measured. Its rows join the 2026-12-02 ones in the shipped profile.
        Profile("profile-h200-at-load", at_load=True),
        # Promotion only while the queue is a passing one (2026-12-03c): at 52 req/s the
        # default order held 20 long prompts past their TTFT that the bare engine served.
        _sweep("ascendra-promote", "ascendra", "sharegpt", "--promotion-slack-seconds", "0.5"),
        _peer("ascendra", "ascendra"),
        # What holding the queue costs on a fast engine (docs/gpu.md, 2026-12-02): the same
        # policy with every request sent at arrival, ordered by the engine's priorities.
        _sweep("ascendra-noqueue", "ascendra", "sharegpt", "--hold-queue", "false"),
        _sweep("ascendra", "ascendra", "longbench"),
        _sweep("ascendra", "ascendra", "longbench-gaps"),
        # When device time holds one engine start only: the bare engine with Ascendra's
        # engine arguments, every request at priority 0, which vLLM orders as FCFS.
        _sweep("vllm-direct-prio", None, "longbench-gaps"),
        # The ShareGPT-like comparison on the same engine process (one engine start): the
        # bare engine at one priority, and vLLM's peer client on both. (vllm-shed cannot run
        # here: the local stack starts a router only over the engines of its own system.)
        _sweep("vllm-direct-prio", None, "sharegpt"),
        _peer("vllm-direct-prio", None, "-a"), _peer("vllm-direct-prio", None, "-b"),
        # From an idle engine, as vLLM's client runs: comparable with its runs only so.
        Sweep(f"h200-vllm-direct-prio-sharegpt-{PEER_RATE}-again", None, SHAREGPT,
              SLO_SHAREGPT, (PEER_RATE,), lead_seconds=0.0),
        _sweep("ascendra", "ascendra", "sharegpt", suffix="-again"),
    )),
    EngineSession("vllm", (
        _sweep("vllm-direct", None, "sharegpt"),
        Profile("profile-h200"),
        _sweep("vllm", "vllm", "sharegpt"),
        _sweep("vllm-shed", "vllm-shed", "sharegpt"),
        # Run-to-run noise of the bare engine and of the router hop (2026-12-02: four runs of
        # one configuration at 44 req/s spread from 82.5% to 100%).
        _sweep("vllm-direct", None, "sharegpt", suffix="-again"),
        _sweep("vllm", "vllm", "sharegpt", suffix="-again"),
        # The peer check on the bare engine, twice, and ascendra bench's own second run of
        # the same rate: the run-to-run noise both clients' numbers are read against.
        _peer("vllm-direct", None, "-a"), _peer("vllm-direct", None, "-b"),
        Sweep(f"h200-vllm-direct-sharegpt-{PEER_RATE}-again", None, SHAREGPT, SLO_SHAREGPT,
              (PEER_RATE,), lead_seconds=0.0),
        *(_sweep(label, system, load) for load in ("longbench", "longbench-gaps")
          for label, system in (("vllm-direct", None), ("vllm", "vllm"),
                                ("vllm-shed", "vllm-shed"))),
    )),
    # CUDA graphs for batches up to 1,024 tokens. vLLM captures them up to min(2 × seats, 512)
    # tokens, so on a loaded engine (1,015 running, prefills beside them) most steps run
    # without: 1,024 decodes took 47-56 ms where 512 took 19, and a 512-token prefill beside
    # 256 decodes 41-47 ms where the two alone take 16 and 11 (2026-12-03c). Whether the
    # engine the runtime ships should capture more, by what it sustains, both ways.
    EngineSession("ascendra", (
        Profile("profile-h200-at-load-graphs1024", at_load=True),
        _sweep("vllm-direct-prio-graphs1024", None, "sharegpt"),
        _sweep("ascendra-graphs1024", "ascendra", "sharegpt"),
    ), engine_args=("--compilation-config", '{"max_cudagraph_capture_size": 1024}'),
        label="ascendra-graphs1024"),
]

# The profile at the shipped settings (1,024 seats, 8,192-token steps): prefills up to the
# longest prompt the runs allow, decode batches as large as the ShareGPT-like runs reach, and
# (since 2026-12-02, when a fit to pure steps put a loaded H200's mean TBT at 60%)
# prefills beside running decode batches.
H200_GRID = replace(PROFILE_GRID, prefill_tokens=(*PROFILE_GRID.prefill_tokens, 3072, 4000),
                    decode_batches=(1, 4, 16, 64, 128, 256), mixed_prefill=(512, 2048, 4000),
                    mixed_decodes=(64, 256), mixed_context=512)
H200_LOAD_GRID = ProfileGrid(prefill_tokens=(512, 2048, 4000), decode_batches=(512, 1024),
                             decode_contexts=(128, 512), decode_tokens=96,
                             mixed_prefill=(512, 2048, 4000), mixed_decodes=(64, 256, 768),
                             mixed_context=512)
SMOKE_GRID = ProfileGrid(prefill_tokens=(32, 256), decode_batches=(1, 4), decode_contexts=(64,),
                         decode_tokens=16, mixed_prefill=(256,), mixed_decodes=(4,),
                         mixed_context=64, repeat=1)


@dataclass(frozen=True)
class Setup:
    """Where the steps run: the H200 (8B shape, dummy weights) or, scaled down, the CPU."""

    model: Path
    cpu: bool
    engine_args: tuple[str, ...]
    grid: ProfileGrid
    load_grid: ProfileGrid
    rate_scale: float = 1.0
    request_scale: float = 1.0
    rates: tuple[float, ...] | None = None  # every sweep's, in place of its load's

    def sweep(self, s: Sweep) -> Sweep:
        return replace(s, rates=tuple(r * self.rate_scale for r in self.rates or s.rates),
                       requests=self._n(s.requests), warmup=self._n(s.warmup) if s.warmup else 0,
                       lead_seconds=s.lead_seconds * self.request_scale)

    def peer(self, p: PeerBench) -> PeerBench:
        return replace(p, rate=p.rate * self.rate_scale, requests=self._n(p.requests))

    def _n(self, requests: int) -> int:
        return max(4, round(requests * self.request_scale))


def h200_setup(root: Path) -> Setup:
    d = root / "llama31-8b"
    d.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((HERE / "llama31-8b" / "config.json").read_text())
    shutil.copy(HERE / "llama31-8b" / "config.json", d / "config.json")
    write_id_tokenizer(d, cfg["vocab_size"], cfg["bos_token_id"], cfg["eos_token_id"])
    return Setup(d, cpu=False, engine_args=("--load-format", "dummy"), grid=H200_GRID,
                 load_grid=H200_LOAD_GRID)


def smoke_setup(root: Path) -> Setup:
    tiny = build_tiny_model()
    d = root / "tiny-llama-ids"
    shutil.copytree(tiny, d, dirs_exist_ok=True)
    (d / "ascendra-tiny-model.json").unlink()  # served under its folder's name
    cfg = json.loads((d / "config.json").read_text())
    write_id_tokenizer(d, cfg["vocab_size"], cfg["bos_token_id"], cfg["eos_token_id"])
    return Setup(d, cpu=True, engine_args=(), grid=SMOKE_GRID, load_grid=SMOKE_GRID,
                 rate_scale=0.1, request_scale=0.02)


def run_session(session: EngineSession, steps: list[Step], setup: Setup, out: Path,
                port: int) -> None:
    cfg = StackConfig(model=setup.model, instances=1, system=session.engine_system,
                      cpu=setup.cpu, port=port, base_port=port + 100, max_model_len=4096,
                      startup_timeout=900.0,
                      engine_args=[*setup.engine_args, *session.engine_args],
                      router=False, log_dir=out / "logs" / session.name)
    started = time.time()
    with LocalStack(cfg) as stack:
        print(f"== {session.name} engine ready in {time.time() - started:.0f} s",
              flush=True)
        engine = stack.engine_urls[0]
        for step in steps:
            before = _engine_counters(engine)
            t0 = time.time()
            try:
                result = _execute(step, stack, setup, out, port)
            except Exception:  # record it and go on: one failed step must not cost the others
                traceback.print_exc()
                (out / f"{step.name}.failed").write_text(traceback.format_exc())
                continue
            after = _engine_counters(engine)
            result |= {"step": step.name, "engine_system": session.engine_system,
                       "engine_args": [*setup.engine_args, *session.engine_args],
                       "wall_s": round(time.time() - t0, 1),
                       "engine_counters": {k: after[k] - before.get(k, 0.0) for k in after}}
            (out / f"{step.name}.json").write_text(json.dumps(result, indent=1) + "\n")
            (out / f"{step.name}.failed").unlink(missing_ok=True)  # an earlier try's


def _execute(step: Step, stack: LocalStack, setup: Setup, out: Path,
             port: int) -> dict[str, Any]:
    engine = stack.engine_urls[0]
    if isinstance(step, Profile):
        path = out / f"{step.name}.csv"
        grid = setup.load_grid if step.at_load else setup.grid
        rows = profile_engine(engine, stack.name, grid, path, max_model_len=4096,
                              progress=lambda line: print(line, flush=True))
        return {"rows": len(rows), "profile_csv": path.name,
                "grid": {k: getattr(grid, k) for k in (
                    "prefill_tokens", "decode_batches", "decode_contexts", "decode_tokens",
                    "mixed_prefill", "mixed_decodes", "mixed_context", "samples", "repeat")}}
    if isinstance(step, Sweep):
        step = setup.sweep(step)
        if step.system is None:
            return _bench(step, engine, stack.name)
        args = [*step.router_args]
        if step.observe:
            args += ["--observations", str(out / f"{step.name}.observations.jsonl")]
        with stack.router(step.system, port, args, step.slo) as url, \
                _sampling(url, out / f"{step.name}.instances.jsonl"):
            return {**_bench(step, url, stack.name), "router_counters": _router_counters(url)}
    step = setup.peer(step)
    if step.system is None:
        return _peer_bench(step, engine, stack, out)
    with stack.router(step.system, port, slo=step.slo) as url:
        return {**_peer_bench(step, url, stack, out), "router_counters": _router_counters(url)}


@contextlib.contextmanager
def _sampling(url: str, path: Path, every_s: float = 2.0) -> Iterator[None]:
    """What the router believes of its engines (``/ascendra/instances``: the rates it
    estimated, what it counts unstarted), its queue and its own saturation (passes, loop lag:
    running totals) every few seconds, a line each, written as it goes: a sweep cut short by
    the end of device time still tells why it went as it did (the every-gap sweep of
    2026-12-02 ended so, its engine running 0-9 requests), and a stall of a few seconds shows
    whose it was (2026-12-03c: 177 requests of one rate missed, and 5-second samples of the
    engines could not say why)."""
    stop = threading.Event()
    keep = ("ascendra_router_queue_requests{", "ascendra_control_pass_seconds_sum",
            "ascendra_control_pass_seconds_count", "ascendra_event_loop_lag_seconds_sum",
            "ascendra_event_loop_lag_seconds_count")

    def sample() -> None:
        with path.open("a") as f:
            while not stop.wait(every_s):
                try:
                    with urllib.request.urlopen(url + "/ascendra/instances", timeout=5) as r:
                        instances = json.load(r)
                    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
                        router = {line.split(" ")[0]: float(line.split(" ")[1])
                                  for line in r.read().decode().splitlines()
                                  if line.startswith(keep)}
                    f.write(json.dumps({"t": round(time.time(), 2), "instances": instances,
                                        "router": router}) + "\n")
                except (OSError, ValueError) as e:  # a busy router: note it, sample on
                    f.write(json.dumps({"t": round(time.time(), 2), "error": str(e)}) + "\n")
                f.flush()

    worker = threading.Thread(target=sample, daemon=True)
    worker.start()
    try:
        yield
    finally:
        stop.set()
        worker.join(timeout=10)


def _bench(step: Sweep, url: str, model: str) -> dict[str, Any]:
    cfg = BenchConfig(url=url + "/v1", model=model, workload=step.workload,
                      rates=list(step.rates), requests=step.requests, slo=step.slo,
                      warmup=step.warmup, lead_seconds=step.lead_seconds, seed=SEED)
    rep = report(cfg, run_bench(cfg))
    print(f"== {step.name}\n{table(rep)}", flush=True)
    return {"system": step.system or "vllm", "direct_to_engine": step.system is None,
            "slo": _slo(step.slo), "report": rep}


def _peer_bench(step: PeerBench, url: str, stack: LocalStack, out: Path) -> dict[str, Any]:
    """vLLM's client on a dataset file of this rate's lengths; its result file beside ours."""
    specs = step.workload.requests(step.rate, step.requests, SEED)
    rng = np.random.default_rng()
    data = out / f"{step.name}.dataset.jsonl"
    with data.open("w") as f:
        for s in specs:
            ids = rng.integers(16, 1000, s.prompt_len)
            f.write(json.dumps({"prompt": " ".join(f"t{i}" for i in ids),
                                "output_tokens": s.output_len}) + "\n")
    result = f"{step.name}.vllm.json"
    argv = [sys.executable, "-m", "ascendra.peer_bench", "--backend", "vllm", "--base-url", url,
            "--endpoint", "/v1/completions", "--model", stack.name, "--served-model-name",
            stack.name, "--tokenizer", str(stack.model), "--dataset-name", "custom",
            "--dataset-path", str(data), "--custom-output-len", "-1", "--skip-chat-template",
            "--disable-shuffle", "--num-prompts", str(step.requests), "--request-rate",
            f"{step.rate:g}", "--ignore-eos", "--seed", str(SEED), "--goodput",
            f"ttft:{step.slo.ttft * 1e3:g}", f"tpot:{step.slo.tbt * 1e3:g}",
            "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,99",
            "--save-result", "--save-detailed", "--result-dir", str(out),
            "--result-filename", result, "--ready-check-timeout-sec", "0"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    (out / f"{step.name}.vllm.log").write_text(done.stdout + done.stderr)
    print(f"== {step.name} (vllm bench serve, exit {done.returncode})\n"
          f"{done.stdout[-1500:]}", flush=True)
    if done.returncode != 0:
        raise RuntimeError(f"vllm bench serve exited {done.returncode}: {done.stderr[-2000:]}")
    return {"system": step.system or "vllm", "direct_to_engine": step.system is None,
            "slo": _slo(step.slo), "rate": step.rate, "requests": step.requests,
            "vllm_result": result, "argv": argv[3:]}


def _slo(slo: Slo) -> dict[str, object]:
    return {"ttft_s": slo.ttft, "tbt_s": slo.tbt, "tbt_kind": slo.tbt_kind.value}


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--only", help="comma-separated step names, run in this order within "
                    "each engine session (default: all, in the sessions' order)")
    ap.add_argument("--port", type=int, default=9000)
    ap.add_argument("--smoke", action="store_true",
                    help="the same steps on the CPU build and the tiny model, scaled down")
    ap.add_argument("--rates", help="comma-separated rates for every sweep of this run, in "
                    "place of its load's (when device time is short)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("VLLM_CACHE_ROOT", "/tmp/vllm-cache")  # compile cache across starts
    setup = (smoke_setup if args.smoke else h200_setup)(args.out / "model")
    if args.rates:
        setup = replace(setup, rates=tuple(float(r) for r in args.rates.split(",")))
    wanted = args.only.split(",") if args.only else None
    known = {s.name for session in SESSIONS for s in session.steps}
    if wanted and set(wanted) - known:
        sys.exit(f"unknown steps: {', '.join(sorted(set(wanted) - known))}")
    record_environment(args.out, smoke=args.smoke)
    for session in SESSIONS:
        steps = list(session.steps) if not wanted else sorted(
            (s for s in session.steps if s.name in wanted), key=lambda s: wanted.index(s.name))
        if steps:
            run_session(session, steps, setup, args.out, args.port)
    print("all steps done", flush=True)


if __name__ == "__main__":
    main()
