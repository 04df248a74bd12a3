"""SLO rules, alerts and the dashboard: one generator, checked by real promtool."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from ascendra.operator.monitoring import grafana_dashboard, rule_file, rule_groups

CHART = Path(__file__).resolve().parents[2] / "charts" / "ascendra"
PROMTOOL = shutil.which("promtool") or "promtool"  # Debian package "prometheus"


def test_chart_files_are_the_generated_ones():
    shipped = (CHART / "files" / "slo-rules.yaml").read_text()
    assert shipped.split("\n", 1)[1] == rule_file()
    assert json.loads((CHART / "files" / "grafana-dashboard.json").read_text()) == \
        grafana_dashboard()


def test_promtool_checks_the_rules(tmp_path: Path):
    r = subprocess.run([PROMTOOL, "check", "rules", str(CHART / "files" / "slo-rules.yaml")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "19 rules found" in r.stdout


def _series(result: str, per_minute: int, minutes: int) -> dict[str, str]:
    return {"series": f'ascendra_slo_ttft_requests_total{{result="{result}",namespace="ns",'
                      f'ascendra_io_service="svc"}}',
            "values": f"0+{per_minute}x{minutes}"}


def test_promtool_unit_tests_fire_and_stay_quiet(tmp_path: Path):
    """Every request missing TTFT for two hours pages (fast burn) and opens a ticket (slow
    burn); a healthy service raises nothing."""
    groups = rule_groups(0.9)
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    labels = {"namespace": "ns", "ascendra_io_service": "svc", "slo": "ttft"}

    def expected(alert: str, severity: str) -> dict[str, object]:
        rule = next(r for r in groups[1]["rules"] if r["alert"] == alert)
        notes = {k: v.replace("{{ $labels.namespace }}", "ns")
                 .replace("{{ $labels.ascendra_io_service }}", "svc")
                 for k, v in rule["annotations"].items()}
        return {"exp_labels": {**labels, "severity": severity}, "exp_annotations": notes}
    tests = {
        "rule_files": [str(rules)],
        "evaluation_interval": "1m",
        "tests": [
            {"interval": "1m",
             "input_series": [_series("missed", 60, 180), _series("met", 0, 180)],
             "alert_rule_test": [
                 {"eval_time": "70m", "alertname": "AscendraTTFTErrorBudgetBurnFast",
                  "exp_alerts": [expected("AscendraTTFTErrorBudgetBurnFast", "page")]},
                 {"eval_time": "150m", "alertname": "AscendraTTFTErrorBudgetBurnSlow",
                  "exp_alerts": [expected("AscendraTTFTErrorBudgetBurnSlow", "ticket")]},
                 {"eval_time": "70m", "alertname": "AscendraTBTErrorBudgetBurnFast",
                  "exp_alerts": []},
             ],
             "promql_expr_test": [
                 {"expr": 'ascendra:slo_ttft_error_ratio:rate5m{ascendra_io_service="svc"}',
                  "eval_time": "30m",
                  "exp_samples": [{"labels": "ascendra:slo_ttft_error_ratio:rate5m"
                                             '{ascendra_io_service="svc",namespace="ns"}',
                                   "value": 1}]}]},
            {"interval": "1m",
             "input_series": [_series("missed", 0, 180), _series("met", 60, 180)],
             "alert_rule_test": [
                 {"eval_time": "170m", "alertname": "AscendraTTFTErrorBudgetBurnFast",
                  "exp_alerts": []},
                 {"eval_time": "170m", "alertname": "AscendraTTFTErrorBudgetBurnSlow",
                  "exp_alerts": []}]},
        ],
    }
    spec = tmp_path / "tests.yaml"
    spec.write_text(yaml.safe_dump(tests, sort_keys=False))
    r = subprocess.run([PROMTOOL, "test", "rules", str(spec)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout + r.stderr


def test_loose_objectives_cap_thresholds_below_one():
    alerts = rule_groups(0.9)[1]["rules"]
    fast = next(a for a in alerts if a["alert"] == "AscendraTTFTErrorBudgetBurnFast")
    assert "> 0.99 and" in fast["expr"] and "> 0.6 and" in fast["expr"]
    strict = next(a for a in rule_groups(0.999)[1]["rules"]
                  if a["alert"] == "AscendraTTFTErrorBudgetBurnFast")
    assert "> 0.0144 and" in strict["expr"]


def test_a_services_rules_see_only_its_own_series():
    """Per-service rules (the operator's PrometheusRule) narrow every expression, alerts
    included: a service's alert must not fire on another service's errors at its threshold."""
    selector = 'namespace="ns",ascendra_io_service="svc"'
    for group in rule_groups(0.95, selector):
        for rule in group["rules"]:
            refs = [(name, braces) for name, braces in
                    re.findall(r"(ascendra[\w:]*)(\{[^}]*\})?", rule["expr"])
                    if name != "ascendra_io_service"]
            assert refs and all(selector in braces for _, braces in refs), rule["expr"]
