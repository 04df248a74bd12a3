from __future__ import annotations

import pytest

from ascendra.core.kv import KvCache


@pytest.fixture
def big_kv() -> KvCache:
    return KvCache.from_tokens(1_000_000)
