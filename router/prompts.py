"""Turn client prompts into the token ids the engines will see.

The router tokenizes every prompt itself, with the model's own ``tokenizer.json`` and chat
template, so it knows each request's length for the deadline predictor, can reject prompts that
do not fit the context, and can replay prompt + generated tokens on another instance. Engines
receive token ids. It uses the Rust ``tokenizers`` library and Jinja directly (as Hugging Face
``transformers`` does underneath): a fraction of the per-request cost, and no torch import.

A long text is tokenized on a worker thread through ``encode_batch``, which releases the GIL
(``encode`` holds it: 2 MB of text froze the event loop for 1.8 s in a thread, 29 ms this way),
and a text that must exceed the context whatever its tokens is refused without tokenizing.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from ascendra.router.protocol import ApiError, ChatBody, CompletionBody

# Shorter texts tokenize in tens of microseconds, less than a hop to a thread costs.
OFF_LOOP_CHARS = 16384


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _raise(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


class PromptEncoder:
    def __init__(self, tokenizer_dir: str, max_model_len: int) -> None:
        root = Path(tokenizer_dir)
        try:
            self.tokenizer = Tokenizer.from_file(str(root / "tokenizer.json"))
        except Exception as e:  # tokenizers raises its own exception types
            raise OSError(f"cannot read {root / 'tokenizer.json'}: {e}") from None
        try:
            config: dict[str, Any] = json.loads((root / "tokenizer_config.json").read_text())
        except (OSError, ValueError):
            config = {}
        self.max_model_len = max_model_len
        self.vocab_size = self.tokenizer.get_vocab_size(with_added_tokens=True)
        # No token covers more characters than its longest vocabulary entry (byte-level and
        # metaspace entries: a character or more each); twice that per token of context
        # leaves room for normalizers that shorten text.
        longest = max((len(k) for k in self.tokenizer.get_vocab(with_added_tokens=True)),
                      default=1)
        self.max_text_chars = 2 * longest * max_model_len
        self.special = {k: _token_text(config.get(k)) for k in ("bos_token", "eos_token")}
        template = config.get("chat_template")
        if isinstance(template, list):  # named templates: take the default one
            template = next((t["template"] for t in template if t.get("name") == "default"),
                            template[0]["template"] if template else None)
        if template is None and (root / "chat_template.jinja").is_file():
            template = (root / "chat_template.jinja").read_text()
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=[loopcontrols])
        env.filters["tojson"] = lambda x, indent=None: json.dumps(x, indent=indent)
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        self.chat_template = env.from_string(template) if template else None

    async def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        if len(text) > self.max_text_chars:
            raise ApiError(400, f"prompt has {len(text)} characters, more than this model's "
                                f"context of {self.max_model_len} tokens can hold",
                           param="prompt", code="context_length_exceeded")
        if len(text) <= OFF_LOOP_CHARS:
            return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids
        done = await asyncio.to_thread(self.tokenizer.encode_batch, [text],
                                       add_special_tokens=add_special_tokens)
        return done[0].ids

    async def completion_ids(self, body: CompletionBody) -> list[int]:
        prompt = body.prompt
        if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
            if len(prompt) != 1:
                raise ApiError(400, "batched prompts are not supported by the Ascendra router; "
                                    "send one request per prompt", param="prompt")
            prompt = prompt[0]
        if isinstance(prompt, str):
            if not prompt:
                raise ApiError(400, "prompt is empty", param="prompt")
            ids: list[int] = await self.encode(prompt)
        else:
            ids = list(prompt)  # type: ignore[arg-type]
            self.check_vocabulary(ids, "prompt")
        if not ids:
            raise ApiError(400, "prompt is empty", param="prompt")
        return ids

    async def chat_ids(self, body: ChatBody) -> list[int]:
        if self.chat_template is None:
            raise ApiError(400, "this model has no chat template; use /v1/completions",
                           param="messages")
        messages = [m.model_dump(exclude_none=True) for m in body.messages]
        try:
            text = self.chat_template.render(messages=messages, add_generation_prompt=True,
                                             **self.special)
        except jinja2.exceptions.TemplateError as e:
            raise ApiError(400, f"messages do not fit the model's chat template: {e}",
                           param="messages") from None
        # The template writes the special tokens itself (as transformers does).
        return await self.encode(text, add_special_tokens=False)

    def check_vocabulary(self, ids: list[int], param: str) -> None:
        bad = next((t for t in ids if not 0 <= t < self.vocab_size), None)
        if bad is not None:
            raise ApiError(400, f"token id {bad} is outside the vocabulary "
                                f"(0..{self.vocab_size - 1})", param=param)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def budget(self, prompt_len: int, requested: int | None) -> int:
        """The output budget: the request's ``max_tokens`` (or what the context leaves)."""
        room = self.max_model_len - prompt_len
        if room <= 0:
            raise ApiError(400, f"prompt has {prompt_len} tokens; this model's context is "
                                f"{self.max_model_len} tokens", param="prompt",
                           code="context_length_exceeded")
        if requested is None:
            return room
        if requested <= 0:
            raise ApiError(400, f"max_tokens must be at least 1, got {requested}",
                           param="max_tokens")
        if requested > room:
            raise ApiError(400, f"prompt ({prompt_len} tokens) plus max_tokens ({requested}) "
                                f"exceeds this model's context of {self.max_model_len} tokens",
                           param="max_tokens", code="context_length_exceeded")
        return requested
