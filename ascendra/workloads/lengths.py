"""Prompt and output length distributions.

``ShareGptLike``: log-normal prompt and output lengths, redrawn until prompt + output < 2048.
Defaults (median prompt 500, σ 0.9; median output 220, σ 0.8; means ≈ 560 and ≈ 282 tokens) are
those of the measured H100 anchor (shared GPU notes), so the simulator and the GPU runs see the
same load. ``LongBenchLike``: prompts uniform in [1900, 2048] (the paper truncates LongBench
contexts to a random length in that range); outputs log-normal (median 380, σ 0.45) clipped to
[100, 1200], the range of the authors' processed LongBench sample (typically 200–700).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol, Self

import numpy as np

from ascendra.errors import AscendraError


class LengthDistribution(Protocol):
    name: str

    def sample(self, rng: np.random.Generator, n: int) -> list[tuple[int, int]]: ...

    def scaled(self, s: float) -> Self:
        """Every length ×s (small models on slow machines: the tiny CPU engine)."""
        ...


@dataclass(frozen=True, slots=True)
class ShareGptLike:
    name: str = "sharegpt"
    prompt_median: float = 500.0
    prompt_sigma: float = 0.9
    output_median: float = 220.0
    output_sigma: float = 0.8
    max_total: int = 2048  # prompt + output must stay below this
    min_len: int = 4

    def __post_init__(self) -> None:
        if min(self.prompt_median, self.output_median, self.max_total) <= 2 * self.min_len:
            raise AscendraError(
                "ShareGPT-like lengths: medians and max_total must exceed 2·min_len")
        if self.prompt_sigma < 0 or self.output_sigma < 0:
            raise AscendraError("ShareGPT-like lengths: sigmas must be ≥ 0")

    def scaled(self, s: float) -> ShareGptLike:
        return replace(self, prompt_median=self.prompt_median * s,
                       output_median=self.output_median * s,
                       max_total=max(16, int(self.max_total * s)))

    def sample(self, rng: np.random.Generator, n: int) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        while len(out) < n:
            k = 2 * (n - len(out)) + 16
            p = rng.lognormal(np.log(self.prompt_median), self.prompt_sigma, k).astype(int)
            o = rng.lognormal(np.log(self.output_median), self.output_sigma, k).astype(int)
            p, o = np.maximum(self.min_len, p), np.maximum(self.min_len, o)
            ok = p + o < self.max_total
            out.extend(zip(p[ok].tolist(), o[ok].tolist(), strict=True))
        return out[:n]


@dataclass(frozen=True, slots=True)
class LongBenchLike:
    name: str = "longbench"
    prompt_min: int = 1900
    prompt_max: int = 2048
    output_median: float = 380.0
    output_sigma: float = 0.45
    output_min: int = 100
    output_max: int = 1200

    def __post_init__(self) -> None:
        if not 0 < self.prompt_min <= self.prompt_max:
            raise AscendraError("LongBench-like lengths: need 0 < prompt_min ≤ prompt_max")
        if not 0 < self.output_min <= self.output_max:
            raise AscendraError("LongBench-like lengths: need 0 < output_min ≤ output_max")

    def scaled(self, s: float) -> LongBenchLike:
        return replace(self, prompt_min=max(1, int(self.prompt_min * s)),
                       prompt_max=max(1, int(self.prompt_max * s)),
                       output_median=self.output_median * s,
                       output_min=max(1, int(self.output_min * s)),
                       output_max=max(1, int(self.output_max * s)))

    def sample(self, rng: np.random.Generator, n: int) -> list[tuple[int, int]]:
        p = rng.integers(self.prompt_min, self.prompt_max + 1, n)
        o = np.clip(rng.lognormal(np.log(self.output_median), self.output_sigma, n).astype(int),
                    self.output_min, self.output_max)
        return list(zip(p.tolist(), o.tolist(), strict=True))


LENGTHS: dict[str, LengthDistribution] = {"sharegpt": ShareGptLike(), "longbench": LongBenchLike()}
