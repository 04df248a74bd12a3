"""The learned deadline predictor: observations, training, files and every way a file can be
unfit, evaluation, and its use in the simulator and the router's controller."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from ascendra.core.controller import ClusterController
from ascendra.core.latency import BatchShape
from ascendra.core.offload import FixedMarginPredictor, QueueSnapshot
from ascendra.core.request import Request, Slo
from ascendra.core.systems import system
from ascendra.perf import latency_model
from ascendra.perf.hardware import ModelShape
from ascendra.perf.profile import ProfileRow, write_profile
from ascendra.predict.evaluate import (
    iteration_cv,
    iteration_holdout,
    score_rule,
    split_blocks,
    ttft_eval,
)
from ascendra.predict.learned import (
    IterationModel,
    LearnedPredictor,
    PredictorError,
    TtftModel,
    load_predictor,
    save_predictor,
)
from ascendra.predict.observations import (
    Observation,
    ObservationRecorder,
    read_observations,
    write_observations,
)
from ascendra.sim.cluster import ClusterConfig, Simulation
from ascendra.workloads.lengths import ShareGptLike
from ascendra.workloads.spec import SyntheticWorkload

LM = latency_model()
SHAPE = ModelShape.builtin("llama-3.1-8b")


def snap(tokens_ahead: int = 0, waited: float = 0.0, batch: float = 0.02) -> QueueSnapshot:
    return QueueSnapshot(prompt_len=200, waited=waited, tokens_ahead=tokens_ahead,
                         seqs_ahead=tokens_ahead // 200, num_running=10, decode_context=5000,
                         kv_used=0.3, batch_time=batch, own_prefill=0.02,
                         ahead_prefill=0.02 + tokens_ahead * 1e-4)


def synthetic(n: int, seed: int = 0) -> list[Observation]:
    """Remaining time = 1 ms per 10 tokens ahead + 20 ms, with 10% log-normal noise."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ahead = int(rng.integers(0, 20_000))
        waited = float(rng.uniform(0, 1.0))
        remaining = (0.02 + ahead * 1e-4) * float(rng.lognormal(0, 0.1))
        out.append(Observation(snap(ahead, waited), remaining, 1.0))
    return out


@pytest.fixture(scope="module")
def ttft_model() -> TtftModel:
    return TtftModel.fit(synthetic(3000))


# -- observations ------------------------------------------------------------------------------
def test_recorder_spaces_snapshots_and_settles_at_the_first_token():
    rec = ObservationRecorder(every=0.25, per_request=3)
    for t in (0.0, 0.1, 0.3, 0.6, 0.9):  # 0.1 is too soon; the fourth is over the cap
        rec.snapshot("a", t, snap(waited=t), 1.0)
    rec.snapshot("b", 0.0, snap(), 1.0)
    rec.forget("b")  # moved: its wait there is not what it waits
    obs = rec.first_token("a", 1.0)
    assert [round(o.remaining, 6) for o in obs] == [1.0, 0.7, 0.4]
    assert obs[0].ttft == 1.0 and not obs[0].missed
    assert rec.first_token("a", 2.0) == [] and rec.first_token("b", 2.0) == []


def test_observations_round_trip_and_bad_lines_are_named(tmp_path):
    path = tmp_path / "obs.jsonl"
    obs = synthetic(5)
    write_observations(path, obs[:2])
    write_observations(path, obs[2:])  # appends
    back = read_observations(path)
    assert [o.snapshot for o in back] == [o.snapshot for o in obs]
    path.write_text(path.read_text() + '{"prompt_len": 3}\n')
    with pytest.raises(Exception, match=r"obs.jsonl:6: not an observation"):
        read_observations(path)
    with pytest.raises(Exception, match="observations not found"):
        read_observations(tmp_path / "none.jsonl")


# -- models ------------------------------------------------------------------------------------
def test_ttft_model_learns_the_queue_and_orders_its_quantiles(ttft_model):
    test = synthetic(500, seed=1)
    pred = ttft_model.remaining([o.snapshot for o in test])
    ape = np.abs(pred[:, 0] / [o.remaining for o in test] - 1)
    assert np.median(ape) < 0.1
    assert (pred[:, 1] >= pred[:, 0]).all()
    covered = np.mean([o.remaining <= p for o, p in zip(test, pred[:, 1], strict=True)])
    assert 0.8 <= covered <= 0.97  # the 0.9 quantile covers about 90%


def test_ttft_model_needs_data():
    with pytest.raises(PredictorError, match="at least 50 observations"):
        TtftModel.fit(synthetic(10))


