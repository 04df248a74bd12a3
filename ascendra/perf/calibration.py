"""Calibrated roofline constants per (model, GPU), and the one factory every host uses.

``llama-3.1-8b`` on ``h100`` was calibrated against the measured H100 anchor (shared GPU notes:
vLLM 0.26.0, one instance, ShareGPT-like load: defaults ≈ 29–30 QPS and budget 512 ≈ 25–26 QPS at
90% attainment, mean TBT 15–19 ms). docs/latency-model.md gives the derivation and the check
(`python bench/sim_fidelity.py`). Other pairs start from the generic efficiencies, which are
physically plausible but unmeasured; fit them to a profile (``--profile``) before trusting them.
"""

from __future__ import annotations

from pathlib import Path

from ascendra.perf.hardware import ModelShape, gpu
from ascendra.perf.profile import fit_roofline, load_profile
from ascendra.perf.roofline import RooflineCoefficients, RooflineLatencyModel

CALIBRATED: dict[tuple[str, str], RooflineCoefficients] = {
    ("llama-3.1-8b", "h100"): RooflineCoefficients(
        t0=1.0e-3, per_seq=1.0e-5, prefill_step=3.0e-3, eff_weights=0.90, gemm_fixed=2.5e-3,
        eff_gemm=0.67, eff_attn=0.45, eff_kv=0.85,
    ),
}


def latency_model(model: str | Path = "llama-3.1-8b", gpu_name: str = "h100",
                  profile: str | Path | None = None) -> RooflineLatencyModel:
    """The roofline for a built-in model name or a config path on a GPU; with ``profile``, its
    constants are fitted to that measured CSV instead."""
    shape = ModelShape.load(model) if Path(model).exists() else ModelShape.builtin(str(model))
    spec = gpu(gpu_name)
    coef = CALIBRATED.get((shape.name, spec.name), RooflineCoefficients())
    if profile is not None:
        coef = fit_roofline(shape, spec, load_profile(profile), start=coef).coefficients
    return RooflineLatencyModel(shape, spec, coef)
