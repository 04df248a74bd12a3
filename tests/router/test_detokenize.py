"""The router's own text for moved streams: it must continue exactly where the client's text
stopped, including when the cut falls inside a multi-byte character."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from ascendra.router.detokenize import IncrementalText

_CORPUS = ["request deadline héllo wörld", "日本語のテキスト 🙂 ok", "plain ascii text here"] * 20


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    # Byte-level BPE with a tiny vocabulary: multi-byte characters span several tokens.
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator(_CORPUS, trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return t


def _engine_seen(tok: Tokenizer, ids: list[int]) -> tuple[str, int]:
    """What an engine's stream has sent for ``ids``: text up to the last complete character,
    and how many tokens that text covers."""
    for n in range(len(ids), -1, -1):
        text = tok.decode(ids[:n])
        if not text.endswith("\ufffd"):
            return text, n
    return "", 0


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["a 日本語 b 🙂 wörld", "🙂🙂🙂 héllo", "deadline 日本"]),
       st.integers(0, 30), st.integers(1, 3))
def test_moved_text_continues_exactly(tok: Tokenizer, text: str, cut: int, chunk: int):
    prompt = tok.encode("request ").ids
    generated = tok.encode(text).ids
    cut = min(cut, len(generated))
    seen, through = _engine_seen(tok, generated[:cut])
    inc = IncrementalText(tok.decode, prompt + generated[:cut], len(prompt) + through)
    out = seen
    for i in range(cut, len(generated), chunk):
        out += inc.step(generated[i:i + chunk])
    assert out == tok.decode(generated)


def test_partial_character_is_held_back(tok: Tokenizer):
    ids = tok.encode("🙂").ids
    assert len(ids) > 1, "the emoji must span tokens for this test to mean anything"
    inc = IncrementalText(tok.decode, [], 0)
    assert [inc.step([i]) for i in ids[:-1]] == [""] * (len(ids) - 1)
    assert inc.step(ids[-1:]) == "🙂"
