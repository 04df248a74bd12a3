"""Live LP:HP split decisions (beyond the paper, whose split is fixed by hand).

Every interval the operator (from Prometheus) or the simulator (from its own state) summarises
the last window in :class:`SplitSignals`; :func:`decide_split` moves at most one instance between
LP and HP. Thresholds come in pairs with a gap between them (hysteresis) and a cooldown follows
every move, so the split cannot flap.

* HP under pressure: many requests are offloaded, or the HP queue or step time is high. One more
  HP helps if the LPs can spare an instance.
* HP idle while the LPs are late: offloads are rare, the HP is fast and unqueued, and requests
  wait on LPs past their slack. One HP goes back to LP.
* Otherwise, a plan (the simulator run on the observed workload mix for every split in bounds,
  :mod:`ascendra.sim.planner`) may point to a split it predicts to be clearly better: one step
  towards it. Measured pressure outranks a prediction, so the plan only acts when steady.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SplitSignals:
    requests: float  # requests that arrived in the window (no decision on too few)
    offload_fraction: float | None  # offloads / requests in the window
    hp_queue: float | None  # mean requests waiting on an HP instance
    hp_step_time: float | None  # mean HP step time, s
    lp_min_slack: float | None  # least slack among LP-queued requests, s (negative: late)
    tbt_slo: float  # the service's mean-TBT target, s


@dataclass(frozen=True, slots=True)
class SplitPolicy:
    offload_high: float = 0.10
    offload_low: float = 0.02
    hp_queue_high: float = 2.0
    hp_queue_low: float = 0.5
    step_high: float = 0.6  # × TBT target
    step_low: float = 0.3
    min_requests: float = 20.0
    cooldown: float = 300.0  # seconds after a move before the next
    plan_gain: float = 0.02  # predicted attainment a planned split must add to be worth a move


@dataclass(frozen=True, slots=True)
class SplitPlan:
    predicted: dict[int, float]  # HP count → predicted attainment for the observed mix

    def best(self) -> int:
        # Ties go to fewer HP instances: LP capacity is the throughput.
        return max(sorted(self.predicted), key=lambda hp: self.predicted[hp])


@dataclass(frozen=True, slots=True)
class SplitDecision:
    hp: int
    reason: str

    def moved(self, before: int) -> bool:
        return self.hp != before


def decide_split(s: SplitSignals, hp: int, hp_min: int, hp_max: int, now: float,
                 last_move_at: float | None, policy: SplitPolicy = SplitPolicy(),
                 plan: SplitPlan | None = None) -> SplitDecision:
    if last_move_at is not None and now - last_move_at < policy.cooldown:
        return SplitDecision(hp, "cooldown")
    if s.requests < policy.min_requests:
        return SplitDecision(hp, "too little traffic to judge")
    offload = s.offload_fraction or 0.0
    queue = s.hp_queue or 0.0
    step = s.hp_step_time
    pressure = []
    if offload > policy.offload_high:
        pressure.append(f"{offload:.0%} of requests offloaded")
    if queue > policy.hp_queue_high:
        pressure.append(f"HP queue {queue:.1f}")
    if step is not None and step > policy.step_high * s.tbt_slo:
        pressure.append(f"HP step {step * 1e3:.0f} ms")
    if pressure:
        if hp < hp_max:
            return SplitDecision(hp + 1, "HP under pressure: " + ", ".join(pressure))
        return SplitDecision(hp, "HP under pressure but already at its maximum")
    idle = (offload < policy.offload_low and queue < policy.hp_queue_low
            and (step is None or step < policy.step_low * s.tbt_slo))
    lp_late = s.lp_min_slack is not None and s.lp_min_slack < 0
    if idle and lp_late and hp > hp_min:
        return SplitDecision(hp - 1, f"HP idle while LP requests are late "
                                     f"(least slack {s.lp_min_slack:.2f} s)")
    if plan is not None and hp in plan.predicted:
        best = plan.best()
        gain = plan.predicted[best] - plan.predicted[hp]
        if best != hp and gain >= policy.plan_gain and hp_min <= best <= hp_max:
            step = hp + (1 if best > hp else -1)
            return SplitDecision(step, f"planner: {best} HP predicted "
                                       f"{plan.predicted[best]:.1%} vs {plan.predicted[hp]:.1%}")
    return SplitDecision(hp, "steady")
