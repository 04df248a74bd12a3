"""``ascendra bench --lead-seconds``: each rate's stream starts with unmeasured arrivals at that
rate, and only the requests after them are judged, against the router process over the
STAND-IN backend (the load generator is what is tested; no engine is needed)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from standin_router import get, standin_router

from ascendra import loadgen
from ascendra.core.request import Slo
from ascendra.workloads.lengths import ShareGptLike
from ascendra.workloads.spec import SyntheticWorkload, rate_load

BACKEND, ROUTER = 18963, 18973


@pytest.fixture(scope="module")
def router() -> Iterator[str]:
    with standin_router(BACKEND, ROUTER) as url:
        yield url


def _served(url: str) -> float:
    _, text = get(url + "/metrics")
    return next(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                if line.startswith("ascendra_ttft_seconds_count"))


def test_the_lead_in_is_sent_at_the_rate_and_not_measured(router: str):
    work = SyntheticWorkload(ShareGptLike().scaled(0.05))
    cfg = loadgen.BenchConfig(url=router + "/v1", model="tiny-llama", workload=work,
                              rates=[20.0], requests=10, slo=Slo(5.0, 1.0), lead_seconds=1.0)
    load = rate_load(work, 20.0, 10, cfg.seed, 1.0)
    assert load.lead == 20 and len(load.measured) == 10
    before = _served(router)
    (res,) = loadgen.run_bench(cfg)
    assert _served(router) - before == 30  # the lead-in was sent too
    assert [o.id for o in res.outcomes] == [s.id for s in load.measured]
    assert res.summary.sent == 10 and res.summary.finished == 10
    assert loadgen.report(cfg, [res])["lead_seconds"] == 1.0


def test_no_lead_in_measures_every_request():
    work = SyntheticWorkload(ShareGptLike())
    load = rate_load(work, 50.0, 100, 1)
    assert load.lead == 0 and load.measured == load.specs == work.requests(50.0, 100, 1)
    # The measured requests after a lead-in arrive after it, in the same stream.
    led = rate_load(work, 50.0, 100, 1, 2.0)
    assert led.lead == 100 and len(led.measured) == 100
    assert min(s.arrival for s in led.measured) >= max(s.arrival for s in led.specs[:100])
