"""The Helm chart and the kustomize base, checked locally with nothing but the helm binary.

These tests render the chart (`helm lint`, `helm template`) and read the files; none needs a cluster.
What they defend: the chart renders with its defaults and with every documented value, its schema
rejects bad values, its CRD template renders to the repository's CRD (plus the keep annotation and the chart's
labels) and is what hack/sync-chart-crds.sh writes, its RBAC never touches Secrets and has no wildcards, tenants'
ClusterRoles are aggregated to edit and view, the operator pod runs under the "restricted" Pod Security Standard,
the README's values table is in step with values.yaml, and deploy/kustomize/base is the chart's default render.
Issue #17: kubeVersion, global.imagePullSecrets, operator.logLevel, extra volumes, mounts and environment. The JWKS
server (issue #16) is on by default with its own Deployment (2 replicas, a PDB), ServiceAccount, list/watch-only
RBAC on ConfigMaps, Service, NetworkPolicy and ServiceMonitor, and runs under the same restricted security
contexts; switched off, none of it renders.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.chart import (
    CHART_CRD_TEMPLATE,
    CHART_DIR,
    CLUSTER_ONLY_RULES,
    CONTRACT_ENV,
    FULL_VALUES,
    JWKS_RULES,
    KUSTOMIZE_BASE,
    NAMESPACE,
    PEERING_VERBS,
    RELEASE,
    REPO_ROOT,
    SERVING_RULES,
    SOURCE_CRD,
    TENANT_ROLES,
    env_of,
    is_jwks,
    is_tenant_role,
    is_uninstall_hook,
    jwks_container,
    jwks_docs,
    key_of,
    merged,
    of_kind,
    only,
    operator_container,
    operator_docs,
    render,
    rules_by_resource,
    run_helm,
    serving_docs,
    values_args,
)

# ----------------------------------------------------------------------------------------------------
# values.yaml documentation (helm-docs style: "# --" opens a value's description)
# ----------------------------------------------------------------------------------------------------

KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_]+):(?P<rest>.*)$")


def documented_values() -> dict[str, str]:
    """Dotted path -> description of every value documented with '# --' in values.yaml."""
    documented: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    comment: list[str] = []
    for line in (CHART_DIR / "values.yaml").read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            comment = [stripped[len("# --"):].strip()]
            continue
        if stripped.startswith("#"):
            if comment:
                comment.append(stripped.lstrip("#").strip())
            continue
        match = KEY_LINE.match(line)
        if not match:
            if not stripped:
                comment = []
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([key for _, key in stack] + [match["key"]])
        if comment:
            documented[path] = " ".join(comment)
        comment = []
        stack.append((indent, match["key"]))
    return documented


def lookup(values: dict[str, Any], dotted: str) -> Any:
    node: Any = values
    for part in dotted.split("."):
        assert isinstance(node, dict) and part in node, f"{dotted} is not set"
        node = node[part]
    return node


def helm_docs_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    return "object"


def readme_rows() -> dict[str, tuple[str, str, str]]:
    """Key -> (type, default, description) from the table under the README's "## Values" heading."""
    rows: dict[str, tuple[str, str, str]] = {}
    readme = (CHART_DIR / "README.md").read_text()
    assert "\n## Values\n" in readme, "the chart README has no '## Values' section"
    values_section = readme.split("\n## Values\n", 1)[1].split("\n## ", 1)[0]
    for line in values_section.splitlines():
        if not line.startswith("| ") or line.startswith(("| Key ", "|---")):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        assert len(cells) == 4, f"README values row is not Key | Type | Default | Description: {line}"
        rows[cells[0]] = (cells[1], cells[2], cells[3])
    return rows


# ----------------------------------------------------------------------------------------------------
# helm lint and rendering
# ----------------------------------------------------------------------------------------------------

def test_chart_passes_helm_lint_with_defaults_and_with_every_value(helm_bin, tmp_path):
    for values in (None, FULL_VALUES):
        result = run_helm(helm_bin, "lint", str(CHART_DIR), "--strict", "--namespace", NAMESPACE,
                          *values_args(tmp_path, values))
        assert result.returncode == 0, f"helm lint failed:\n{result.stdout}\n{result.stderr}"


