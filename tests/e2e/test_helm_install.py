"""The chart against the real apiserver: its manifests pass server-side dry-run, and an operator running with
the chart's ServiceAccount identity (not admin) handles the whole ServiceKey lifecycle and cannot read Secrets."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from devcluster.chart import helm, install_chart, service_account_kubeconfig, uninstall_chart
from devcluster.environment import DevEnvironment
from devcluster.operator_process import OperatorProcess
from tests.e2e.chart import CHART_DIR, FULL_VALUES, NAMESPACE, RELEASE, merged, values_args
from tests.support import ServiceKeys, wait_for

pytestmark = pytest.mark.e2e

# The ServiceMonitor kind comes from prometheus-operator; a permissive stand-in CRD lets the apiserver
# accept the chart's optional ServiceMonitor in the dry run.
SERVICEMONITOR_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
    "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
             "names": {"plural": "servicemonitors", "singular": "servicemonitor", "kind": "ServiceMonitor"},
             "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                 "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]},
}


@pytest.fixture(scope="module")
def chart_prerequisites(dev_env: DevEnvironment) -> None:
    """The release namespace, the chart's extra CRDs (kopf peering) and a ServiceMonitor stand-in."""
    kubectl = dev_env.kube.kubectl
    if kubectl("get", "namespace", NAMESPACE, check=False).returncode != 0:
        kubectl("create", "namespace", NAMESPACE)
    for crd in sorted((CHART_DIR / "crds").glob("*.yaml")):
        kubectl("apply", "--server-side", "-f", str(crd))
    kubectl("apply", "--server-side", "-f", "-", input_text=yaml.safe_dump(SERVICEMONITOR_CRD))
    kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/servicemonitors.monitoring.coreos.com")


@pytest.mark.parametrize("values", [None, FULL_VALUES, merged(FULL_VALUES, {"vault": {"auth": {"method": "approle"}}}),
                                    {"replicaCount": 2, "peering": {"enabled": True}}],
                         ids=["defaults", "every-value", "every-value-approle", "peering"])
def test_rendered_chart_passes_server_side_dry_run(dev_env: DevEnvironment, chart_prerequisites: None,
                                                   tmp_path: Path, values: dict | None):
    """Every namespace the values name must exist, as it would in a real cluster."""
    rendered = helm(dev_env, "template", RELEASE, str(CHART_DIR), "--namespace", NAMESPACE,
                     *values_args(tmp_path, values)).stdout
    values = values or {}
    for needed in [*values.get("watchNamespaces", []), *values.get("rbac", {}).get("publishNamespaces", [])]:
        dev_env.kube.kubectl("create", "namespace", needed, check=False)

    result = dev_env.kube.kubectl("apply", "--dry-run=server", "-f", "-", input_text=rendered, check=False)

    assert result.returncode == 0, f"the apiserver rejected the render:\n{result.stderr}"
    assert "created (server dry run)" in result.stdout


@pytest.fixture(scope="module")
def installed_release(dev_env: DevEnvironment, chart_prerequisites: None) -> Iterator[str]:
    """`helm install` of the chart (token auth); yields the operator's ServiceAccount name."""
    yield install_chart(dev_env)
    uninstall_chart(dev_env)


@pytest.fixture(scope="module")
def chart_identity_kubeconfig(dev_env: DevEnvironment, installed_release: str, tmp_path_factory) -> Path:
    """A kubeconfig that authenticates as the chart's ServiceAccount (TokenRequest), not as admin."""
    return service_account_kubeconfig(dev_env, installed_release, tmp_path_factory.mktemp("identity") / "kubeconfig")


def test_the_chart_identity_may_not_read_secrets(dev_env: DevEnvironment, chart_identity_kubeconfig: Path,
                                                 namespace: str):
    denied = dev_env.kube.kubectl("get", "secrets", "-n", namespace, kubeconfig=chart_identity_kubeconfig,
                                  check=False)
    allowed = dev_env.kube.kubectl("get", "configmaps", "-n", namespace, kubeconfig=chart_identity_kubeconfig,
                                   check=False)

    assert denied.returncode != 0 and "Forbidden" in denied.stderr, denied.stderr
    assert allowed.returncode == 0, allowed.stderr


def test_an_operator_with_the_chart_identity_runs_the_whole_lifecycle(
        start_operator: Callable[..., OperatorProcess], chart_identity_kubeconfig: Path,
        servicekeys: ServiceKeys, core_api, dev_env: DevEnvironment):
    operator = start_operator(KUBECONFIG=str(chart_identity_kubeconfig))
    target = f"{servicekeys.namespace}-copy"
    core_api.create_namespace({"metadata": {"name": target, "annotations": {"servicekey.io/accept-from": "*"}}})
    try:
        servicekeys.create("ruled", {"algorithm": "ES256", "deletionPolicy": "Delete",
                                     "publicKey": {"namespaces": [target]}})
        first = servicekeys.wait_ready("ruled")["status"]
        assert first["publishedNamespaces"] == [target]

        servicekeys.patch("ruled", {"metadata": {"annotations": {"servicekey.io/rotate": "chart"}}})
        servicekeys.wait_new_kid("ruled", first["keyId"])
        events = core_api.list_namespaced_event(servicekeys.namespace).items
        assert {"Generated", "Rotated", "Published"} <= {event.reason for event in events}

        servicekeys.delete("ruled")
        servicekeys.wait_gone("ruled")
        wait_for(lambda: servicekeys.configmap("ruled-public", target) is None, 10, "the copy to be removed")
        assert "Forbidden" not in operator.log_text(), "the chart's RBAC must cover everything the operator does"
    finally:
        core_api.delete_namespace(target)
