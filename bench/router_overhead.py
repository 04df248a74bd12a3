"""What the router adds to time-to-first-token, measured against a stand-in backend.

Starts the STAND-IN backend (no model, tokens on a fixed clock) and one router process in
Ascendra mode in front of it, then runs the same open-loop Poisson load (text prompts the router
must tokenize, 64 tokens in, 16 out) straight at the backend and through the router, at each
rate. Added TTFT = router TTFT − direct TTFT, per percentile. Beside it, the router process's
own CPU time per token it relayed (user + system, from /proc): what bounds the token rate one
router process can carry.

The harness (load generator and backend) shares this machine's cores with the router. With
``--harness go`` (the default) both are ``bench/loadpump`` (Go, built here on first use), which
at 2,000 req/s takes a fraction of the CPU the router does; ``--harness python`` runs
``ascendra bench``'s load generator and ``bench/standin_backend.py``, which at 400 req/s took as
much CPU as the router and so bounded what could be measured. The direct run at the same rate
is the baseline that cancels the harness's cost in either.

``--router relay`` puts ``loadpump relay`` where the router was: a compiled proxy that parses and
decides nothing, which is the floor under any router's cost on this machine (two HTTP hops and a
read and a write an event).

    python bench/router_overhead.py [--rates 200,400,600,800] [--requests 2000]
        [--system ascendra] [--gap 0.001] [--output-tokens 16] [--stream-interval 1]
        [--harness go|python] [--router ascendra|relay] [--skip-direct]
        [--json docs/results/router-overhead.json]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import orjson

from ascendra.core.request import Slo
from ascendra.loadgen import BenchConfig, prompts_for, request_body, request_headers, run_rate
from ascendra.runtime.tiny_model import build_tiny_model
from ascendra.workloads.lengths import ShareGptLike
from ascendra.workloads.spec import SyntheticWorkload, rate_load

BACKEND, ROUTER = 18900, 18910
HERE = Path(__file__).resolve().parent


def _wait(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"{url} did not come up")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _loop_lag(url: str) -> dict[str, float]:
    """The router's event-loop lag histogram so far: its count, sum and buckets."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        lines = r.read().decode().splitlines()
    return {line.split(" ")[0]: float(line.split(" ")[1]) for line in lines
            if line.startswith("ascendra_event_loop_lag_seconds_")
            and "_created" not in line}


def _lag_row(before: dict[str, float], after: dict[str, float]) -> dict[str, float | None]:
    """Mean lateness of the router's periodic wake-ups during a run, and the fraction that
    woke more than 10 ms and more than 100 ms late."""
    d = {k: after[k] - before.get(k, 0.0) for k in after}
    n = d.get("ascendra_event_loop_lag_seconds_count", 0.0)
    if n <= 0:
        return {"loop_lag_mean_ms": None}
    over = {ms: 1 - d[f'ascendra_event_loop_lag_seconds_bucket{{le="{ms / 1e3:g}"}}'] / n
            for ms in (10, 100)}
    return {"loop_lag_mean_ms": round(1e3 * d["ascendra_event_loop_lag_seconds_sum"] / n, 2),
            "loop_lag_over_10ms": round(over[10], 4), "loop_lag_over_100ms": round(over[100], 4)}


def loadpump() -> Path:
    """The compiled harness, built from bench/loadpump into the cache once per source."""
    src = HERE / "loadpump"
    digest = hashlib.sha256(b"".join(f.read_bytes() for f in sorted(src.glob("*.go")))
                            + (src / "go.mod").read_bytes()).hexdigest()[:12]
    exe = Path.home() / ".cache" / "ascendra" / f"loadpump-{digest}"
    if not exe.exists():
        exe.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["go", "build", "-o", str(exe), "."], cwd=src, check=True)
    return exe


