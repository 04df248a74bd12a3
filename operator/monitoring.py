"""SLO recording rules, multi-window multi-burn-rate alerts, and the scrape objects.

One generator serves three places: the chart's rule file (``charts/ascendra/files/slo-rules.yaml``,
checked by a test to equal ``rule_file()``), the PrometheusRule the operator creates per
AscendraService, and the tests that run real promtool and Prometheus (with time compressed).

SLIs, per request against its own targets (router counters): TTFT met, and mean TBT met, out of
all requests that ended (failures miss both). Burn rate = error ratio / error budget, with the
Google SRE workbook's window pairs: page on 1h&5m > 14.4 or 6h&30m > 6, ticket on 1d&2h > 3 or
3d&6h > 1. A threshold above 1 (an error ratio cannot exceed 1, which happens for loose targets
such as 90%: 14.4 × 10% budget) is capped at 0.99, i.e. "nearly every request misses".
"""

from __future__ import annotations

from typing import Any

import yaml

from ascendra.operator.builders import SERVICE_LABEL, labels, owner
from ascendra.operator.spec import ServiceSpec

WINDOWS = {"5m": 300, "30m": 1800, "1h": 3600, "2h": 7200, "6h": 21600, "1d": 86400,
           "3d": 259200}
BURN = {  # severity: [(long window, short window, burn-rate factor)]
    "page": [("1h", "5m", 14.4), ("6h", "30m", 6.0)],
    "ticket": [("1d", "2h", 3.0), ("3d", "6h", 1.0)],
}
FOR = {"page": 120, "ticket": 900}  # seconds an alert condition must hold
GROUP_BY = "namespace, ascendra_io_service"
SLIS = {"ttft": "time to first token", "tbt": "mean time between tokens"}


def _window(name: str, scale: float) -> str:
    return f"{max(1, round(WINDOWS[name] * scale))}s" if scale != 1 else name


def rule_groups(objective: float = 0.9, selector: str = "", scale: float = 1.0,
                name: str = "ascendra-slo") -> list[dict[str, Any]]:
    """Prometheus rule groups. ``selector`` narrows every series (``a="b",c="d"``); ``scale``
    compresses every window and ``for`` (tests use 1/60: an hour becomes a minute)."""
    budget = 1.0 - objective
    sel = f",{selector}" if selector else ""
    braces = f"{{{selector}}}" if selector else ""
    records: list[dict[str, Any]] = []
    alerts: list[dict[str, Any]] = []
    for sli, what in SLIS.items():
        metric = f"ascendra_slo_{sli}_requests_total"
        for w in WINDOWS:
            win = _window(w, scale)
            records.append({
                "record": f"ascendra:slo_{sli}_error_ratio:rate{w}",
                "expr": (f'sum by ({GROUP_BY}) (rate({metric}{{result="missed"{sel}}}[{win}]))'
                         f" / sum by ({GROUP_BY}) (rate({metric}{braces}[{win}]))"),
            })
        for severity, pairs in BURN.items():
            terms = []
            for long, short, factor in pairs:
                threshold = round(min(factor * budget, 0.99), 6)
                # Narrowed too: each service's rule compares its own series to its own target.
                terms.append(f"(ascendra:slo_{sli}_error_ratio:rate{long}{braces} > "
                             f"{threshold} and ascendra:slo_{sli}_error_ratio:rate{short}"
                             f"{braces} > {threshold})")
            speed = "Fast" if severity == "page" else "Slow"
            alerts.append({
                "alert": f"Ascendra{sli.upper()}ErrorBudgetBurn{speed}",
                "expr": " or ".join(terms),
                "for": f"{max(1, round(FOR[severity] * scale))}s",
                "labels": {"severity": severity, "slo": sli},
                "annotations": {
                    "summary": f"{{{{ $labels.namespace }}}}/{{{{ $labels.ascendra_io_service }}}}"
                               f" is burning its {what} error budget "
                               f"({'fast' if severity == 'page' else 'slowly'})",
                    "description": f"The share of requests missing their {what} target would "
                                   f"spend the {objective:.0%} objective's budget "
                                   f"{'within days' if severity == 'page' else 'within weeks'}."
                                   " Look at ascendra:slo_" + sli + "_error_ratio:rate5m, "
                                   "offloads and the HP queue.",
                },
            })
    records.append({
        "record": "ascendra:attainment:rate5m",
        "expr": (f'sum by ({GROUP_BY}) (rate(ascendra_slo_requests_total{{outcome="met"{sel}}}'
                 f"[{_window('5m', scale)}])) / sum by ({GROUP_BY}) "
                 f"(rate(ascendra_slo_requests_total{braces}[{_window('5m', scale)}]))"),
    })
    return [{"name": f"{name}-records", "rules": records},
            {"name": f"{name}-alerts", "rules": alerts}]


def rule_file(objective: float = 0.9) -> str:
    """The chart's rule file: every AscendraService, the default 90% objective."""
    return yaml.safe_dump({"groups": rule_groups(objective)}, sort_keys=False, width=1000)


def series_selector(spec: ServiceSpec) -> str:
    """PromQL label matchers for one service's series, as Prometheus labels them when it
    scrapes through the ServiceMonitor/PodMonitor below (namespace, ascendra.io/service)."""
    return f'namespace="{spec.namespace}",ascendra_io_service="{spec.name}"'


