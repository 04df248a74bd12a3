"""Model shapes (from Hugging Face style configs) and GPU peak rates: the roofline's inputs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ascendra.errors import AscendraError

_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4, "float8": 1}
_GATED_ACTIVATIONS = ("silu", "swiglu", "gelu_pytorch_tanh")  # Llama/Mistral/Qwen/Gemma MLPs
_REQUIRED = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
             "vocab_size")


@dataclass(frozen=True, slots=True)
class GpuSpec:
    name: str
    peak_flops: float  # dense bf16 FLOP/s
    mem_bandwidth: float  # HBM bytes/s
    memory_bytes: float


GPUS: dict[str, GpuSpec] = {
    # NVIDIA data sheets: dense (non-sparse) BF16 tensor throughput, HBM bandwidth.
    "h100": GpuSpec("h100", 989.4e12, 3.35e12, 80e9),
    "h200": GpuSpec("h200", 989.4e12, 4.8e12, 141e9),
    "a100": GpuSpec("a100", 312e12, 2.039e12, 80e9),
}


def gpu(name: str) -> GpuSpec:
    try:
        return GPUS[name.lower()]
    except KeyError:
        raise AscendraError(f"unknown GPU {name!r} (known: {', '.join(GPUS)})") from None


@dataclass(frozen=True, slots=True)
class ModelShape:
    """The numbers a roofline needs from a decoder-only transformer."""

    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    dtype_bytes: int = 2
    gated_mlp: bool = True

    @classmethod
    def from_config(cls, cfg: dict[str, Any], name: str = "model") -> ModelShape:
        missing = [k for k in _REQUIRED if k not in cfg]
        if missing:
            raise AscendraError(f"model config {name!r} lacks fields: {', '.join(missing)}")
        try:
            hidden = int(cfg["hidden_size"])
            heads = int(cfg["num_attention_heads"])
            shape = cls(
                name=name,
                hidden=hidden,
                layers=int(cfg["num_hidden_layers"]),
                heads=heads,
                kv_heads=int(cfg.get("num_key_value_heads") or heads),
                head_dim=int(cfg.get("head_dim") or hidden // heads),
                intermediate=int(cfg["intermediate_size"]),
                vocab=int(cfg["vocab_size"]),
                dtype_bytes=_DTYPE_BYTES.get(str(cfg.get("torch_dtype", "bfloat16")), 2),
                gated_mlp=str(cfg.get("hidden_act", "silu")) in _GATED_ACTIVATIONS,
            )
        except (TypeError, ValueError) as e:
            raise AscendraError(
                f"model config {name!r} has a non-integer size field: {e}") from None
        if min(shape.hidden, shape.layers, shape.heads, shape.kv_heads, shape.head_dim,
               shape.intermediate, shape.vocab) <= 0:
            raise AscendraError(f"model config {name!r} has a non-positive size field")
        return shape

    @classmethod
    def load(cls, path: str | Path) -> ModelShape:
        p = Path(path)
        if p.is_dir():
            p = p / "config.json"
        try:
            cfg = json.loads(p.read_text())
        except FileNotFoundError:
            raise AscendraError(f"model config not found: {p}") from None
        except json.JSONDecodeError as e:
            raise AscendraError(f"model config {p} is not valid JSON: {e}") from None
        if not isinstance(cfg, dict):
            raise AscendraError(f"model config {p} is not a JSON object")
        return cls.from_config(cfg, name=p.parent.name if p.name == "config.json" else p.stem)

    @classmethod
    def builtin(cls, name: str) -> ModelShape:
        """Shapes shipped with the project (``ascendra/data/models/NAME.json``)."""
        f = resources.files("ascendra") / "data" / "models" / f"{name}.json"
        if not f.is_file():
            raise AscendraError(f"unknown built-in model {name!r}")
        return cls.from_config(json.loads(f.read_text()), name=name)

    # -- derived counts ----------------------------------------------------------------------
    @property
    def layer_params(self) -> int:
        h, q, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        attn = h * q + 2 * h * kv + q * h
        mlp = (3 if self.gated_mlp else 2) * h * self.intermediate
        return attn + mlp

    @property
    def weight_bytes(self) -> float:
        """Bytes every step must read: all layers plus the LM head (embeddings are a gather)."""
        return (self.layers * self.layer_params + self.vocab * self.hidden) * self.dtype_bytes

    @property
    def linear_flops_per_token(self) -> float:
        return 2.0 * self.layers * self.layer_params

    @property
    def lm_head_flops_per_seq(self) -> float:
        return 2.0 * self.vocab * self.hidden

    @property
    def attn_flops_per_pair(self) -> float:
        """QKᵀ and PV over all query heads and layers for one (query, key) pair."""
        return 4.0 * self.heads * self.head_dim * self.layers

    @property
    def kv_bytes_per_token(self) -> float:
        return 2.0 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes
