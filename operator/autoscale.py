"""SLO signals from Prometheus's HTTP API, for the live LP:HP split.

The queries read the routers' own metrics for one AscendraService; the decision is the policy
core's (``ascendra.core.split``, the same function the simulator runs). Any trouble with
Prometheus (unreachable, slow, an error, a body that is not what the API returns) raises
:class:`SignalError`; the caller then holds the split and says so in a condition.

A namespace user chooses ``autoscaling.prometheusUrl`` and the operator GETs it from its own
place in the network, so :func:`check_url` admits only a Service in the user's own namespace or
an origin the operator's installer allowed, and no error message carries anything the answer
said: what reaches a condition or an Event is the URL, the HTTP status and the answer's shape.
"""

from __future__ import annotations

import json
import math
import re
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


# The errorType values of Prometheus's HTTP API: named in a message, never its free text.
_PROMETHEUS_ERROR_TYPES = frozenset({"timeout", "canceled", "execution", "bad_data", "internal",
                                     "unavailable", "not_found", "not_acceptable"})


def check_url(spec: ServiceSpec, allowed_origins: tuple[str, ...] = ()) -> None:
    """Raise SignalError("NotAllowed") unless ``autoscaling.prometheusUrl`` is a Service of the
    AscendraService's own namespace (``<name>.<namespace>.svc[.cluster.local]``, reachable by
    its user anyway) or has the scheme, host and (where the origin names one) port of one of
    ``allowed_origins`` (``ascendra operator --allow-prometheus-url``)."""
    url = spec.autoscaling.prometheus_url or ""
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    own_service = re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?\." + re.escape(spec.namespace)
                               + r"\.svc(\.cluster\.local)?", parts.hostname or "")
    if port != -1 and parts.username is None and parts.password is None and (
            own_service or any(_same_origin(parts, port, o) for o in allowed_origins)):
        return
    raise SignalError("NotAllowed",
                      f"autoscaling.prometheusUrl {url!r} is neither a Service in namespace "
                      f"{spec.namespace} (name.{spec.namespace}.svc) nor an origin the operator "
                      "allows (ascendra operator --allow-prometheus-url, the chart's "
                      "operator.prometheusUrls)")


def _same_origin(url: urllib.parse.SplitResult, port: int | None, origin: str) -> bool:
    o = urllib.parse.urlsplit(origin)
    try:
        o_port = o.port
    except ValueError:
        return False
    return o.scheme == url.scheme and o.hostname == url.hostname and \
        (o_port is None or o_port == port)


def _shape(body: Any) -> str:
    """What an answer that is not a result was, without its content."""
    if isinstance(body, dict) and body.get("status") == "error":
        kind = body.get("errorType")
        return (f"an error of type {kind}" if kind in _PROMETHEUS_ERROR_TYPES
                else "an error")
    if isinstance(body, dict):
        return "an object that is not a Prometheus API answer"
    return f"a JSON {type(body).__name__}, not a Prometheus API answer"


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
        raise SignalError("BadResponse", f"Prometheus answered {_shape(body)}")
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
        raise SignalError("BadResponse", "Prometheus answered a sample that is not a number") \
            from None
    return None if math.isnan(value) else value


def buckets(body: Any) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) pairs of a ``sum by (le)`` histogram answer."""
    if not isinstance(body, dict) or body.get("status") != "success" or \
            not isinstance(body.get("data"), dict) or \
            not isinstance(body["data"].get("result"), list):
        raise SignalError("BadResponse", f"Prometheus answered {_shape(body)}")
    out = []
    for series in body["data"]["result"]:
        try:
            out.append((float(series["metric"]["le"]), float(series["value"][1])))
        except (KeyError, IndexError, TypeError, ValueError):
            raise SignalError("BadResponse",
                              "Prometheus answered a histogram bucket without le or value") \
                from None
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
