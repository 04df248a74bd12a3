"""Time to first token of queued requests, from a router's observation log.

For a run whose load generator never wrote its report (the machine went back mid-run), the
router's observation log (``--observations``) still says how long queued requests took to
their first token. Only a biased sample: requests that waited long enough to be snapshot at
arrival (``waited`` under 20 ms) and then got their first token on that instance (an offloaded
request's snapshots are dropped). Attainment and goodput need the load generator's report.

    python bench/gpu/queued_ttft.py \
        docs/results/gpu/round3/gpu1-ascendra-sustained.observations.jsonl.gz@0.6875 \
        docs/results/gpu/round4/gpu1-ascendra-resume.observations.jsonl.gz

``PATH@F`` keeps the first fraction F of a log (it is in order of first tokens, so this cuts
off the last rates of a longer run: round 3's warm-up, 24 and 32 req/s are 3,300 of its 4,800
requests).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ascendra.predict.observations import Observation, read_observations


def summary(obs: list[Observation]) -> dict[str, float]:
    arrived = [o for o in obs if o.snapshot.waited < 0.02]
    ttft = sorted(o.ttft for o in arrived)
    n = len(ttft)
    return {"at_arrival": n, "ttft_p50": ttft[n // 2], "ttft_p90": ttft[int(n * 0.9)],
            "ttft_p99": ttft[int(n * 0.99)], "over_slo": sum(o.missed for o in arrived) / n,
            "max_started_on_instance": max(o.snapshot.num_running for o in obs)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("logs", nargs="+", help="observation log, or PATH@F for its first fraction")
    for item in ap.parse_args().logs:
        path, _, frac = item.partition("@")
        obs = read_observations(Path(path))
        s = summary(obs[:int(len(obs) * float(frac or 1.0))])
        print(f"{Path(path).name} (first {float(frac or 1.0):.0%}): {s['at_arrival']} at "
              f"arrival, TTFT p50 {s['ttft_p50'] * 1e3:.0f} / p90 {s['ttft_p90'] * 1e3:.0f} / "
              f"p99 {s['ttft_p99'] * 1e3:.0f} ms, over target {s['over_slo']:.1%}, most "
              f"started streams on one instance {s['max_started_on_instance']}")


if __name__ == "__main__":
    main()
