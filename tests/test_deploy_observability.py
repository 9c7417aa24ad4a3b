"""Prometheus and Grafana configuration of the deployment.

`promtool` (Debian's prometheus package) checks deploy/prometheus.yml, its
alert rules, and the PromQL of every dashboard panel. Every `scorecast_*` name
a query uses must be one the gateway exports: the list comes from rendering
gateway/metrics.py, not from a copy kept here.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from scorecast.gateway.metrics import render

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "scorecast.json"
PROVISIONING = DEPLOY / "grafana" / "provisioning"
# Grafana's variables, as Prometheus would see them once Grafana substituted them
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$instance": ".+"}
# the metrics the dashboard must show (the brief of the deployment)
SHOWN = (
    "scorecast_connections",
    "scorecast_subscriptions",
    "scorecast_topics",
    "scorecast_messages_in_total",
    "scorecast_deliveries_total",
    "scorecast_bytes_out_total",
    "scorecast_publish_to_send_seconds_bucket",
    "scorecast_conflations_total",
    "scorecast_slow_closes_total",
    "scorecast_gaps_repaired_total",
    "scorecast_recoveries_memory_total",
    "scorecast_recoveries_jetstream_total",
    "scorecast_nats_reconnects_total",
    "scorecast_loop_lag_seconds",
    "scorecast_handshakes_refused_total",
)


def promtool() -> str:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail(
            "promtool is needed: `apt-get install -y --no-install-recommends prometheus`",
            pytrace=False,
        )
    return binary


def exported_names() -> set[str]:
    """Every sample name the gateway's /metrics can show."""
    text = render(lambda: [{"refused": {"draining": 1}}]).decode()
    return {line.split("{")[0].split()[0] for line in text.splitlines() if line[:1].isalpha()}


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def metric_names(expression: str) -> set[str]:
    return set(re.findall(r"\bscorecast_[a-z0-9_]+", expression))


def test_prometheus_config_and_rules_pass_promtool():
    result = subprocess.run(
        [promtool(), "check", "config", str(DEPLOY / "prometheus.yml")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "rule files found" in result.stdout + result.stderr  # the alerts were read too


def test_alert_rules_use_exported_metrics():
    rules = yaml.safe_load((DEPLOY / "prometheus-alerts.yml").read_text())
    exported = exported_names()
    for group in rules["groups"]:
        for rule in group["rules"]:
            unknown = metric_names(rule["expr"]) - exported
            assert not unknown, f"alert {rule['alert']} uses {unknown}"


def test_dashboard_structure():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "scorecast" and dashboard["title"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    datasource = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == uid, panel["title"]
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid and target["expr"] and target["refId"]


def test_dashboard_shows_the_exported_metrics():
    exported = exported_names()
    used = set().union(*map(metric_names, dashboard_queries()))
    assert not used - exported, f"the dashboard queries metrics nobody exports: {used - exported}"
    assert not set(SHOWN) - used, f"the dashboard does not show {set(SHOWN) - used}"


def test_dashboard_queries_are_valid_promql(tmp_path):
    """Each query becomes a recording rule, which promtool parses."""
    rules = []
    for index, query in enumerate(dashboard_queries()):
        for variable, value in GRAFANA_VARIABLES.items():
            query = query.replace(variable, value)
        assert "$" not in query, f"unknown Grafana variable in {query}"
        rules.append({"record": f"scorecast:dashboard_query_{index}", "expr": query})
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [promtool(), "check", "rules", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_provisioning_files():
    datasources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    assert datasources["apiVersion"] == 1
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "scorecast.yml").read_text())
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"] == "/etc/grafana/dashboards"
