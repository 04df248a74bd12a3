"""``ascendra profile`` against a real vLLM CPU engine: engine-reported step times to a CSV that
the latency model's loader reads."""

from __future__ import annotations

from pathlib import Path

from serving_support import Stack

from ascendra.cli import main
from ascendra.perf.profile import load_profile


def test_profile_of_a_real_engine(stack: Stack, tmp_path: Path):
    out = tmp_path / "tiny-cpu.csv"
    assert main(["profile", "--url", stack.lp_engine, "--model", "tiny-llama", "--out",
                 str(out), "--prefill", "32,512", "--decodes", "1,4", "--contexts", "32",
                 "--decode-tokens", "16", "--repeat", "2", "--quiet"]) == 0
    rows = load_profile(out)
    prefill = {r.shape.num_prefill_tokens: r.time_s for r in rows if r.shape.num_prefill_tokens}
    decode = [r for r in rows if r.shape.num_decodes]
    assert sorted(prefill) == [32, 512] and [r.shape.num_decodes for r in decode] == [1, 4] * 2
    # A 512-token prefill costs several times a 32-token one on this CPU engine.
    assert prefill[512] > 2 * prefill[32] > 0
    assert all(0 < r.time_s < 5 for r in decode)
    assert decode[1].shape.decode_context == 4 * (32 + 8)
