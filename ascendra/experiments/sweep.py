"""QPS sweeps of a preset: simulate each (system, rate), then bracket and refine the 90% crossing.

The preset's grid runs first; where a system's curve does not bracket the goodput target, the
grid is extended (down by 1.5× or up by 1.25×), and once bracketed the crossing is bisected until
the two rates around it are within 5%, so interpolated goodput is not an artefact of a coarse grid.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from ascendra.core.latency import LatencyModel
from ascendra.core.offload import DeadlinePredictor, FixedMarginPredictor
from ascendra.core.systems import SystemSpec, system
from ascendra.experiments.presets import Preset
from ascendra.metrics import GOODPUT_TARGET, LatencySummary, brackets, goodput, summarize
from ascendra.perf import latency_model
from ascendra.predict.learned import load_predictor
from ascendra.predict.observations import Observation, ObservationRecorder
from ascendra.sim.cluster import ClusterConfig, Simulation


@dataclass(frozen=True)
class PointResult:
    system: str
    qps: float
    summary: LatencySummary
    wall_s: float
    sim_duration_s: float
    utilization: list[float]
    idle_with_queue: list[float] = field(default_factory=list)  # s, per instance
    observations: list[Observation] = field(default_factory=list, repr=False)


@dataclass
class SystemSweep:
    name: str
    points: dict[float, PointResult] = field(default_factory=dict)

    @property
    def curve(self) -> list[tuple[float, float]]:
        return sorted((q, p.summary.attainment) for q, p in self.points.items())

    @property
    def goodput(self) -> float:
        return goodput(self.curve)

    def at_goodput(self) -> PointResult | None:
        """The highest-rate point that still meets the target (its latencies are reported)."""
        ok = [p for q, p in sorted(self.points.items()) if p.summary.attainment >= GOODPUT_TARGET
              and q <= max(self.goodput, min(self.points))]
        return ok[-1] if ok else None


def offload_predictor(preset: Preset, truth: LatencyModel) -> DeadlinePredictor:
    """The preset's learned predictor file if it names one (refused with a PredictorError if
    it does not fit the preset's model), else the paper's fixed margin."""
    if preset.predictor is None:
        return FixedMarginPredictor(truth, preset.margin)
    return load_predictor(preset.predictor, preset.model, truth)


def preset_system(preset: Preset, name: str) -> SystemSpec:
    """The registry's system as the preset runs it: its seats, its policy overrides, and in
    observe-only runs no moves (so that each outcome is what staying cost)."""
    spec = system(name, max_seqs=preset.max_seqs)
    policy = spec.policy.with_values(dict(preset.policy)) if preset.policy else spec.policy
    if preset.observe:
        policy = replace(policy, offload=False, migration=False)
    return replace(spec, policy=policy)


def run_point(preset: Preset, system_name: str, qps: float,
              decide_with: Callable[[LatencyModel], LatencyModel] | None = None) -> PointResult:
    """One rate of one system. ``decide_with`` maps the engines' true latency model to the
    one the controller decides with (a misestimate, to see what it costs), where not the
    truth itself."""
    truth = latency_model(preset.model, preset.gpu, preset.profile)
    predictor = offload_predictor(preset, decide_with(truth) if decide_with else truth)
    spec = preset_system(preset, system_name)
    hp = preset.hp_instances if spec.splittable and preset.hp_instances is not None else None
    config = ClusterConfig(spec, instances=preset.instances, hp_instances=hp,
                           kv_tokens=preset.kv_tokens, jitter_cv=preset.jitter_cv)
    requests = preset.workload.requests(qps, preset.request_count(qps), preset.seed)
    start = time.perf_counter()
    result = Simulation(config, truth, predictor, preset.slo, seed=preset.seed,
                        recorder=ObservationRecorder() if preset.observe else None
                        ).run(requests)
    wall = time.perf_counter() - start
    return PointResult(system_name, qps, summarize(result.outcomes, result.gaps), wall,
                       result.duration, result.utilization, result.idle_with_queue,
                       result.observations)


def _run_task(args: tuple[Preset, str, float]) -> PointResult:
    return run_point(*args)


def _next_rates(sw: SystemSweep, lowest: float) -> list[float]:
    curve = sw.curve
    low_ok, high_miss = brackets(curve)
    if not low_ok:
        q = curve[0][0] / 1.5
        return [round(q, 3)] if q >= lowest else []
    if not high_miss:
        return [round(curve[-1][0] * 1.25, 3)]
    for (q0, a0), (q1, a1) in itertools.pairwise(curve):
        if a0 >= GOODPUT_TARGET > a1:
            return [round((q0 + q1) / 2, 3)] if (q1 - q0) / q1 > 0.05 else []
    return []


class Progress:
    """Minimal progress interface (tqdm fits it); ``NullProgress`` for quiet runs."""

    def update(self, n: int = 1) -> None: ...

    def close(self) -> None: ...


def run_sweep(preset: Preset, systems: Iterable[str] | None = None, *, jobs: int | None = None,
              progress: Callable[[int, str], Progress] | None = None,
              max_rounds: int = 8) -> dict[str, SystemSweep]:
    names = list(systems or preset.systems)
    for n in names:
        system(n)  # unknown names fail before any work starts
    sweeps = {n: SystemSweep(n) for n in names}
    tasks = [(n, float(q)) for n in names for q in preset.qps]
    jobs = jobs or min(len(os.sched_getaffinity(0)), 8)
    lowest = min(preset.qps) / 20
    ctx = mp.get_context("fork")
    with ctx.Pool(jobs) if jobs > 1 else _Serial() as pool:
        for round_no in range(max_rounds):
            if not tasks:
                break
            bar = progress(len(tasks), f"round {round_no + 1}") if progress else Progress()
            for res in pool.imap_unordered(_run_task, [(preset, n, q) for n, q in tasks]):
                sweeps[res.system].points[res.qps] = res
                bar.update()
            bar.close()
            tasks = [(n, q) for n, sw in sweeps.items() for q in _next_rates(sw, lowest)
                     if q not in sw.points]
    return sweeps


class _Serial:
    """A stand-in for a process pool when one job is asked for (keeps tracebacks simple)."""

    def __enter__(self) -> _Serial:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    @staticmethod
    def imap_unordered(fn: Callable[[tuple[Preset, str, float]], PointResult],
                       items: list[tuple[Preset, str, float]]) -> Iterable[PointResult]:
        return map(fn, items)