def _profile(scale: float = 1.3, seed: int = 0) -> list[ProfileRow]:
    """Steps of a GPU that is uniformly 1.3× slower than the calibrated roofline, ±3%."""
    rng = np.random.default_rng(seed)
    shapes = [replace(LM_SHAPE(p), num_decodes=d, decode_context=d * c)
              for p in (0, 64, 512, 2048) for d in (0, 8, 64) for c in (256, 1024)
              if p or d]
    return [ProfileRow(s, LM.batch_time(s) * scale * float(rng.uniform(0.97, 1.03)))
            for s in shapes]


def LM_SHAPE(prefill: int):
    from ascendra.core.latency import BatchShape

    return BatchShape.prefill(prefill) if prefill else BatchShape()


def test_iteration_model_cross_validates_within_the_noise():
    report = iteration_cv(_profile(), SHAPE, "h100", folds=4)
    assert (report.train_rows, report.test_rows) == (22, 22)
    assert report.mdape_learned < 0.06  # the profile's own noise is ±3%


def test_iteration_model_on_a_held_out_run_scores_against_the_noise_floor():
    report = iteration_holdout(_profile(seed=0) + _profile(seed=1), _profile(seed=2), SHAPE,
                               "h100")
    assert (report.method, report.train_rows, report.test_rows) == ("held-out run", 44, 22)
    # uniform ±3% noise: a row is off the median of two others by about 1.5% (at most 6%)
    assert 0.005 < report.mdape_same_composition < 0.03
    assert report.mdape_learned < 2 * report.mdape_same_composition


def test_iteration_model_refuses_a_tiny_profile():
    with pytest.raises(PredictorError, match="at least 8 profile rows"):
        IterationModel.fit(_profile()[:3], SHAPE, "h100")


# -- files -------------------------------------------------------------------------------------
def test_file_round_trip_predicts_the_same(tmp_path, ttft_model):
    it = IterationModel.fit(_profile(), SHAPE, "h100")
    p = LearnedPredictor("llama", ttft_model, LM, it, quantile=0.9, version=3)
    save_predictor(tmp_path / "p.json", p)
    q = load_predictor(tmp_path / "p.json", "llama", LM)
    snaps = [snap(1000), snap(9000)]
    assert q.ttft_bounds(snaps) == pytest.approx(p.ttft_bounds(snaps))
    assert q.version == 3 and q.iteration is not None
    shape = LM_SHAPE(512)
    assert q.batch_time(shape) == pytest.approx(p.batch_time(shape))
    assert q.batch_time(shape) == pytest.approx(LM.batch_time(shape) * 1.3, rel=0.08)


@pytest.mark.parametrize("damage, message", [
    (lambda d: "{not json", "not readable JSON"),
    (lambda d: json.dumps([1, 2]), "is not an ascendra-predictor/1 file"),
    (lambda d: json.dumps({**d, "format": "other/9"}), "format: 'other/9'"),
    (lambda d: json.dumps({**d, "model": "qwen"}), "trained for model 'qwen', not 'llama'"),
    (lambda d: json.dumps({**d, "ttft": {**d["ttft"], "features": ["a", "b"]}}),
     "trained on features"),
    (lambda d: json.dumps({**d, "ttft": {**d["ttft"], "booster": "garbage"}}),
     "damaged"),
    (lambda d: json.dumps({k: v for k, v in d.items() if k != "ttft"}), "damaged"),
])
def test_unfit_files_are_refused_with_the_reason(tmp_path, ttft_model, damage, message):
    good = tmp_path / "good.json"
    save_predictor(good, LearnedPredictor("llama", ttft_model, LM))
    bad = tmp_path / "bad.json"
    bad.write_text(damage(json.loads(good.read_text())))
    with pytest.raises(PredictorError, match=message):
        load_predictor(bad, "llama", LM)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(PredictorError, match="not found"):
        load_predictor(tmp_path / "none.json", "llama", LM)


# -- evaluation --------------------------------------------------------------------------------
def test_score_rule_counts_in_vain_and_caught():
    obs = [Observation(snap(waited=0.5), r, 1.0) for r in (0.2, 0.8, 0.9, 0.1)]
    # bounds 0.6, 0.6, 0.1, 0.1 → flagged: first two; missed: 2nd and 3rd
    score = score_rule(obs, [0.6, 0.6, 0.1, 0.1])
    assert (score.flagged, score.in_vain, score.caught, score.missed_total) == (2, 1, 1, 2)
    assert score.precision == 0.5 and score.recall == 0.5


