"""The chart's alerts (issue #17, item 7), checked and unit-tested with the real promtool.

The PrometheusRule is opt-in and needs the chart's ServiceMonitors, whose series it reads (this release's jobs
only). Rendered, its rules pass `promtool check rules` and the cases of alert_rules_test.yaml (`promtool test
rules`), where every alert fires on the series that mean trouble and stays quiet on others. Every alert has a
severity, a summary, a description and a runbook_url into its own section of docs/troubleshooting.md.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.chart import (
    CHART_DIR,
    NAMESPACE,
    RELEASE,
    REPO_ROOT,
    merged,
    of_kind,
    only,
    operator_docs,
    render,
    run_helm,
    values_args,
)

RULE_TESTS = Path(__file__).with_name("alert_rules_test.yaml")
TROUBLESHOOTING = REPO_ROOT / "docs" / "troubleshooting.md"
ENABLED: dict[str, Any] = {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}}
ALERTS = {"ServiceKeyNotReady", "ServiceKeyRotationOverdue", "ServiceKeyVaultErrors", "ServiceKeyOperatorAbsent",
          "ServiceKeyPublishedKeyTooOld", "ServiceKeyJwksCacheStale"}
DEFAULT_RUNBOOK_BASE = "docs/troubleshooting.md"


def rendered_rule(helm_bin: Path, tmp_path: Path, values: dict[str, Any] | None = None) -> dict[str, Any]:
    return only(render(helm_bin, tmp_path, merged(ENABLED, values or {})), "PrometheusRule")


def alerts_of(rule: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["alert"]: item for group in rule["spec"]["groups"] for item in group["rules"]}


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown page: lower case, every character but letters, digits,
    spaces, '-' and '_' dropped, spaces turned into '-', and -1, -2, ... after a repeated one."""
    anchors: set[str] = set()
    fenced = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        heading = re.match(r"#{1,6} (.+)", line)
        if fenced or not heading:
            continue
        anchor = re.sub(r"[^\w\- ]", "", heading[1].strip().lower()).replace(" ", "-")
        repeated = anchor
        count = 0
        while repeated in anchors:
            count += 1
            repeated = f"{anchor}-{count}"
        anchors.add(repeated)
    return anchors


def run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(arg) for arg in args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_there_is_no_prometheus_rule_by_default(helm_bin, tmp_path):
    assert not of_kind(render(helm_bin, tmp_path, {"serviceMonitor": {"enabled": True}}), "PrometheusRule")


def test_the_rule_needs_the_service_monitors_whose_series_it_reads(helm_bin, tmp_path):
    result = run_helm(helm_bin, "template", RELEASE, str(CHART_DIR), "--namespace", NAMESPACE,
                      *values_args(tmp_path, {"prometheusRule": {"enabled": True}}))

    assert result.returncode != 0
    assert "prometheusRule.enabled needs serviceMonitor.enabled" in result.stderr, result.stderr


