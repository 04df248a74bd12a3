"""The simulator as a split planner: which LP:HP split serves the observed workload mix best?

It simulates the system the service deploys (its registry name and policy), so it optimises
what actually runs.

The operator (from the routers' length histograms and request rate in Prometheus) and the
simulator's own resize loop (from the requests that finished in the last window) describe the
recent traffic as a :class:`WorkloadMix`. :func:`plan_split` replays a Poisson stream with that
rate and those lengths (resampled, fixed seed) on every split within bounds and returns the
predicted attainment of each as a :class:`~ascendra.core.split.SplitPlan`; the core's
``decide_split`` acts on it only when measurements are steady and the gain is clear.

The prediction is only as good as the latency model: the calibrated one for the model and GPU
being served, or one fitted to a measured profile.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ascendra.core.latency import LatencyModel
from ascendra.core.offload import FixedMarginPredictor
from ascendra.core.policy import Policy
from ascendra.core.request import Slo
from ascendra.core.split import SplitPlan
from ascendra.core.systems import system
from ascendra.errors import AscendraError
from ascendra.metrics import attainment
from ascendra.workloads.spec import RequestSpec


@dataclass(frozen=True)
class WorkloadMix:
    rate: float  # requests per second
    prompt_lens: tuple[int, ...]  # a sample of recent prompt lengths
    output_lens: tuple[int, ...]  # and of output lengths
    paired: bool = True  # whether output_lens[i] belongs to prompt_lens[i]

    def requests(self, n: int, seed: int) -> list[RequestSpec]:
        if self.rate <= 0 or not self.prompt_lens or not self.output_lens or \
                (self.paired and len(self.prompt_lens) != len(self.output_lens)):
            raise AscendraError("a workload mix needs a positive rate and length samples "
                                "(as many outputs as prompts when paired)")
        rng = np.random.default_rng(seed)
        arrivals = np.cumsum(rng.exponential(1.0 / self.rate, n))
        pick = rng.integers(0, len(self.prompt_lens), n)
        out_pick = pick if self.paired else rng.integers(0, len(self.output_lens), n)
        return [RequestSpec(i, float(arrivals[i]), max(1, self.prompt_lens[pick[i]]),
                            max(1, self.output_lens[out_pick[i]])) for i in range(n)]


@dataclass(frozen=True)
class PlannerConfig:
    instances: int
    hp_min: int
    hp_max: int
    kv_tokens: int = 451_840
    system: str = "ascendra"  # the deployed system (a registry name), with ``policy`` if given
    policy: Policy | None = None
    requests: int = 1500  # per candidate split: long enough for queues to build
    seed: int = 0


def plan_split(mix: WorkloadMix, model: LatencyModel, slo: Slo,
               cfg: PlannerConfig) -> SplitPlan:
    # Imported here: the cluster's own resize loop plans with this module.
    from ascendra.sim.cluster import ClusterConfig, Simulation

    reqs = mix.requests(cfg.requests, cfg.seed)
    spec = system(cfg.system, policy=cfg.policy)
    predictor = FixedMarginPredictor(model, spec.policy.offload_margin)
    predicted = {}
    for hp in range(cfg.hp_min, cfg.hp_max + 1):
        cluster = ClusterConfig(spec, instances=cfg.instances, hp_instances=hp,
                                kv_tokens=cfg.kv_tokens)
        result = Simulation(cluster, model, predictor, slo, seed=cfg.seed).run(reqs)
        predicted[hp] = round(attainment(result.outcomes), 4)
    return SplitPlan(predicted)