@dataclass(frozen=True)
class Measured:
    ttfts: list[float]  # of the requests answered, s, sorted
    failed: int
    tokens: int
    wall_s: float
    in_order: list[float | None]  # every request's TTFT in the order sent (None: unanswered)

    def p99_by_sixth(self) -> list[float | None]:
        """TTFT p99 of each sixth of the run, ms, in order: a router at its limit shows a
        p99 that keeps growing; one that keeps up shows a start-up and then a level."""
        out: list[float | None] = []
        n = len(self.in_order)
        for k in range(6):
            part = sorted(x for x in self.in_order[k * n // 6:(k + 1) * n // 6] if x is not None)
            out.append(round(part[int(len(part) * 0.99)] * 1e3, 3) if part else None)
        return out


def _run_python(cfg: BenchConfig, rate: float) -> Measured:
    res = asyncio.run(run_rate(cfg, rate))
    return Measured(sorted(o.ttft for o in res.outcomes if o.ttft is not None),
                    sum(o.error is not None or not o.finished for o in res.outcomes),
                    sum(o.tokens for o in res.outcomes), res.wall_s,
                    [o.ttft for o in res.outcomes])


def _run_go(exe: Path, cfg: BenchConfig, rate: float, tmp: Path) -> Measured:
    """The same load as ``ascendra bench`` sends (its arrivals, prompts and bodies), sent by
    loadpump."""
    load = rate_load(cfg.workload, rate, cfg.requests, cfg.seed, cfg.lead_seconds)
    headers = request_headers(cfg)
    plan = tmp / "plan.jsonl"
    with plan.open("wb") as f:
        for spec, prompt in zip(load.specs, prompts_for(cfg, load.specs), strict=True):
            f.write(orjson.dumps({"at": spec.arrival, "headers": headers,
                                  "body": request_body(cfg, spec, prompt)}) + b"\n")
    done = subprocess.run([str(exe), "client", "-url", cfg.url + "/completions",
                           "-plan", str(plan)], check=True, capture_output=True)
    res = orjson.loads(done.stdout)
    outcomes = res["outcomes"]
    return Measured(sorted(o["ttft"] for o in outcomes if o["ttft"] is not None),
                    sum(bool(o.get("error")) or not o["finished"] for o in outcomes),
                    sum(o["tokens"] for o in outcomes), res["wall_s"],
                    [o["ttft"] for o in outcomes])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rates", default="200,400,600,800")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--gap", type=float, default=0.001, help="stand-in inter-token gap, s")
    ap.add_argument("--output-tokens", type=int, default=16, help="tokens each request streams "
                    "(280 and --gap 0.03: an H200's streams at ShareGPT-like load)")
    ap.add_argument("--system", default="ascendra",
                    help="the router's system (vllm-lb: no router queue, to see what holding "
                         "the queue costs)")
    ap.add_argument("--stream-interval", type=int, default=1,
                    help="tokens per event from the stand-in (vLLM's --stream-interval; "
                         "--harness go only)")
    ap.add_argument("--harness", choices=("go", "python"), default="go",
                    help="the load generator and stand-in backend: bench/loadpump (compiled) "
                         "or ascendra bench's and bench/standin_backend.py")
    ap.add_argument("--router", choices=("ascendra", "relay"), default="ascendra",
                    help="the router under test, or the compiled relay that decides nothing "
                         "(--harness go only)")
    ap.add_argument("--skip-direct", action="store_true",
                    help="the router's TTFT and CPU only, without the direct run to subtract "
                         "(half the time; to compare two routers run one after the other)")
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.json and not Path(args.json).resolve().parent.is_dir():
        sys.exit(f"router_overhead: no directory for --json {args.json}")
    if args.stream_interval != 1 and args.harness != "go":
        sys.exit("router_overhead: --stream-interval needs --harness go")
    if args.router == "relay" and args.harness != "go":
        sys.exit("router_overhead: --router relay needs --harness go")
    rates = [float(r) for r in args.rates.split(",")]
    model = build_tiny_model()
    exe = loadpump() if args.harness == "go" else None
    backend = [str(exe), "backend", "-port", str(BACKEND), "-gap", f"{args.gap}s",
               "-stream-interval", str(args.stream_interval)] if exe else \
        [sys.executable, str(HERE / "standin_backend.py"), "--port", str(BACKEND),
         "--gap", str(args.gap)]
    router = [str(exe), "relay", "-port", str(ROUTER), "-upstream",
              f"http://127.0.0.1:{BACKEND}"] if args.router == "relay" else \
        [sys.executable, "-m", "ascendra.cli", "router", "--model-name", "standin",
         "--tokenizer", str(model), "--max-model-len", "2048", "--port", str(ROUTER),
         "--system", args.system, "--instance", f"http://127.0.0.1:{BACKEND},role=lp"]
    procs = [subprocess.Popen(backend, start_new_session=True),
             subprocess.Popen(router, start_new_session=True)]
    try:
        _wait(f"http://127.0.0.1:{BACKEND}/health")
        _wait(f"http://127.0.0.1:{ROUTER}/health")
        work = SyntheticWorkload(ShareGptLike(prompt_median=64, prompt_sigma=0,
                                              output_median=args.output_tokens,
                                              output_sigma=0))
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            for rate in rates:
                row: dict[str, object] = {"rate": rate}
                targets = (("router", ROUTER),) if args.skip_direct else \
                    (("direct", BACKEND), ("router", ROUTER))
                for name, port in targets:
                    cfg = BenchConfig(url=f"http://127.0.0.1:{port}/v1", model="standin",
                                      workload=work, rates=[rate], requests=args.requests,
                                      slo=Slo(1.0, 0.15), prompt="text")
                    cpu0 = _cpu_seconds(procs[1].pid)
                    lag0 = _loop_lag(f"http://127.0.0.1:{ROUTER}")
                    m = _run_go(exe, cfg, rate, Path(tmp)) if exe else _run_python(cfg, rate)
                    cpu = _cpu_seconds(procs[1].pid) - cpu0
                    lag = _lag_row(lag0, _loop_lag(f"http://127.0.0.1:{ROUTER}"))
                    t = m.ttfts
                    row[name] = {
                        "ttft_p50_ms": round(t[len(t) // 2] * 1e3, 3) if t else None,
                        "ttft_p99_ms": round(t[int(len(t) * 0.99)] * 1e3, 3) if t else None,
                        "ttft_p99_ms_by_sixth": m.p99_by_sixth(),
                        "failed": m.failed, "achieved_rate": round(len(t) / m.wall_s, 1)}
                    if name == "router":
                        row[name]["router_cpu_us_per_token"] = round(
                            1e6 * cpu / max(1, m.tokens), 1)
                        row[name]["router_cpu_us_per_request"] = round(
                            1e6 * cpu / max(1, len(t)), 1)
                        row[name]["router_cpu_fraction"] = round(cpu / m.wall_s, 3)
                        row[name] |= lag
                d, r = row.get("direct", {}), row["router"]
                if d and d["ttft_p50_ms"] is not None and r["ttft_p50_ms"] is not None:  # type: ignore[index]
                    row["added_p50_ms"] = round(r["ttft_p50_ms"] - d["ttft_p50_ms"], 3)  # type: ignore[index]
                    row["added_p99_ms"] = round(r["ttft_p99_ms"] - d["ttft_p99_ms"], 3)  # type: ignore[index]
                print(json.dumps(row), flush=True)
                rows.append(row)
        out = {"router": args.router, "router_system": args.system, "harness": args.harness,
               "requests_per_rate": args.requests, "prompt_tokens": 64,
               "output_tokens": args.output_tokens, "stream_interval": args.stream_interval,
               "cpu_count": os.cpu_count(), "machine": platform.machine(),
               "backend": f"stand-in ({'bench/loadpump' if exe else 'bench/standin_backend.py'}"
                          f"), first token after 2 ms, then one every {args.gap * 1e3:g} ms",
               "rows": rows}
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait()


if __name__ == "__main__":
    main()
