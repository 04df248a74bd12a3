"""The Ascendra router: OpenAI-compatible front door over LP/HP vLLM instances."""
