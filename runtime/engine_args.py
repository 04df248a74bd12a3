"""vLLM command lines per serving system: one pure function, shared by ``ascendra runtime``,
``ascendra up``, the benchmarks and the operator's pod specs.

An instance's LP/HP role is not in its arguments: both roles run the same engine settings and
differ only in the priorities the router sends and the traffic it routes. That is what lets the
operator flip a role with a label, without restarting vLLM.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ascendra.errors import AscendraError

SYSTEM_ARGS: dict[str, tuple[str, ...]] = {
    # Priority scheduling realises the LP value order and the HP bands (ascendra.core.priority).
    "ascendra": ("--scheduling-policy", "priority", "--max-num-seqs", "128",
                 "--max-num-batched-tokens", "8192"),
    # vLLM v1 defaults: nothing to add.
    "vllm": (),
    # Sarathi-Serve's setting on vLLM v1: chunked prefill within a 512-token budget, 128 seats.
    "sarathi": ("--max-num-batched-tokens", "512", "--max-num-seqs", "128"),
}


@dataclass(frozen=True)
class EngineLaunch:
    model: str
    port: int
    system: str = "ascendra"
    served_model_name: str | None = None
    max_model_len: int | None = None
    host: str = "127.0.0.1"
    dtype: str | None = None
    extra: tuple[str, ...] = field(default_factory=tuple)

    @property
    def max_seqs(self) -> int | None:
        """The seat limit these arguments give vLLM (the last ``--max-num-seqs`` wins)."""
        args = list(SYSTEM_ARGS.get(self.system, ())) + list(self.extra)
        values = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--max-num-seqs"]
        return int(values[-1]) if values and values[-1].isdigit() else None

    def argv(self, python: str) -> list[str]:
        if self.system not in SYSTEM_ARGS:
            raise AscendraError(
                f"unknown system {self.system!r} (known: {', '.join(SYSTEM_ARGS)})")
        cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model,
               "--host", self.host, "--port", str(self.port)]
        if self.served_model_name:
            cmd += ["--served-model-name", self.served_model_name]
        if self.max_model_len:
            cmd += ["--max-model-len", str(self.max_model_len)]
        if self.dtype:
            cmd += ["--dtype", self.dtype]
        return cmd + list(SYSTEM_ARGS[self.system]) + list(self.extra)
