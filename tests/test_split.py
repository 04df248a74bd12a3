"""The live split decision, hand-computed."""

from __future__ import annotations

from ascendra.core.split import SplitPlan, SplitPolicy, SplitSignals, decide_split

POLICY = SplitPolicy(cooldown=60)


def sig(**kw) -> SplitSignals:
    base = dict(requests=100, offload_fraction=0.0, hp_queue=0.0, hp_step_time=0.01,
                lp_min_slack=1.0, tbt_slo=0.15)
    return SplitSignals(**{**base, **kw})


def test_hp_pressure_adds_one_hp_within_bounds():
    d = decide_split(sig(offload_fraction=0.3), hp=1, hp_min=1, hp_max=2, now=1000,
                     last_move_at=None, policy=POLICY)
    assert d.hp == 2 and "30% of requests offloaded" in d.reason
    assert decide_split(sig(hp_queue=5), 2, 1, 2, 1000, None, POLICY).hp == 2  # at max
    assert decide_split(sig(hp_step_time=0.1), 1, 1, 3, 1000, None, POLICY).hp == 2


def test_idle_hp_and_late_lp_gives_one_back():
    d = decide_split(sig(lp_min_slack=-0.2), hp=2, hp_min=1, hp_max=2, now=1000,
                     last_move_at=None, policy=POLICY)
    assert d.hp == 1 and "late" in d.reason
    assert decide_split(sig(lp_min_slack=-0.2), 1, 1, 2, 1000, None, POLICY).hp == 1  # at min
    assert decide_split(sig(lp_min_slack=0.5), 2, 1, 2, 1000, None, POLICY).hp == 2  # LP fine


def test_hysteresis_band_holds():
    # Between the low and high thresholds nothing moves, whichever way the last move went.
    band = sig(offload_fraction=0.05, lp_min_slack=-1.0)
    assert decide_split(band, 2, 1, 3, 1000, None, POLICY).reason == "steady"


def test_cooldown_and_little_traffic_hold():
    busy = sig(offload_fraction=0.5)
    assert decide_split(busy, 1, 1, 2, 1000, 950, POLICY).reason == "cooldown"
    assert decide_split(busy, 1, 1, 2, 1000, 930, POLICY).hp == 2
    assert decide_split(sig(requests=3, offload_fraction=0.5), 1, 1, 2, 1000, None,
                        POLICY).reason == "too little traffic to judge"


def test_a_plan_moves_one_step_when_steady_and_clearly_better():
    plan = SplitPlan({1: 0.80, 2: 0.86, 3: 0.95})
    d = decide_split(sig(), 1, 1, 3, 1000, None, POLICY, plan)
    assert d.hp == 2 and d.reason.startswith("planner: 3 HP")
    # Back the other way too, one step at a time.
    back = SplitPlan({1: 0.9, 2: 0.8, 3: 0.7})
    assert decide_split(sig(), 3, 1, 3, 1000, None, POLICY, back).hp == 2


def test_a_plan_yields_to_measurements_small_gains_and_cooldown():
    plan = SplitPlan({1: 0.95, 2: 0.70})
    # Measured HP pressure outranks a prediction that says fewer HP.
    assert decide_split(sig(offload_fraction=0.3), 1, 1, 3, 1000, None, POLICY, plan).hp == 2
    assert decide_split(sig(), 1, 1, 2, 1000, None, POLICY,
                        SplitPlan({1: 0.90, 2: 0.91})).reason == "steady"  # under plan_gain
    assert decide_split(sig(), 2, 1, 2, 1000, 990, POLICY, plan).reason == "cooldown"
    # A plan that does not cover the current split says nothing about it.
    assert decide_split(sig(), 3, 1, 3, 1000, None, POLICY, plan).reason == "steady"


def test_plan_ties_go_to_fewer_hp():
    assert SplitPlan({2: 0.9, 1: 0.9, 3: 0.5}).best() == 1


def test_the_split_may_go_to_no_hp_and_a_plan_may_choose_none():
    """Zero HP is a split like any other: an idle HP with late LP requests goes back to LP, and
    a plan that predicts no HP best (ties too) moves there."""
    assert decide_split(sig(lp_min_slack=-0.2), 1, 0, 1, 1000, None, POLICY).hp == 0
    plan = SplitPlan({0: 0.93, 1: 0.90})
    assert plan.best() == 0
    d = decide_split(sig(), 1, 0, 1, 1000, None, POLICY, plan)
    assert d.hp == 0 and "planner: 0 HP" in d.reason
    assert SplitPlan({0: 0.9, 1: 0.9}).best() == 0
