"""Fixtures that run the real stack: vLLM (CPU build) engines, runtime agents and the router,
all started by the project's own ``ascendra up``; no stand-ins for the engine."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from serving_support import BASE_PORT, ROUTER_PORT, SEATS, Stack, read_until

from ascendra.runtime.procs import die_with_parent


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Stack:
    logs = tmp_path_factory.mktemp("stack-logs")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ascendra.cli", "up", "--port", str(ROUTER_PORT),
         "--base-port", str(BASE_PORT), "--max-num-seqs", str(SEATS), "--log-dir", str(logs)],
        stdout=subprocess.PIPE, text=True, start_new_session=True,
        preexec_fn=die_with_parent)  # a killed test run leaves no stack holding the ports
    try:
        lines = read_until(proc, "ascendra: ready", timeout=600)
    except BaseException:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(60)
        for f in sorted(logs.glob("*.log")):
            print(f"==== {f.name}\n{f.read_text()[-3000:]}")
        raise
    model = next(line.split("model ", 1)[1] for line in lines if "starting" in line)
    at = "http://127.0.0.1:{}".format
    s = Stack(url=at(ROUTER_PORT), lp_engine=at(BASE_PORT), lp_agent=at(BASE_PORT + 1),
              hp_engine=at(BASE_PORT + 2), hp_agent=at(BASE_PORT + 3), proc=proc,
              model_dir=Path(model))
    yield s
    # `ascendra up` must stop every child on Ctrl-C and exit 0.
    os.killpg(proc.pid, signal.SIGINT)
    rest = proc.communicate(timeout=90)[0]
    assert proc.returncode == 0, rest
    assert "ascendra: stopped" in rest
    for port in (ROUTER_PORT, BASE_PORT, BASE_PORT + 1, BASE_PORT + 2, BASE_PORT + 3):
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
