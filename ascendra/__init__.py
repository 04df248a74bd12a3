"""Ascendra: SLO-aware LLM serving with low/high-priority instance partitioning."""

__version__ = "0.1.0"
