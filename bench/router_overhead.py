"""What the router adds to time-to-first-token, measured against a stand-in backend.

Starts the STAND-IN backend (bench/standin_backend.py: no model, tokens on a fixed clock) and one
router process in Ascendra mode in front of it, then runs the same open-loop Poisson load
(text prompts the router must tokenize, 64 tokens in, 16 out) straight at the backend and through
the router, at each rate. Added TTFT = router TTFT − direct TTFT, per percentile. The load
generator shares this machine's cores with both servers, so the direct run at the same rate is the
baseline that cancels its cost. Beside it, the router process's own CPU time per token it relayed
(user + system, from /proc): what bounds the token rate one router process can carry.

    python bench/router_overhead.py [--rates 200,400,600,800] [--requests 2000]
        [--system ascendra] [--gap 0.001] [--output-tokens 16]
        [--json docs/results/router-overhead.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from ascendra.core.request import Slo
from ascendra.loadgen import BenchConfig, run_rate
from ascendra.runtime.tiny_model import build_tiny_model
from ascendra.workloads.lengths import ShareGptLike
from ascendra.workloads.spec import SyntheticWorkload

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
    ap.add_argument("--json")
    args = ap.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    model = build_tiny_model()
    procs = [
        subprocess.Popen([sys.executable, str(HERE / "standin_backend.py"), "--port",
                          str(BACKEND), "--gap", str(args.gap)], start_new_session=True),
        subprocess.Popen([sys.executable, "-m", "ascendra.cli", "router", "--model-name",
                          "standin", "--tokenizer", str(model), "--max-model-len", "2048",
                          "--port", str(ROUTER), "--system", args.system, "--instance",
                          f"http://127.0.0.1:{BACKEND},role=lp"], start_new_session=True),
    ]
    try:
        _wait(f"http://127.0.0.1:{BACKEND}/health")
        _wait(f"http://127.0.0.1:{ROUTER}/health")
        work = SyntheticWorkload(ShareGptLike(prompt_median=64, prompt_sigma=0,
                                              output_median=args.output_tokens,
                                              output_sigma=0))
        rows = []
        for rate in rates:
            row: dict[str, object] = {"rate": rate}
            for name, port in (("direct", BACKEND), ("router", ROUTER)):
                cfg = BenchConfig(url=f"http://127.0.0.1:{port}/v1", model="standin",
                                  workload=work, rates=[rate], requests=args.requests,
                                  slo=Slo(1.0, 0.15), prompt="text")
                cpu0, lag0 = _cpu_seconds(procs[1].pid), _loop_lag(f"http://127.0.0.1:{ROUTER}")
                res = asyncio.run(run_rate(cfg, rate))
                cpu = _cpu_seconds(procs[1].pid) - cpu0
                lag = _lag_row(lag0, _loop_lag(f"http://127.0.0.1:{ROUTER}"))
                ttft = sorted(o.ttft for o in res.outcomes if o.ttft is not None)
                errors = sum(o.error is not None or not o.finished for o in res.outcomes)
                row[name] = {
                    "ttft_p50_ms": round(ttft[len(ttft) // 2] * 1e3, 3) if ttft else None,
                    "ttft_p99_ms": round(ttft[int(len(ttft) * 0.99)] * 1e3, 3) if ttft else None,
                    "failed": errors, "achieved_rate": round(len(ttft) / res.wall_s, 1)}
                if name == "router":
                    tokens = sum(o.tokens for o in res.outcomes)
                    row[name]["router_cpu_us_per_token"] = round(1e6 * cpu / max(1, tokens), 1)
                    row[name] |= lag
            d, r = row["direct"], row["router"]
            if d["ttft_p50_ms"] is not None and r["ttft_p50_ms"] is not None:  # type: ignore[index]
                row["added_p50_ms"] = round(r["ttft_p50_ms"] - d["ttft_p50_ms"], 3)  # type: ignore[index]
                row["added_p99_ms"] = round(r["ttft_p99_ms"] - d["ttft_p99_ms"], 3)  # type: ignore[index]
            print(json.dumps(row), flush=True)
            rows.append(row)
        out = {"router_system": args.system,
               "requests_per_rate": args.requests, "prompt_tokens": 64,
               "output_tokens": args.output_tokens,
               "cpu_count": os.cpu_count(), "machine": platform.machine(),
               "backend": "stand-in (bench/standin_backend.py), first token after 2 ms, "
                          f"then one every {args.gap * 1e3:g} ms",
               "rows": rows}
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait()


if __name__ == "__main__":
    main()
