"""Arrival processes: Poisson, and Gamma renewal with a chosen coefficient of variation (bursty
traffic has CV > 1; BurstGPT and the Azure code trace are far from Poisson)."""

from __future__ import annotations

import numpy as np

from ascendra.errors import AscendraError


def arrival_times(rng: np.random.Generator, rate: float, n: int, *, process: str = "poisson",
                  cv: float = 1.0) -> np.ndarray:
    """``n`` arrival times (seconds from 0) at ``rate`` requests/s."""
    if not rate > 0:
        raise AscendraError(f"arrival rate must be positive, got {rate}")
    if n < 0:
        raise AscendraError(f"request count must be ≥ 0, got {n}")
    if process == "poisson":
        gaps = rng.exponential(1.0 / rate, n)
    elif process == "gamma":
        if not cv > 0:
            raise AscendraError(f"gamma arrivals need a positive CV, got {cv}")
        shape = 1.0 / cv**2
        gaps = rng.gamma(shape, 1.0 / (rate * shape), n)
    else:
        raise AscendraError(f"unknown arrival process {process!r} (known: poisson, gamma)")
    return np.cumsum(gaps)
