"""Observations of queued requests: a snapshot of a request's place in its queue, and how long
it then took to its first token. The simulator and the router record them alike; they are the
TTFT predictor's training and evaluation data.

:class:`ObservationRecorder` is pure bookkeeping (the caller passes the time): snapshots of a
request are kept at most every ``every`` seconds and become observations at its first token;
a request moved or dropped before that loses them (its time to first token on that instance is
never known).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from ascendra.core.offload import SNAPSHOT_FEATURES, QueueSnapshot
from ascendra.errors import AscendraError


@dataclass(frozen=True, slots=True)
class Observation:
    snapshot: QueueSnapshot
    remaining: float  # s from the snapshot to the first token
    slo_ttft: float

    @property
    def ttft(self) -> float:
        return self.snapshot.waited + self.remaining

    @property
    def missed(self) -> bool:
        return self.ttft > self.slo_ttft

    def to_json(self) -> str:
        return json.dumps({**asdict(self.snapshot), "remaining": round(self.remaining, 6),
                           "slo_ttft": self.slo_ttft})


class ObservationRecorder:
    def __init__(self, every: float = 0.25, per_request: int = 16) -> None:
        self.every = every
        self.per_request = per_request
        self._pending: dict[Hashable, list[tuple[float, QueueSnapshot, float]]] = {}

    def snapshot(self, key: Hashable, now: float, snap: QueueSnapshot, slo_ttft: float) -> None:
        held = self._pending.setdefault(key, [])
        if len(held) < self.per_request and (not held or now - held[-1][0] >= self.every):
            held.append((now, snap, slo_ttft))

    def forget(self, key: Hashable) -> None:
        self._pending.pop(key, None)

    def first_token(self, key: Hashable, now: float) -> list[Observation]:
        return [Observation(snap, now - t, slo) for t, snap, slo in self._pending.pop(key, [])]


def write_observations(path: Path, observations: Iterable[Observation]) -> None:
    """Append (a .gz file gains a gzip member; readers see one stream)."""
    with (gzip.open(path, "at") if path.suffix == ".gz" else path.open("a")) as f:
        for ob in observations:
            f.write(ob.to_json() + "\n")


def read_observations(path: str | Path) -> list[Observation]:
    return list(_read(Path(path)))


def _lines(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt") as f:
            return list(f)
    except FileNotFoundError:
        raise AscendraError(f"observations not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:  # gzip's BadGzipFile is an OSError
        raise AscendraError(f"observations {path} are not readable: {e}") from None


def _read(path: Path) -> Iterator[Observation]:
    for lineno, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            snap = QueueSnapshot(**{k: rec[k] for k in SNAPSHOT_FEATURES})
            yield Observation(snap, float(rec["remaining"]), float(rec["slo_ttft"]))
        except (ValueError, KeyError, TypeError) as e:
            raise AscendraError(f"{path}:{lineno}: not an observation ({e})") from None
