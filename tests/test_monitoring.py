"""The monitoring that ships with qkdd: the Prometheus alert rules pass `promtool check rules` and their unit
tests (`promtool test rules`), and the Grafana dashboard is valid JSON whose every expression parses as PromQL
and names only metrics the daemon exports."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from qkdd.health import Health
from qkdd.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "etc/prometheus/qkdd-rules.yml"
RULE_TESTS = ROOT / "tests/prometheus/qkdd-rules.test.yml"
DASHBOARD = ROOT / "etc/grafana/qkdd.json"
METRIC_NAME = re.compile(r"\b(qkd_[a-z0-9_]+)")


def promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    if shutil.which("promtool") is None:
        pytest.fail("promtool missing: scripts/bootstrap-system.sh installs the Debian package prometheus")
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def exported_series_names() -> set[str]:
    """Every series name a daemon's /metrics can carry: the families of qkdd.metrics with their suffixes."""
    metrics = Metrics()
    metrics.watch_health(Health())
    metrics.keystore_size(0)                       # registered at its first measurement
    names = set()
    for family in metrics.registry.collect():
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}.get(family.type, ("",))
        names.update(family.name + suffix for suffix in suffixes)
    return {name for name in names if name.startswith("qkd_")}


def test_alert_rules_check_and_pass_their_unit_tests():
    check = promtool("check", "rules", str(RULES))
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 11 rules found" in check.stdout
    unit = promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert unit.returncode == 0 and "SUCCESS" in unit.stdout, unit.stdout + unit.stderr


def test_every_alert_has_a_unit_test_and_uses_exported_metrics():
    rules = RULES.read_text()
    alerts = set(re.findall(r"- alert: (\w+)", rules))
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
    assert alerts == tested, alerts ^ tested
    used = set(METRIC_NAME.findall(rules))
    assert used and used <= exported_series_names(), used - exported_series_names()
    assert "qkd_kms_key_push_total" in used           # the seed's KMS family, by its status label


def test_dashboard_is_valid_json_and_every_expression_parses_and_uses_exported_metrics(tmp_path):
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["panels"] and dashboard["schemaVersion"] >= 30
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert len(expressions) >= 14
    exported = exported_series_names()
    used = {name for expr in expressions for name in METRIC_NAME.findall(expr)}
    assert used <= exported, used - exported
    # every family the daemon exports is on the dashboard somewhere (histograms through their buckets)
    families = {name for name in exported if not name.endswith(("_count", "_sum"))}
    assert families - used == set(), families - used
    # PromQL syntax: each expression as a recording rule, the dashboard variable replaced by a regex
    recording = "groups:\n  - name: dashboard\n    rules:\n" + "".join(
        f"      - record: dashboard:expr{i}\n        expr: {json.dumps(expr.replace('$link', '.*'))}\n"
        for i, expr in enumerate(expressions))
    (tmp_path / "dashboard-rules.yml").write_text(recording)
    check = promtool("check", "rules", str(tmp_path / "dashboard-rules.yml"))
    assert check.returncode == 0, check.stdout + check.stderr
    panel_ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(panel_ids) == len(set(panel_ids))
