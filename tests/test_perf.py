"""Model shapes, the roofline, profile fitting and the saturation bound."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from ascendra.core.latency import BatchShape
from ascendra.errors import AscendraError
from ascendra.experiments.presets import H200_PROFILE, preset
from ascendra.perf import latency_model
from ascendra.perf.bound import saturation_bound
from ascendra.perf.hardware import GPUS, ModelShape
from ascendra.perf.profile import ProfileRow, fit_roofline, load_profile, write_profile
from ascendra.perf.roofline import RooflineCoefficients, RooflineLatencyModel


def test_llama_8b_counts_match_the_published_shape():
    m = ModelShape.builtin("llama-3.1-8b")
    assert m.layer_params == 218_103_808
    assert m.weight_bytes == pytest.approx(15.01e9, rel=1e-3)
    assert m.linear_flops_per_token == pytest.approx(13.96e9, rel=1e-3)
    assert m.kv_bytes_per_token == 131_072


def test_roofline_hand_computed_decode_and_prefill():
    m, gpu = ModelShape.builtin("llama-3.1-8b"), GPUS["h100"]
    coef = RooflineCoefficients(t0=1e-3, per_seq=1e-5, prefill_step=2e-3, eff_weights=1.0,
                                gemm_fixed=0.0, eff_gemm=1.0, eff_attn=1.0, eff_kv=1.0)
    lm = RooflineLatencyModel(m, gpu, coef)
    # 8 decodes of 1000 context: bandwidth-bound GEMMs + KV reads.
    expect = 1e-3 + 8e-5 + m.weight_bytes / gpu.mem_bandwidth + 8000 * 131_072 / gpu.mem_bandwidth
    assert lm.batch_time(BatchShape.decode(8, 1000)) == pytest.approx(expect)
    # One 4096-token prefill: compute-bound GEMMs + causal attention pairs + the prefill step.
    pairs = 4096 * 4097 / 2
    expect = (1e-3 + 2e-3 + 1e-5
              + (4096 * m.linear_flops_per_token + m.lm_head_flops_per_seq) / gpu.peak_flops
              + pairs * m.attn_flops_per_pair / gpu.peak_flops)
    assert lm.batch_time(BatchShape.prefill(4096)) == pytest.approx(expect)
    assert lm.batch_time(BatchShape()) == 0.0


def test_model_config_errors_are_clear(tmp_path):
    with pytest.raises(AscendraError, match="lacks fields: num_hidden_layers"):
        ModelShape.from_config({"hidden_size": 8, "num_attention_heads": 2,
                                "intermediate_size": 8, "vocab_size": 10})
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(AscendraError, match="not valid JSON"):
        ModelShape.load(tmp_path)
    bad.write_text(json.dumps({"hidden_size": "x", "num_hidden_layers": 2,
                               "num_attention_heads": 2, "intermediate_size": 8,
                               "vocab_size": 10}))
    with pytest.raises(AscendraError, match="non-integer"):
        ModelShape.load(bad)
    with pytest.raises(AscendraError, match="unknown GPU"):
        latency_model(gpu_name="tpu")


def _synthetic_rows(lm: RooflineLatencyModel) -> list[ProfileRow]:
    shapes = [BatchShape.decode(b, ctx) for b in (1, 8, 32, 128, 256) for ctx in (256, 2048)]
    shapes += [BatchShape.prefill(n, k) for n in (64, 512, 2048, 8192) for k in (0, 2048)]
    shapes += [BatchShape(512 - b, 1, (512 - b) * 1000, b, b * 800) for b in (16, 64, 128)]
    return [ProfileRow(s, lm.batch_time(s)) for s in shapes]


def test_fit_recovers_a_known_model(tmp_path):
    m, gpu = ModelShape.builtin("llama-3.1-8b"), GPUS["h100"]
    truth = RooflineLatencyModel(m, gpu, RooflineCoefficients(
        t0=2e-3, per_seq=3e-5, prefill_step=1e-3, eff_weights=0.8, gemm_fixed=1e-3,
        eff_gemm=0.6, eff_attn=0.5, eff_kv=0.75))
    path = tmp_path / "p.csv"
    write_profile(path, _synthetic_rows(truth))
    report = fit_roofline(m, gpu, load_profile(path))
    assert report.mdape < 0.01 and report.p90ape < 0.02
    fitted = latency_model(profile=path)
    s = BatchShape(1000, 2, 400_000, 64, 64 * 1500)
    assert fitted.batch_time(s) == pytest.approx(truth.batch_time(s), rel=0.03)


def test_profile_errors(tmp_path):
    p = tmp_path / "p.csv"
    p.write_text("num_prefill_tokens,time_s\n1,0.1\n")
    with pytest.raises(AscendraError, match="lacks columns: num_prefill_seqs"):
        load_profile(p)
    p.write_text("num_prefill_tokens,num_prefill_seqs,prefill_attn_pairs,num_decodes,"
                 "decode_context,time_s\n1,1,1,0,0,abc\n")
    with pytest.raises(AscendraError, match="line 2: non-numeric"):
        load_profile(p)
    with pytest.raises(AscendraError, match="profile not found"):
        load_profile(tmp_path / "missing.csv")


def test_saturation_bound_grows_with_hardware_and_instances():
    lm = latency_model()
    one = saturation_bound(lm, 560, 282, instances=1, kv_tokens=451_840)
    assert 20 < one < 60
    assert saturation_bound(lm, 560, 282, instances=3, kv_tokens=451_840) == pytest.approx(3 * one)
    fast = RooflineLatencyModel(lm.model, lm.gpu, replace(lm.coef, eff_kv=1.0, eff_gemm=0.9))
    assert saturation_bound(fast, 560, 282, instances=1, kv_tokens=451_840) > one


def test_the_shipped_h200_profile_fits_the_roofline_it_calibrates():
    """The one-H200 presets' latency model is the roofline fitted to the profile measured on
    the H200: the idle engine's steps (2026-12-02, 70 rows) and the steps a loaded engine runs
    (2026-12-03, 32 rows: decode batches of 512 and 1,024, prefills beside 768 decodes). It
    must reproduce those measured steps, prefills and decodes alike."""
    rows = load_profile(str(H200_PROFILE))
    lm = latency_model(gpu_name="h200", profile=str(H200_PROFILE))
    errors = sorted(abs(lm.batch_time(r.shape) - r.time_s) / r.time_s for r in rows)
    assert len(rows) == 102 and errors[len(errors) // 2] < 0.05
    long_prefill = next(r for r in rows if r.shape.num_prefill_tokens == 4000)
    assert abs(lm.batch_time(long_prefill.shape) - long_prefill.time_s) < 0.1 * long_prefill.time_s
    p = preset("one-h200-sharegpt")
    assert (p.gpu, p.profile, p.instances) == ("h200", str(H200_PROFILE), 1)
