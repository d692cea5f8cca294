"""The chart against the real apiserver: its manifests pass server-side dry-run, and in every RBAC mode of the
chart (cluster-wide, namespaced with publish namespaces, each with and without peering) an operator running with
the chart's ServiceAccount identity (not admin) and its Deployment's environment (its log level too) handles the
whole ServiceKey lifecycle and cannot read Secrets. Every install takes over the ServiceKey CRD that the session
installed (the chart's CRD is a template) and leaves it on uninstall (crds.keep). Tenants bound to the built-in
edit and view roles in a namespace may manage, or only read, its ServiceKeys (issue #17, item 4)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from devcluster.chart import helm, install_chart, service_account_kubeconfig, uninstall_chart
from devcluster.environment import DevEnvironment
from devcluster.operator_process import OperatorProcess
from tests.e2e.chart import (
    CHART_DIR,
    FULL_VALUES,
    KUBE_VERSION,
    NAMESPACE,
    RELEASE,
    merged,
    release_operator_env,
    values_args,
)
from tests.support import MakeNamespace, ServiceKeys, wait_for

pytestmark = pytest.mark.e2e


def prometheus_operator_crd(kind: str) -> dict:
    """A permissive stand-in for a prometheus-operator CRD, so that the apiserver accepts the chart's optional
    ServiceMonitors and PrometheusRule in the dry run."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{kind.lower()}s.monitoring.coreos.com"},
        "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
                 "names": {"plural": f"{kind.lower()}s", "singular": kind.lower(), "kind": kind},
                 "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                     "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]},
    }


PROMETHEUS_OPERATOR_CRDS = [prometheus_operator_crd("ServiceMonitor"), prometheus_operator_crd("PrometheusRule")]


@pytest.fixture(scope="module")
def chart_prerequisites(dev_env: DevEnvironment) -> None:
    """The release namespace, the chart's extra CRDs (kopf peering) and ServiceMonitor and PrometheusRule stand-ins."""
    kubectl = dev_env.kube.kubectl
    if kubectl("get", "namespace", NAMESPACE, check=False).returncode != 0:
        kubectl("create", "namespace", NAMESPACE)
    for crd in sorted((CHART_DIR / "crds").glob("*.yaml")):
        kubectl("apply", "--server-side", "-f", str(crd))
    for crd in PROMETHEUS_OPERATOR_CRDS:
        kubectl("apply", "--server-side", "-f", "-", input_text=yaml.safe_dump(crd))
        kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{crd['metadata']['name']}")


@pytest.mark.parametrize("values", [None, FULL_VALUES, merged(FULL_VALUES, {"vault": {"auth": {"method": "approle"}}}),
                                    {"replicaCount": 2, "peering": {"enabled": True}}],
                         ids=["defaults", "every-value", "every-value-approle", "peering"])
def test_rendered_chart_passes_server_side_dry_run(dev_env: DevEnvironment, chart_prerequisites: None,
                                                   tmp_path: Path, values: dict | None):
    """Every namespace the values name must exist, as it would in a real cluster."""
    rendered = helm(dev_env, "template", RELEASE, str(CHART_DIR), "--namespace", NAMESPACE,
                    "--kube-version", KUBE_VERSION, *values_args(tmp_path, values)).stdout
    values = values or {}
    named = [*values.get("watchNamespaces", []), *values.get("rbac", {}).get("publishNamespaces", []),
             *(values.get(key, {}).get("namespace") for key in ("prometheusRule", "grafanaDashboard"))]
    for needed in filter(None, named):
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
    log_level: str = "info"

    def set_values(self, watched: str, publish_to: str) -> list[str]:
        values = [f"watchNamespaces={{{watched}}}", f"rbac.publishNamespaces={{{publish_to}}}"] \
            if self.namespaced else []
        values.append(f"operator.logLevel={self.log_level}")
        return [*values, "peering.enabled=true"] if self.peering else values


MODES = [ChartMode("cluster-wide"), ChartMode("namespaced", namespaced=True),
         ChartMode("cluster-wide-peering", peering=True),
         ChartMode("namespaced-peering", namespaced=True, peering=True, log_level="debug")]


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
        operator_env = release_operator_env(manifest)
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
    severities = {record.get("severity") for record in log_records(operator)}
    assert ("debug" in severities) == (release.mode.log_level == "debug"), (
        f"operator.logLevel={release.mode.log_level}, logged {sorted(map(str, severities))}")


@pytest.fixture
def default_release(dev_env: DevEnvironment, chart_prerequisites: None) -> Iterator[None]:
    """The chart installed with its defaults (as the local environment needs them), uninstalled after."""
    install_chart(dev_env)
    try:
        yield
    finally:
        uninstall_chart(dev_env)


def crd_metadata(dev_env: DevEnvironment) -> dict | None:
    result = dev_env.kube.kubectl("get", "crd", "servicekeys.servicekey.io", "-o", "json", check=False)
    return json.loads(result.stdout)["metadata"] if result.returncode == 0 else None


