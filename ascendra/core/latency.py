"""What a batch is made of, and the interface of anything that turns that into seconds.

Schedulers describe each iteration as a :class:`BatchShape`; latency models (``ascendra.perf``)
map shapes to iteration times. Prefill attention cost grows with the (query, key) pairs of each
chunk, decode attention with the context each decode reads, and the GEMMs with the token count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class BatchShape:
    num_prefill_tokens: int = 0
    num_prefill_seqs: int = 0
    # Σ over prefill chunks of c·k + c·(c+1)/2 for a chunk of c tokens after k cached ones.
    prefill_attn_pairs: float = 0.0
    num_decodes: int = 0
    # Σ over decodes of the context each one attends to (its tokens so far).
    decode_context: int = 0

    @property
    def num_tokens(self) -> int:
        return self.num_prefill_tokens + self.num_decodes

    @property
    def num_seqs(self) -> int:
        return self.num_prefill_seqs + self.num_decodes

    @property
    def is_empty(self) -> bool:
        return self.num_tokens == 0

    @staticmethod
    def prefill(tokens: int, cached: int = 0) -> BatchShape:
        """A batch holding a single prefill chunk of ``tokens`` after ``cached`` cached tokens."""
        return BatchShape(
            num_prefill_tokens=tokens,
            num_prefill_seqs=1,
            prefill_attn_pairs=chunk_pairs(tokens, cached),
        )

    @staticmethod
    def decode(num_decodes: int, mean_context: float) -> BatchShape:
        return BatchShape(num_decodes=num_decodes, decode_context=int(num_decodes * mean_context))


def chunk_pairs(tokens: int, cached: int) -> float:
    """Causal (query, key) pairs of a prefill chunk: each new token sees the cache and its past."""
    return tokens * cached + tokens * (tokens + 1) / 2


class LatencyModel(Protocol):
    """Iteration latency of one engine step."""

    def batch_time(self, shape: BatchShape) -> float: ...


class BatchShapeBuilder:
    """Accumulates a :class:`BatchShape` while a scheduler adds requests to a batch."""

    __slots__ = ("ctx", "decodes", "pairs", "pf_seqs", "pf_tokens")

    def __init__(self) -> None:
        self.pf_tokens = 0
        self.pf_seqs = 0
        self.pairs = 0.0
        self.decodes = 0
        self.ctx = 0

    def add_prefill(self, tokens: int, cached: int) -> None:
        self.pf_tokens += tokens
        self.pf_seqs += 1
        self.pairs += tokens * cached + tokens * (tokens + 1) / 2

    def add_decode(self, context: int) -> None:
        self.decodes += 1
        self.ctx += context

    def build(self) -> BatchShape:
        return BatchShape(self.pf_tokens, self.pf_seqs, self.pairs, self.decodes, self.ctx)
