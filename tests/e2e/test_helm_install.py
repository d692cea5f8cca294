"""The chart against the real apiserver: its manifests pass server-side dry-run, and in every RBAC mode of the
chart (cluster-wide, namespaced with publish namespaces, each with and without peering) an operator running with
the chart's ServiceAccount identity (not admin) and its Deployment's environment handles the whole ServiceKey
lifecycle and cannot read Secrets."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from devcluster.chart import helm, install_chart, service_account_kubeconfig, uninstall_chart
from devcluster.environment import DevEnvironment
from devcluster.operator_process import OperatorProcess
from tests.e2e.chart import CHART_DIR, FULL_VALUES, NAMESPACE, RELEASE, env_of, merged, values_args
from tests.support import MakeNamespace, ServiceKeys, wait_for

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


@dataclass(frozen=True)
class ChartMode:
    """One way to install the chart that gives its ServiceAccount different RBAC: cluster-wide (a ClusterRole)
    or namespaced (``watchNamespaces``: a Role per watched namespace, and a ConfigMap-only Role per
    ``rbac.publishNamespaces``), each with or without peering (the kopf peering objects' rights)."""

    name: str
    namespaced: bool = False
    peering: bool = False

    def set_values(self, watched: str, publish_to: str) -> list[str]:
        values = [f"watchNamespaces={{{watched}}}", f"rbac.publishNamespaces={{{publish_to}}}"] \
            if self.namespaced else []
        return [*values, "peering.enabled=true"] if self.peering else values


MODES = [ChartMode("cluster-wide"), ChartMode("namespaced", namespaced=True),
         ChartMode("cluster-wide-peering", peering=True),
         ChartMode("namespaced-peering", namespaced=True, peering=True)]
# The Deployment's variables that only make sense inside its pod: the token file is mounted from a Secret
# (the local process gets the environment's token instead), and the operator process picks free ports.
POD_ONLY_ENV = {"VAULT_TOKEN_FILE", "SERVICEKEY_METRICS_PORT", "SERVICEKEY_HEALTH_PORT"}


@dataclass(frozen=True)
class Release:
    """The chart installed in one mode: its ServiceAccount's kubeconfig, the operator environment its
    Deployment sets, and the opted-in namespace that ServiceKeys of the test namespace publish copies into."""

    mode: ChartMode
    kubeconfig: Path
    operator_env: dict[str, str]
    publish_to: str


@pytest.fixture(params=MODES, ids=[mode.name for mode in MODES])
def release(request: pytest.FixtureRequest, dev_env: DevEnvironment, chart_prerequisites: None, namespace: str,
            make_namespace: MakeNamespace, tmp_path: Path) -> Iterator[Release]:
    """``helm install`` of the chart (token auth) in one mode, for the test's namespace (the namespaces the
    values name exist first, as in a real cluster); ``helm uninstall`` after."""
    mode: ChartMode = request.param
    publish_to = make_namespace(accept_from="*")
    service_account = install_chart(dev_env, *mode.set_values(namespace, publish_to))
    try:
        manifest = helm(dev_env, "get", "manifest", RELEASE, "--namespace", NAMESPACE).stdout
        deployment_env = env_of([doc for doc in yaml.safe_load_all(manifest) if doc])
        operator_env = {name: value for name, value in deployment_env.items()
                        if value is not None and name not in POD_ONLY_ENV}
        kubeconfig = service_account_kubeconfig(dev_env, service_account, tmp_path / "chart-identity.kubeconfig")
        yield Release(mode, kubeconfig, operator_env, publish_to)
    finally:
        uninstall_chart(dev_env)
        # A mode that failed leaves its ServiceKeys behind with the operator's finalizer (and no operator to
        # remove it): gone now, or the next mode's operator would finalize them in a terminating namespace.
        kubectl = dev_env.kube.kubectl
        kubectl("delete", "servicekeys", "--all", "-n", namespace, "--wait=false")
        for left in kubectl("get", "servicekeys", "-n", namespace, "-o", "name").stdout.split():
            kubectl("patch", left, "-n", namespace, "--type=merge", "-p", '{"metadata":{"finalizers":null}}',
                    check=False)


def test_the_chart_identity_may_not_read_secrets(dev_env: DevEnvironment, release: Release, namespace: str):
    for where in (namespace, release.publish_to):
        denied = dev_env.kube.kubectl("get", "secrets", "-n", where, kubeconfig=release.kubeconfig, check=False)
        allowed = dev_env.kube.kubectl("get", "configmaps", "-n", where, kubeconfig=release.kubeconfig,
                                       check=False)

        assert denied.returncode != 0 and "Forbidden" in denied.stderr, denied.stderr
        assert allowed.returncode == 0, allowed.stderr


def test_an_operator_with_the_chart_identity_runs_the_whole_lifecycle(
        release: Release, start_operator: Callable[..., OperatorProcess], servicekeys: ServiceKeys, core_api):
    """The operator gets what the chart's Deployment gives it: the identity, and the environment (watched
    namespaces, peering, mounts, ...)."""
    watched = release.operator_env["SERVICEKEY_WATCH_NAMESPACES"]
    assert watched == (servicekeys.namespace if release.mode.namespaced else "")
    assert bool(release.operator_env["SERVICEKEY_PEERING"]) == release.mode.peering
    operator = start_operator(**release.operator_env, KUBECONFIG=str(release.kubeconfig))
    target = release.publish_to

    try:
        servicekeys.create("ruled", {"algorithm": "ES256", "deletionPolicy": "Delete",
                                     "publicKey": {"namespaces": [target]}})
        first = servicekeys.wait_ready("ruled")["status"]
        assert first["publishedNamespaces"] == [target]
        assert servicekeys.configmap("ruled-public", target) is not None

        servicekeys.patch("ruled", {"metadata": {"annotations": {"servicekey.io/rotate": "chart"}}})
        servicekeys.wait_new_kid("ruled", first["keyId"])
        events = core_api.list_namespaced_event(servicekeys.namespace).items
        assert {"Generated", "Rotated", "Published"} <= {event.reason for event in events}

        servicekeys.delete("ruled")
        servicekeys.wait_gone("ruled")
        wait_for(lambda: servicekeys.configmap("ruled-public", target) is None, 10, "the copy to be removed")
    except AssertionError as failed:
        if refusals(operator):  # the likely reason: say which right the chart does not grant
            raise AssertionError(f"{failed}\nthe operator was refused:\n{refusals(operator)[0]}") from failed
        raise
    refused = refusals(operator)
    assert not refused, f"the chart's RBAC must cover everything the operator does; refused:\n{refused[0]}"


def refusals(operator: OperatorProcess) -> list[str]:
    """The operator's log lines about a request the API server refused (RBAC or the admission policy)."""
    return [line for line in operator.log_text().splitlines() if "Forbidden" in line]
