"""Text for a stream the router has moved.

After token replay the new engine decodes its output against a prompt that ends in tokens the
client has already seen, and its incremental detokenizer can then emit text the client already
has (seen when the cut fell inside a multi-byte character: the engine re-emitted the whole
prompt). So once a session has moved, the router derives the text from the token ids itself,
with the algorithm vLLM uses: decode a short window ending at the last token whose text was sent
and the same window plus the new tokens, and send the difference, holding it back while it ends
in an incomplete UTF-8 character. Both decodes start at the same token, so a tokenizer that
drops a leading space, or a window that starts mid-character, cancels out.
"""

from __future__ import annotations

from collections.abc import Callable

# Tokens of context before the read point; vLLM uses 5 (+1 for a leading partial character).
_WINDOW = 6
_PARTIAL = "\ufffd"


class IncrementalText:
    def __init__(self, decode: Callable[[list[int]], str], ids: list[int], read: int) -> None:
        """``ids`` are every token so far (prompt and generated); the client has the text of
        ``ids[:read]`` (its generated part)."""
        self._decode = decode
        self._ids = list(ids)
        self._read = read
        self._prefix = max(0, read - _WINDOW)

    def step(self, new_ids: list[int]) -> str:
        self._ids.extend(new_ids)
        if len(self._ids) == self._read:
            return ""
        seen = self._decode(self._ids[self._prefix:self._read])
        text = self._decode(self._ids[self._prefix:])
        if len(text) <= len(seen) or text.endswith(_PARTIAL):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return text[len(seen):]
