"""Shared helpers for the chart tests: where the chart is, the full values, and rendering it with helm."""

from __future__ import annotations

import copy
import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from devcluster.binaries import KUBERNETES_VERSION
from devcluster.chart import CHART_DIR, RELEASE
from devcluster.chart import RELEASE_NAMESPACE as NAMESPACE
from devcluster.environment import REPO_ROOT

SOURCE_CRD = REPO_ROOT / "crds" / "servicekey.io_servicekeys.yaml"
# The chart's ServiceKey CRD: a template that hack/sync-chart-crds.sh writes from SOURCE_CRD.
CHART_CRD_TEMPLATE = CHART_DIR / "templates" / "crds" / "servicekey.io_servicekeys.yaml"
KUSTOMIZE_BASE = REPO_ROOT / "deploy" / "kustomize" / "base"
# What `helm template` and `helm lint` render for, as `helm install` would for the test cluster: a helm built
# without Helm's own ldflags assumes Kubernetes v1.20, below the chart's kubeVersion.
KUBE_VERSION = KUBERNETES_VERSION


# The operator's configuration contract: the only environment variables the chart may set on it.
CONTRACT_ENV = {
    "VAULT_ADDR", "VAULT_NAMESPACE", "VAULT_CACERT", "VAULT_CLIENT_CERT", "VAULT_CLIENT_KEY",
    "VAULT_TLS_SERVER_NAME", "SERVICEKEY_VAULT_AUTH_METHOD", "VAULT_TOKEN_FILE", "SERVICEKEY_VAULT_ROLE",
    "SERVICEKEY_VAULT_AUTH_MOUNT", "SERVICEKEY_VAULT_SA_TOKEN_FILE", "SERVICEKEY_VAULT_ROLE_ID_FILE",
    "SERVICEKEY_VAULT_SECRET_ID_FILE", "SERVICEKEY_KV_MOUNT", "SERVICEKEY_TRANSIT_MOUNT",
    "SERVICEKEY_PATH_PREFIX", "SERVICEKEY_WATCH_NAMESPACES", "SERVICEKEY_PUBLISH_NAMESPACES", "SERVICEKEY_METRICS_PORT",
    "SERVICEKEY_HEALTH_PORT", "SERVICEKEY_LOG_FORMAT", "SERVICEKEY_LOG_LEVEL", "SERVICEKEY_PEERING",
    "SERVICEKEY_PEERING_LIFETIME", "POD_ID",
}
# The verbs of the ClusterRoles aggregated to the built-in roles (rbac.aggregateClusterRoles): (role suffix,
# aggregated to) -> verbs on servicekeys, and nothing else.
TENANT_ROLES = {
    ("edit", frozenset({"admin", "edit"})): {"create", "update", "patch", "delete", "get", "list", "watch"},
    ("view", frozenset({"admin", "edit", "view"})): {"get", "list", "watch"},
}
AGGREGATE_LABEL = "rbac.authorization.k8s.io/aggregate-to-"

# What the operator may do in Kubernetes, and no more: (apiGroup, resource) -> verbs.
SERVING_RULES = {
    ("servicekey.io", "servicekeys"): {"list", "watch", "patch"},
    ("servicekey.io", "servicekeys/status"): {"patch"},
    ("servicekey.io", "servicekeys/finalizers"): {"update"},
    ("", "configmaps"): {"get", "list", "watch", "create", "update", "delete"},
    ("", "events"): {"create"},
}
CLUSTER_ONLY_RULES = {
    ("", "namespaces"): {"get", "list", "watch"},
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
}
PEERING_VERBS = {"list", "watch", "patch"}
# What the JWKS server may do, and no more: read the public-key ConfigMaps through a label selector.
JWKS_RULES = {("", "configmaps"): {"list", "watch"}}
# The JWKS server's resources carry this component label; the operator's carry "operator".
JWKS_COMPONENT = "jwks-server"

