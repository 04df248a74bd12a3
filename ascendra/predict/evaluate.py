"""Accuracy of the learned predictor on held-out data (``ascendra predictor eval``).

* Step time: fitted on one profiling run and scored on another run of the same engine, or, for
  an engine profiled once, k-fold cross-validation over its profile (each fold's models fitted
  on the other folds): median absolute percentage error (MdAPE) of the learned model and, for
  comparison, of the roofline fitted to the same rows and of the training runs' own median of
  the same batch composition (the measurement's noise floor).
* Time to first token of queued requests: MdAPE of ``waited + predicted median remaining``
  against the measured TTFT, next to the analytic estimate (``waited + ahead_prefill``).
* Offload decisions, per snapshot: the rule "waited + bound > TTFT target" against an oracle
  that knows whether the request, left where it was, missed its target (observations come from
  requests that stayed, so their outcome is exactly that). Precision is the share of flagged
  snapshots that did miss (a flagged one that met is an offload in vain); recall the share of
  missing ones flagged. The paper's bound (next in line + fixed margin) is scored beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from ascendra.core.latency import BatchShape
from ascendra.core.offload import paper_bound
from ascendra.perf.hardware import ModelShape
from ascendra.perf.hardware import gpu as gpu_spec
from ascendra.perf.profile import ProfileRow, fit_roofline
from ascendra.perf.roofline import RooflineLatencyModel
from ascendra.predict.learned import IterationModel, TtftModel
from ascendra.predict.observations import Observation

ARRIVAL = 0.25  # s: a snapshot taken this soon after arrival is the request's first


def mdape(predicted: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray) -> float:
    p, a = np.asarray(predicted, dtype=float), np.asarray(actual, dtype=float)
    return float(np.median(np.abs(p / a - 1)))


def split_blocks(observations: Sequence[Observation], test_every: int = 5,
                 block: int = 200) -> tuple[list[Observation], list[Observation]]:
    """Train/test by contiguous blocks (every ``test_every``-th block held out): snapshots of
    one request and of one busy moment stay on one side, so the test is not a near-copy of
    the training data."""
    train: list[Observation] = []
    test: list[Observation] = []
    for i, ob in enumerate(observations):
        (test if (i // block) % test_every == test_every - 1 else train).append(ob)
    return train, test


@dataclass(frozen=True)
class IterationReport:
    method: str  # "held-out run" or "k-fold cross-validation"
    train_rows: int  # cross-validation: the profile's rows (each fold fits on the others)
    test_rows: int
    mdape_learned: float
    mdape_roofline: float
    p90ape_learned: float
    # The measurement's own noise: each test row predicted by the median of the training rows
    # of the same composition (over the test rows that have some). No model of the batch
    # shape can beat it by much.
    mdape_same_composition: float | None


def _fold(train: Sequence[ProfileRow], test: Sequence[ProfileRow], model: ModelShape,
          gpu_name: str) -> tuple[list[float], list[float], list[float | None]]:
    """Predictions for ``test`` of the learned model and the roofline fitted to ``train``,
    and the training median of each test row's composition (None where it has none)."""
    it = IterationModel.fit(train, model, gpu_name)
    rf = RooflineLatencyModel(model, gpu_spec(gpu_name),
                              fit_roofline(model, gpu_spec(gpu_name), list(train)).coefficients)
    seen: dict[BatchShape, list[float]] = {}
    for r in train:
        seen.setdefault(r.shape, []).append(r.time_s)
    same = [float(np.median(seen[r.shape])) if r.shape in seen else None for r in test]
    return (it.batch_times([r.shape for r in test]).tolist(),
            [rf.batch_time(r.shape) for r in test], same)


def _report(method: str, train_rows: int, actual: list[float], learned: list[float],
            roofline: list[float], same: list[float | None]) -> IterationReport:
    ape = np.abs(np.array(learned) / np.array(actual) - 1)
    pairs = [(s, a) for s, a in zip(same, actual, strict=True) if s is not None]
    return IterationReport(method, train_rows, len(actual), float(np.median(ape)),
                           mdape(roofline, actual), float(np.percentile(ape, 90)),
                           mdape(*zip(*pairs, strict=True)) if pairs else None)


