"""``ascendra profile`` against a real vLLM CPU engine: engine-reported step times to a CSV that
the latency model's loader reads."""

from __future__ import annotations

import csv
from pathlib import Path

from serving_support import Stack, engine_metric

from ascendra.cli import main
from ascendra.perf.profile import load_profile


def _profile(stack: Stack, out: Path, *grid: str) -> None:
    assert main(["profile", "--url", stack.lp_engine, "--model", "tiny-llama", "--out",
                 str(out), *grid, "--quiet"]) == 0


def test_profile_of_a_real_engine(stack: Stack, tmp_path: Path):
    out = tmp_path / "tiny-cpu.csv"
    hits = engine_metric(stack.lp_engine, "vllm:prefix_cache_hits_total")
    _profile(stack, out, "--prefill", "32,512", "--decodes", "1,4", "--contexts", "32",
             "--decode-tokens", "16", "--repeat", "2")
    rows = load_profile(out)
    prefill = {r.shape.num_prefill_tokens: r.time_s for r in rows if r.shape.num_prefill_tokens}
    decode = [r for r in rows if r.shape.num_decodes]
    assert sorted(prefill) == [32, 512] and [r.shape.num_decodes for r in decode] == [1, 4] * 2
    # A 512-token prefill costs more than a 32-token one. (Not a multiple: on the tiny model a
    # step's fixed cost is most of it, 12.7 ms against 22.7 ms on a loaded CI run.)
    assert prefill[512] > prefill[32] > 0
    assert all(0 < r.time_s < 5 for r in decode)
    assert decode[1].shape.decode_context == 4 * (32 + 8)

    # A second run against the same engine draws new prompts: none of its 512-token prefills
    # (four full cache blocks) may be served from the first run's prefix cache.
    _profile(stack, tmp_path / "again.csv", "--prefill", "512", "--decodes", "1", "--contexts",
             "32", "--decode-tokens", "4", "--repeat", "1")
    assert engine_metric(stack.lp_engine, "vllm:prefix_cache_hits_total") == hits


def test_mixed_samples_time_a_prefill_beside_running_decodes(stack: Stack, tmp_path: Path):
    """The step a loaded engine runs: a prefill while a decode batch streams (two of the test
    engine's four seats, so that the prefill is seated at once)."""
    out = tmp_path / "mixed.csv"
    _profile(stack, out, "--prefill", "32", "--decodes", "1", "--contexts", "32",
             "--decode-tokens", "16", "--mixed-prefill", "256", "--mixed-decodes", "2",
             "--repeat", "1")
    rows = list(csv.DictReader(out.open()))
    mixed = [r for r in rows if int(r["num_prefill_tokens"]) and int(r["num_decodes"])]
    assert len(rows) == 3 and len(mixed) == 1
    row = mixed[0]
    assert (int(row["num_prefill_tokens"]), int(row["num_decodes"])) == (256, 2)
    assert 2 * 32 < int(row["decode_context"]) < 2 * 2048 and 0 < float(row["time_s"]) < 5
    assert engine_metric(stack.lp_engine, "vllm:num_requests_running") == 0  # streams aborted
