"""Install the project's Helm chart into the local cluster and act as its ServiceAccount (demo and e2e tests)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from servicekey_operator.devcluster.environment import REPO_ROOT, DevEnvironment
from servicekey_operator.devcluster.kube import write_kubeconfig

CHART_DIR = REPO_ROOT / "charts" / "servicekey-operator"
RELEASE = "servicekey-operator"
RELEASE_NAMESPACE = "servicekey-system"


def helm(env: DevEnvironment, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the cached helm against the local cluster; raise with helm's message on failure."""
    result = subprocess.run([str(env.binaries.helm), f"--kubeconfig={env.kube.kubeconfig}", *args],
                            capture_output=True, text=True, timeout=180)
    if result.returncode != 0:
        raise RuntimeError(f"helm {' '.join(args[:2])} failed:\n{result.stderr}")
    return result


def install_chart(env: DevEnvironment, *set_values: str) -> str:
    """``helm install`` the chart (token auth against the local OpenBao); return its ServiceAccount's name.

    There is no kubelet here, so the Deployment never runs: the operator runs as a local process with
    the ServiceAccount's identity instead (see ``service_account_kubeconfig``).
    """
    args = ["install", RELEASE, str(CHART_DIR), "--namespace", RELEASE_NAMESPACE, "--create-namespace",
            "--set", f"vault.address={env.vault.addr}", "--set", "vault.auth.method=token",
            "--set", "vault.auth.token.secretName=servicekey-operator-vault-token"]
    for value in set_values:
        args += ["--set", value]
    helm(env, *args)
    accounts = env.kube.kubectl("get", "serviceaccounts", "-n", RELEASE_NAMESPACE, "-l",
                                f"app.kubernetes.io/instance={RELEASE}", "-o", "name").stdout.split()
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
