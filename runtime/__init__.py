"""The Ascendra runtime: one vLLM engine in its LP/HP role, with its state exposed for routers."""
