"""Install the project's Helm chart into the local cluster and act as its ServiceAccount (demo and e2e tests)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from devcluster.environment import REPO_ROOT, DevEnvironment
from devcluster.kube import write_kubeconfig
from devcluster.node import wait_for_deployment

CHART_DIR = REPO_ROOT / "charts" / "servicekey-operator"
OPERATOR_POLICY = REPO_ROOT / "deploy" / "vault" / "servicekey-operator-policy.hcl"
VAULT_ROLE = "servicekey-operator"
RELEASE = "servicekey-operator"
RELEASE_NAMESPACE = "servicekey-system"
# The release's operator objects (its JWKS server has the component jwks-server).
OPERATOR_SELECTOR = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=operator"


def helm(env: DevEnvironment, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the cached helm against the local cluster; raise with helm's message on failure."""
    result = subprocess.run([str(env.binaries.helm), f"--kubeconfig={env.kube.kubeconfig}", *args],
                            capture_output=True, text=True, timeout=180)
    if result.returncode != 0:
        raise RuntimeError(f"helm {' '.join(args[:2])} failed:\n{result.stderr}")
    return result


def _set_flags(*values: str) -> list[str]:
    return [flag for value in values for flag in ("--set", value)]


def install_chart(env: DevEnvironment, *set_values: str) -> str:
    """``helm install`` the chart (token auth against the local OpenBao); return its ServiceAccount's name.

    For the tests without the node: the Deployment never runs, and the operator runs as a local process with
    the ServiceAccount's identity instead (see ``service_account_kubeconfig``; ``install_operator_pod`` is the
    chart on the node).
    """
    helm(env, "install", RELEASE, str(CHART_DIR), "--namespace", RELEASE_NAMESPACE, "--create-namespace",
         *_set_flags(f"vault.address={env.vault.addr}", "vault.auth.method=token",
                     "vault.auth.token.secretName=servicekey-operator-vault-token", *set_values))
    accounts = env.kube.kubectl("get", "serviceaccounts", "-n", RELEASE_NAMESPACE, "-l", OPERATOR_SELECTOR,
                                "-o", "name").stdout.split()
    if len(accounts) != 1:
        raise RuntimeError(f"expected one ServiceAccount from the chart, found {accounts}")
    return accounts[0].split("/", 1)[1]


def uninstall_chart(env: DevEnvironment) -> None:
    """``helm uninstall`` the release."""
    helm(env, "uninstall", RELEASE, "--namespace", RELEASE_NAMESPACE)


def service_account_kubeconfig(env: DevEnvironment, service_account: str, path: Path) -> Path:
    """A kubeconfig that authenticates as the ServiceAccount with a TokenRequest token, not as admin."""
    token = env.kube.kubectl("create", "token", service_account, "-n", RELEASE_NAMESPACE, "--duration=2h").stdout
    return write_kubeconfig(path, env.kube.server, env.kube.ca.cert_path, token=token.strip(), user=service_account)


def prepare_vault_for_the_chart(env: DevEnvironment) -> None:
    """What the chart README tells an administrator to do in Vault: the shipped policy, kubernetes auth, and a
    role for the chart's ServiceAccount that accepts only tokens projected for the audience ``vault``."""
    env.vault.create_policy(VAULT_ROLE, OPERATOR_POLICY.read_text())
    env.vault.enable_kubernetes_auth(env.kube)
    env.vault.create_kubernetes_role(VAULT_ROLE, service_accounts=[RELEASE], namespaces=[RELEASE_NAMESPACE],
                                     policies=[VAULT_ROLE], audience="vault", token_ttl="1h", token_max_ttl="4h")


def install_operator_pod(env: DevEnvironment, *set_values: str, timeout: float = 180) -> None:
    """``helm install`` the chart as a user would on the node: the image built from the Dockerfile
    (``imagePullPolicy: Never``), kubernetes auth with the projected token, Vault at the node's address; wait
    until the Deployment is available."""
    image = env.node_images["operator"].ref
    repository, tag = image.rsplit(":", 1)
    prepare_vault_for_the_chart(env)
    helm(env, "install", RELEASE, str(CHART_DIR), "--namespace", RELEASE_NAMESPACE, "--create-namespace",
         *_set_flags(f"image.repository={repository}", f"image.tag={tag}", "image.pullPolicy=Never",
                     f"vault.address={env.vault.pod_addr}", *set_values))
    wait_for_deployment(env.kube, RELEASE_NAMESPACE, RELEASE, timeout)
