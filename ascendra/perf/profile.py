"""Measured iteration profiles (CSV) and fitting the roofline's constants to them.

A profile row is one engine step: its batch shape and how long it took. The fit keeps the
roofline's form and finds its eight constants by non-negative least squares on relative error,
alternating with the choice of the GEMM term's branch (bandwidth- or compute-bound) per row.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import nnls

from ascendra.core.latency import BatchShape
from ascendra.errors import AscendraError
from ascendra.perf.hardware import GpuSpec, ModelShape
from ascendra.perf.roofline import RooflineCoefficients, RooflineLatencyModel

PROFILE_COLUMNS = (
    "num_prefill_tokens",
    "num_prefill_seqs",
    "prefill_attn_pairs",
    "num_decodes",
    "decode_context",
    "time_s",
)


@dataclass(frozen=True, slots=True)
class ProfileRow:
    shape: BatchShape
    time_s: float


def load_profile(path: str | Path) -> list[ProfileRow]:
    p = Path(path)
    try:
        f = p.open(newline="")
    except FileNotFoundError:
        raise AscendraError(f"profile not found: {p}") from None
    with f:
        reader = csv.DictReader(f)
        missing = [c for c in PROFILE_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise AscendraError(f"profile {p} lacks columns: {', '.join(missing)}")
        rows: list[ProfileRow] = []
        for lineno, rec in enumerate(reader, start=2):
            try:
                shape = BatchShape(
                    num_prefill_tokens=int(rec["num_prefill_tokens"]),
                    num_prefill_seqs=int(rec["num_prefill_seqs"]),
                    prefill_attn_pairs=float(rec["prefill_attn_pairs"]),
                    num_decodes=int(rec["num_decodes"]),
                    decode_context=int(rec["decode_context"]),
                )
                t = float(rec["time_s"])
            except (TypeError, ValueError):
                raise AscendraError(f"profile {p} line {lineno}: non-numeric field") from None
            if t <= 0 or shape.is_empty:
                raise AscendraError(f"profile {p} line {lineno}: empty batch or non-positive time")
            rows.append(ProfileRow(shape, t))
    if len(rows) < 8:
        raise AscendraError(f"profile {p} has {len(rows)} rows; a fit needs at least 8")
    return rows


def write_profile(path: str | Path, rows: list[ProfileRow]) -> None:
    with Path(path).open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(PROFILE_COLUMNS)
        for r in rows:
            s = r.shape
            w.writerow([s.num_prefill_tokens, s.num_prefill_seqs, f"{s.prefill_attn_pairs:.1f}",
                        s.num_decodes, s.decode_context, f"{r.time_s:.6f}"])


@dataclass(frozen=True, slots=True)
class FitReport:
    coefficients: RooflineCoefficients
    rows: int
    mdape: float  # median absolute percentage error on the rows fitted
    p90ape: float


def _features(model: ModelShape, gpu: GpuSpec, rows: list[ProfileRow]) -> tuple[np.ndarray, ...]:
    s = [r.shape for r in rows]
    seqs = np.array([x.num_seqs for x in s], dtype=float)
    has_prefill = np.array([x.num_prefill_seqs > 0 for x in s], dtype=float)
    tokens = np.array([x.num_tokens for x in s], dtype=float)
    peak, bw = gpu.peak_flops, gpu.mem_bandwidth
    weights = np.full(len(s), model.weight_bytes / bw)
    compute = (tokens * model.linear_flops_per_token + seqs * model.lm_head_flops_per_seq) / peak
    pairs = np.array([x.prefill_attn_pairs for x in s]) * model.attn_flops_per_pair / peak
    ctx = np.array([x.decode_context for x in s], dtype=float) * model.kv_bytes_per_token / bw
    return seqs, has_prefill, weights, compute, pairs, ctx


def fit_roofline(
    model: ModelShape, gpu: GpuSpec, rows: list[ProfileRow],
    start: RooflineCoefficients | None = None, iterations: int = 20,
) -> FitReport:
    """Fit the eight constants to measured steps (minimising relative error)."""
    seqs, has_prefill, weights, compute, pairs, ctx = _features(model, gpu, rows)
    y = np.array([r.time_s for r in rows])
    coef = start or RooflineCoefficients()
    inv_w, inv_c = 1 / coef.eff_weights, 1 / coef.eff_gemm
    branch = None
    fixed = coef.gemm_fixed
    x = np.zeros(8)
    for _ in range(iterations):
        mem_bound = weights * inv_w >= fixed + compute * inv_c
        if branch is not None and np.array_equal(mem_bound, branch):
            break
        branch = mem_bound
        a = np.column_stack([
            np.ones_like(y), seqs, has_prefill, np.where(mem_bound, weights, 0.0),
            np.where(mem_bound, 0.0, 1.0), np.where(mem_bound, 0.0, compute), pairs, ctx,
        ])
        x, _ = nnls(a / y[:, None], np.ones_like(y))
        # A branch with no rows keeps its previous constants.
        if mem_bound.any() and x[3] > 0:
            inv_w = x[3]
        if (~mem_bound).any() and x[5] > 0:
            fixed, inv_c = x[4], x[5]
    fitted = RooflineCoefficients(
        t0=float(x[0]),
        per_seq=float(x[1]),
        prefill_step=float(x[2]),
        eff_weights=float(1 / inv_w),
        gemm_fixed=float(fixed),
        eff_gemm=float(1 / inv_c),
        eff_attn=float(1 / x[6]) if x[6] > 0 else 1e6,
        eff_kv=float(1 / x[7]) if x[7] > 0 else 1e6,
    )
    lm = RooflineLatencyModel(model, gpu, fitted)
    ape = np.abs(np.array([lm.batch_time(r.shape) for r in rows]) / y - 1)
    return FitReport(fitted, len(rows), float(np.median(ape)), float(np.percentile(ape, 90)))
