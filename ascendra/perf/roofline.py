"""The analytic iteration-latency model: a roofline count turned into seconds by eight constants.

    T(batch) = t0 + per_seq·B + prefill_step·[batch has a prefill chunk]
             + max( W / (BW·eff_weights),  gemm_fixed + (N·F_lin + B·F_head) / (PEAK·eff_gemm) )
             + pairs·F_pair / (PEAK·eff_attn)                                        prefill attn
             + ctx·KV_tok / (BW·eff_kv)                                              decode attn

W: weight bytes read each step; N: tokens; B: sequences; pairs: causal (query, key) pairs of the
prefill chunks; ctx: Σ context of the decodes. The GEMM term is the classic roofline (small
batches pay the weight read, large ones the FLOPs) with a fixed cost on the compute side: GEMMs
of a few hundred rows run well below peak (tile and wave quantisation), which Vidur's H100
profiles show as an intercept of a few ms on the linear part. Without it, every chunk size past
the knee would cost the same per token and chunking would look free. The constants are
efficiencies (fractions of peak) and overheads; they come from a calibration or a profile fit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ascendra.core.latency import BatchShape
from ascendra.perf.hardware import GpuSpec, ModelShape


@dataclass(frozen=True, slots=True)
class RooflineCoefficients:
    t0: float = 2.0e-3  # s per step: scheduling, input prep, sampling, launch
    per_seq: float = 2.0e-5  # s per sequence in the batch (metadata, sampler, output handling)
    # s per step that carries prefill: vLLM replays decode-only steps as one CUDA graph but runs
    # mixed steps piecewise, with attention launched eagerly and prefill metadata built.
    prefill_step: float = 1.5e-3
    eff_weights: float = 0.85  # fraction of HBM bandwidth reached reading weights
    gemm_fixed: float = 3.4e-3  # s added to compute-bound GEMMs (small-M inefficiency)
    eff_gemm: float = 0.70  # fraction of peak FLOP/s reached by large GEMMs
    eff_attn: float = 0.45  # fraction of peak FLOP/s reached by prefill attention
    eff_kv: float = 0.70  # fraction of HBM bandwidth reached reading the KV cache in decode

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


class RooflineLatencyModel:
    """Pure and cheap: a handful of multiply-adds per call (it sits in the simulator's loop)."""

    def __init__(self, model: ModelShape, gpu: GpuSpec, coef: RooflineCoefficients) -> None:
        self.model = model
        self.gpu = gpu
        self.coef = coef
        self._t0 = coef.t0
        self._per_seq = coef.per_seq
        self._prefill_step = coef.prefill_step
        self._weights = model.weight_bytes / (gpu.mem_bandwidth * coef.eff_weights)
        self._gemm_fixed = coef.gemm_fixed
        self._per_token = model.linear_flops_per_token / (gpu.peak_flops * coef.eff_gemm)
        self._head = model.lm_head_flops_per_seq / (gpu.peak_flops * coef.eff_gemm)
        self._per_pair = model.attn_flops_per_pair / (gpu.peak_flops * coef.eff_attn)
        self._per_ctx = model.kv_bytes_per_token / (gpu.mem_bandwidth * coef.eff_kv)

    def batch_time(self, shape: BatchShape) -> float:
        seqs = shape.num_prefill_seqs + shape.num_decodes
        if seqs == 0:
            return 0.0
        tokens = shape.num_prefill_tokens + shape.num_decodes
        gemm = self._gemm_fixed + tokens * self._per_token + seqs * self._head
        if gemm < self._weights:
            gemm = self._weights
        return (
            self._t0
            + (self._prefill_step if shape.num_prefill_seqs else 0.0)
            + seqs * self._per_seq
            + gemm
            + shape.prefill_attn_pairs * self._per_pair
            + shape.decode_context * self._per_ctx
        )

    def knee_tokens(self) -> float:
        """Tokens per step where the GEMMs turn from bandwidth- to compute-bound."""
        return max(0.0, self._weights - self._gemm_fixed - self._head) / self._per_token

    def describe(self) -> dict[str, float | str]:
        return {
            "model": self.model.name,
            "gpu": self.gpu.name,
            **self.coef.as_dict(),
            "weight_read_ms": self._weights * 1e3,
            "us_per_token": self._per_token * 1e6,
            "knee_tokens": self.knee_tokens(),
        }
