"""The learned deadline predictor: XGBoost over the analytic features, with quantiles.

Two models, each on top of an analytic one rather than instead of it:

* :class:`IterationModel` — a step's time. The roofline fitted to a measured profile is the
  base; a small boosted tree ensemble learns the log of the ratio the roofline gets wrong (from
  the batch shape and the roofline's own estimate), so that away from the profiled grid the
  prediction falls back towards the physics instead of a tree's flat extrapolation.
* :class:`TtftModel` — a queued request's time to its first token from a
  :class:`~ascendra.core.offload.QueueSnapshot` (its queue ahead, the running decodes, KV in use,
  the recent step time and the analytic estimates). One booster fits several quantiles of the
  log time at once (``reg:quantileerror``); the offload rule uses an upper quantile as its bound,
  so the margin follows from the spread the model has seen instead of being set by hand.

:class:`LearnedPredictor` is the core's ``DeadlinePredictor`` made of them; the simulator and the
router take it where they take the paper's :class:`~ascendra.core.offload.FixedMarginPredictor`.
Files are versioned JSON (:func:`save_predictor` / :func:`load_predictor`); a file that is
corrupt, of another format, for other features or for another model is refused with a
:class:`PredictorError`, and callers keep the analytic predictor.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ascendra.core.latency import BatchShape, LatencyModel
from ascendra.core.offload import SNAPSHOT_FEATURES, QueueSnapshot
from ascendra.errors import AscendraError
from ascendra.perf.hardware import ModelShape, gpu
from ascendra.perf.profile import ProfileRow, fit_roofline
from ascendra.perf.roofline import RooflineCoefficients, RooflineLatencyModel
from ascendra.predict.observations import Observation

FORMAT = "ascendra-predictor/1"
ITERATION_FEATURES = ("num_prefill_tokens", "num_prefill_seqs", "prefill_attn_pairs",
                      "num_decodes", "decode_context", "log_roofline")
QUANTILES = (0.5, 0.9)
_FLOOR = 1e-3  # s: times to first token are learned as log(max(t, floor))


def trained_quantiles(bound: float) -> tuple[float, ...]:
    """The TTFT quantiles a model is trained for: the median (accuracy reports) and the one the
    offload rule bounds with."""
    return tuple(sorted({0.5, bound}))


class PredictorError(AscendraError):
    """A predictor file that cannot serve: the caller keeps the analytic predictor."""


def _xgb() -> Any:
    try:
        import xgboost
    except ImportError:  # the GPU machine's minimal install has no xgboost
        raise PredictorError("the learned predictor needs the xgboost package") from None
    return xgboost


def _booster_to_json(booster: Any) -> str:
    return bytes(booster.save_raw(raw_format="json")).decode()


def _booster_from_json(text: str) -> Any:
    booster = _xgb().Booster()
    booster.load_model(bytearray(text.encode()))
    return booster


_PARAMS = {"max_depth": 4, "eta": 0.1, "subsample": 0.8, "min_child_weight": 2, "nthread": 1,
           "seed": 0}


# -- step time ---------------------------------------------------------------------------------
def _iteration_rows(roofline: LatencyModel, shapes: Sequence[BatchShape]) -> np.ndarray:
    """ITERATION_FEATURES of each shape: its counts and the log of the roofline's estimate."""
    return np.array([[s.num_prefill_tokens, s.num_prefill_seqs, s.prefill_attn_pairs,
                      s.num_decodes, s.decode_context, math.log(roofline.batch_time(s))]
                     for s in shapes])


