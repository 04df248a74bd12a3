"""Paged KV-cache accounting: fixed-size blocks, allocated as a request's tokens are computed."""

from __future__ import annotations

from dataclasses import dataclass

from ascendra.core.request import Request


@dataclass(slots=True)
class KvCache:
    """Free-block bookkeeping for one instance (no tensors, just counts)."""

    total_blocks: int
    block_size: int = 16
    free_blocks: int = -1

    def __post_init__(self) -> None:
        if self.total_blocks <= 0 or self.block_size <= 0:
            raise ValueError("KV cache needs a positive block count and block size")
        if self.free_blocks < 0:
            self.free_blocks = self.total_blocks

    @classmethod
    def from_tokens(cls, tokens: int, block_size: int = 16) -> KvCache:
        return cls(total_blocks=max(1, tokens // block_size), block_size=block_size)

    @property
    def capacity_tokens(self) -> int:
        return self.total_blocks * self.block_size

    @property
    def free_fraction(self) -> float:
        return self.free_blocks / self.total_blocks

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def try_allocate(self, req: Request, new_tokens: int) -> bool:
        """Grow ``req``'s blocks to hold ``num_computed + new_tokens`` tokens, if they are free."""
        need = self.blocks_for(req.num_computed + new_tokens) - req.kv_blocks
        if need <= 0:
            return True
        if need > self.free_blocks:
            return False
        self.free_blocks -= need
        req.kv_blocks += need
        return True

    def free(self, req: Request) -> None:
        self.free_blocks += req.kv_blocks
        req.kv_blocks = 0
