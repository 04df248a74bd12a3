"""Child processes that cannot outlive their parent."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from pathlib import Path

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def die_with_parent() -> None:
    """``preexec_fn`` for Popen: on Linux, the child gets SIGTERM when its parent dies, so a
    killed ``ascendra up`` or runtime agent never leaves engines running."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def adopt_orphans() -> None:
    """Make this process the reaper of its descendants: when a child dies, its own children
    (vLLM's EngineCore and workers, when its API server is killed) become this process's,
    where :func:`kill_children` finds them."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1)


def children(pid: int | None = None) -> list[int]:
    """The live child processes of ``pid`` (this process by default), from /proc."""
    me = os.getpid() if pid is None else pid
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == me and fields[0] != "Z":
                out.append(int(stat.parent.name))
    return out


def kill_children(sig: int = signal.SIGKILL) -> None:
    for pid in children():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