def test_split_blocks_holds_out_every_fifth_block():
    train, test = split_blocks(list(range(1000)), test_every=5, block=100)  # type: ignore[arg-type]
    assert test == list(range(400, 500)) + list(range(900, 1000)) and len(train) == 800


def test_ttft_eval_reports_both_rules(ttft_model):
    report = ttft_eval(ttft_model, synthetic(400, seed=2))
    assert report.mdape_learned < report.mdape_analytic or report.mdape_learned < 0.1
    assert report.learned_rule["flagged"] >= 0 and report.paper_rule["missed_total"] >= 0


# -- hosts -------------------------------------------------------------------------------------
def _sim(predictor, *, record: bool, moves: bool = True, rate: float = 40.0, name="ascendra"):
    spec = system(name)
    if not moves:
        spec = replace(spec, policy=replace(spec.policy, offload=False, migration=False))
    cfg = ClusterConfig(spec, instances=3)
    reqs = SyntheticWorkload(ShareGptLike()).requests(rate, 600, 3)
    return Simulation(cfg, LM, predictor, Slo(1.0, 0.15), seed=3,
                      recorder=ObservationRecorder() if record else None).run(reqs)


def test_simulator_records_observations_and_can_hold_offloads():
    res = _sim(FixedMarginPredictor(LM, 0.0), record=True, moves=False, rate=120)
    assert res.offloads == 0 and len(res.observations) > 100
    o = res.observations[0]
    assert o.remaining > 0 and o.slo_ttft == 1.0


def test_simulator_runs_with_the_learned_predictor(ttft_model):
    res = _sim(LearnedPredictor("llama", ttft_model, LM), record=False, name="ascendra-paper",
               rate=110)
    assert len(res.outcomes) == 600 and res.offloads > 0


def test_the_router_falls_back_when_the_predictor_fails():
    from ascendra.core.policy import Policy
    from ascendra.core.view import ClusterView, InFlight, InstanceView, Role
    from ascendra.router.control import EngineRateModel
    from ascendra.router.learning import FallbackPredictor

    class Broken:  # a stand-in for a learned model that raises at predict time
        version = 3

        def batch_time(self, shape):
            return LM.batch_time(shape)

        def prefill_time(self, n):
            return LM.batch_time(BatchShape.prefill(n))

        def ttft_bounds(self, snaps):
            raise RuntimeError("booster exploded")

    analytic = FixedMarginPredictor(EngineRateModel(), 0.7)
    p = FallbackPredictor(Broken(), analytic)
    assert p.version == 3
    core = ClusterController(Policy(), p)
    now = 100.0
    r = Request(id=1, arrival=now - 0.9, prompt_len=10, max_tokens=4, slo=Slo(1.0, 0.15))
    view = ClusterView(now, [InstanceView(0, Role.LP, unstarted=1, unstarted_tokens=10),
                             InstanceView(1, Role.HP)],
                       streams=[InFlight(r, 0, 10, 0, None, None, now - 0.8)])
    d = core.step(view)  # the analytic rule still offloads it
    assert [(m.request.id, m.target) for m in d.moves] == [(1, 1)]
    assert p.active is analytic and p.version == 0


def test_router_starts_with_the_analytic_predictor_when_the_file_is_unfit(tmp_path):
    from ascendra.router.control import EngineRateModel
    from ascendra.router.learning import initial_predictor

    bad = tmp_path / "p.json"
    bad.write_text("{}")
    assert initial_predictor(bad, "llama", EngineRateModel()) is None
    assert initial_predictor(None, "llama", EngineRateModel()) is None


def test_online_learner_refits_off_the_event_loop(tmp_path):
    import asyncio

    from ascendra.router.learning import OnlineLearner

    learner = OnlineLearner("llama", LM, every=100, save_dir=tmp_path)
    assert not learner.add(synthetic(60))
    assert learner.add(synthetic(60, seed=1))
    p = asyncio.run(learner.refit())
    assert p is not None and p.version == 1 and p.ttft.rows == 120
    assert (tmp_path / "predictor-v1.json").exists()
    assert load_predictor(tmp_path / "predictor-v1.json", "llama", LM).version == 1


