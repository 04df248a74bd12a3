"""The offload rule: which queued LP requests move to an HP instance.

A waiting LP request r that has never been scheduled moves when

    waited(r) + max(T̂(current batch), T̂_prefill(r)) + margin(r) > TTFT-SLO(r)

i.e. when even being next in line would not get its first token out in time. Only unstarted
requests qualify (nothing to transfer but the prompt). The margin comes from the predictor: the
paper's fixed per-model constant, or a learned uncertainty bound.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from ascendra.core.latency import BatchShape, LatencyModel
from ascendra.core.request import Request


class DeadlinePredictor(Protocol):
    def batch_time(self, shape: BatchShape) -> float: ...

    def prefill_time(self, prompt_len: int) -> float: ...

    def margin(self, req: Request) -> float: ...


@dataclass(frozen=True, slots=True)
class FixedMarginPredictor:
    """A latency model plus the paper's hand-set margin (0.7 s for Llama-3.1-8B)."""

    model: LatencyModel
    margin_s: float = 0.7

    def batch_time(self, shape: BatchShape) -> float:
        return self.model.batch_time(shape)

    def prefill_time(self, prompt_len: int) -> float:
        return self.model.batch_time(BatchShape.prefill(prompt_len))

    def margin(self, req: Request) -> float:
        return self.margin_s


def at_risk(req: Request, now: float, batch_time: float, margin: float) -> bool:
    if req.ever_scheduled:
        return False
    waited = now - req.arrival
    return waited + max(batch_time, req.predicted_prefill) + margin > req.slo.ttft


def select_offloads(
    waiting: Iterable[Request], now: float, batch_time: float, predictor: DeadlinePredictor
) -> list[Request]:
    return [r for r in waiting if at_risk(r, now, batch_time, predictor.margin(r))]
