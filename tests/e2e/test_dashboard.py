"""The Grafana dashboard (issue #17, item 8).

It is kept once, in the chart's dashboards/, shipped as an opt-in ConfigMap that Grafana's dashboard sidecar loads
(its label, namespace and annotations configurable) and reachable from docs/ through a link. It is built on what
the operator and the JWKS server export: every query parses as PromQL (promtool), reads only exported series, and
every exported servicekey_ metric is on it; the per-key queries follow the dashboard's namespace variable, and
every panel its datasource variable.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import REGISTRY, CollectorRegistry

import servicekey_operator.metrics  # noqa: F401  (registers the operator's metrics on REGISTRY)
from servicekey_operator.jwks_cache import KeyCache
from servicekey_operator.jwks_server import Metrics
from tests.e2e.chart import CHART_DIR, NAMESPACE, REPO_ROOT, of_kind, render

DASHBOARD = CHART_DIR / "dashboards" / "servicekey-operator.json"
DOCS_LINK = REPO_ROOT / "docs" / "grafana-dashboard.json"
CONFIGMAP_KEY = "servicekey-operator.json"
ENABLED: dict[str, Any] = {"grafanaDashboard": {"enabled": True}}
# The series that carry a ServiceKey's namespace and name.
PER_KEY = {"servicekey_ready_status", "servicekey_key_created_timestamp_seconds",
           "servicekey_next_rotation_timestamp_seconds", "servicekey_rotation_period_seconds"}
# What Grafana puts in place of its variables, for promtool to parse the queries.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$namespace": ".*"}
# The series a metric family is exposed as, by type.
EXPOSED_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "summary": ("_count", "_sum")}
PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "group_left", "group_right"}


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels() -> list[dict[str, Any]]:
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def queries() -> Iterator[tuple[str, dict[str, Any]]]:
    """(panel title, target) of every query of the dashboard."""
    for panel in panels():
        for target in panel["targets"]:
            yield panel["title"], target


def exported_series() -> set[str]:
    """The names of the series the operator's and the JWKS server's /metrics expose."""
    registries: list[CollectorRegistry] = [REGISTRY, Metrics(KeyCache()).registry]
    return {family.name + suffix for registry in registries for family in registry.collect()
            for suffix in EXPOSED_SUFFIXES.get(family.type, ("",))}


def series_read_by(expr: str) -> set[str]:
    """The series a PromQL expression selects: its names that are no string, label, range, function or keyword."""
    bare = re.sub(r'"[^"]*"', "", expr)
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", bare)
    bare = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", bare)
    names = set()
    for name in re.finditer(r"(?<![\w.])[A-Za-z_:][\w:]*", bare):
        if not bare[name.end():].lstrip().startswith("(") and name[0] not in PROMQL_KEYWORDS:
            names.add(name[0])
    return names


def family(series: str) -> str:
    return re.sub(r"_(?:bucket|count|sum)$", "", series)


def rendered_configmap(helm_bin: Path, tmp_path: Path, values: dict[str, Any] | None = None) -> dict[str, Any]:
    maps = [doc for doc in of_kind(render(helm_bin, tmp_path, values or ENABLED), "ConfigMap")
            if doc["metadata"]["name"].endswith("-dashboard")]
    assert len(maps) == 1, maps
    return maps[0]


def test_there_is_no_dashboard_by_default(helm_bin, tmp_path):
    assert not [doc for doc in of_kind(render(helm_bin, tmp_path), "ConfigMap")
                if doc["metadata"]["name"].endswith("-dashboard")]


def test_the_configmap_carries_the_dashboard_for_grafanas_sidecar(helm_bin, tmp_path):
    configmap = rendered_configmap(helm_bin, tmp_path)

    assert configmap["metadata"]["name"] == "servicekey-operator-dashboard"
    assert configmap["metadata"]["namespace"] == NAMESPACE
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["labels"]["app.kubernetes.io/instance"] == "servicekey-operator"
    assert "annotations" not in configmap["metadata"]
    assert list(configmap["data"]) == [CONFIGMAP_KEY]
    assert configmap["data"][CONFIGMAP_KEY] == DASHBOARD.read_text().rstrip("\n")
    assert json.loads(configmap["data"][CONFIGMAP_KEY])["uid"] == "servicekey-operator"


def test_the_dashboards_namespace_labels_and_annotations_are_values(helm_bin, tmp_path):
    configmap = rendered_configmap(helm_bin, tmp_path, {"grafanaDashboard": {
        "enabled": True, "namespace": "monitoring", "labels": {"grafana_dashboard": None, "dashboards": "security"},
        "annotations": {"grafana_folder": "Security"}}})

    assert configmap["metadata"]["namespace"] == "monitoring"
    assert configmap["metadata"]["labels"]["dashboards"] == "security"
    assert "grafana_dashboard" not in configmap["metadata"]["labels"], "null drops the default label"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "Security"}


def test_docs_link_to_the_charts_dashboard_instead_of_a_copy():
    assert DOCS_LINK.is_symlink()
    assert DOCS_LINK.resolve() == DASHBOARD.resolve()


def test_the_datasource_and_the_servicekey_namespace_are_variables():
    variables = {variable["name"]: variable for variable in dashboard()["templating"]["list"]}

    assert set(variables) == {"datasource", "namespace"}
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == ("datasource", "prometheus")
    namespace = variables["namespace"]
    assert namespace["query"]["query"] == "label_values(servicekey_ready_status, namespace)"
    assert (namespace["multi"], namespace["includeAll"], namespace["allValue"]) == (True, True, ".*")
    for panel in [*panels(), namespace]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel.get("title")
    for title, target in queries():
        assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title


def test_every_query_reads_only_series_the_operator_or_the_jwks_server_exports():
    exported = exported_series()

    for title, target in queries():
        read = series_read_by(target["expr"])
        assert read, f"{title}: {target['expr']}"
        assert read <= exported, f"{title} reads {read - exported}, which nothing exports"


def test_every_exported_servicekey_metric_is_on_the_dashboard():
    on_dashboard = {family(series) for _, target in queries() for series in series_read_by(target["expr"])}
    exported = {family(series).removesuffix("_total") for series in exported_series()
                if series.startswith("servicekey_")}

    assert exported <= {name.removesuffix("_total") for name in on_dashboard}


def test_per_key_queries_follow_the_namespace_variable():
    for title, target in queries():
        for metric, matchers in re.findall(r"(servicekey_\w+)(\{[^}]*\})?", target["expr"]):
            if metric in PER_KEY:
                assert 'namespace=~"$namespace"' in matchers, f"{title}: {metric}{matchers}"


def test_every_query_parses_as_promql(promtool_bin, tmp_path):
    rules = []
    for panel in panels():
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, f"{panel['title']}: a Grafana variable promtool cannot parse: {expr}"
            rules.append({"record": f"dashboard:panel_{panel['id']}_{target['refId']}", "expr": expr})
    (tmp_path / "queries.yaml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))

    result = subprocess.run([str(promtool_bin), "check", "rules", "queries.yaml"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout, result.stdout


def test_panels_have_unique_ids_and_do_not_overlap():
    every = dashboard()["panels"]
    assert len({panel["id"] for panel in every}) == len(every)
    cells: dict[tuple[int, int], str] = {}
    for panel in every:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_the_series_reader_ignores_functions_labels_ranges_and_strings():
    expr = ('histogram_quantile(0.99, sum by (le, operation) (rate(a_bucket{job="x", namespace=~"$namespace"}[5m])))'
            ' / on (namespace, name) group_left b or vector(0) > bool c offset 5m')

    assert series_read_by(expr) == {"a_bucket", "b", "c"}