def iteration_holdout(train: Sequence[ProfileRow], test: Sequence[ProfileRow],
                      model: ModelShape, gpu_name: str) -> IterationReport:
    """Fit on one profiling run, score on another run of the same engine."""
    learned, roofline, same = _fold(train, test, model, gpu_name)
    return _report("held-out run", len(train), [r.time_s for r in test], learned, roofline,
                   same)


def iteration_cv(rows: Sequence[ProfileRow], model: ModelShape, gpu_name: str,
                 folds: int = 5, seed: int = 0) -> IterationReport:
    """k-fold cross-validation over one profile, for an engine profiled once."""
    order = np.random.default_rng(seed).permutation(len(rows))
    learned: list[float] = []
    roofline: list[float] = []
    same: list[float | None] = []
    actual: list[float] = []
    for k in range(folds):
        held = set(order[k::folds].tolist())
        test = [rows[i] for i in sorted(held)]
        fit, fitted_roofline, composition = _fold(
            [rows[i] for i in range(len(rows)) if i not in held], test, model, gpu_name)
        learned += fit
        roofline += fitted_roofline
        same += composition
        actual += [r.time_s for r in test]
    return _report(f"{folds}-fold cross-validation", len(rows), actual, learned, roofline,
                   same)


@dataclass(frozen=True)
class RuleScore:
    flagged: int
    in_vain: int  # flagged, yet the request met its target where it was
    caught: int  # flagged and missed
    missed_total: int

    @property
    def precision(self) -> float | None:
        return self.caught / self.flagged if self.flagged else None

    @property
    def recall(self) -> float | None:
        return self.caught / self.missed_total if self.missed_total else None

    def as_dict(self) -> dict[str, float | int | None]:
        return {**asdict(self), "precision": self.precision, "recall": self.recall}


def score_rule(observations: Sequence[Observation], bounds: Sequence[float]) -> RuleScore:
    flags = [o.snapshot.waited + b > o.slo_ttft for o, b in zip(observations, bounds,
                                                                  strict=True)]
    missed = [o.missed for o in observations]
    caught = sum(f and m for f, m in zip(flags, missed, strict=True))
    return RuleScore(flagged=sum(flags), in_vain=sum(f and not m for f, m in
                                                     zip(flags, missed, strict=True)),
                     caught=caught, missed_total=sum(missed))


@dataclass(frozen=True)
class TtftReport:
    observations: int
    missed_share: float
    mdape_learned: float
    mdape_analytic: float
    # The same at arrival only (a request's first snapshot, waited < 0.25 s): there the whole
    # TTFT is still ahead, so the waited time cannot flatter the error.
    arrival_observations: int
    mdape_learned_arrival: float | None
    mdape_analytic_arrival: float | None
    learned_rule: dict[str, float | int | None]
    paper_rule: dict[str, float | int | None]
    quantile: float
    paper_margin: float


def ttft_eval(model: TtftModel, observations: Sequence[Observation], quantile: float = 0.9,
              paper_margin: float = 0.7) -> TtftReport:
    pred = model.remaining([o.snapshot for o in observations])
    actual = [o.ttft for o in observations]
    waited = np.array([o.snapshot.waited for o in observations])
    median = pred[:, model.quantile(0.5)]
    analytic = [o.snapshot.waited + o.snapshot.ahead_prefill for o in observations]
    first = waited < ARRIVAL
    actual_a = np.array(actual)[first]
    learned = score_rule(observations, pred[:, model.quantile(quantile)].tolist())
    paper = score_rule(observations, [paper_bound(o.snapshot, paper_margin)
                                      for o in observations])
    return TtftReport(
        observations=len(observations),
        missed_share=float(np.mean([o.missed for o in observations])) if observations else 0.0,
        mdape_learned=mdape(waited + median, actual), mdape_analytic=mdape(analytic, actual),
        arrival_observations=int(first.sum()),
        mdape_learned_arrival=mdape((waited + median)[first], actual_a) if first.any() else None,
        mdape_analytic_arrival=mdape(np.array(analytic)[first], actual_a) if first.any()
        else None,
        learned_rule=learned.as_dict(), paper_rule=paper.as_dict(), quantile=quantile,
        paper_margin=paper_margin)
