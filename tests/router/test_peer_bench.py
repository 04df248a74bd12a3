"""vLLM's own benchmark client runs from this project's environment
(``python -m ascendra.peer_bench``, the arguments of ``vllm bench serve``) against the router
process over the STAND-IN backend, and finds the ``/tokenize`` it checks prompts with."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from standin_router import standin_router

from ascendra.runtime.tiny_model import build_tiny_model

BACKEND, ROUTER = 18962, 18972


@pytest.fixture(scope="module")
def router() -> Iterator[str]:
    with standin_router(BACKEND, ROUTER) as url:
        yield url


def test_tokenize_and_detokenize_answer_as_vllm_does(router: str):
    def post(path: str, body: dict) -> dict:
        req = urllib.request.Request(router + path, data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    out = post("/tokenize", {"model": "tiny-llama", "prompt": "the deadline",
                             "add_special_tokens": False})
    assert out["count"] == len(out["tokens"]) > 0 and out["max_model_len"] == 2048
    assert post("/detokenize", {"tokens": out["tokens"]})["prompt"].strip() == "the deadline"


def test_vllm_bench_serve_runs_from_the_project_environment(router: str, tmp_path: Path):
    done = subprocess.run(
        [sys.executable, "-m", "ascendra.peer_bench", "--backend", "vllm", "--base-url", router,
         "--endpoint", "/v1/completions", "--model", "tiny-llama", "--tokenizer",
         str(build_tiny_model()), "--dataset-name", "random", "--random-input-len", "16",
         "--random-output-len", "4", "--num-prompts", "8", "--request-rate", "20",
         "--ignore-eos", "--save-result", "--result-dir", str(tmp_path), "--result-filename",
         "peer.json", "--ready-check-timeout-sec", "0"],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "/tokenize unavailable" not in done.stdout
    result = json.loads((tmp_path / "peer.json").read_text())
    assert result["completed"] == 8 and result["failed"] == 0
