"""The offload rule: which queued LP requests move to an HP instance.

A waiting LP request r that has never been scheduled moves when

    waited(r) + bound(r) > TTFT-SLO(r)

where bound(r) is the predictor's bound on the time from now to r's first token, computed from
a :class:`QueueSnapshot` of r's place in its queue. The paper's bound is "even being next in
line": ``max(T̂(current batch), T̂_prefill(r)) + margin`` with a margin hand-set per model; a
learned predictor (:mod:`ascendra.predict`) gives an upper quantile of the time to first token
given the whole queue ahead. Only unstarted requests qualify (nothing to transfer but the
prompt).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import astuple, dataclass, fields
from typing import Protocol

from ascendra.core.latency import BatchShape, LatencyModel
from ascendra.core.request import Request


@dataclass(frozen=True, slots=True)
class QueueSnapshot:
    """A queued request's place at one moment, as the simulator and the router both see it: the
    features of every deadline predictor."""

    prompt_len: int
    waited: float  # s since arrival
    tokens_ahead: int  # prompt tokens of unstarted requests served before it on its instance
    seqs_ahead: int
    num_running: int  # requests with a first token, decoding on the instance
    decode_context: int  # Σ their context
    kv_used: float  # fraction of the instance's KV cache in use
    batch_time: float  # the instance's current (or most recent) iteration time, s
    own_prefill: float  # analytic prefill time of the request alone, s
    ahead_prefill: float  # analytic time to prefill everything ahead plus itself, s

    def vector(self) -> tuple[float, ...]:
        return tuple(float(v) for v in astuple(self))


SNAPSHOT_FEATURES: tuple[str, ...] = tuple(f.name for f in fields(QueueSnapshot))


def queue_snapshot(req: Request, now: float, ahead: Sequence[int], running: Sequence[int],
                   kv_used: float, batch_time: float, model: LatencyModel) -> QueueSnapshot:
    """``ahead``: the tokens to prefill of each unstarted request served before ``req`` (in
    service order); ``running``: the context lengths of the requests decoding."""
    tokens = sum(ahead)
    seqs = len(ahead) + 1
    mean = (tokens + req.prompt_len) / seqs
    ahead_prefill = model.batch_time(BatchShape(
        num_prefill_tokens=tokens + req.prompt_len, num_prefill_seqs=seqs,
        prefill_attn_pairs=seqs * mean * (mean + 1) / 2))
    return QueueSnapshot(
        prompt_len=req.prompt_len, waited=now - req.arrival, tokens_ahead=tokens,
        seqs_ahead=len(ahead), num_running=len(running), decode_context=sum(running),
        kv_used=kv_used, batch_time=batch_time, own_prefill=req.predicted_prefill,
        ahead_prefill=ahead_prefill)


class DeadlinePredictor(Protocol):
    def batch_time(self, shape: BatchShape) -> float: ...

    def prefill_time(self, prompt_len: int) -> float: ...

    def ttft_bounds(self, snaps: Sequence[QueueSnapshot]) -> list[float]:
        """For each snapshot, a bound on the time from it to the request's first token, s
        (batched: a learned model predicts many rows at once far faster than one by one)."""
        ...


@dataclass(frozen=True, slots=True)
class FixedMarginPredictor:
    """A latency model plus the paper's hand-set margin (0.7 s for Llama-3.1-8B)."""

    model: LatencyModel
    margin_s: float = 0.7

    def batch_time(self, shape: BatchShape) -> float:
        return self.model.batch_time(shape)

    def prefill_time(self, prompt_len: int) -> float:
        return self.model.batch_time(BatchShape.prefill(prompt_len))

    def ttft_bounds(self, snaps: Sequence[QueueSnapshot]) -> list[float]:
        return [paper_bound(s, self.margin_s) for s in snaps]


def paper_bound(snap: QueueSnapshot, margin: float) -> float:
    """The paper's "next in line" bound: the running batch or its own prefill, plus Δ."""
    return max(snap.batch_time, snap.own_prefill) + margin


def at_risk(req: Request, now: float, bound: float) -> bool:
    if req.ever_scheduled:
        return False
    return (now - req.arrival) + bound > req.slo.ttft
