"""Least privilege, measured: the operator runs the whole lifecycle under the chart's RBAC and the shipped Vault
policy, and the audit logs of the API server and of OpenBao show that it used every right it was given, was
refused none, and read ConfigMaps only through the server-side label selector.

What cannot show in an audit log is named with its reason in ``NOT_REQUESTS``.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hvac
import kubernetes.client
import kubernetes.config
import pytest
import yaml
from kubernetes.client.rest import ApiException

from devcluster.chart import CHART_DIR, RELEASE, helm, install_chart, service_account_kubeconfig
from devcluster.chart import RELEASE_NAMESPACE as NAMESPACE
from devcluster.environment import REPO_ROOT, DevEnvironment
from devcluster.openbao import OpenBaoServer
from devcluster.operator_process import OperatorProcess
from tests.support import ServiceKeys, wait_for

pytestmark = pytest.mark.e2e
POLICY_FILE = REPO_ROOT / "deploy" / "vault" / "servicekey-operator-policy.hcl"
PEERING = "servicekey-operator"
# Rights that no request of the operator's uses, because the API server checks them on its behalf.
NOT_REQUESTS = {
    # OwnerReferencesPermissionEnforcement (enabled in the test cluster, as on OpenShift) checks it when a
    # ConfigMap with blockOwnerDeletion is created; without it that create is Forbidden.
    ("servicekey.io", "servicekeys/finalizers"): {"update"},
}
# Vault answers these without a policy path: any token with a capability below the mount may ask which engine
# the mount is (the operator checks that its KV mount is version 2 before anything else).
POLICY_FREE_VAULT_PATHS = re.compile(r"^sys/internal/ui/mounts/[^/]+$")
ConfigMapReads = list[str]


@dataclass
class Lifecycle:
    """What the lifecycle left behind: the audit logs to read."""

    kube_audit: list[dict[str, Any]]
    vault_audit: list[dict[str, Any]]
    cluster_role: dict[str, Any]
    operator_kubeconfig: Path
    namespace: str


def _kube_calls(entries: list[dict[str, Any]], user: str) -> tuple[dict[tuple[str, str], set[str]], list[str],
                                                                   ConfigMapReads]:
    """(apiGroup, resource[/subresource]) -> verbs the user was allowed, requests refused, ConfigMap reads."""
    used: dict[tuple[str, str], set[str]] = {}
    refused, configmap_reads = [], []
    for entry in entries:
        if entry.get("user", {}).get("username") != user or "objectRef" not in entry:
            continue
        ref = entry["objectRef"]
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        request = f"{entry['verb']} {entry['requestURI']}"
        if entry.get("responseStatus", {}).get("code") == 403:
            refused.append(request)
            continue
        used.setdefault((ref.get("apiGroup", ""), resource), set()).add(entry["verb"])
        if resource == "configmaps" and entry["verb"] in ("list", "watch"):
            configmap_reads.append(urllib.parse.unquote(entry["requestURI"]))
    return used, refused, configmap_reads


def _granted(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    return granted


def policy_paths(hcl: str) -> dict[str, set[str]]:
    """path pattern -> capabilities of an ACL policy (the shipped file's plain ``path "..." {...}`` blocks)."""
    blocks = re.findall(r'path\s+"([^"]+)"\s*\{\s*capabilities\s*=\s*\[([^\]]*)\]\s*\}', hcl)
    return {path: set(re.findall(r'"([^"]+)"', capabilities)) for path, capabilities in blocks}


def matching_pattern(patterns: list[str], path: str) -> str | None:
    """The policy pattern Vault applies to ``path``: an exact one, else the longest matching prefix glob."""
    if path in patterns:
        return path
    globs = [pattern for pattern in patterns if pattern.endswith("*") and path.startswith(pattern[:-1])]
    return max(globs, key=len, default=None)


@pytest.fixture(scope="module")
def audited_vault(dev_env: DevEnvironment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBaoServer]:
    """An OpenBao of this module's own, auditing every request to a file, with the shipped policy."""
    workdir = tmp_path_factory.mktemp("audited-openbao")
    server = OpenBaoServer(dev_env.binaries.bao, workdir, audit_log=workdir / "audit.log")
    try:
        server.start()
        server.create_policy("servicekey-operator", POLICY_FILE.read_text())
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def lifecycle(dev_env: DevEnvironment, audited_vault: OpenBaoServer, tmp_path_factory: pytest.TempPathFactory,
              kube_client: Any, core_api: Any) -> Iterator[Lifecycle]:
    """The chart installed with peering; one operator under its identity and the policy's token runs a lifecycle
    that touches every call: KV and Transit keys, a staged rotation, copies, a renamed and a drifted ConfigMap,
    deletion with Delete; then the audit logs are read."""
    workdir = tmp_path_factory.mktemp("least-privilege")
    # Other tests act as the chart's ServiceAccount too (kubectl probes of what it may not do): read only what
    # is logged from here on.
    audit_start = dev_env.kube.audit_log.stat().st_size if dev_env.kube.audit_log.exists() else 0
    for crd in sorted((CHART_DIR / "crds").glob("*.yaml")):
        dev_env.kube.kubectl("apply", "--server-side", "-f", str(crd))
    service_account = install_chart(dev_env, "peering.enabled=true", f"peering.name={PEERING}")
    kubeconfig = service_account_kubeconfig(dev_env, service_account, workdir / "kubeconfig")
    token = audited_vault.client().auth.token.create(policies=["servicekey-operator"], no_default_policy=True,
                                                     ttl="20s", renewable=True)["auth"]["client_token"]
    env = dict(dev_env.operator_env(), KUBECONFIG=str(kubeconfig), VAULT_ADDR=audited_vault.addr, VAULT_TOKEN=token,
               SERVICEKEY_PEERING=PEERING, SERVICEKEY_PEERING_LIFETIME="10", POD_ID="least-privilege")
    operator = OperatorProcess(env, workdir / "operator.log").start()
    source = f"lp-{workdir.name[-6:].lower().replace('_', '')}"
    target = f"{source}-copy"
    try:
        core_api.create_namespace({"metadata": {"name": source}})
        core_api.create_namespace({"metadata": {"name": target, "annotations": {"servicekey.io/accept-from": source}}})
        servicekeys = ServiceKeys(kube_client, source, dev_env)
        _run_lifecycle(servicekeys, target, audited_vault)
        assert "Forbidden" not in operator.log_text()
        role = next(doc for doc in yaml.safe_load_all(helm(
            dev_env, "get", "manifest", RELEASE, "--namespace", NAMESPACE).stdout)
            if doc and doc["kind"] == "ClusterRole")
        with dev_env.kube.audit_log.open() as audit:
            audit.seek(audit_start)
            kube_audit = [json.loads(line) for line in audit.read().splitlines() if line]
        yield Lifecycle(kube_audit=kube_audit,
                        vault_audit=[json.loads(line) for line in audited_vault.audit_log.read_text().splitlines()
                                     if line],
                        cluster_role=role, operator_kubeconfig=kubeconfig, namespace=target)
    finally:
        operator.stop()
        for namespace in (source, target):
            core_api.delete_namespace(namespace)
        helm(dev_env, "uninstall", RELEASE, "--namespace", NAMESPACE)


def _run_lifecycle(servicekeys: ServiceKeys, target: str, vault: OpenBaoServer) -> None:
    servicekeys.create("kv", {"algorithm": "ES256", "deletionPolicy": "Delete",
                              "rotation": {"publishAhead": "1s"}, "publicKey": {"namespaces": [target]}})
    servicekeys.create("transit", {"algorithm": "ES256", "deletionPolicy": "Delete", "vault": {"engine": "transit"}})
    first = {name: servicekeys.wait_ready(name)["status"]["keyId"] for name in ("kv", "transit")}
    for name in ("kv", "transit"):  # a staged rotation (kv) and a Transit rotation
        servicekeys.patch(name, {"metadata": {"annotations": {"servicekey.io/rotate": "least-privilege"}}})
        servicekeys.wait_new_kid(name, first[name], timeout=60)
    servicekeys.core.patch_namespaced_config_map("kv-public", servicekeys.namespace, {"data": {"kid": "edited"}})
    wait_for(lambda: servicekeys.configmap("kv-public").data["kid"] != "edited", 30, "the drift to be repaired")
    servicekeys.patch("kv", {"spec": {"publicKey": {"configMapName": "kv-renamed"}}})
    wait_for(lambda: servicekeys.configmap("kv-public") is None, 30, "the former ConfigMap to be removed")
    # The token lives 20 s and is renewed before a request once two thirds of that have passed: drifts make
    # passes, and so Vault requests, until one of them renewed it.
    assert vault.audit_log is not None

    def renewed_after_a_drift() -> bool:
        servicekeys.core.patch_namespaced_config_map("kv-renamed", servicekeys.namespace, {"data": {"kid": "drift"}})
        return "auth/token/renew-self" in vault.audit_log.read_text()
    wait_for(renewed_after_a_drift, 40, "the operator to renew its token", interval=2)
    for name in ("kv", "transit"):
        servicekeys.delete(name)
        servicekeys.wait_gone(name, timeout=60)
    with pytest.raises(hvac.exceptions.InvalidPath):
        vault.client().secrets.kv.v2.read_secret_metadata(path=f"servicekeys/{servicekeys.namespace}/kv",
                                                          mount_point="secret")


def test_the_operator_uses_every_kubernetes_right_the_chart_grants_and_needs_no_other(lifecycle: Lifecycle):
    user = f"system:serviceaccount:{NAMESPACE}:{RELEASE}"
    used, refused, _ = _kube_calls(lifecycle.kube_audit, user)
    granted = _granted(lifecycle.cluster_role)

    assert refused == []
    unused = {resource: sorted(verbs - used.get(resource, set()) - NOT_REQUESTS.get(resource, set()))
              for resource, verbs in granted.items()}
    unused = {resource: verbs for resource, verbs in unused.items() if verbs}
    assert unused == {}, f"granted but never used: {unused}; used: {used}"
    missing = {resource: verbs - granted.get(resource, set()) for resource, verbs in used.items()
               if verbs - granted.get(resource, set())}
    assert missing == {}


def test_the_operator_reads_configmaps_only_through_the_server_side_label_selector(lifecycle: Lifecycle):
    _, _, reads = _kube_calls(lifecycle.kube_audit, f"system:serviceaccount:{NAMESPACE}:{RELEASE}")

    assert reads, "the operator lists and watches its ConfigMaps"
    assert [uri for uri in reads if "labelSelector=app.kubernetes.io/managed-by=servicekey-operator" not in uri] == []


def test_the_operator_uses_every_capability_of_the_shipped_vault_policy_and_is_refused_none(lifecycle: Lifecycle):
    patterns = policy_paths(POLICY_FILE.read_text())
    used: dict[str, set[str]] = {}
    refused, unmatched = [], []
    for entry in lifecycle.vault_audit:
        auth, request = entry.get("auth") or {}, entry.get("request") or {}
        if "servicekey-operator" not in (auth.get("policies") or []):
            continue
        if entry.get("type") == "response" and "permission denied" in str(entry.get("error", "")):
            refused.append(f"{request.get('operation')} {request.get('path')}")
        if entry.get("type") != "request" or POLICY_FREE_VAULT_PATHS.match(request["path"]):
            continue
        pattern = matching_pattern(list(patterns), request["path"])
        if pattern is None:
            unmatched.append(f"{request['operation']} {request['path']}")
            continue
        used.setdefault(pattern, set()).add(request["operation"])

    assert refused == [] and unmatched == []
    assert {pattern: capabilities - used.get(pattern, set()) for pattern, capabilities in patterns.items()
            if capabilities - used.get(pattern, set())} == {}



def test_the_operators_identity_cannot_write_or_delete_a_configmap_that_is_not_labelled_as_ours(
        lifecycle: Lifecycle, core_api: kubernetes.client.CoreV1Api):
    configuration = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(config_file=str(lifecycle.operator_kubeconfig),
                                       client_configuration=configuration)
    as_operator = kubernetes.client.CoreV1Api(kubernetes.client.ApiClient(configuration))
    namespace = lifecycle.namespace
    foreign = core_api.create_namespaced_config_map(namespace, {"metadata": {"name": "theirs"}, "data": {"a": "b"}})
    ours = {"app.kubernetes.io/managed-by": "servicekey-operator"}

    refusals = []
    for attempt in (
            lambda: as_operator.create_namespaced_config_map(namespace, {"metadata": {"name": "unlabelled"}}),
            lambda: as_operator.replace_namespaced_config_map("theirs", namespace, {
                "metadata": {"name": "theirs", "labels": ours, "resourceVersion": foreign.metadata.resource_version},
                "data": {"a": "taken"}}),
            lambda: as_operator.delete_namespaced_config_map("theirs", namespace)):
        with pytest.raises(ApiException) as refused:
            attempt()
        refusals.append((refused.value.status, "may only" in refused.value.body))
    created = as_operator.create_namespaced_config_map(namespace, {"metadata": {"name": "labelled", "labels": ours}})

    assert refusals == [(403, True)] * 3
    assert core_api.read_namespaced_config_map("theirs", namespace).data == {"a": "b"}
    assert created.metadata.name == "labelled"
