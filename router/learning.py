"""The router's deadline predictor over its life: the file it starts from (if any, and only if
it fits the served model), and refits from the requests it observes.

A refit trains a new TTFT model on the most recent observations in a worker thread, so the
event loop keeps serving; the new model replaces the old one in one assignment when it is done.
What the refit does not learn (the step-time model, the quantile) is kept from the predictor
the router started with.
Each version can be written to a directory, so what served is on disk next to what it learned
from. Any failure keeps the predictor that was serving: a router never stops over its predictor.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from ascendra.core.latency import BatchShape, LatencyModel
from ascendra.core.offload import DeadlinePredictor, QueueSnapshot
from ascendra.predict.learned import (
    LearnedPredictor,
    PredictorError,
    TtftModel,
    load_predictor,
    save_predictor,
    trained_quantiles,
)
from ascendra.predict.observations import Observation

log = logging.getLogger("ascendra.router")


class FallbackPredictor:
    """A learned predictor that must not stop the controller: at its first failure to predict
    (a damaged booster, features it was not built for) the analytic predictor serves from then
    on, and the router says so in its log and in ``ascendra_predictor_version`` (0)."""

    def __init__(self, learned: DeadlinePredictor, analytic: DeadlinePredictor) -> None:
        self.learned = learned
        self.analytic = analytic
        self.active = learned

    @property
    def version(self) -> int:
        return int(getattr(self.active, "version", 0))

    def batch_time(self, shape: BatchShape) -> float:
        return self.active.batch_time(shape)

    def prefill_time(self, prompt_len: int) -> float:
        return self.active.prefill_time(prompt_len)

    def ttft_bounds(self, snaps: Sequence[QueueSnapshot]) -> list[float]:
        if self.active is self.learned:
            try:
                return self.learned.ttft_bounds(snaps)
            except Exception:
                log.exception("deadline predictor failed; the analytic one serves from now on")
                self.active = self.analytic
        return self.analytic.ttft_bounds(snaps)


def initial_predictor(path: Path | None, model: str,
                      fallback: LatencyModel) -> LearnedPredictor | None:
    """The learned predictor a router starts with; None (serve with the analytic one) when no
    file is given or the file does not fit the served model."""
    if path is None:
        return None
    try:
        p = load_predictor(path, model, fallback)
    except PredictorError as e:
        log.error("predictor refused, serving with the analytic one: %s", e)
        return None
    log.info("predictor %s v%d loaded (%d observations, quantile %.2f)", path, p.version,
             p.ttft.rows, p.quantile)
    return p


class OnlineLearner:
    """``start``: the learned predictor the router started with, if any; each refit is it with
    a new TTFT model."""

    def __init__(self, model: str, fallback: LatencyModel, every: int, keep: int = 20_000,
                 quantile: float = 0.9, save_dir: Path | None = None,
                 start: LearnedPredictor | None = None) -> None:
        self.model, self.fallback = model, fallback
        self.every, self.save_dir = every, save_dir
        self.quantile = start.quantile if start else quantile
        self.start = start
        self.version = start.version if start else 0
        self.recent: deque[Observation] = deque(maxlen=keep)
        self._since = 0
        self._busy = False

    def add(self, observations: list[Observation]) -> bool:
        """Keep them; True when a refit is due (and none is running)."""
        self.recent.extend(observations)
        self._since += len(observations)
        return self.every > 0 and self._since >= self.every and not self._busy

    async def refit(self) -> LearnedPredictor | None:
        self._busy, self._since = True, 0
        data = list(self.recent)
        try:
            ttft = await asyncio.to_thread(TtftModel.fit, data,
                                           trained_quantiles(self.quantile))
            version, source = self.version + 1, "online refit"
            p = replace(self.start, ttft=ttft, version=version, source=source) if self.start \
                else LearnedPredictor(self.model, ttft, self.fallback, quantile=self.quantile,
                                      version=version, source=source)
            if self.save_dir is not None:
                await asyncio.to_thread(save_predictor,
                                        self.save_dir / f"predictor-v{p.version}.json", p)
        except (PredictorError, OSError) as e:
            log.error("predictor refit failed, keeping v%d: %s", self.version, e)
            return None
        finally:
            self._busy = False
        self.version = p.version
        log.info("predictor refit: v%d from %d observations", p.version, len(data))
        return p

