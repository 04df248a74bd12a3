"""A tiny random-weight Llama with a tokenizer trained on the spot: the model of local stacks and
tests. Nothing is downloaded; the result is cached by version under the cache directory.

The weights are random (seeded), so its text is noise, but it runs through vLLM exactly like a
real Llama: same architecture, tokenizer files, chat template and config fields.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

BUILD_VERSION = 1
_CORPUS_WORDS = (
    "the of and to in is that for it as with was on be at by this had not are but from or have an "
    "they which one you were her all she there would their we him been has when who will more no "
    "if out so said what up its about into than them can only other new some could time these two "
    "may then do first any my now such like our over man me even most made after also did many "
    "before must through back years where much your way well down should because each just those "
    "people how too little state good very make world still own see men work long get here between "
    "both life being under never day same another know while last might us great old year off come "
    "since against go came right used take three request token deadline latency instance priority "
    "serve model cluster schedule batch prefill decode queue budget slack offload router engine"
)


@dataclass(frozen=True)
class TinyModelSpec:
    hidden_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 512
    vocab_size: int = 1024
    max_position_embeddings: int = 4096
    seed: int = 0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def key(self) -> str:
        return (f"tiny-llama-v{BUILD_VERSION}-h{self.hidden_size}-l{self.num_hidden_layers}"
                f"-v{self.vocab_size}-s{self.seed}")


def default_cache_dir() -> Path:
    base = os.environ.get("ASCENDRA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ascendra")
    return Path(base)


def _corpus(seed: int, lines: int = 4000) -> list[str]:
    rng = np.random.default_rng(seed)
    words = np.array(_CORPUS_WORDS.split())
    out = []
    for _ in range(lines):
        n = int(rng.integers(4, 24))
        text = " ".join(words[rng.integers(0, len(words), n)])
        end = rng.choice([".", "?", "!", ","])
        out.append(f"{text.capitalize()}{end} {rng.integers(0, 1000)}")
    return out


def _train_tokenizer(spec: TinyModelSpec, dest: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(spec.seed), trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    tok.save(str(dest / "tokenizer.json"))
    chat_template = (
        "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }}\n"
        "{% endfor %}{% if add_generation_prompt %}<|assistant|> {% endif %}"
    )
    (dest / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "</s>",
        "model_max_length": spec.max_position_embeddings,
        "add_bos_token": True, "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "chat_template": chat_template,
    }, indent=1))
    (dest / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "</s>"}))


def _write_weights(spec: TinyModelSpec, dest: Path) -> None:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(spec.seed)
    h, m, v = spec.hidden_size, spec.intermediate_size, spec.vocab_size
    kv = spec.num_key_value_heads * spec.head_dim

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    tensors = {"model.embed_tokens.weight": w(v, h), "model.norm.weight": np.ones(h, np.float32),
               "lm_head.weight": w(v, h)}
    for i in range(spec.num_hidden_layers):
        p = f"model.layers.{i}."
        tensors |= {
            p + "self_attn.q_proj.weight": w(h, h), p + "self_attn.k_proj.weight": w(kv, h),
            p + "self_attn.v_proj.weight": w(kv, h), p + "self_attn.o_proj.weight": w(h, h),
            p + "mlp.gate_proj.weight": w(m, h), p + "mlp.up_proj.weight": w(m, h),
            p + "mlp.down_proj.weight": w(h, m),
            p + "input_layernorm.weight": np.ones(h, np.float32),
            p + "post_attention_layernorm.weight": np.ones(h, np.float32),
        }
    save_file(tensors, str(dest / "model.safetensors"), metadata={"format": "pt"})


def _write_config(spec: TinyModelSpec, dest: Path) -> None:
    cfg = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": spec.hidden_size, "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_hidden_layers,
        "num_attention_heads": spec.num_attention_heads,
        "num_key_value_heads": spec.num_key_value_heads, "head_dim": spec.head_dim,
        "vocab_size": spec.vocab_size, "max_position_embeddings": spec.max_position_embeddings,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu",
        "tie_word_embeddings": False, "torch_dtype": "float32",
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2,
        "attention_bias": False, "mlp_bias": False, "initializer_range": 0.02,
    }
    (dest / "config.json").write_text(json.dumps(cfg, indent=1))
    (dest / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}))
    (dest / "ascendra-tiny-model.json").write_text(json.dumps(
        {"build_version": BUILD_VERSION, **asdict(spec)}, indent=1))


def build_tiny_model(spec: TinyModelSpec | None = None, cache_dir: Path | None = None) -> Path:
    """Return the model directory, building it once (atomically) if the cache lacks it."""
    spec = spec or TinyModelSpec()
    root = (cache_dir or default_cache_dir()) / "models"
    dest = root / spec.key()
    if (dest / "ascendra-tiny-model.json").is_file():
        return dest
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
    try:
        _train_tokenizer(spec, tmp)
        _write_weights(spec, tmp)
        _write_config(spec, tmp)
        tmp.chmod(0o755)
        try:
            tmp.rename(dest)
        except OSError:  # another process finished first
            if not (dest / "ascendra-tiny-model.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def write_id_tokenizer(dest: Path, vocab_size: int, bos: int, eos: int) -> None:
    """A tokenizer whose every id is one word, ``t<id>``, over the model's whole vocabulary.

    For dummy-weight models of a real shape: their outputs range over the whole vocabulary (a
    trained tokenizer of another size cannot detokenize them), and a client that sends text,
    such as vLLM's own ``vllm bench serve``, sends prompts of exactly the token counts it
    means (``"t17 t903"`` is ids 17 and 903, nothing else). No special tokens are added to a
    prompt; ``bos`` and ``eos`` only name the model's own ids.
    """
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    names = {bos: "<|begin_of_text|>", eos: "<|end_of_text|>"}  # the model's specials
    vocab = {names.get(i, f"t{i}"): i for i in range(vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=names[eos]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens([AddedToken(names[i], special=True) for i in (bos, eos)])
    dest.mkdir(parents=True, exist_ok=True)
    tok.save(str(dest / "tokenizer.json"))
    (dest / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": names[bos],
        "eos_token": names[eos], "unk_token": names[eos], "add_bos_token": False,
        "clean_up_tokenization_spaces": False}, indent=1))
    (dest / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": names[bos], "eos_token": names[eos], "unk_token": names[eos]}))
