"""Turn client prompts into the token ids the engines will see.

The router tokenizes every prompt itself (the model's own tokenizer and chat template), so it
knows each request's length for the deadline predictor, can reject prompts that do not fit the
context, and can replay prompt + generated tokens on another instance. Engines receive token ids.
"""

from __future__ import annotations

from typing import Any

from ascendra.router.protocol import ApiError, ChatBody, CompletionBody


class PromptEncoder:
    def __init__(self, tokenizer_path: str, max_model_len: int) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
        self.max_model_len = max_model_len
        self.vocab_size = len(self.tokenizer)

    def completion_ids(self, body: CompletionBody) -> list[int]:
        prompt = body.prompt
        if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
            if len(prompt) != 1:
                raise ApiError(400, "batched prompts are not supported by the Ascendra router; "
                                    "send one request per prompt", param="prompt")
            prompt = prompt[0]
        if isinstance(prompt, str):
            if not prompt:
                raise ApiError(400, "prompt is empty", param="prompt")
            ids: list[int] = self.tokenizer(prompt)["input_ids"]
        else:
            ids = list(prompt)  # type: ignore[arg-type]
            bad = next((t for t in ids if not 0 <= t < self.vocab_size), None)
            if bad is not None:
                raise ApiError(400, f"token id {bad} is outside the vocabulary "
                                    f"(0..{self.vocab_size - 1})", param="prompt")
        if not ids:
            raise ApiError(400, "prompt is empty", param="prompt")
        return ids

    def chat_ids(self, body: ChatBody) -> list[int]:
        messages: list[dict[str, Any]] = [m.model_dump(exclude_none=True) for m in body.messages]
        try:
            out = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                     tokenize=True)
        except Exception as e:  # template errors are the client's message layout
            raise ApiError(400, f"messages do not fit the model's chat template: {e}",
                           param="messages") from None
        ids = out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out
        return list(ids)

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