def test_online_refit_keeps_the_starting_predictors_step_model_and_quantile():
    import asyncio

    from ascendra.router.learning import OnlineLearner

    start = LearnedPredictor("llama", TtftModel.fit(synthetic(200), quantiles=(0.5, 0.8)), LM,
                             IterationModel.fit(_profile(), SHAPE, "h100"), quantile=0.8,
                             version=7, source="offline")
    learner = OnlineLearner("llama", LM, every=100, start=start)
    learner.add(synthetic(120))
    p = asyncio.run(learner.refit())
    assert p is not None and (p.version, p.quantile, p.source) == (8, 0.8, "online refit")
    assert p.iteration is start.iteration and p.ttft is not start.ttft
    assert p.ttft.quantiles == (0.5, 0.8)


# -- the command -------------------------------------------------------------------------------
def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ascendra.cli", "predictor", *args],
                          capture_output=True, text=True, timeout=300)


def test_cli_trains_and_evaluates(tmp_path):
    obs = tmp_path / "obs.jsonl"
    write_observations(obs, synthetic(1500))
    prof = tmp_path / "profile.csv"
    write_profile(prof, _profile())
    model = tmp_path / "p.json"
    p = _cli("train", "--model", "llama", "--observations", str(obs), "--split",
             "--profile", str(prof), "--out", str(model))
    assert p.returncode == 0, p.stderr
    p = _cli("eval", "--model", "llama", "--predictor", str(model), "--observations", str(obs),
             "--split", "--profile", str(prof), "--json", str(tmp_path / "r.json"))
    assert p.returncode == 0, p.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["ttft"]["observations"] == 200
    assert report["iteration"]["method"] == "5-fold cross-validation"
    held = tmp_path / "held-out.csv"
    write_profile(held, _profile(seed=1))
    p = _cli("eval", "--model", "llama", "--profile", str(prof), "--test-profile", str(held))
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["iteration"]["test_rows"] == len(_profile())
    # a predictor trained for another model
    p = _cli("eval", "--model", "qwen", "--predictor", str(model), "--observations", str(obs))
    assert p.returncode == 2 and "trained for model 'llama', not 'qwen'" in p.stderr


def test_cli_bad_input(tmp_path):
    p = _cli("train", "--model", "llama", "--out", str(tmp_path / "p.json"))
    assert p.returncode == 2 and "give --observations" in p.stderr
    bad = tmp_path / "bad.csv"
    bad.write_text("num_prefill_tokens,time_s\n1,0.1\n")
    p = _cli("eval", "--model", "llama", "--profile", str(bad))
    assert p.returncode == 2 and "lacks columns" in p.stderr
    p = _cli("eval", "--model", "llama")
    assert p.returncode == 2 and "give --profile and/or --observations" in p.stderr
    p = _cli("eval", "--model", "llama", "--test-profile", str(bad))
    assert p.returncode == 2 and "--test-profile needs --profile" in p.stderr
    obs = tmp_path / "obs.jsonl"
    obs.write_text("nonsense\n")
    p = _cli("train", "--model", "llama", "--observations", str(obs), "--out",
             str(tmp_path / "p.json"))
    assert p.returncode == 2 and "obs.jsonl:1: not an observation" in p.stderr


def test_simulator_cli_observes_trains_and_simulates_with_the_learned_predictor(tmp_path):
    obs, model = tmp_path / "sim.observations.jsonl.gz", tmp_path / "p.json"
    sim = ["sim", "--preset", "paper-sharegpt", "--systems", "ascendra", "--requests", "600",
           "--duration", "0", "--jobs", "1", "--quiet"]
    p = subprocess.run([sys.executable, "-m", "ascendra.cli", *sim, "--qps", "110",
                        "--observations", str(obs)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "observe-only (no offloads)" in p.stdout
    seen = read_observations(obs)
    assert len(seen) > 100 and any(o.missed for o in seen)
    assert _cli("train", "--model", "llama-3.1-8b", "--observations", str(obs), "--out",
                str(model)).returncode == 0
    report = tmp_path / "r.json"
    p = subprocess.run([sys.executable, "-m", "ascendra.cli", *sim, "--qps", "60",
                        "--predictor", str(model), "--json", str(report)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    setup = json.loads(report.read_text())["setup"]
    assert setup["predictor"] == str(model) and setup["offloads"] is True
    # a predictor for another model, and a damaged file: one clear line, exit 2
    p = subprocess.run([sys.executable, "-m", "ascendra.cli", *sim, "--model", "tiny-llama",
                        "--predictor", str(model)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "trained for model 'llama-3.1-8b', not 'tiny-llama'" in p.stderr
    model.write_text("{not json")
    p = subprocess.run([sys.executable, "-m", "ascendra.cli", *sim, "--predictor", str(model)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "not readable JSON" in p.stderr
