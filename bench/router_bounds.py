"""The router's bounds, measured: one router process over the STAND-IN backend
(bench/standin_backend.py), a tiny model's tokenizer and a 2,048-token context, then a 20 MB
header, a 7.5 MB prompt (under the 8 MiB body cap, beyond any 2,048-token context) and 200
connections that never send a request; the router's resident memory before and after.

    python bench/router_bounds.py [--json docs/results/router-bounds.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from ascendra.runtime.tiny_model import build_tiny_model

HERE = Path(__file__).resolve().parent
BACKEND, ROUTER = 18980, 18990
URL = f"http://127.0.0.1:{ROUTER}"


def _rss_mb(pid: int) -> float:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines()
                if x.startswith("VmRSS:"))
    return round(int(line.split()[1]) / 1024, 1)


def _wait(url: str) -> None:
    for _ in range(300):
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if b'"healthy_instances":1' in r.read():
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not come up")


def _post(body: bytes) -> int:
    req = urllib.request.Request(URL + "/v1/completions", data=body,
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def measure(pid: int) -> dict[str, object]:
    out: dict[str, object] = {"rss_idle_mb": _rss_mb(pid)}
    t0, sent = time.monotonic(), 0
    with socket.create_connection(("127.0.0.1", ROUTER)) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nX-Big: ")
        try:
            for _ in range(320):  # 20 MB
                s.sendall(b"a" * 65536)
                sent += 65536
        except OSError:
            pass
        answer = s.recv(100)
    out["header_20mb"] = {"status": answer[9:12].decode(), "bytes_sent_before_close": sent,
                          "seconds": round(time.monotonic() - t0, 3)}
    big = json.dumps({"model": "tiny-llama", "prompt": "word " * 1_500_000}).encode()
    t0 = time.monotonic()
    out["prompt_7_5mb"] = {"status": _post(big), "seconds": round(time.monotonic() - t0, 3),
                           "rss_after_mb": _rss_mb(pid)}
    socks = [socket.create_connection(("127.0.0.1", ROUTER)) for _ in range(200)]
    t0 = time.monotonic()
    for s in socks:
        s.settimeout(60)
        s.recv(10)
        s.close()
    out["silent_connections_200_all_closed_after_s"] = round(time.monotonic() - t0, 2)
    out["rss_end_mb"] = _rss_mb(pid)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    model = build_tiny_model()
    procs = [subprocess.Popen([sys.executable, str(HERE / "standin_backend.py"), "--port",
                               str(BACKEND)], start_new_session=True),
             subprocess.Popen([sys.executable, "-m", "ascendra.cli", "router", "--model-name",
                               "tiny-llama", "--tokenizer", str(model), "--max-model-len", "2048",
                               "--port", str(ROUTER), "--instance", f"http://127.0.0.1:{BACKEND}"],
                              start_new_session=True, stderr=subprocess.DEVNULL)]
    try:
        _wait(URL + "/health")
        result = measure(procs[1].pid)
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