def monitoring_objects(spec: ServiceSpec) -> list[dict[str, Any]]:
    """The prometheus-operator objects for one service: scrape its router and runtime pods, and
    alert on its SLOs at its own attainment target."""
    selector = series_selector(spec)
    meta = {"namespace": spec.namespace, "labels": labels(spec, "monitoring"),
            "ownerReferences": [owner(spec)]}
    return [
        {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
         "metadata": {"name": f"{spec.name}-router", **meta},
         "spec": {"selector": {"matchLabels": {SERVICE_LABEL: spec.name,
                                               "app.kubernetes.io/component": "router"}},
                  "podTargetLabels": [SERVICE_LABEL, "ascendra.io/role"],
                  "endpoints": [{"port": "http", "path": "/metrics", "interval": "15s"}]}},
        {"apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor",
         "metadata": {"name": f"{spec.name}-runtime", **meta},
         "spec": {"selector": {"matchLabels": {SERVICE_LABEL: spec.name,
                                               "app.kubernetes.io/component": "runtime"}},
                  "podTargetLabels": [SERVICE_LABEL, "ascendra.io/role"],
                  "podMetricsEndpoints": [
                      {"port": "http", "path": "/metrics", "interval": "15s"},
                      {"port": "agent", "path": "/metrics", "interval": "15s"}]}},
        {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
         "metadata": {"name": f"{spec.name}-slo", **meta},
         "spec": {"groups": rule_groups(spec.slo.attainment, selector,
                                        name=f"ascendra-{spec.namespace}-{spec.name}")}},
    ]



def _panel(pid: int, title: str, exprs: list[tuple[str, str]], unit: str, x: int, y: int,
           w: int = 12) -> dict[str, Any]:
    return {
        "id": pid, "type": "timeseries", "title": title,
        "gridPos": {"x": x, "y": y, "w": w, "h": 8},
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [{"refId": chr(65 + i), "expr": e, "legendFormat": legend}
                    for i, (e, legend) in enumerate(exprs)],
    }


def grafana_dashboard() -> dict[str, Any]:
    """Attainment, TTFT/TBT percentiles, offloads and migrations, the LP:HP split over time."""
    svc = 'namespace="$namespace",ascendra_io_service="$service"'
    q = 'histogram_quantile({p}, sum by (le) (rate({m}_bucket{{' + svc + '}}[5m])))'
    panels = [
        _panel(1, "SLO attainment (5m)", [(f"ascendra:attainment:rate5m{{{svc}}}", "met both")],
               "percentunit", 0, 0),
        _panel(2, "Error-budget burn inputs (error ratio, 5m)", [
            (f"ascendra:slo_ttft_error_ratio:rate5m{{{svc}}}", "TTFT missed"),
            (f"ascendra:slo_tbt_error_ratio:rate5m{{{svc}}}", "TBT missed")], "percentunit",
            12, 0),
        _panel(3, "Time to first token", [
            (q.format(p=0.5, m="ascendra_ttft_seconds"), "p50"),
            (q.format(p=0.99, m="ascendra_ttft_seconds"), "p99")], "s", 0, 8),
        _panel(4, "Mean time between tokens (per request)", [
            (q.format(p=0.5, m="ascendra_tbt_mean_seconds"), "p50"),
            (q.format(p=0.99, m="ascendra_tbt_mean_seconds"), "p99")], "s", 12, 8),
        _panel(5, "Offloads and migrations", [
            (f"sum(rate(ascendra_offloads_total{{{svc}}}[5m]))", "offloads/s"),
            (f"sum by (reason) (rate(ascendra_migrations_total{{{svc}}}[5m]))",
             "migrations/s ({{reason}})")], "reqps", 0, 16),
        _panel(6, "LP:HP split", [
            (f'sum(ascendra_runtime_role{{{svc},role="lp"}})', "LP"),
            (f'sum(ascendra_runtime_role{{{svc},role="hp"}})', "HP")], "short", 12, 16),
        _panel(7, "Queue per role (engine-reported)", [
            (f"sum by (role) (ascendra_instance_waiting_requests{{{svc}}})", "{{role}} waiting"),
            (f"sum by (role) (ascendra_inflight_requests{{{svc}}})", "{{role}} in flight")],
            "short", 0, 24),
        _panel(8, "Step time per role and predictor error", [
            (f"avg by (role) (ascendra_instance_step_seconds{{{svc}}})", "{{role}} step"),
            (q.format(p=0.5, m="ascendra_predictor_ttft_error_seconds"), "TTFT error p50")],
            "s", 12, 24),
    ]
    variable = {"type": "query", "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "refresh": 2, "includeAll": False}
    return {
        "title": "Ascendra SLOs", "uid": "ascendra-slo", "schemaVersion": 39, "version": 1,
        "tags": ["ascendra", "llm", "slo"], "time": {"from": "now-3h", "to": "now"},
        "refresh": "30s", "panels": panels,
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus"},
            {**variable, "name": "namespace",
             "query": "label_values(ascendra_slo_requests_total, namespace)"},
            {**variable, "name": "service", "query": "label_values(ascendra_slo_requests_total"
                                                     '{namespace="$namespace"}, '
                                                     "ascendra_io_service)"},
        ]},
    }