def test_the_release_owns_the_crd_and_helm_uninstall_leaves_it_and_the_servicekeys(
        dev_env: DevEnvironment, chart_prerequisites: None, servicekeys: ServiceKeys):
    """The chart's CRD template takes over the CRD the session installed (as a user's upgrade from a chart with
    crds/ does), and the keep annotation has `helm uninstall` leave it, and with it every ServiceKey."""
    install_chart(dev_env)
    try:
        metadata = crd_metadata(dev_env)
        assert metadata is not None
        assert metadata["labels"]["app.kubernetes.io/managed-by"] == "Helm"
        assert metadata["labels"]["app.kubernetes.io/instance"] == RELEASE
        assert metadata["annotations"]["meta.helm.sh/release-name"] == RELEASE
        assert metadata["annotations"]["meta.helm.sh/release-namespace"] == NAMESPACE
        assert metadata["annotations"]["helm.sh/resource-policy"] == "keep"
        manifest = helm(dev_env, "get", "manifest", RELEASE, "--namespace", NAMESPACE).stdout
        assert "kind: CustomResourceDefinition" in manifest
        servicekeys.create("outlives", {"algorithm": "ES256"})
    finally:
        uninstall_chart(dev_env)

    assert crd_metadata(dev_env) is not None, "helm uninstall deleted the CRD, and every ServiceKey with it"
    assert servicekeys.get("outlives") is not None
    servicekeys.delete("outlives")  # no operator: its finalizer never came


EDIT_VERBS = ("create", "update", "patch", "delete", "get", "list", "watch")
VIEW_VERBS = ("get", "list", "watch")


def test_namespace_editors_manage_servicekeys_and_viewers_read_them(
        dev_env: DevEnvironment, default_release: None, namespace: str,
        make_namespace: MakeNamespace):
    """Issue #17, item 4: the chart's ClusterRoles are aggregated to the built-in edit and view, so that a
    ServiceAccount bound to edit (or view) in a namespace by a RoleBinding gets the rights there, and only there;
    never on the status or the finalizers."""
    kubectl = dev_env.kube.kubectl
    for account, role in (("tenant-editor", "edit"), ("tenant-viewer", "view")):
        kubectl("create", "serviceaccount", account, "-n", namespace)
        kubectl("create", "rolebinding", account, f"--clusterrole={role}", f"--serviceaccount={namespace}:{account}",
                "-n", namespace)

    def can(account: str, verb: str, *flags: str, where: str = namespace) -> bool:
        answer = kubectl("auth", "can-i", verb, "servicekeys.servicekey.io", "-n", where,
                         f"--as=system:serviceaccount:{namespace}:{account}", *flags, check=False)
        return answer.stdout.strip() == "yes"

    # The controller manager's clusterrole-aggregation controller folds the chart's rules into edit and view.
    wait_for(lambda: can("tenant-editor", "create") and can("tenant-viewer", "list"), 30,
             "the chart's ClusterRoles to be aggregated to edit and view")
    assert {verb: can("tenant-editor", verb) for verb in EDIT_VERBS} == dict.fromkeys(EDIT_VERBS, True)
    assert {verb: can("tenant-viewer", verb) for verb in EDIT_VERBS} == {
        verb: verb in VIEW_VERBS for verb in EDIT_VERBS}
    for account in ("tenant-editor", "tenant-viewer"):
        for subresource in ("status", "finalizers"):
            for verb in ("update", "patch"):
                assert not can(account, verb, f"--subresource={subresource}"), (account, verb, subresource)
    elsewhere = make_namespace()
    assert not can("tenant-editor", "create", where=elsewhere), "a RoleBinding grants its namespace only"
    assert not can("tenant-viewer", "list", where=elsewhere)

    # And for real, through the API server's authorization of each identity.
    editor, viewer = (f"--as=system:serviceaccount:{namespace}:{account}"
                      for account in ("tenant-editor", "tenant-viewer"))
    key = {"apiVersion": "servicekey.io/v1alpha1", "kind": "ServiceKey",
           "metadata": {"name": "tenant-made", "namespace": namespace}, "spec": {"algorithm": "ES256"}}
    kubectl("create", "-f", "-", editor, input_text=yaml.safe_dump(key))
    assert "tenant-made" in kubectl("get", "sk", "-n", namespace, "-o", "name", viewer).stdout
    refused = kubectl("delete", "sk", "tenant-made", "-n", namespace, viewer, check=False)
    assert refused.returncode != 0 and "forbidden" in refused.stderr.lower(), refused.stderr
    kubectl("annotate", "sk", "tenant-made", "-n", namespace, "servicekey.io/rotate=tenant", editor)
    kubectl("delete", "sk", "tenant-made", "-n", namespace, "--wait=false", editor)


def log_records(operator: OperatorProcess) -> list[dict]:
    """The operator's JSON log records (the chart sets SERVICEKEY_LOG_FORMAT=json)."""
    records = []
    for line in operator.log_text().splitlines():
        if line.startswith("{"):
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records


def refusals(operator: OperatorProcess) -> list[str]:
    """The operator's log lines about a request the API server refused (RBAC or the admission policy)."""
    return [line for line in operator.log_text().splitlines() if "Forbidden" in line]
