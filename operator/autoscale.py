"""SLO signals from Prometheus's HTTP API, for the live LP:HP split.

The queries read the routers' own metrics for one AscendraService; the decision is the policy
core's (``ascendra.core.split``, the same function the simulator runs). Any trouble with
Prometheus (unreachable, slow, an error, a body that is not what the API returns) raises
:class:`SignalError`; the caller then holds the split and says so in a condition.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from ascendra.core.split import SplitSignals
from ascendra.operator.monitoring import series_selector
from ascendra.operator.spec import ServiceSpec
from ascendra.sim.planner import WorkloadMix


class SignalError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def queries(spec: ServiceSpec) -> dict[str, str]:
    """PromQL for each signal over one resize interval (at least a minute, for rate())."""
    sel = series_selector(spec)
    w = f"{max(60, spec.autoscaling.interval)}s"
    total = f"sum(increase(ascendra_slo_requests_total{{{sel}}}[{w}]))"
    return {
        "requests": total,
        "attainment": f'sum(increase(ascendra_slo_requests_total{{{sel},outcome="met"}}[{w}]))'
                      f" / {total}",
        "offload_fraction": f"sum(increase(ascendra_offloads_total{{{sel}}}[{w}])) / {total}",
        "hp_queue": f'avg(avg_over_time(ascendra_instance_waiting_requests{{{sel},role="hp"}}'
                    f"[{w}]))",
        "hp_step_time": f'avg(avg_over_time(ascendra_instance_step_seconds{{{sel},role="hp"}}'
                        f"[{w}]))",
        "lp_min_slack": f"min(min_over_time(ascendra_lp_queue_min_slack_seconds{{{sel}}}[{w}]))",
    }


def scalar(body: Any) -> float | None:
    """The value of an instant-vector answer: None when empty or NaN (no data)."""
    if not isinstance(body, dict) or body.get("status") != "success":
        raise SignalError("BadResponse", f"Prometheus answered {str(body)[:200]!r}")
    data = body.get("data")
    if not isinstance(data, dict) or data.get("resultType") not in ("vector", "scalar"):
        raise SignalError("BadResponse", "Prometheus answer has no vector result")
    result = data.get("result")
    if data["resultType"] == "scalar":
        result = [{"value": result}]
    if not isinstance(result, list):
        raise SignalError("BadResponse", "Prometheus result is not a list")
    if not result:
        return None
    try:
        value = float(result[0]["value"][1])
    except (KeyError, IndexError, TypeError, ValueError):
        raise SignalError("BadResponse", f"unreadable sample {str(result[0])[:100]!r}") from None
    return None if math.isnan(value) else value


def buckets(body: Any) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) pairs of a ``sum by (le)`` histogram answer."""
    if not isinstance(body, dict) or body.get("status") != "success" or \
            not isinstance(body.get("data"), dict) or \
            not isinstance(body["data"].get("result"), list):
        raise SignalError("BadResponse", f"Prometheus answered {str(body)[:200]!r}")
    out = []
    for series in body["data"]["result"]:
        try:
            out.append((float(series["metric"]["le"]), float(series["value"][1])))
        except (KeyError, IndexError, TypeError, ValueError):
            raise SignalError("BadResponse",
                              f"unreadable histogram bucket {str(series)[:100]!r}") from None
    return sorted(out)


def sample_lengths(cumulative: list[tuple[float, float]], n: int = 400) -> tuple[int, ...]:
    """``n`` evenly spaced quantiles of a histogram, interpolated linearly within buckets (as
    ``histogram_quantile`` does); the +Inf bucket's mass sits at the last finite bound."""
    finite = [(le, c) for le, c in cumulative if math.isfinite(le)]
    total = cumulative[-1][1] if cumulative else 0.0
    if total <= 0 or not finite:
        return ()
    out = []
    for i in range(n):
        q = (i + 0.5) / n * total
        lo_le, lo_c = 0.0, 0.0
        value = finite[-1][0]
        for le, c in finite:
            if c >= q:
                span = c - lo_c
                value = lo_le + (le - lo_le) * ((q - lo_c) / span if span > 0 else 1.0)
                break
            lo_le, lo_c = le, c
        out.append(max(1, round(value)))
    return tuple(out)


def fetch_mix(spec: ServiceSpec, timeout: float = 5.0) -> WorkloadMix | None:
    """The last window's workload for the planner: request rate and length samples from the
    routers' histograms. None when too few requests finished to describe it."""
    url = spec.autoscaling.prometheus_url
    assert url is not None
    sel = series_selector(spec)
    seconds = max(60, spec.autoscaling.interval)
    w = f"{seconds}s"
    requests = query(url, f"sum(increase(ascendra_slo_requests_total{{{sel}}}[{w}]))",
                     timeout)
    lengths = {}
    for name in ("prompt", "output"):
        promql = f"sum by (le) (increase(ascendra_{name}_tokens_bucket{{{sel}}}[{w}]))"
        lengths[name] = sample_lengths(buckets(_api(url, promql, timeout)))
    if not requests or not lengths["prompt"] or not lengths["output"]:
        return None
    # Histograms lose which output went with which prompt: the planner draws them independently.
    return WorkloadMix(requests / seconds, lengths["prompt"], lengths["output"], paired=False)


def query(url: str, promql: str, timeout: float) -> float | None:
    return scalar(_api(url, promql, timeout))


def _api(url: str, promql: str, timeout: float) -> Any:
    """The decoded answer of an instant query; every failure is a SignalError."""
    target = f"{url.rstrip('/')}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    try:
        with urllib.request.urlopen(target, timeout=timeout) as r:
            body = json.loads(r.read())
    except TimeoutError:
        raise SignalError("Timeout", f"Prometheus at {url} did not answer in {timeout:g} s") \
            from None
    except urllib.error.HTTPError as e:
        raise SignalError("BadResponse", f"Prometheus at {url} answered HTTP {e.code}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        if isinstance(reason, TimeoutError):
            raise SignalError("Timeout", f"Prometheus at {url} did not answer in "
                                         f"{timeout:g} s") from None
        raise SignalError("Unreachable", f"Prometheus at {url}: {reason}") from None
    except ValueError:
        raise SignalError("BadResponse", f"Prometheus at {url} sent something not JSON") \
            from None
    return body


def fetch(spec: ServiceSpec, timeout: float = 5.0) -> tuple[SplitSignals, float | None]:
    """(signals for the split decision, observed attainment)."""
    url = spec.autoscaling.prometheus_url
    if not url:
        raise SignalError("NoPrometheus", "autoscaling.prometheusUrl is not set")
    v = {name: query(url, q, timeout) for name, q in queries(spec).items()}
    signals = SplitSignals(requests=v["requests"] or 0.0, offload_fraction=v["offload_fraction"],
                           hp_queue=v["hp_queue"], hp_step_time=v["hp_step_time"],
                           lp_min_slack=v["lp_min_slack"], tbt_slo=spec.slo.tbt)
    return signals, v["attainment"]