# Every documented value set to something other than its default (the kubernetes/approle/token
# sub-values are all set; the auth method is varied by the test that uses it).
FULL_VALUES: dict[str, Any] = {
    "replicaCount": 3,
    "image": {
        "repository": "registry.example.test/platform/servicekey-operator",
        "tag": "0.1.0-rc1",
        "digest": "sha256:" + "ab" * 32,
        "pullPolicy": "Always",
    },
    "imagePullSecrets": [{"name": "regcred"}],
    "global": {"imagePullSecrets": ["mirror-cred", {"name": "regcred"}]},
    "crds": {"enabled": True, "keep": False},
    "uninstall": {"serviceKeys": "drain", "timeoutSeconds": 120},
    "nameOverride": "sko",
    "fullnameOverride": "keys-operator",
    "commonLabels": {"team": "platform"},
    "watchNamespaces": ["payments", "orders"],
    "vault": {
        "address": "https://openbao.secrets.svc:8200",
        "namespace": "tenant-a",
        "tlsServerName": "openbao.example.test",
        "caBundle": {"source": "secret", "name": "vault-ca", "key": "bundle.pem"},
        "clientCertificate": {"secretName": "vault-client", "certKey": "client.crt", "keyKey": "client.key"},
        "auth": {
            "method": "approle",
            "mount": "approle-k8s",
            "kubernetes": {"role": "sko", "tokenAudience": "openbao", "tokenExpirationSeconds": 1800},
            "approle": {"secretName": "vault-approle", "roleIdKey": "rid", "secretIdKey": "sid"},
            "token": {"secretName": "vault-token", "key": "vault-token"},
        },
        "kvMount": "kv",
        "transitMount": "transit-keys",
        "pathPrefix": "platform/servicekeys",
    },
    "operator": {
        "logFormat": "text",
        "logLevel": "debug",
        "metricsPort": 9090,
        "healthPort": 9091,
        "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy.example.test:3128"},
                     {"name": "REQUESTS_CA_BUNDLE", "value": "/etc/ssl/corporate/ca.crt"}],
        "envFrom": [{"configMapRef": {"name": "proxy-settings"}}, {"secretRef": {"name": "proxy-auth"},
                                                                    "prefix": "PROXY_"}],
        "extraVolumes": [{"name": "corporate-ca", "configMap": {"name": "corporate-ca"}}],
        "extraVolumeMounts": [{"name": "corporate-ca", "mountPath": "/etc/ssl/corporate", "readOnly": True}],
    },
    "peering": {"enabled": True, "name": "servicekeys", "lifetime": 15},
    "serviceAccount": {"create": True, "name": "sko-sa", "annotations": {"example.test/owner": "platform"}},
    "rbac": {"create": True, "aggregateClusterRoles": True, "publishNamespaces": ["checkout", "orders"]},
    "podAnnotations": {"example.test/scrape": "true"},
    "podLabels": {"example.test/tier": "control"},
    "podSecurityContext": {
        "runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    },
    "securityContext": {
        "runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532, "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    },
    "resources": {"requests": {"cpu": "100m", "memory": "160Mi"}, "limits": {"cpu": "2", "memory": "512Mi"}},
    "tmpSizeLimit": "32Mi",
    "livenessProbe": {"initialDelaySeconds": 30, "periodSeconds": 15, "timeoutSeconds": 3, "failureThreshold": 5},
    "readinessProbe": {"initialDelaySeconds": 2, "periodSeconds": 5, "timeoutSeconds": 2, "failureThreshold": 2},
    "terminationGracePeriodSeconds": 60,
    "priorityClassName": "system-cluster-critical",
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "control", "effect": "NoSchedule"}],
    "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
        "weight": 100,
        "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                            "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "sko"}}},
    }]}},
    "topologySpreadConstraints": [{
        "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway",
        "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "sko"}},
    }],
    "service": {"type": "NodePort", "port": 9090, "annotations": {"example.test/probe": "true"}},
    "serviceMonitor": {"enabled": True, "interval": "1m", "scrapeTimeout": "20s", "labels": {"release": "prom"}},
    "prometheusRule": {
        "enabled": True,
        "namespace": "monitoring",
        "labels": {"release": "prom"},
        "additionalRuleLabels": {"team": "platform"},
        "runbookBaseURL": "https://git.example.test/platform/servicekey-operator/blob/v0.1.0/docs/troubleshooting.md",
    },
    "grafanaDashboard": {
        "enabled": True,
        "namespace": "monitoring",
        "labels": {"grafana_dashboard": "1", "team": "platform"},
        "annotations": {"grafana_folder": "Security"},
    },
    "podDisruptionBudget": {"enabled": True, "minAvailable": 2},
    "networkPolicy": {
        "enabled": True,
        "egress": {"enabled": True},
        "dnsEgress": False,
        "vault": {"port": 8200, "to": [{"namespaceSelector": {
            "matchLabels": {"kubernetes.io/metadata.name": "openbao"}}}]},
        "apiServer": {"ports": [6443], "to": [{"ipBlock": {"cidr": "192.0.2.10/32"}}]},
        "metrics": {"from": [{"namespaceSelector": {
            "matchLabels": {"kubernetes.io/metadata.name": "prometheus"}}}]},
    },
    "admissionPolicy": {"enabled": True},
    "jwksServer": {
        "enabled": True,
        "replicaCount": 3,
        "maxAge": 30,
        "baseUrl": "https://keys.example.test/jwks",
        "logFormat": "text",
        "tls": {"secretName": "jwks-tls"},
        "service": {"type": "LoadBalancer", "port": 8443, "annotations": {"example.test/lb": "internal"}},
        "serviceAccount": {"create": True, "name": "sko-jwks", "annotations": {"example.test/owner": "platform"}},
        "podAnnotations": {"example.test/scrape": "false"},
        "podLabels": {"example.test/tier": "edge"},
        "resources": {"requests": {"cpu": "200m", "memory": "96Mi"}, "limits": {"cpu": "2", "memory": "192Mi"}},
        "priorityClassName": "system-cluster-critical",
        "nodeSelector": {"kubernetes.io/arch": "amd64"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "edge", "effect": "NoSchedule"}],
        "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
            "topologyKey": "kubernetes.io/hostname",
            "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "sko-jwks"}}}]}},
        "topologySpreadConstraints": [{
            "maxSkew": 2, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule",
            "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "sko-jwks"}},
        }],
        "podDisruptionBudget": {"enabled": True, "minAvailable": 2},
        "networkPolicy": {"from": [{"namespaceSelector": {"matchLabels": {"example.test/verifiers": "true"}}}]},
    },
}