def test_default_render_is_a_cluster_wide_standalone_operator(helm_bin, tmp_path):
    docs = render(helm_bin, tmp_path)

    kinds = sorted(doc["kind"] for doc in serving_docs(docs))
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "Deployment", "NetworkPolicy", "Service", "ServiceAccount",
                     "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"]
    assert only(docs, "CustomResourceDefinition")["metadata"]["name"] == "servicekeys.servicekey.io"
    assert sorted(doc["metadata"]["name"] for doc in docs if is_tenant_role(doc)) == [
        "servicekey-operator-edit", "servicekey-operator-view"]
    assert sorted(doc["kind"] for doc in jwks_docs(docs)) == [
        "ClusterRole", "ClusterRoleBinding", "Deployment", "NetworkPolicy", "PodDisruptionBudget", "Service",
        "ServiceAccount"], "the JWKS server is on by default"
    deployment = only(operator_docs(docs), "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}, "one pod at a time without peering"
    assert operator_container(docs)["image"] == "servicekey-operator:0.1.0"
    for doc in docs:
        if doc["kind"] not in ("ClusterRole", "ClusterRoleBinding", "ValidatingAdmissionPolicy",
                               "ValidatingAdmissionPolicyBinding", "CustomResourceDefinition"):
            assert doc["metadata"]["namespace"] == NAMESPACE, f"{doc['kind']} not in {NAMESPACE}"


def test_by_default_only_the_monitoring_namespace_may_scrape_metrics_and_egress_is_open(helm_bin, tmp_path):
    # /metrics names every tenant's ServiceKeys (issue #13).
    policy = only(operator_docs(render(helm_bin, tmp_path)), "NetworkPolicy")["spec"]

    assert policy["policyTypes"] == ["Ingress"]
    assert policy["ingress"] == [{"ports": [{"port": "metrics", "protocol": "TCP"}], "from": [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]}]


def test_an_empty_metrics_allow_list_lets_nobody_scrape(helm_bin, tmp_path):
    policy = only(operator_docs(render(helm_bin, tmp_path, {"networkPolicy": {"metrics": {"from": []}}})),
                  "NetworkPolicy")["spec"]

    assert policy["policyTypes"] == ["Ingress"] and policy["ingress"] == []


def test_the_admission_policy_confines_the_operators_configmap_writes_to_its_own_label(helm_bin, tmp_path):
    docs = render(helm_bin, tmp_path)
    policy = only(docs, "ValidatingAdmissionPolicy")["spec"]
    binding = only(docs, "ValidatingAdmissionPolicyBinding")["spec"]

    assert policy["matchConditions"] == [{
        "name": "the-operators-service-account",
        "expression": f"request.userInfo.username == 'system:serviceaccount:{NAMESPACE}:servicekey-operator'"}]
    assert policy["matchConstraints"]["resourceRules"][0]["resources"] == ["configmaps"]
    assert {"CREATE", "UPDATE", "DELETE"} == set(policy["matchConstraints"]["resourceRules"][0]["operations"])
    assert binding == {"policyName": "servicekey-operator-configmaps", "validationActions": ["Deny"]}
    assert {doc["kind"] for doc in render(helm_bin, tmp_path, {"admissionPolicy": {"enabled": False}})}.isdisjoint(
        {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"})


def test_default_render_configures_the_operator_by_its_environment_contract(helm_bin, tmp_path):
    docs = render(helm_bin, tmp_path)

    env = env_of(docs)
    assert set(env) <= CONTRACT_ENV, f"not in the contract: {set(env) - CONTRACT_ENV}"
    assert env == {
        "VAULT_ADDR": "https://vault.vault.svc:8200",
        "SERVICEKEY_VAULT_AUTH_METHOD": "kubernetes",
        "SERVICEKEY_VAULT_ROLE": "servicekey-operator",
        "SERVICEKEY_VAULT_SA_TOKEN_FILE": "/var/run/secrets/servicekey/vault-sa/token",
        "SERVICEKEY_KV_MOUNT": "secret",
        "SERVICEKEY_TRANSIT_MOUNT": "transit",
        "SERVICEKEY_PATH_PREFIX": "servicekeys",
        "SERVICEKEY_WATCH_NAMESPACES": "",
        "SERVICEKEY_METRICS_PORT": "8080",
        "SERVICEKEY_HEALTH_PORT": "8081",
        "SERVICEKEY_LOG_FORMAT": "json",
        "SERVICEKEY_LOG_LEVEL": "info",
        "SERVICEKEY_PEERING": "",
        "SERVICEKEY_PEERING_LIFETIME": "20",
        "POD_ID": None,  # from the downward API: kopf's peering identity
    }


def test_kubernetes_auth_uses_a_projected_token_for_vaults_audience(helm_bin, tmp_path):
    docs = render(helm_bin, tmp_path)

    pod = only(operator_docs(docs), "Deployment")["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    token_source = volumes["vault-sa-token"]["projected"]["sources"][0]["serviceAccountToken"]
    assert token_source == {"path": "token", "audience": "vault", "expirationSeconds": 3600}
    mounts = {m["name"]: m for m in operator_container(docs)["volumeMounts"]}
    assert mounts["vault-sa-token"] == {"name": "vault-sa-token", "readOnly": True,
                                        "mountPath": "/var/run/secrets/servicekey/vault-sa"}


def test_kubernetes_auth_without_audience_uses_the_pods_own_token(helm_bin, tmp_path):
    docs = render(helm_bin, tmp_path, {"vault": {"auth": {"kubernetes": {"tokenAudience": ""}}}})

    assert env_of(docs)["SERVICEKEY_VAULT_SA_TOKEN_FILE"] == "/var/run/secrets/kubernetes.io/serviceaccount/token"
    volume_names = {v["name"] for v in only(operator_docs(docs), "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert volume_names == {"tmp"}


@pytest.mark.parametrize("method", ["kubernetes", "approle", "token"])
def test_every_documented_value_renders(helm_bin, tmp_path, method):
    values = merged(FULL_VALUES, {"vault": {"auth": {"method": method}}})
    docs = render(helm_bin, tmp_path, values)

    kinds = {doc["kind"] for doc in docs}
    assert {"ServiceMonitor", "PodDisruptionBudget", "NetworkPolicy", "Role", "RoleBinding",
            "KopfPeering"} <= kinds
    env = env_of(docs)
    assert set(env) <= CONTRACT_ENV | {"HTTPS_PROXY", "REQUESTS_CA_BUNDLE"}
    assert env["SERVICEKEY_WATCH_NAMESPACES"] == "payments,orders"
    assert env["SERVICEKEY_PEERING"] == "servicekeys"
    assert env["SERVICEKEY_METRICS_PORT"] == "9090"
    assert env["VAULT_CACERT"] == "/etc/servicekey/vault-ca/ca.crt"
    assert env["VAULT_CLIENT_CERT"] == "/etc/servicekey/vault-client/tls.crt"
    assert env["SERVICEKEY_VAULT_AUTH_METHOD"] == method
    expected_credential_env = {
        "kubernetes": {"SERVICEKEY_VAULT_ROLE", "SERVICEKEY_VAULT_SA_TOKEN_FILE"},
        "approle": {"SERVICEKEY_VAULT_ROLE_ID_FILE", "SERVICEKEY_VAULT_SECRET_ID_FILE"},
        "token": {"VAULT_TOKEN_FILE"},
    }
    for other, names in expected_credential_env.items():
        assert (names <= set(env)) == (other == method), f"{other} credentials with method {method}"
    assert operator_container(docs)["image"].endswith("@sha256:" + "ab" * 32)
    assert only(operator_docs(docs), "Deployment")["spec"]["strategy"]["type"] == "RollingUpdate"
    assert {doc["kind"] for doc in jwks_docs(docs)} >= {"Deployment", "ServiceMonitor", "PodDisruptionBudget",
                                                        "Role", "RoleBinding", "NetworkPolicy", "Service"}


def test_approle_credentials_come_from_the_users_secret_as_files(helm_bin, tmp_path):
    docs = render(helm_bin, tmp_path, {"vault": {"auth": {
        "method": "approle", "approle": {"secretName": "vault-approle"}}}})

    pod = only(operator_docs(docs), "Deployment")["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert volumes["vault-approle"]["secret"]["secretName"] == "vault-approle"
    assert volumes["vault-approle"]["secret"]["items"] == [
        {"key": "role-id", "path": "role-id"}, {"key": "secret-id", "path": "secret-id"}]
    env = env_of(docs)
    assert env["SERVICEKEY_VAULT_ROLE_ID_FILE"] == "/etc/servicekey/vault-approle/role-id"
    assert env["SERVICEKEY_VAULT_SECRET_ID_FILE"] == "/etc/servicekey/vault-approle/secret-id"


def test_every_documented_value_is_exercised_by_the_full_render():
    documented = documented_values()

    assert documented, "values.yaml documents nothing"
    for path in documented:
        assert lookup(FULL_VALUES, path) is not None, path


def test_peering_cluster_wide_creates_its_peering_object_and_rights(helm_bin, tmp_path):
    docs = render(helm_bin, tmp_path, {"replicaCount": 2, "peering": {"enabled": True}})

    peering = only(docs, "ClusterKopfPeering")
    assert peering["apiVersion"] == "kopf.dev/v1"
    assert peering["metadata"]["name"] == "servicekey-operator"
    rules = rules_by_resource(only(serving_docs(docs), "ClusterRole"))
    assert rules[("kopf.dev", "clusterkopfpeerings")] == PEERING_VERBS
    assert only(operator_docs(docs), "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    assert env_of(docs)["SERVICEKEY_PEERING"] == "servicekey-operator"


def test_chart_ships_the_kopf_peering_crds_in_crds_and_its_own_as_a_template(helm_bin, tmp_path):
    """kopf's peering CRDs stay in crds/: Helm installs them when absent and never touches them, as they are shared
    with every other kopf operator of the cluster (a template would have to belong to one release). The ServiceKey
    CRD is a template, so that `helm upgrade` upgrades it."""
    crds = [doc for path in sorted((CHART_DIR / "crds").glob("*.yaml"))
            for doc in yaml.safe_load_all(path.read_text()) if doc]

    names = {crd["metadata"]["name"]: crd["spec"]["scope"] for crd in crds}
    assert names == {"clusterkopfpeerings.kopf.dev": "Cluster", "kopfpeerings.kopf.dev": "Namespaced"}
    assert [doc["metadata"]["name"] for doc in of_kind(render(helm_bin, tmp_path), "CustomResourceDefinition")] == [
        "servicekeys.servicekey.io"]


def render_notes(helm_bin: Path, tmp_path: Path, values: dict[str, Any] | None = None) -> str:
    """NOTES.txt as `helm install` would print it, rendered offline.

    `helm install --dry-run` needs a reachable cluster, so a copy of the chart renders NOTES.txt
    through `tpl` into a ConfigMap that `helm template` can show.
    """
    chart_copy = tmp_path / "chart"
    shutil.copytree(CHART_DIR, chart_copy)
    (chart_copy / "files").mkdir()
    (chart_copy / "templates" / "NOTES.txt").rename(chart_copy / "files" / "NOTES.txt")
    (chart_copy / "templates" / "zz-rendered-notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: rendered-notes\n"
        "data:\n  notes: {{ tpl (.Files.Get \"files/NOTES.txt\") . | toJson }}\n")
    result = run_helm(helm_bin, "template", RELEASE, str(chart_copy), "--namespace", NAMESPACE,
                      "--show-only", "templates/zz-rendered-notes.yaml", *values_args(tmp_path, values))
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)["data"]["notes"]


NOTES_BY_AUTH_METHOD = {
    "kubernetes": ({}, "vault write auth/kubernetes/role/servicekey-operator"),
    "approle": ({"approle": {"secretName": "vault-approle"}}, "create secret generic vault-approle"),
    "token": ({"token": {"secretName": "vault-token"}}, "create secret generic vault-token"),
}


@pytest.mark.parametrize("method", NOTES_BY_AUTH_METHOD)
def test_notes_tell_what_to_do_next(helm_bin, tmp_path, method):
    auth_values, login_step = NOTES_BY_AUTH_METHOD[method]

    notes = render_notes(helm_bin, tmp_path, {"vault": {"auth": {"method": method, **auth_values}}})

    for expected in ("vault policy write servicekey-operator deploy/vault/servicekey-operator-policy.hcl",
                     login_step, "kubectl apply -f deploy/examples/servicekey-rs256.yaml", "kubectl get sk",
                     "rollout status deployment/servicekey-operator"):
        assert expected in notes, f"NOTES lack {expected!r}:\n{notes}"


# ----------------------------------------------------------------------------------------------------
# The schema rejects bad values
# ----------------------------------------------------------------------------------------------------

BAD_VALUES = {
    "unknown auth method": ({"vault": {"auth": {"method": "magic"}}}, "method"),
    "metrics port out of range": ({"operator": {"metricsPort": 70000}}, "metricsPort"),
    "port given as a string": ({"operator": {"healthPort": "8081"}}, "healthPort"),
    "unknown top-level key": ({"replicas": 2}, "replicas"),
    "unknown uninstall mode": ({"uninstall": {"serviceKeys": "delete"}}, "serviceKeys"),
    "misspelt nested key": ({"vault": {"adress": "https://vault:8200"}}, "adress"),
    "unknown log format": ({"operator": {"logFormat": "xml"}}, "logFormat"),
    "vault address without scheme": ({"vault": {"address": "vault:8200"}}, "address"),
    "several replicas without peering": ({"replicaCount": 2}, "enabled"),
    "approle without its secret": ({"vault": {"auth": {"method": "approle"}}}, "secretName"),
    "token method without its secret": ({"vault": {"auth": {"method": "token"}}}, "secretName"),
    "CA bundle source without a name": ({"vault": {"caBundle": {"source": "configMap"}}}, "name"),
    "unknown CA bundle source": ({"vault": {"caBundle": {"source": "vault", "name": "x"}}}, "source"),
    "unknown pull policy": ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
    "scrape interval that is no duration": ({"serviceMonitor": {"interval": "soon"}}, "interval"),
    "watch namespace that is no DNS label": ({"watchNamespaces": ["Payments"]}, "watchNamespaces"),
    "short-lived projected token": (
        {"vault": {"auth": {"kubernetes": {"tokenExpirationSeconds": 60}}}}, "tokenExpirationSeconds"),
    "JWKS server without replicas": ({"jwksServer": {"replicaCount": 0}}, "replicaCount"),
    "JWKS max-age given as a string": ({"jwksServer": {"maxAge": "60"}}, "maxAge"),
    "JWKS max-age of days": ({"jwksServer": {"maxAge": 86400}}, "maxAge"),
    "JWKS base URL without scheme": ({"jwksServer": {"baseUrl": "keys.example.test"}}, "baseUrl"),
    "JWKS TLS secret that is no name": ({"jwksServer": {"tls": {"secretName": "Not A Name"}}}, "secretName"),
    "misspelt JWKS key": ({"jwksServer": {"replicas": 3}}, "replicas"),
    "misspelt crds key": ({"crds": {"keeep": False}}, "keeep"),
    "crds.enabled given as a string": ({"crds": {"enabled": "false"}}, "enabled"),
    "unknown log level": ({"operator": {"logLevel": "verbose"}}, "logLevel"),
    "log level in capitals": ({"operator": {"logLevel": "DEBUG"}}, "logLevel"),
    "hostPath extra volume": (
        {"operator": {"extraVolumes": [{"name": "host", "hostPath": {"path": "/etc"}}]}}, "hostPath"),
    "extra volume named like one of the chart's": (
        {"operator": {"extraVolumes": [{"name": "tmp", "emptyDir": {}}]}}, "extraVolumes"),
    "extra volume without a source": ({"operator": {"extraVolumes": [{"name": "ca"}]}}, "extraVolumes"),
    "extra volume mount without a path": (
        {"operator": {"extraVolumeMounts": [{"name": "ca", "readOnly": True}]}}, "mountPath"),
    "extra volume mount with a relative path": (
        {"operator": {"extraVolumeMounts": [{"name": "ca", "mountPath": "etc/ca"}]}}, "mountPath"),
    "envFrom with two sources in one item": (
        {"operator": {"envFrom": [{"configMapRef": {"name": "a"}, "secretRef": {"name": "b"}}]}}, "envFrom"),
    "envFrom without a source": ({"operator": {"envFrom": [{"prefix": "X_"}]}}, "envFrom"),
    "misspelt envFrom key": ({"operator": {"envFrom": [{"configMap": {"name": "a"}}]}}, "envFrom"),
    "global pull secret that is no name": ({"global": {"imagePullSecrets": ["Not A Name"]}}, "imagePullSecrets"),
    "global pull secret without its name": ({"global": {"imagePullSecrets": [{"nam": "regcred"}]}},
                                            "imagePullSecrets"),
    "aggregateClusterRoles given as a string": ({"rbac": {"aggregateClusterRoles": "yes"}}, "aggregateClusterRoles"),
    "prometheusRule.enabled given as a string": ({"prometheusRule": {"enabled": "true"}}, "enabled"),
    "misspelt prometheusRule key": ({"prometheusRule": {"runbookURL": "https://x.test/t.md"}}, "runbookURL"),
    "alert labels that override the severity": (
        {"prometheusRule": {"additionalRuleLabels": {"severity": "info"}}}, "additionalRuleLabels"),
    "runbook base with its own fragment": ({"prometheusRule": {"runbookBaseURL": "https://x.test/t.md#a"}},
                                           "runbookBaseURL"),
    "misspelt grafanaDashboard key": ({"grafanaDashboard": {"folder": "Security"}}, "folder"),
    "dashboard label that is no string": ({"grafanaDashboard": {"labels": {"grafana_dashboard": 1}}},
                                          "grafana_dashboard"),
}


@pytest.mark.parametrize("bad", BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_schema_rejects_bad_values(helm_bin, tmp_path, bad):
    values, offending_key = bad

    result = run_helm(helm_bin, "template", RELEASE, str(CHART_DIR), "--namespace", NAMESPACE,
                      *values_args(tmp_path, values))

    assert result.returncode != 0, f"accepted {values}"
    assert "schema" in result.stderr, result.stderr
    assert offending_key in result.stderr, result.stderr


def test_equal_metrics_and_health_ports_are_rejected(helm_bin, tmp_path):
    result = run_helm(helm_bin, "template", RELEASE, str(CHART_DIR), "--namespace", NAMESPACE,
                      *values_args(tmp_path, {"operator": {"metricsPort": 8081}}))

    assert result.returncode != 0
    assert "metricsPort and operator.healthPort must differ" in result.stderr, result.stderr


# ----------------------------------------------------------------------------------------------------
# The CRD: a template of the repository's CRD, upgraded by `helm upgrade` (issue #17, item 1)
# ----------------------------------------------------------------------------------------------------

def test_chart_crd_template_is_what_the_sync_script_writes():
    result = subprocess.run(["bash", str(REPO_ROOT / "hack" / "sync-chart-crds.sh"), "--check"],
                            capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, (
        f"{CHART_CRD_TEMPLATE.relative_to(REPO_ROOT)} is stale or edited by hand: run hack/sync-chart-crds.sh, "
        f"then hack/render-deploy.sh\n{result.stderr}")


def expected_crd(docs: list[dict[str, Any]], keep: bool) -> dict[str, Any]:
    """The repository's CRD with the chart's labels (those of the operator's Deployment) added to its own, and the
    keep annotation."""
    crd = yaml.safe_load(SOURCE_CRD.read_text())
    chart_labels = only(serving_docs(docs), "Deployment")["metadata"]["labels"]
    crd["metadata"]["labels"] = {**chart_labels, **crd["metadata"].get("labels", {})}
    if keep:
        crd["metadata"]["annotations"] = {**crd["metadata"].get("annotations", {}), "helm.sh/resource-policy": "keep"}
    return crd


@pytest.mark.parametrize("values", [None, FULL_VALUES], ids=["defaults", "every-value"])
def test_chart_crd_renders_to_exactly_the_repository_crd_plus_keep_and_the_chart_labels(helm_bin, tmp_path, values):
    docs = render(helm_bin, tmp_path, values)

    keep = (values or {}).get("crds", {}).get("keep", True)
    assert only(docs, "CustomResourceDefinition") == expected_crd(docs, keep)
    # Its own name label, whatever nameOverride says: the CRD is the API's, not one release's.
    assert only(docs, "CustomResourceDefinition")["metadata"]["labels"]["app.kubernetes.io/name"] == \
        "servicekey-operator"


def test_crds_keep_false_drops_only_the_annotation_and_crds_enabled_false_the_crd(helm_bin, tmp_path):
    docs = render(helm_bin, tmp_path, {"crds": {"keep": False}})
    crd = only(docs, "CustomResourceDefinition")
    assert crd == expected_crd(docs, keep=False) and "annotations" not in crd["metadata"]

    without = render(helm_bin, tmp_path, {"crds": {"enabled": False}})
    assert not of_kind(without, "CustomResourceDefinition")
    assert sorted(map(key_of, without)) == sorted(key_of(doc) for doc in docs
                                                  if doc["kind"] != "CustomResourceDefinition")
    notes = render_notes(helm_bin, tmp_path, {"crds": {"enabled": False}})
    assert "kubectl apply --server-side -f crds/servicekey.io_servicekeys.yaml" in notes, notes


# ----------------------------------------------------------------------------------------------------
# Kubernetes version (issue #17, item 3)
# ----------------------------------------------------------------------------------------------------

def test_chart_needs_kubernetes_1_28_and_its_admission_policy_1_30(helm_bin, tmp_path):
    """The CRD's rules set reason and fieldPath (1.28); the ValidatingAdmissionPolicy is admissionregistration/v1
    (1.30), so below 1.30 it must be switched off, and the chart says so instead of failing at install."""
    def template(version: str, values: dict[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
        return run_helm(helm_bin, "template", RELEASE, str(CHART_DIR), "--namespace", NAMESPACE,
                        "--kube-version", version, *values_args(tmp_path, values))

    assert yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())["kubeVersion"] == ">=1.28.0-0"
    too_old = template("v1.27.16")
    assert too_old.returncode != 0 and "chart requires kubeVersion: >=1.28.0-0" in too_old.stderr, too_old.stderr
    for version in ("v1.28.0", "v1.29.9-eks-1234567"):
        refused = template(version)
        assert refused.returncode != 0, version
        assert "admissionPolicy.enabled needs Kubernetes 1.30+" in refused.stderr, refused.stderr
        assert template(version, {"admissionPolicy": {"enabled": False}}).returncode == 0, version
    rendered = template("v1.30.0")
    assert rendered.returncode == 0, rendered.stderr
    assert "kind: ValidatingAdmissionPolicy\n" in rendered.stdout


# ----------------------------------------------------------------------------------------------------
# Pull secrets, log level, extra volumes and environment (issue #17, item 3)
# ----------------------------------------------------------------------------------------------------

def pull_secrets(docs: list[dict[str, Any]]) -> dict[str, list[dict[str, str]] | None]:
    return {doc["metadata"]["name"]: doc["spec"]["template"]["spec"].get("imagePullSecrets")
            for doc in of_kind(docs, "Deployment")}


def test_global_image_pull_secrets_are_merged_into_both_pods(helm_bin, tmp_path):
    assert pull_secrets(render(helm_bin, tmp_path)) == {"servicekey-operator": None, JWKS: None}

    only_global = pull_secrets(render(helm_bin, tmp_path, {"global": {"imagePullSecrets": ["mirror", {"name": "b"}]}}))
    assert only_global == {"servicekey-operator": [{"name": "mirror"}, {"name": "b"}],
                           JWKS: [{"name": "mirror"}, {"name": "b"}]}

    both = pull_secrets(render(helm_bin, tmp_path, {"global": {"imagePullSecrets": [{"name": "mirror"}]},
                                                    "imagePullSecrets": [{"name": "regcred"}, {"name": "mirror"}]}))
    assert both == {"servicekey-operator": [{"name": "mirror"}, {"name": "regcred"}],
                    JWKS: [{"name": "mirror"}, {"name": "regcred"}]}


def test_other_charts_globals_are_accepted_as_an_umbrella_chart_passes_them(helm_bin, tmp_path):
    docs = render(helm_bin, tmp_path, {"global": {"storageClass": "fast", "imageRegistry": "mirror.example.test"}})

    assert only(serving_docs(docs), "Deployment")


@pytest.mark.parametrize("level", ["debug", "info", "warning", "error"])
def test_log_level_reaches_the_operator(helm_bin, tmp_path, level):
    docs = render(helm_bin, tmp_path, {"operator": {"logLevel": level}})

    assert env_of(docs)["SERVICEKEY_LOG_LEVEL"] == level


def test_a_corporate_ca_bundle_and_proxy_settings_reach_the_operator_container(helm_bin, tmp_path):
    values = {"operator": {
        "extraVolumes": [{"name": "corporate-ca", "configMap": {"name": "corporate-ca-bundle"}},
                         {"name": "scratch", "emptyDir": {"sizeLimit": "1Mi"}}],
        "extraVolumeMounts": [{"name": "corporate-ca", "mountPath": "/etc/ssl/corporate", "readOnly": True},
                              {"name": "scratch", "mountPath": "/scratch"}],
        "extraEnv": [{"name": "REQUESTS_CA_BUNDLE", "value": "/etc/ssl/corporate/ca.crt"},
                     {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
        "envFrom": [{"configMapRef": {"name": "proxy-settings"}},
                    {"secretRef": {"name": "proxy-credentials", "optional": True}, "prefix": "PROXY_"}],
    }}
    docs = render(helm_bin, tmp_path, values)

    pod = only(serving_docs(docs), "Deployment")["spec"]["template"]["spec"]
    container = operator_container(docs)
    # After the chart's own, in the order given.
    assert pod["volumes"][-2:] == values["operator"]["extraVolumes"]
    assert [v["name"] for v in pod["volumes"][:-2]] == ["tmp", "vault-sa-token"]
    assert container["volumeMounts"][-2:] == values["operator"]["extraVolumeMounts"]
    assert container["env"][-2:] == values["operator"]["extraEnv"]
    assert container["envFrom"] == values["operator"]["envFrom"]
    assert set(env_of(docs)) - CONTRACT_ENV == {"REQUESTS_CA_BUNDLE", "NODE_NAME"}
    # The JWKS server gets none of it: it calls nothing but the API server.
    jwks = jwks_container(docs)
    assert "envFrom" not in jwks and "env" not in jwks and "volumeMounts" not in jwks

    default = operator_container(render(helm_bin, tmp_path))
    assert "envFrom" not in default and [m["name"] for m in default["volumeMounts"]] == ["tmp", "vault-sa-token"]


@pytest.mark.parametrize("name", ["SERVICEKEY_LOG_LEVEL", "VAULT_ADDR", "SERVICEKEY_WATCH_NAMESPACES", "POD_ID"])
def test_extra_env_may_not_override_what_the_chart_sets(helm_bin, tmp_path, name):
    """Kubernetes would take the last of two variables of one name: the chart's value would be silently ignored."""
    result = run_helm(helm_bin, "template", RELEASE, str(CHART_DIR), "--namespace", NAMESPACE, *values_args(
        tmp_path, {"operator": {"extraEnv": [{"name": name, "value": "x"}]}}))

    assert result.returncode != 0
    assert f"operator.extraEnv sets {name}, which the chart sets from its values" in result.stderr, result.stderr


# ----------------------------------------------------------------------------------------------------
# RBAC
# ----------------------------------------------------------------------------------------------------

RBAC_VARIANTS = {
    "defaults": None,
    "peering cluster-wide": {"replicaCount": 2, "peering": {"enabled": True}},
    "every value": FULL_VALUES,
    "JWKS server TLS": {"jwksServer": {"tls": {"secretName": "jwks-tls"}}},
    "JWKS server off": {"jwksServer": {"enabled": False}},
}


def all_rules(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in docs:
        if doc["kind"] in ("ClusterRole", "Role"):
            for rule in doc.get("rules") or []:
                yield f"{doc['kind']} {doc['metadata'].get('namespace', '')}/{doc['metadata']['name']}", rule


@pytest.mark.parametrize("values", RBAC_VARIANTS.values(), ids=RBAC_VARIANTS.keys())
def test_rbac_grants_nothing_on_secrets_and_no_wildcards(helm_bin, tmp_path, values):
    docs = render(helm_bin, tmp_path, values)

    rules = list(all_rules(docs))
    assert rules
    for role, rule in rules:
        assert "nonResourceURLs" not in rule, role
        assert "secrets" not in rule["resources"], f"{role} grants {rule}"
        assert "serviceaccounts/token" not in rule["resources"], f"{role} grants {rule}"
        for field in ("apiGroups", "resources", "verbs", "resourceNames"):
            assert "*" not in rule.get(field, []), f"{role} has a wildcard in {field}: {rule}"
        assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), f"{role} grants {rule}"
    # The JWKS server's roles, wherever they are, grant list/watch on ConfigMaps and nothing else.
    for role in jwks_docs(docs):
        if role["kind"] in ("ClusterRole", "Role"):
            assert rules_by_resource(role) == JWKS_RULES, role["metadata"]


def test_cluster_wide_rbac_is_exactly_what_the_operator_needs(helm_bin, tmp_path):
    docs = render(helm_bin, tmp_path)

    cluster_role = only(serving_docs(docs), "ClusterRole")
    assert rules_by_resource(cluster_role) == SERVING_RULES | CLUSTER_ONLY_RULES
    binding = only(operator_docs(docs), "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == cluster_role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "servicekey-operator",
                                    "namespace": NAMESPACE}]


def test_namespaced_rbac_uses_a_role_per_namespace_and_keeps_only_cluster_scoped_rights_cluster_wide(
        helm_bin, tmp_path):
    docs = render(helm_bin, tmp_path, {"watchNamespaces": ["payments", "orders"],
                                       "rbac": {"publishNamespaces": ["checkout"]},
                                       "replicaCount": 2, "peering": {"enabled": True}})

    assert rules_by_resource(only(serving_docs(docs), "ClusterRole")) == CLUSTER_ONLY_RULES
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]): rules_by_resource(r)
             for r in of_kind(operator_docs(docs), "Role")}
    serving = SERVING_RULES | {("kopf.dev", "kopfpeerings"): PEERING_VERBS}
    assert roles == {
        ("payments", "servicekey-operator"): serving,
        ("orders", "servicekey-operator"): serving,
        ("checkout", "servicekey-operator-publish"): {("", "configmaps"): SERVING_RULES[("", "configmaps")]},
    }
    bindings = {(b["metadata"]["namespace"], b["roleRef"]["name"])
                for b in of_kind(operator_docs(docs), "RoleBinding")}
    assert bindings == set(roles)
    peerings = {(p["metadata"]["namespace"], p["metadata"]["name"]) for p in of_kind(docs, "KopfPeering")}
    assert peerings == {("payments", "servicekey-operator"), ("orders", "servicekey-operator")}


@pytest.mark.parametrize("values", [None, {"watchNamespaces": ["payments"]}], ids=["cluster-wide", "namespaced"])
def test_tenant_cluster_roles_are_aggregated_to_edit_and_view(helm_bin, tmp_path, values):
    """Issue #17, item 4: users bound to edit (or admin) manage ServiceKeys, users bound to view read them; neither
    may write the status or the finalizers, which are the operator's."""
    docs = render(helm_bin, tmp_path, values)

    roles = {}
    for role in (doc for doc in docs if is_tenant_role(doc)):
        labels = role["metadata"]["labels"]
        aggregated_to = frozenset(key.rsplit("-", 1)[1] for key, value in labels.items()
                                  if key.startswith("rbac.authorization.k8s.io/aggregate-to-") and value == "true")
        roles[(role["metadata"]["name"].rsplit("-", 1)[1], aggregated_to)] = rules_by_resource(role)
        assert labels["app.kubernetes.io/instance"] == RELEASE
    assert roles == {key: {("servicekey.io", "servicekeys"): verbs} for key, verbs in TENANT_ROLES.items()}
    for off in ({"rbac": {"aggregateClusterRoles": False}}, {"rbac": {"create": False}}):
        assert not [doc for doc in render(helm_bin, tmp_path, off) if is_tenant_role(doc)], off


# ----------------------------------------------------------------------------------------------------
# Pod security
# ----------------------------------------------------------------------------------------------------

RESTRICTED_CONTAINER = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "runAsGroup": 65532,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
# Volume types the "restricted" Pod Security Standard allows.
RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                           "projected", "secret"}
POD_SECURITY_VARIANTS = {
    "defaults": None,
    "jwks TLS": {"jwksServer": {"tls": {"secretName": "jwks-tls"}}},
    "every value": FULL_VALUES,
}


@pytest.mark.parametrize("values", POD_SECURITY_VARIANTS.values(), ids=POD_SECURITY_VARIANTS.keys())
def test_every_pod_runs_under_the_restricted_pod_security_standard(helm_bin, tmp_path, values):
    docs = render(helm_bin, tmp_path, values)

    deployments = of_kind(docs, "Deployment")
    assert sorted(is_jwks(d) for d in deployments) == [False, True], "the operator and the JWKS server"
    for workload in deployments + of_kind(docs, "Job"):  # the uninstall hook's Job with every value
        name = workload["metadata"]["name"]
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] == 65532, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC"), name
        assert "initContainers" not in pod and "ephemeralContainers" not in pod, name
        for container in pod["containers"]:
            assert container["securityContext"] == RESTRICTED_CONTAINER, name
            assert not any("hostPort" in port for port in container.get("ports", [])), name
        for volume in pod.get("volumes", []):
            assert set(volume) - {"name"} <= RESTRICTED_VOLUME_TYPES, f"{name}: {volume}"
    operator_pod = only(operator_docs(docs), "Deployment")["spec"]["template"]["spec"]
    jwks_pod = only(jwks_docs(docs), "Deployment")["spec"]["template"]["spec"]
    assert jwks_pod["securityContext"] == operator_pod["securityContext"], "the operator's pod security context"
    container = operator_container(docs)
    tmp_mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
    tmp_volume = next(v for v in operator_pod["volumes"] if v["name"] == tmp_mount["name"])
    assert "emptyDir" in tmp_volume
    # The JWKS server writes nothing: no writable volume, only the TLS Secret when there is one.
    assert all(mount.get("readOnly") for mount in jwks_container(docs).get("volumeMounts", []))
    assert all("secret" in volume for volume in jwks_pod.get("volumes", []))


def test_probes_check_kopf_health_endpoint_and_resources_are_set(helm_bin, tmp_path):
    docs = render(helm_bin, tmp_path)

    container = operator_container(docs)
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"metrics": 8080, "health": 8081}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}, probe
    # Sized from bench/ (docs/benchmarks.md): about 300 MiB at 10,000 keys.
    assert container["resources"] == {"requests": {"cpu": "100m", "memory": "256Mi"},
                                      "limits": {"cpu": "1", "memory": "512Mi"}}
    service = only(operator_docs(docs), "Service")
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 8080, "targetPort": "metrics",
                                         "protocol": "TCP"}]


# ----------------------------------------------------------------------------------------------------
# The JWKS server (issue #16)
# ----------------------------------------------------------------------------------------------------

JWKS = "servicekey-operator-jwks"


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def pod_selector(doc: dict[str, Any]) -> dict[str, str] | None:
    """The pod labels a Deployment, PodDisruptionBudget, NetworkPolicy or Service selects on; None for others."""
    spec = doc.get("spec") or {}
    if doc["kind"] in ("Deployment", "PodDisruptionBudget"):
        return spec["selector"]["matchLabels"]
    if doc["kind"] == "NetworkPolicy":
        return spec["podSelector"]["matchLabels"]
    if doc["kind"] == "Service":
        return spec["selector"]
    return None


def test_jwks_server_is_on_by_default_with_two_replicas_and_a_disruption_budget(helm_bin, tmp_path):
    docs = render(helm_bin, tmp_path)
    jwks = jwks_docs(docs)

    deployment = only(jwks, "Deployment")
    assert deployment["metadata"]["name"] == JWKS
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate",
                                              "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    selector = deployment["spec"]["selector"]["matchLabels"]
    budget = only(jwks, "PodDisruptionBudget")
    assert budget["metadata"]["name"] == JWKS
    assert budget["spec"] == {"minAvailable": 1, "selector": {"matchLabels": selector}}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == JWKS
    container = jwks_container(docs)
    assert container["image"] == operator_container(docs)["image"] == "servicekey-operator:0.1.0"
    assert container["command"] == ["servicekey-operator"]
    assert container["args"] == ["jwks-server", "--port", "8080", "--max-age", "60", "--log-format", "json"]
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http", "scheme": "HTTP"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http", "scheme": "HTTP"}
    assert container["resources"] == {"requests": {"cpu": "100m", "memory": "128Mi"},
                                      "limits": {"cpu": "1", "memory": "256Mi"}}
    assert "volumes" not in pod and "volumeMounts" not in container
    # Spread over nodes (and zones) when possible, never blocking scheduling.
    spread = pod["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    for constraint in spread:
        assert constraint["whenUnsatisfiable"] == "ScheduleAnyway"
        assert constraint["labelSelector"] == {"matchLabels": selector}
    # http://<release>-jwks.<namespace>.svc/keys/...: port 80 to the container's 8080.
    service = only(jwks, "Service")
    assert service["metadata"]["name"] == JWKS and service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"] == selector
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    account = only(jwks, "ServiceAccount")
    assert account["metadata"]["name"] == JWKS != only(operator_docs(docs), "ServiceAccount")["metadata"]["name"]


def test_jwks_and_operator_selectors_never_pick_each_others_pods(helm_bin, tmp_path):
    """The operator's Service, PDB and NetworkPolicy select on name + instance: the JWKS pods must not match."""
    docs = render(helm_bin, tmp_path, merged(FULL_VALUES, {"serviceMonitor": {"enabled": True}}))

    pods = {is_jwks(d): d["spec"]["template"]["metadata"]["labels"] for d in of_kind(docs, "Deployment")}
    for doc in docs:
        selector = pod_selector(doc)
        if selector is None:
            continue
        matched = {owner for owner, labels in pods.items() if selects(selector, labels)}
        assert matched == {is_jwks(doc)}, f"{doc['kind']} {doc['metadata']['name']} selects {matched}"
    services = {is_jwks(s): s["metadata"]["labels"] for s in of_kind(docs, "Service")}
    for monitor in of_kind(docs, "ServiceMonitor"):
        matched = {owner for owner, labels in services.items()
                   if selects(monitor["spec"]["selector"]["matchLabels"], labels)}
        assert matched == {is_jwks(monitor)}, monitor["metadata"]["name"]


def test_jwks_server_disabled_renders_nothing_of_it(helm_bin, tmp_path):
    values = merged(FULL_VALUES, {"jwksServer": {"enabled": False}})

    docs = render(helm_bin, tmp_path, values)

    assert jwks_docs(docs) == []
    assert not [doc for doc in docs if "jwks" in doc["metadata"]["name"]]
    assert sorted(map(key_of, docs)) == sorted(map(key_of, operator_docs(render(helm_bin, tmp_path, FULL_VALUES))))
    assert "JWKS server" not in render_notes(helm_bin, tmp_path, {"jwksServer": {"enabled": False}})


def test_jwks_server_may_only_list_and_watch_configmaps_cluster_wide(helm_bin, tmp_path):
    docs = render(helm_bin, tmp_path)
    jwks = jwks_docs(docs)

    role = only(jwks, "ClusterRole")
    assert role["metadata"]["name"] == JWKS
    assert rules_by_resource(role) == JWKS_RULES
    assert [rule["resources"] for rule in role["rules"]] == [["configmaps"]]
    binding = only(jwks, "ClusterRoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": JWKS}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": JWKS, "namespace": NAMESPACE}]
    # Nothing else in the chart binds the JWKS server's ServiceAccount.
    for doc in docs:
        if doc["kind"] in ("ClusterRoleBinding", "RoleBinding") and doc is not binding:
            assert {"kind": "ServiceAccount", "name": JWKS, "namespace": NAMESPACE} not in doc["subjects"]
    assert not of_kind(jwks, "Role") and not of_kind(jwks, "RoleBinding")


def test_namespaced_jwks_server_gets_a_role_per_watched_namespace_and_namespace_flags(helm_bin, tmp_path):
    docs = render(helm_bin, tmp_path, {"watchNamespaces": ["payments", "orders"],
                                       "rbac": {"publishNamespaces": ["checkout"]}})
    jwks = jwks_docs(docs)

    assert not of_kind(jwks, "ClusterRole") and not of_kind(jwks, "ClusterRoleBinding")
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]): rules_by_resource(r) for r in of_kind(jwks, "Role")}
    assert roles == {("payments", JWKS): JWKS_RULES, ("orders", JWKS): JWKS_RULES}, "the copies' namespaces: none"
    bindings = {(b["metadata"]["namespace"], b["roleRef"]["kind"], b["roleRef"]["name"]): b["subjects"]
                for b in of_kind(jwks, "RoleBinding")}
    subjects = [{"kind": "ServiceAccount", "name": JWKS, "namespace": NAMESPACE}]
    assert bindings == {("payments", "Role", JWKS): subjects, ("orders", "Role", JWKS): subjects}
    args = jwks_container(docs)["args"]
    assert args[args.index("--namespace"):] == ["--namespace", "payments", "--namespace", "orders"]


