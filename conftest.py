"""The test process's one interpreter workaround, for every suite (tests/ and e2e/).

CPython 3.11's ``ast.parse`` keeps its recursion count in state shared by every call in the
interpreter. A collection during a parse can run a finalizer that parses too: an asyncio future
whose exception nobody retrieved logs its traceback when collected, and 3.11's traceback module
parses each line to place its carets. The outer parse then fails with ``SystemError: AST
constructor recursion depth mismatch`` (python/cpython#106905 and its kin). Here that crashed
pytest (INTERNALERROR) while it formatted an unrelated failure, ending a CI run after 280 tests,
and once after a passing subset, when the hypothesis plugin's late import was rewritten.
Reproduced outside pytest in a few lines: futures with unread exceptions in reference cycles
and a low collection threshold; with the collector paused for the parse it never occurs. The
parse allocates no cycles of its own, so pausing the collector for its length loses nothing.
"""

from __future__ import annotations

import ast
import gc
from typing import Any

_parse = ast.parse


def _parse_uncollected(*args: Any, **kwargs: Any) -> Any:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _parse(*args, **kwargs)
    finally:
        if was_enabled:
            gc.enable()


ast.parse = _parse_uncollected
