"""Publishing public keys into other namespaces that opted in (publicKey.namespaces / namespaceSelector)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import kubernetes.client
import pytest
from kubernetes.client.rest import ApiException

from devcluster.operator_process import OperatorProcess
from tests.support import MakeNamespace, ServiceKeys, wait_for

pytestmark = pytest.mark.integration


def _copy_kid(servicekeys: ServiceKeys, namespace: str, name: str = "shared-public") -> str | None:
    configmap = servicekeys.configmap(name, namespace)
    return configmap.data["kid"] if configmap else None


def test_publishes_only_into_namespaces_that_opted_in(operator: OperatorProcess, servicekeys: ServiceKeys,
                                                      make_namespace: MakeNamespace):
    accepting = make_namespace(accept_from=servicekeys.namespace)
    accepting_all = make_namespace(accept_from="*")
    refusing = make_namespace()
    other_source_only = make_namespace(accept_from="somebody-else")

    servicekeys.create("shared", {"algorithm": "ES256", "publicKey": {
        "namespaces": [accepting, accepting_all, refusing, other_source_only, "does-not-exist"]}})
    status = servicekeys.wait_ready("shared")["status"]

    assert sorted(status["publishedNamespaces"]) == sorted([accepting, accepting_all])
    assert {(r["namespace"], r["reason"]) for r in status["refusedNamespaces"]} == {
        (refusing, "NotAccepted"), (other_source_only, "NotAccepted"), ("does-not-exist", "NotAccepted")}
    source = servicekeys.configmap("shared-public")
    for namespace in (accepting, accepting_all):
        copy = servicekeys.configmap("shared-public", namespace)
        assert copy.data == source.data
        assert copy.metadata.labels["servicekey.io/source-namespace"] == servicekeys.namespace
        assert not copy.metadata.owner_references
    assert servicekeys.configmap("shared-public", refusing) is None


def test_copies_follow_the_selector_as_namespaces_are_labelled_and_unlabelled(
        operator: OperatorProcess, servicekeys: ServiceKeys, make_namespace: MakeNamespace,
        core_api: kubernetes.client.CoreV1Api):
    target = make_namespace(accept_from=servicekeys.namespace)
    servicekeys.create("shared", {"algorithm": "EdDSA", "publicKey": {
        "namespaceSelector": {"matchLabels": {"team": "checkout"}}}})
    kid = servicekeys.wait_ready("shared")["status"]["keyId"]
    assert _copy_kid(servicekeys, target) is None

    core_api.patch_namespace(target, {"metadata": {"labels": {"team": "checkout"}}})
    wait_for(lambda: _copy_kid(servicekeys, target) == kid, 20, "the copy to appear after labelling")

    core_api.patch_namespace(target, {"metadata": {"labels": {"team": None}}})
    wait_for(lambda: _copy_kid(servicekeys, target) is None, 20, "the copy to go after unlabelling")
    wait_for(lambda: not servicekeys.get("shared")["status"].get("publishedNamespaces"), 10, "status to follow")


def test_a_foreign_configmap_in_a_target_namespace_is_untouched(operator: OperatorProcess, servicekeys: ServiceKeys,
                                                                make_namespace: MakeNamespace,
                                                                core_api: kubernetes.client.CoreV1Api):
    target = make_namespace(accept_from="*")
    core_api.create_namespaced_config_map(target, {"metadata": {"name": "shared-public"}, "data": {"mine": "yes"}})

    servicekeys.create("shared", {"algorithm": "ES256", "publicKey": {"namespaces": [target]}})
    status = servicekeys.wait_ready("shared")["status"]

    assert status["refusedNamespaces"] == [{"namespace": target, "reason": "ConfigMapConflict"}]
    assert servicekeys.configmap("shared-public", target).data == {"mine": "yes"}


def test_rotation_updates_every_copy_and_a_pod_that_mounts_a_copy_is_admitted(
        operator: OperatorProcess, servicekeys: ServiceKeys, make_namespace: MakeNamespace,
        core_api: kubernetes.client.CoreV1Api):
    # No kubelet here: that a pod really reads a mounted copy is tests/e2e/test_node.py's business.
    targets = [make_namespace(accept_from=servicekeys.namespace) for _ in range(2)]
    servicekeys.create("shared", {"algorithm": "ES256", "publicKey": {"namespaces": targets}})
    old_kid = servicekeys.wait_ready("shared")["status"]["keyId"]

    servicekeys.patch("shared", {"metadata": {"annotations": {"servicekey.io/rotate": "now"}}})
    new_kid = servicekeys.wait_new_kid("shared", old_kid)["status"]["keyId"]

    for namespace in targets:
        wait_for(lambda ns=namespace: _copy_kid(servicekeys, ns) == new_kid, 10, f"the copy in {namespace} to rotate")
    assert servicekeys.kids("shared-public") == [new_kid, old_kid]
    wait_for(lambda: core_api.list_namespaced_service_account(targets[0]).items, 30, "the default ServiceAccount")
    pod = core_api.create_namespaced_pod(targets[0], {
        "metadata": {"name": "verifier"},
        "spec": {"containers": [{"name": "verifier", "image": "example.invalid/verifier:1",
                                 "volumeMounts": [{"name": "keys", "mountPath": "/etc/servicekey"}]}],
                 "volumes": [{"name": "keys", "configMap": {"name": "shared-public"}}]}})
    assert pod.spec.volumes[0].config_map.name == "shared-public"


def test_deleting_the_servicekey_removes_every_copy(operator: OperatorProcess, servicekeys: ServiceKeys,
                                                    make_namespace: MakeNamespace):
    targets = [make_namespace(accept_from="*") for _ in range(2)]
    servicekeys.create("shared", {"algorithm": "ES256", "publicKey": {"namespaces": targets}})
    servicekeys.wait_ready("shared")

    servicekeys.delete("shared")
    servicekeys.wait_gone("shared")

    for namespace in targets:
        assert servicekeys.configmap("shared-public", namespace) is None


def test_deleting_a_target_namespace_does_not_wedge_the_operator(operator: OperatorProcess,
                                                                 servicekeys: ServiceKeys,
                                                                 make_namespace: MakeNamespace,
                                                                 core_api: kubernetes.client.CoreV1Api):
    target = make_namespace(accept_from="*")
    servicekeys.create("shared", {"algorithm": "ES256", "publicKey": {"namespaces": [target]}})
    assert servicekeys.wait_ready("shared")["status"]["publishedNamespaces"] == [target]

    core_api.delete_namespace(target)

    def refused_as_gone() -> bool:
        status = servicekeys.get("shared")["status"]
        reasons = {r["reason"] for r in status.get("refusedNamespaces") or []}
        return not status.get("publishedNamespaces") and bool(reasons & {"NotAccepted", "NamespaceTerminating"})
    wait_for(refused_as_gone, 60, "status to report the deleted namespace")
    servicekeys.create("after", {"algorithm": "EdDSA"})
    servicekeys.wait_ready("after")


@pytest.fixture
def configmaps_denied_in(kube_client: kubernetes.client.ApiClient,
                         core_api: kubernetes.client.CoreV1Api) -> Iterator[Callable[[str], None]]:
    """Deny every ConfigMap create, update and delete in the namespaces given, with a ValidatingAdmissionPolicy
    (as an admin of that namespace's tenant would), and wait until the API server enforces it."""
    admission = kubernetes.client.AdmissionregistrationV1Api(kube_client)
    marker = f"deny-{uuid.uuid4().hex[:8]}"
    admission.create_validating_admission_policy({
        "metadata": {"name": marker},
        "spec": {"failurePolicy": "Fail",
                 "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
                                                         "operations": ["CREATE", "UPDATE", "DELETE"],
                                                         "resources": ["configmaps"]}]},
                 "validations": [{"expression": "false", "message": "no ConfigMaps here, by order of the admin"}]}})
    admission.create_validating_admission_policy_binding({
        "metadata": {"name": marker},
        "spec": {"policyName": marker, "validationActions": ["Deny"],
                 "matchResources": {"namespaceSelector": {"matchLabels": {"servicekey-test": marker}}}}})

    def deny(namespace: str) -> None:
        core_api.patch_namespace(namespace, {"metadata": {"labels": {"servicekey-test": marker}}})

        def denied() -> bool:
            try:
                core_api.create_namespaced_config_map(namespace, {"metadata": {"name": f"probe-{uuid.uuid4().hex}"}})
            except ApiException as refused:
                return refused.status in (403, 422)
            return False
        wait_for(denied, 30, "the admission policy to be enforced")

    yield deny
    admission.delete_validating_admission_policy_binding(marker)
    admission.delete_validating_admission_policy(marker)


