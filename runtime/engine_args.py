"""vLLM command lines per serving system: one pure function, shared by ``ascendra runtime``,
``ascendra up``, the benchmarks and the operator's pod specs.

The arguments come from the system registry (``ascendra.core.systems``), the same entry the
simulator runs, so a system name means one engine everywhere. An instance's LP/HP role is not
in its arguments: both roles run the same engine and differ only in what the router sends them.
That is what lets the operator flip a role with a label, without restarting vLLM.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ascendra.core.systems import SYSTEMS
from ascendra.errors import AscendraError

# vLLM's defaults for its API server on a CPU (vllm/engine/arg_utils.py): a 2,048-token step
# budget and 128 seats.
CPU_DEFAULTS = ("--max-num-batched-tokens", "2048", "--max-num-seqs", "128")

SYSTEM_ARGS: dict[str, tuple[str, ...]] = {
    name: args for name, spec in SYSTEMS.items()
    if spec.deployable and (args := spec.engine.vllm_args()) is not None
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
    # The platform's own defaults, stated so that the agent can report them (vLLM does not
    # export its token budget or seats); the system's arguments and ``extra`` override them.
    defaults: tuple[str, ...] = field(default_factory=tuple)

    @property
    def engine_args(self) -> list[str]:
        """vLLM's arguments beyond the basics: the platform's defaults, then the system's, then
        ``extra`` (vLLM's parser keeps the last of a repeated flag)."""
        return [*self.defaults, *SYSTEM_ARGS.get(self.system, ()), *self.extra]

    def _last(self, flag: str) -> int | None:
        """The value these arguments give ``flag`` (the last one wins), if an integer."""
        args = self.engine_args
        values = [args[i + 1] for i, a in enumerate(args[:-1]) if a == flag]
        values += [a.split("=", 1)[1] for a in args if a.startswith(flag + "=")]
        return int(values[-1]) if values and values[-1].isdigit() else None

    @property
    def max_seqs(self) -> int | None:
        """The seat limit these arguments give vLLM."""
        return self._last("--max-num-seqs")

    @property
    def token_budget(self) -> int | None:
        """The per-step token budget these arguments give vLLM."""
        return self._last("--max-num-batched-tokens")

    def argv(self, python: str) -> list[str]:
        if self.system not in SYSTEM_ARGS:
            raise AscendraError(
                f"system {self.system!r} does not run on vLLM engines (deployable: "
                f"{', '.join(SYSTEM_ARGS)})")
        cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model,
               "--host", self.host, "--port", str(self.port)]
        if self.served_model_name:
            cmd += ["--served-model-name", self.served_model_name]
        if self.max_model_len:
            cmd += ["--max-model-len", str(self.max_model_len)]
        if self.dtype:
            cmd += ["--dtype", self.dtype]
        return cmd + self.engine_args