# The Deployment's variables that only make sense inside its pod: the token file is mounted from a Secret
# (a local operator process gets the environment's token instead), and the operator process picks free ports.
POD_ONLY_ENV = {"VAULT_TOKEN_FILE", "SERVICEKEY_METRICS_PORT", "SERVICEKEY_HEALTH_PORT"}


def release_operator_env(manifest: str) -> dict[str, str]:
    """What the operator Deployment of a release's manifest (`helm get manifest`) sets, for a local operator
    process: its plain variables, without the pod-only ones."""
    deployment_env = env_of([doc for doc in yaml.safe_load_all(manifest) if doc])
    return {name: value for name, value in deployment_env.items() if value is not None and name not in POD_ONLY_ENV}


def run_helm(helm_bin: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """helm offline; `template` and `lint` render for KUBE_VERSION unless the arguments name another version."""
    # No kubeconfig: everything here is local, and helm must not reach for a cluster.
    env = dict(os.environ, KUBECONFIG=os.devnull, HELM_CACHE_HOME="/tmp/servicekey-helm-cache",
               HELM_CONFIG_HOME="/tmp/servicekey-helm-config", HELM_DATA_HOME="/tmp/servicekey-helm-data")
    if args and args[0] in ("template", "lint") and not any(arg.startswith("--kube-version") for arg in args):
        args = (*args, "--kube-version", KUBE_VERSION)
    return subprocess.run([str(helm_bin), *args], capture_output=True, text=True, env=env, timeout=120)


def values_args(tmp_path: Path, values: dict[str, Any] | None) -> list[str]:
    if values is None:
        return []
    values_file = tmp_path / f"values-{len(list(tmp_path.glob('values-*.yaml')))}.yaml"
    values_file.write_text(yaml.safe_dump(values, sort_keys=False))
    return ["--values", str(values_file)]


def render(helm_bin: Path, tmp_path: Path, values: dict[str, Any] | None = None,
           *extra: str) -> list[dict[str, Any]]:
    """`helm template` of the chart as release servicekey-operator in servicekey-system, parsed."""
    result = run_helm(helm_bin, "template", RELEASE, str(CHART_DIR), "--namespace", NAMESPACE,
                      *values_args(tmp_path, values), *extra)
    assert result.returncode == 0, f"helm template failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge override into a copy of base (as helm merges --values files)."""
    result = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def only(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = of_kind(docs, kind)
    assert len(found) == 1, f"expected exactly one {kind}, rendered {len(found)}"
    return found[0]


def is_jwks(doc: dict[str, Any]) -> bool:
    """Whether the doc belongs to the JWKS server (jwksServer.*) rather than to the operator."""
    return (doc["metadata"].get("labels") or {}).get("app.kubernetes.io/component") == JWKS_COMPONENT


def operator_docs(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [doc for doc in docs if not is_jwks(doc)]


def jwks_docs(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [doc for doc in docs if is_jwks(doc)]


def is_tenant_role(doc: dict[str, Any]) -> bool:
    """Whether the doc is one of the ClusterRoles aggregated to the built-in edit/view roles (for tenants)."""
    return doc["kind"] == "ClusterRole" and any(
        key.startswith(AGGREGATE_LABEL) for key in (doc["metadata"].get("labels") or {}))


def is_uninstall_hook(doc: dict[str, Any]) -> bool:
    """Whether the doc belongs to the uninstall hook (uninstall.serviceKeys)."""
    return (doc["metadata"].get("labels") or {}).get("app.kubernetes.io/component") == "uninstall"


def serving_docs(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The operator's own objects: neither the JWKS server's, nor the tenants' roles, nor the CRD, nor the
    uninstall hook's."""
    return [doc for doc in operator_docs(docs) if not is_tenant_role(doc) and not is_uninstall_hook(doc)
            and doc["kind"] != "CustomResourceDefinition"]


def operator_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    containers = only(operator_docs(docs), "Deployment")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["operator"]
    return containers[0]


def jwks_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    containers = only(jwks_docs(docs), "Deployment")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["jwks-server"]
    return containers[0]


def env_of(docs: list[dict[str, Any]]) -> dict[str, str]:
    return {item["name"]: item.get("value") for item in operator_container(docs)["env"]}


def rules_by_resource(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    """Flatten a Role/ClusterRole into (apiGroup, resource) -> verbs."""
    table: dict[tuple[str, str], set[str]] = {}
    for rule in role.get("rules") or []:
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                table.setdefault((group, resource), set()).update(rule["verbs"])
    return table


def key_of(doc: dict[str, Any]) -> tuple[str, str, str, str]:
    meta = doc["metadata"]
    return doc["apiVersion"], doc["kind"], meta.get("namespace", ""), meta["name"]