def test_a_target_that_refuses_the_copy_is_reported_alone_and_the_others_are_published(
        operator: OperatorProcess, servicekeys: ServiceKeys, make_namespace: MakeNamespace,
        configmaps_denied_in: Callable[[str], None]):
    # Issue #15.7: one refusing target used to end the whole pass with no status at all.
    refusing = make_namespace(accept_from=servicekeys.namespace, name=f"a-{uuid.uuid4().hex[:8]}")  # listed first
    refusing_later = make_namespace(accept_from=servicekeys.namespace, name=f"b-{uuid.uuid4().hex[:8]}")
    accepting = make_namespace(accept_from=servicekeys.namespace)
    configmaps_denied_in(refusing)

    servicekeys.create("shared", {"algorithm": "ES256",
                                  "publicKey": {"namespaces": [refusing, refusing_later, accepting]}})
    status = servicekeys.wait_ready("shared")["status"]

    assert status["publishedNamespaces"] == sorted([refusing_later, accepting])
    [refusal] = status["refusedNamespaces"]
    assert refusal["namespace"] == refusing and refusal["reason"] in ("Forbidden", "Invalid")
    assert "by order of the admin" in refusal["message"]
    wait_for(lambda: [e for e in servicekeys.events("shared") if e[:2] == ("Warning", "PublishRefused")
                      and refusing in e[2]], 30, "one Warning event about the refusing namespace")

    # A namespace that starts refusing keeps the copy it has (neither updated nor deleted); the others rotate.
    old_kid = status["keyId"]
    configmaps_denied_in(refusing_later)
    servicekeys.patch("shared", {"metadata": {"annotations": {"servicekey.io/rotate": "now"}}})
    new_kid = servicekeys.wait_new_kid("shared", old_kid)["status"]["keyId"]
    status = wait_for(lambda: (s := servicekeys.get("shared")["status"]) and len(s["refusedNamespaces"] or []) == 2
                      and s, 30, "both refusing namespaces in the status")

    assert status["publishedNamespaces"] == [accepting]
    assert {r["namespace"] for r in status["refusedNamespaces"]} == {refusing, refusing_later}
    assert _copy_kid(servicekeys, accepting) == new_kid
    assert _copy_kid(servicekeys, refusing_later) == old_kid
    assert _copy_kid(servicekeys, refusing) is None