def test_jwks_tls_mounts_the_secret_and_passes_the_files(helm_bin, tmp_path):
    docs = render(helm_bin, tmp_path, {"jwksServer": {"tls": {"secretName": "jwks-tls"}},
                                       "serviceMonitor": {"enabled": True}})
    jwks = jwks_docs(docs)

    pod = only(jwks, "Deployment")["spec"]["template"]["spec"]
    assert pod["volumes"] == [{"name": "tls", "secret": {
        "secretName": "jwks-tls", "defaultMode": 0o440,
        "items": [{"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}]}}]
    container = jwks_container(docs)
    assert container["volumeMounts"] == [{"name": "tls", "mountPath": "/etc/servicekey/jwks-tls", "readOnly": True}]
    args = container["args"]
    assert args[args.index("--tls-cert") + 1] == "/etc/servicekey/jwks-tls/tls.crt"
    assert args[args.index("--tls-key") + 1] == "/etc/servicekey/jwks-tls/tls.key"
    assert container["ports"] == [{"name": "https", "containerPort": 8080, "protocol": "TCP"}]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["scheme"] == "HTTPS", probe
    assert only(jwks, "Service")["spec"]["ports"] == [
        {"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP"}]
    endpoint = only(jwks, "ServiceMonitor")["spec"]["endpoints"][0]
    assert (endpoint["port"], endpoint["scheme"], endpoint["path"]) == ("https", "https", "/metrics")
    assert endpoint["tlsConfig"] == {"serverName": f"{JWKS}.{NAMESPACE}.svc",
                                     "ca": {"secret": {"name": "jwks-tls", "key": "ca.crt"}}}
    # Only the kubelet reads the Secret: the JWKS server's RBAC stays list/watch on ConfigMaps.
    assert rules_by_resource(only(jwks, "ClusterRole")) == JWKS_RULES


def test_every_jwks_value_reaches_the_render(helm_bin, tmp_path):
    docs = render(helm_bin, tmp_path, FULL_VALUES)
    jwks = jwks_docs(docs)
    values = FULL_VALUES["jwksServer"]

    deployment = only(jwks, "Deployment")
    assert deployment["metadata"]["name"] == "keys-operator-jwks"
    assert deployment["spec"]["replicas"] == 3
    template = deployment["spec"]["template"]
    assert template["metadata"]["annotations"] == values["podAnnotations"]
    assert template["metadata"]["labels"]["example.test/tier"] == "edge"
    assert template["metadata"]["labels"]["team"] == "platform", "commonLabels"
    pod = template["spec"]
    for key in ("priorityClassName", "nodeSelector", "tolerations", "affinity", "topologySpreadConstraints"):
        assert pod[key] == values[key], key
    assert pod["serviceAccountName"] == "sko-jwks"
    assert pod["imagePullSecrets"] == [{"name": "mirror-cred"}, {"name": "regcred"}], "global ones too, once each"
    container = jwks_container(docs)
    assert container["image"] == operator_container(docs)["image"]
    assert container["imagePullPolicy"] == "Always"
    assert container["args"] == [
        "jwks-server", "--port", "8080", "--max-age", "30", "--log-format", "text",
        "--base-url", "https://keys.example.test/jwks",
        "--tls-cert", "/etc/servicekey/jwks-tls/tls.crt", "--tls-key", "/etc/servicekey/jwks-tls/tls.key",
        "--namespace", "payments", "--namespace", "orders"]
    assert container["resources"] == values["resources"]
    service = only(jwks, "Service")
    assert service["spec"]["type"] == "LoadBalancer"
    assert service["spec"]["ports"][0]["port"] == 8443
    assert service["metadata"]["annotations"] == values["service"]["annotations"]
    assert only(jwks, "ServiceAccount")["metadata"]["annotations"] == values["serviceAccount"]["annotations"]
    assert only(jwks, "PodDisruptionBudget")["spec"]["minAvailable"] == 2
    monitor = only(jwks, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert (monitor["spec"]["endpoints"][0]["interval"], monitor["spec"]["endpoints"][0]["scrapeTimeout"]) == (
        "1m", "20s")
    policy = only(jwks, "NetworkPolicy")["spec"]
    assert policy["ingress"] == [{"ports": [{"port": "https", "protocol": "TCP"}],
                                  "from": values["networkPolicy"]["from"]}]


def test_jwks_network_policy_admits_the_whole_cluster_and_never_opens_vault(helm_bin, tmp_path):
    default = only(jwks_docs(render(helm_bin, tmp_path)), "NetworkPolicy")["spec"]
    assert default["policyTypes"] == ["Ingress"]
    assert default["ingress"] == [{"ports": [{"port": "http", "protocol": "TCP"}], "from": [{"namespaceSelector": {}}]}]

    open_to_all = only(jwks_docs(render(helm_bin, tmp_path, {"jwksServer": {"networkPolicy": {"from": []}}})),
                       "NetworkPolicy")["spec"]
    assert open_to_all["ingress"] == [{"ports": [{"port": "http", "protocol": "TCP"}]}]

    restricted = only(jwks_docs(render(helm_bin, tmp_path, {"networkPolicy": {"egress": {"enabled": True}}})),
                      "NetworkPolicy")["spec"]
    assert restricted["policyTypes"] == ["Ingress", "Egress"]
    egress_ports = {port["port"] for rule in restricted["egress"] for port in rule["ports"]}
    assert egress_ports == {53, 443, 6443}, "DNS and the API server; the JWKS server never calls Vault"

    assert not of_kind(render(helm_bin, tmp_path, {"networkPolicy": {"enabled": False}}), "NetworkPolicy")


def test_jwks_metrics_are_scraped_through_their_own_service_monitor(helm_bin, tmp_path):
    docs = render(helm_bin, tmp_path, {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}})

    monitor = only(jwks_docs(docs), "ServiceMonitor")
    assert monitor["metadata"]["name"] == JWKS
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["selector"]["matchLabels"] == only(jwks_docs(docs), "Service")["spec"]["selector"]
    assert monitor["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "scheme": "http",
                                             "interval": "30s", "scrapeTimeout": "10s"}]
    assert len(of_kind(docs, "ServiceMonitor")) == 2
    assert not of_kind(jwks_docs(render(helm_bin, tmp_path)), "ServiceMonitor"), "off by default, as the operator's"


def test_jwks_disruption_budget_needs_more_than_one_replica(helm_bin, tmp_path):
    docs = render(helm_bin, tmp_path, {"jwksServer": {"replicaCount": 1}})
    assert not of_kind(jwks_docs(docs), "PodDisruptionBudget"), "one replica with minAvailable 1 blocks drains"
    docs = render(helm_bin, tmp_path, {"jwksServer": {"podDisruptionBudget": {"enabled": False}}})
    assert not of_kind(jwks_docs(docs), "PodDisruptionBudget")


def test_jwks_server_may_not_share_the_operators_service_account(helm_bin, tmp_path):
    for values in ({"jwksServer": {"serviceAccount": {"name": "servicekey-operator"}}},
                   {"serviceAccount": {"create": False}, "jwksServer": {"serviceAccount": {"create": False}}}):
        result = run_helm(helm_bin, "template", RELEASE, str(CHART_DIR), "--namespace", NAMESPACE,
                          *values_args(tmp_path, values))
        assert result.returncode != 0, values
        assert "jwksServer.serviceAccount.name must differ" in result.stderr, result.stderr


def test_notes_give_the_jwks_url(helm_bin, tmp_path):
    notes = render_notes(helm_bin, tmp_path)
    assert f"http://{JWKS}.{NAMESPACE}.svc/keys/<namespace>/<name>/jwks.json" in notes, notes
    assert "spec.publicKey.http: true" in notes and "JWKS server" in notes

    (tmp_path / "tls").mkdir()
    notes = render_notes(helm_bin, tmp_path / "tls", {"jwksServer": {"tls": {"secretName": "jwks-tls"},
                                                                     "service": {"port": 8443}}})
    assert f"https://{JWKS}.{NAMESPACE}.svc:8443/keys/<namespace>/<name>/jwks.json" in notes, notes


# ----------------------------------------------------------------------------------------------------
# Documentation and the kustomize base stay in step with the chart
# ----------------------------------------------------------------------------------------------------

def test_readme_values_table_matches_values_yaml():
    documented = documented_values()
    defaults = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    rows = readme_rows()

    assert set(rows) == set(documented), (
        f"README lacks {sorted(set(documented) - set(rows))}; "
        f"README has stale {sorted(set(rows) - set(documented))}")
    for path, description in documented.items():
        default = lookup(defaults, path)
        expected = (helm_docs_type(default), f"`{json.dumps(default, separators=(',', ':'))}`", description)
        assert rows[path] == expected, f"README row for {path}"


def test_kustomize_base_equals_the_default_helm_render(helm_bin, tmp_path):
    kustomization = yaml.safe_load((KUSTOMIZE_BASE / "kustomization.yaml").read_text())
    base_docs = [doc for name in kustomization["resources"]
                 for doc in yaml.safe_load_all((KUSTOMIZE_BASE / name).read_text()) if doc]

    rendered = render(helm_bin, tmp_path, None, "--include-crds")

    stale = "deploy/kustomize/base drifted from the chart: run hack/render-deploy.sh"
    assert sorted(map(key_of, base_docs)) == sorted(map(key_of, rendered)), stale
    by_key = {key_of(doc): doc for doc in rendered}
    for doc in base_docs:
        assert doc == by_key[key_of(doc)], f"{stale} ({key_of(doc)})"


def hook_docs(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [doc for doc in docs if is_uninstall_hook(doc)]


def test_by_default_helm_uninstall_runs_no_hook(helm_bin, tmp_path):
    assert hook_docs(render(helm_bin, tmp_path)) == []


def test_a_drain_hook_deletes_every_servicekey_before_the_operator_goes(helm_bin, tmp_path):
    docs = render(helm_bin, tmp_path, {"uninstall": {"serviceKeys": "drain"}})

    hook = hook_docs(docs)
    assert sorted(doc["kind"] for doc in hook) == ["ClusterRole", "ClusterRoleBinding", "Job", "ServiceAccount"]
    for doc in hook:
        annotations = doc["metadata"]["annotations"]
        assert annotations["helm.sh/hook"] == "pre-delete", "while the operator still runs its finalizers"
        assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
        weight = int(annotations["helm.sh/hook-weight"])
        assert weight == (0 if doc["kind"] == "Job" else -10), "its account exists before the Job starts"
    assert rules_by_resource(only(hook, "ClusterRole")) == {("servicekey.io", "servicekeys"): {"list", "delete"}}
    job = only(hook, "Job")["spec"]
    pod = job["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"] == ["uninstall", "--drain", "--timeout=240", "--all-namespaces"]
    assert container["image"] == operator_container(docs)["image"]
    assert pod["serviceAccountName"] == only(hook, "ServiceAccount")["metadata"]["name"]
    assert pod["restartPolicy"] == "Never" and job["backoffLimit"] == 0
    assert 240 < job["activeDeadlineSeconds"] < 300, "the command's timeout, not the deadline nor helm's 5m, ends it"
    selector = only(operator_docs(docs), "Deployment")["spec"]["selector"]["matchLabels"]
    labels = job["template"]["metadata"]["labels"]
    assert not selector.items() <= labels.items(), "the operator's Service, PDB and policy must not take the pod"


def test_a_strip_finalizers_hook_runs_after_the_operator_is_gone_in_the_watched_namespaces(helm_bin, tmp_path):
    docs = render(helm_bin, tmp_path, {"uninstall": {"serviceKeys": "stripFinalizers", "timeoutSeconds": 60},
                                       "watchNamespaces": ["payments", "orders"]})

    hook = hook_docs(docs)
    assert {doc["metadata"]["annotations"]["helm.sh/hook"] for doc in hook} == {"post-delete"}, \
        "a running operator would put its finalizer back"
    roles = of_kind(hook, "Role")
    assert sorted(role["metadata"]["namespace"] for role in roles) == ["orders", "payments"]
    stripping = {("servicekey.io", "servicekeys"): {"get", "list", "patch"}}
    assert all(rules_by_resource(role) == stripping for role in roles)
    assert sorted(binding["metadata"]["namespace"] for binding in of_kind(hook, "RoleBinding")) == [
        "orders", "payments"]
    assert of_kind(hook, "ClusterRole") == []
    assert only(hook, "Job")["spec"]["template"]["spec"]["containers"][0]["args"] == [
        "uninstall", "--strip-finalizers", "--timeout=60", "--namespace=payments", "--namespace=orders"]