def test_rules_pass_promtool_check_and_every_case_of_the_rule_tests(helm_bin, promtool_bin, tmp_path):
    rule = rendered_rule(helm_bin, tmp_path)
    assert set(alerts_of(rule)) == ALERTS
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)

    checked = run(promtool_bin, "check", "rules", "rules.yaml", cwd=tmp_path)
    assert checked.returncode == 0, f"promtool check rules:\n{checked.stdout}\n{checked.stderr}"
    assert f"SUCCESS: {len(ALERTS)} rules found" in checked.stdout, checked.stdout

    tested = run(promtool_bin, "test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert tested.returncode == 0, f"promtool test rules:\n{tested.stdout}\n{tested.stderr}"


def test_every_alert_has_a_case_where_it_fires_and_one_where_it_must_not():
    cases: dict[str, set[bool]] = {}
    for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for case in test["alert_rule_test"]:
            cases.setdefault(case["alertname"], set()).add(bool(case["exp_alerts"]))

    assert cases == {alert: {True, False} for alert in ALERTS}


def test_every_alert_says_what_happened_how_bad_and_links_its_own_runbook_section(helm_bin, tmp_path):
    anchors = github_anchors(TROUBLESHOOTING.read_text())

    for name, alert in alerts_of(rendered_rule(helm_bin, tmp_path)).items():
        assert alert["labels"]["severity"] in ("warning", "critical"), name
        assert set(alert["annotations"]) == {"summary", "description", "runbook_url"}, name
        base, anchor = alert["annotations"]["runbook_url"].split("#")
        assert base == DEFAULT_RUNBOOK_BASE, name
        assert anchor == name.lower() and anchor in anchors, f"{name}: no heading '### {name}' in {TROUBLESHOOTING}"
    assert "alerts" in anchors


def test_only_a_missing_operator_is_critical(helm_bin, tmp_path):
    alerts = alerts_of(rendered_rule(helm_bin, tmp_path))

    assert {name for name, alert in alerts.items() if alert["labels"]["severity"] == "critical"} == {
        "ServiceKeyOperatorAbsent"}


def test_alerts_read_only_this_releases_series(helm_bin, tmp_path):
    """Two releases in one Prometheus: each release's rules select the jobs its own ServiceMonitors scrape."""
    alerts = alerts_of(rendered_rule(helm_bin, tmp_path, {"fullnameOverride": "keys-operator"}))

    for name, alert in alerts.items():
        selectors = re.findall(r"(servicekey_\w+)\{([^}]*)\}", alert["expr"])
        assert selectors, name
        for metric, matchers in selectors:
            job = "keys-operator-jwks" if metric.startswith("servicekey_jwks_") else "keys-operator-metrics"
            assert f'job="{job}"' in matchers, f"{name}: {metric}{{{matchers}}}"
    absent = alerts["ServiceKeyOperatorAbsent"]["expr"]
    assert f'absent(servicekey_operator_active{{job="keys-operator-metrics", namespace="{NAMESPACE}"}})' in absent


def test_per_key_series_keep_the_servicekeys_namespace_when_scraped(helm_bin, tmp_path):
    """The alerts name a key by its namespace and name: the operator's ServiceMonitor honours the scraped labels,
    so that its `namespace` is not renamed exported_namespace in favour of the pod's."""
    monitors = of_kind(operator_docs(render(helm_bin, tmp_path, ENABLED)), "ServiceMonitor")

    assert [endpoint.get("honorLabels") for monitor in monitors for endpoint in monitor["spec"]["endpoints"]] == [True]


def test_rule_values_reach_the_render(helm_bin, tmp_path):
    rule = rendered_rule(helm_bin, tmp_path, {"prometheusRule": {
        "namespace": "monitoring", "labels": {"release": "kube-prometheus-stack"},
        "additionalRuleLabels": {"team": "platform"},
        "runbookBaseURL": "https://git.example.test/platform/servicekey-operator/blob/v0.1.0/docs/troubleshooting.md"}})

    assert rule["metadata"]["namespace"] == "monitoring"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert rule["metadata"]["labels"]["app.kubernetes.io/component"] == "operator"
    for name, alert in alerts_of(rule).items():
        assert alert["labels"]["team"] == "platform", name
        assert alert["annotations"]["runbook_url"] == (
            "https://git.example.test/platform/servicekey-operator/blob/v0.1.0/docs/troubleshooting.md#" + name.lower())
    default = rendered_rule(helm_bin, tmp_path)
    assert default["metadata"]["namespace"] == NAMESPACE
    assert all(set(alert["labels"]) == {"severity"} for alert in alerts_of(default).values())


def test_the_jwks_alert_goes_with_the_jwks_server(helm_bin, tmp_path):
    alerts = alerts_of(rendered_rule(helm_bin, tmp_path, {"jwksServer": {"enabled": False}}))

    assert set(alerts) == ALERTS - {"ServiceKeyJwksCacheStale"}


GITHUB_ANCHORS = {
    "ServiceKeyNotReady": "servicekeynotready",
    "What `servicekey-operator check` reports": "what-servicekey-operator-check-reports",
    "A ServiceKey has no status": "a-servicekey-has-no-status",
}


@pytest.mark.parametrize(("heading", "anchor"), GITHUB_ANCHORS.items())
def test_anchors_follow_githubs_rules(heading, anchor):
    assert github_anchors(f"## {heading}\n") == {anchor}


def test_a_repeated_heading_gets_a_numbered_anchor_and_code_is_no_heading():
    assert github_anchors("## Fix\n```sh\n# not a heading\n```\n### Fix\n") == {"fix", "fix-1"}