@dataclass
class IterationModel:
    roofline: RooflineLatencyModel
    booster: Any  # xgboost.Booster over ITERATION_FEATURES → log(time / roofline)

    def batch_times(self, shapes: Sequence[BatchShape]) -> np.ndarray:
        x = _iteration_rows(self.roofline, shapes)
        return np.exp(x[:, -1] + self.booster.inplace_predict(x))

    def batch_time(self, shape: BatchShape) -> float:
        return float(self.batch_times([shape])[0])

    @classmethod
    def fit(cls, rows: Sequence[ProfileRow], model: ModelShape, gpu_name: str,
            rounds: int = 200) -> IterationModel:
        if len(rows) < 8:
            raise PredictorError(f"an iteration model needs at least 8 profile rows, got "
                                 f"{len(rows)}")
        coef = fit_roofline(model, gpu(gpu_name), list(rows)).coefficients
        roofline = RooflineLatencyModel(model, gpu(gpu_name), coef)
        x = _iteration_rows(roofline, [r.shape for r in rows])
        y = np.log([r.time_s for r in rows]) - x[:, -1]
        xgb = _xgb()
        dm = xgb.DMatrix(x, label=y, feature_names=list(ITERATION_FEATURES))
        booster = xgb.train({**_PARAMS, "objective": "reg:squarederror", "eta": 0.05,
                             "max_depth": 3, "lambda": 1.0}, dm, rounds)
        return cls(roofline, booster)

    def to_dict(self) -> dict[str, Any]:
        return {"model_shape": asdict(self.roofline.model),
                "gpu": self.roofline.gpu.name, "roofline": self.roofline.coef.as_dict(),
                "features": list(ITERATION_FEATURES), "booster": _booster_to_json(self.booster)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IterationModel:
        _same_features("iteration", d["features"], ITERATION_FEATURES)
        shape = ModelShape(**d["model_shape"])
        roofline = RooflineLatencyModel(shape, gpu(d["gpu"]),
                                        RooflineCoefficients(**d["roofline"]))
        return cls(roofline, _booster_from_json(d["booster"]))


# -- time to first token -----------------------------------------------------------------------
@dataclass
class TtftModel:
    booster: Any  # multi-quantile xgboost.Booster over SNAPSHOT_FEATURES → log(remaining)
    quantiles: tuple[float, ...] = QUANTILES
    rows: int = 0

    def remaining(self, snaps: Sequence[QueueSnapshot]) -> np.ndarray:
        """Predicted quantiles of the time to first token: shape (len(snaps), len(quantiles))."""
        if not snaps:
            return np.zeros((0, len(self.quantiles)))
        # inplace_predict: no DMatrix per call (the simulator asks once per LP step)
        out = np.exp(self.booster.inplace_predict(np.array([s.vector() for s in snaps])))
        out = out.reshape(len(snaps), -1)
        return np.sort(out, axis=1)  # independent quantile heads may cross; keep them ordered

    def quantile(self, q: float) -> int:
        try:
            return self.quantiles.index(q)
        except ValueError:
            raise PredictorError(f"quantile {q} not trained (have {list(self.quantiles)})") \
                from None

    @classmethod
    def fit(cls, observations: Sequence[Observation], quantiles: tuple[float, ...] = QUANTILES,
            rounds: int = 300) -> TtftModel:
        if len(observations) < 50:
            raise PredictorError(f"a TTFT model needs at least 50 observations, got "
                                 f"{len(observations)}")
        x = np.array([o.snapshot.vector() for o in observations])
        y = np.log(np.maximum([o.remaining for o in observations], _FLOOR))
        xgb = _xgb()
        dm = xgb.DMatrix(x, label=y, feature_names=list(SNAPSHOT_FEATURES))
        booster = xgb.train({**_PARAMS, "objective": "reg:quantileerror",
                             "quantile_alpha": np.array(quantiles), "max_depth": 6}, dm, rounds)
        return cls(booster, tuple(quantiles), len(observations))

    def to_dict(self) -> dict[str, Any]:
        return {"features": list(SNAPSHOT_FEATURES), "quantiles": list(self.quantiles),
                "rows": self.rows, "booster": _booster_to_json(self.booster)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TtftModel:
        _same_features("ttft", d["features"], SNAPSHOT_FEATURES)
        return cls(_booster_from_json(d["booster"]), tuple(float(q) for q in d["quantiles"]),
                   int(d.get("rows", 0)))


def _same_features(what: str, got: Sequence[str], want: Sequence[str]) -> None:
    if tuple(got) != tuple(want):
        raise PredictorError(f"the {what} model was trained on features {list(got)}; this "
                             f"version uses {list(want)}")


# -- the predictor -----------------------------------------------------------------------------
@dataclass
class LearnedPredictor:
    """``fallback`` times steps where no iteration model was trained (and builds snapshots'
    analytic features); ``quantile`` is the TTFT quantile the offload rule bounds with."""

    model: str  # the served model it was trained for
    ttft: TtftModel
    fallback: LatencyModel
    iteration: IterationModel | None = None
    quantile: float = 0.9
    version: int = 1
    source: str = ""

    def __post_init__(self) -> None:
        self._q = self.ttft.quantile(self.quantile)

    def batch_time(self, shape: BatchShape) -> float:
        return (self.iteration or self.fallback).batch_time(shape)

    def prefill_time(self, prompt_len: int) -> float:
        return self.batch_time(BatchShape.prefill(prompt_len))

    def ttft_bounds(self, snaps: Sequence[QueueSnapshot]) -> list[float]:
        return self.ttft.remaining(snaps)[:, self._q].tolist()


def save_predictor(path: str | Path, p: LearnedPredictor) -> None:
    doc = {"format": FORMAT, "model": p.model, "version": p.version, "source": p.source,
           "quantile": p.quantile, "ttft": p.ttft.to_dict(),
           "iteration": p.iteration.to_dict() if p.iteration else None}
    Path(path).write_text(json.dumps(doc))


def load_predictor(path: str | Path, model: str, fallback: LatencyModel,
                   quantile: float | None = None) -> LearnedPredictor:
    """Load a predictor file for the served ``model``; every way it can be unfit for serving
    is a :class:`PredictorError` naming the problem."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except FileNotFoundError:
        raise PredictorError(f"predictor file not found: {p}") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise PredictorError(f"predictor file {p} is not readable JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise PredictorError(f"{p} is not an {FORMAT} file (format: {got!r})")
    if doc.get("model") != model:
        raise PredictorError(f"{p} was trained for model {doc.get('model')!r}, not {model!r}")
    try:
        ttft = TtftModel.from_dict(doc["ttft"])
        iteration = IterationModel.from_dict(doc["iteration"]) if doc.get("iteration") else None
        return LearnedPredictor(model, ttft, fallback, iteration,
                                quantile if quantile is not None else float(doc["quantile"]),
                                int(doc.get("version", 1)), str(doc.get("source", "")))
    except PredictorError:
        raise
    except (KeyError, TypeError, ValueError, AscendraError) as e:
        raise PredictorError(f"predictor file {p} is damaged: {e}") from None
    except Exception as e:  # xgboost's own error for a damaged booster
        raise PredictorError(f"predictor file {p} holds a damaged model: {e}") from None
